"""The results an evaluating command writes beside its videos, in one form: ``metrics.json`` (the protocol, the
means, the baselines and one entry per video or pair) and, where asked, ``metrics.csv`` (one row per video).
Reconstruction, dataset animation and the demos write through it."""
from __future__ import annotations

import csv
import os
from typing import Any, Mapping, Optional

from modules.core.outputs import atomic_file, write_json
from modules.evaluation.scorer import frame_mean

Scores = Mapping[str, list[float]]          # metric key (e.g. prediction_l1) -> one value per frame


def pooled(rows: Mapping[str, Scores]) -> dict[str, list[float]]:
    """The per-frame values of every row (video or pair) joined, key by key: means over all frames (FOMM)."""
    joined: dict[str, list[float]] = {}
    for row in rows.values():
        for key, values in row.items():
            joined.setdefault(key, []).extend(values)
    return joined


def row_means(values: Scores, frames_key: str = "prediction_l1") -> dict[str, Any]:
    """One row's entry: how many frames it counted, then each metric's mean over them (None where undefined)."""
    return {"frames": len(values[frames_key])} | {key: frame_mean(v) for key, v in values.items()}


def write_results(out_dir: str, result: Mapping[str, Any], csv_rows: Optional[Mapping[str, Mapping]] = None,
                  first_column: str = "video") -> None:
    """``metrics.json`` (``result``) and, with ``csv_rows`` (name -> entry of ``row_means``), ``metrics.csv``;
    each written atomically, so an interrupted run never leaves half a table."""
    write_json(os.path.join(out_dir, "metrics.json"), dict(result))
    if csv_rows:
        keys = list(next(iter(csv_rows.values())))
        with atomic_file(os.path.join(out_dir, "metrics.csv")) as partial:
            with open(partial, "w", encoding="utf-8", newline="") as stream:
                writer = csv.writer(stream)
                writer.writerow([first_column] + keys)
                for name, row in csv_rows.items():
                    writer.writerow([name] + [row[k] for k in keys])
