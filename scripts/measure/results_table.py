"""One results table from the metrics.json files that reconstruction and animation write into run folders.

    python scripts/measure/results_table.py log/tiny-fomm-<ts> log/tiny-heatmap-<ts> log/tiny-circles-<ts> [--names ...]

For each run folder (or results root of an official checkpoint) it reads ``reconstruction/metrics.json`` and
``animation/metrics.json`` and prints a Markdown table: one row per model, then the trivial baselines (copy
the source frame; copy the driving frame, animation only) taken from the first run that has them. Columns:
L1, motion-region L1 (where the real frame differs from the source image), SSIM and AKD (pixels of a
256x256 frame) for reconstruction and for cross-identity animation against the
synthetic ground truth. A metric that was not computed shows as a dash. A perturbed-masks run's ablations
(``animation-no_pert/`` etc., from ``--mode animate --ablation ...``) follow its row, animation only.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from modules.core.cli import OneLineArgumentParser  # noqa: E402

METRICS = ("l1", "motion_l1", "ssim", "akd")
HEADINGS = {"l1": "L1", "motion_l1": "motion-region L1", "ssim": "SSIM", "akd": "AKD"}
ABLATIONS = ("no_pert", "no_ref", "no_id")


def _read(folder: str, mode: str) -> Optional[dict]:
    path = os.path.join(folder, mode, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def _cells(values: Optional[dict]) -> list[str]:
    def cell(name: str) -> str:
        value = None if values is None else values.get(name)
        return "-" if value is None else f"{value:.4f}" if name != "akd" else f"{value:.2f}"
    return [cell(name) for name in METRICS]


def table(folders: list[str], names: list[str]) -> list[str]:
    """The Markdown lines of the table for ``folders`` labelled ``names``."""
    header = ["model"] + [f"{mode} {HEADINGS[m]}" for mode in ("reconstruction", "animation") for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baselines: dict[str, list[Optional[dict]]] = {"copy source": [None, None], "copy driving": [None, None]}
    for folder, name in zip(folders, names):
        reconstruction, animation = _read(folder, "reconstruction"), _read(folder, "animation")
        if reconstruction is None and animation is None:
            raise SystemExit(f"error: {folder}: no reconstruction/metrics.json or animation/metrics.json (run "
                             f"--mode reconstruction and --mode animate with its checkpoint first)")
        lines.append("| " + " | ".join([name] + _cells(reconstruction and reconstruction["mean"])
                                       + _cells(animation and animation["mean"])) + " |")
        for ablation in ABLATIONS:                # perturbed masks: `--mode animate --ablation X` results
            ablated = _read(folder, f"animation-{ablation}")
            if ablated is not None:
                lines.append("| " + " | ".join([f"{name}, {ablation}"] + _cells(None) + _cells(ablated["mean"]))
                             + " |")
        for index, results in enumerate((reconstruction, animation)):
            for label, key in (("copy source", "copy_source"), ("copy driving", "copy_driving")):
                if results is not None and baselines[label][index] is None:
                    baselines[label][index] = results.get("baselines", {}).get(key)
    for label, (reconstruction, animation) in baselines.items():
        if reconstruction is not None or animation is not None:
            lines.append("| " + " | ".join([f"*{label}*"] + _cells(reconstruction) + _cells(animation)) + " |")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="run folders holding reconstruction/ and animation/")
    parser.add_argument("--names", nargs="+", help="row labels (default: the folder names)")
    args = parser.parse_args(argv)
    names = args.names or [os.path.basename(os.path.normpath(f)) for f in args.folders]
    if len(names) != len(args.folders):
        parser.error(f"--names: {len(names)} names for {len(args.folders)} folders")
    print("\n".join(table(args.folders, names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
