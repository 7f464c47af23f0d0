"""Animation pairs (source video, driving video): FOMM's pairs-list csv, or seeded random pairs.

Random pairs never pair a video with itself and, when the names tell people apart (``<id>#<clip>``), never
two videos of one person: cross-identity animation, as FOMM's and the papers' evaluations use.
"""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from modules.core.errors import UserError


def read_pairs_csv(path: str) -> list[tuple[str, str]]:
    """The (source, driving) video names of a csv whose header has the columns source and driving."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: pairs list not found (dataset_params.pairs_list: a csv with columns "
                        f"source,driving)")
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "source" not in fields or "driving" not in fields:
                raise UserError(f"{path}: expected a csv whose header has the columns source and driving (video "
                                f"names), got {', '.join(fields) if fields else 'no header'}")
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{path}: cannot read as a csv ({error})") from None
    return [(row["source"], row["driving"]) for row in rows]


def random_pairs(ids: Sequence[str], number_of_pairs: int, seed: int) -> list[tuple[int, int]]:
    """Up to ``number_of_pairs`` distinct (source, driving) index pairs of videos whose person ids are ``ids``
    (two videos at least), a pure function of ``seed``."""
    count = len(ids)
    numbers = {identity: k for k, identity in enumerate(sorted(set(ids)))}
    person = [numbers[identity] for identity in ids]
    by_id = len(numbers) > 1                 # different people when the names tell them apart

    def valid(s: int, d: int) -> bool:
        return s != d and (not by_id or person[s] != person[d])

    sizes = np.bincount(person)
    total = count * count - (int((sizes ** 2).sum()) if by_id else count)
    wanted = min(number_of_pairs, total)
    rng = np.random.default_rng(seed % 2 ** 64)
    if 2 * wanted >= total:
        # Most of the valid pairs: list them all and shuffle (rejection would take long).
        everything = [(s, d) for s in range(count) for d in range(count) if valid(s, d)]
        return [everything[i] for i in rng.permutation(len(everything))[:wanted]]
    pairs, seen = [], set()
    while len(pairs) < wanted:
        s, d = (int(v) for v in rng.integers(count, size=2))
        if valid(s, d) and (s, d) not in seen:
            seen.add((s, d))
            pairs.append((s, d))
    return pairs
