"""What more training buys: reconstruction metrics of a run's checkpoints against their training steps.

    python scripts/measure/learning_curve.py RUN_DIR [RUN_DIR ...] [--data ROOT] [--points 6] [--out docs/curve]
        [--batch_size 8]

Every RUN_DIR is a training run folder (its ``NNNNNNNN-checkpoint.pth.tar`` files), or one checkpoint of one
to add to its curve. About ``--points`` checkpoints spread evenly over each run (always its last one) are
reconstructed on ``--data`` (default: the run's own test split) with the papers' protocol (reconstruction.py: frame 0 is the source, every frame
counted, fp32, eager PyTorch so that the figures do not depend on an engine's choice), and their step, CPU
time so far (the run's log), L1, motion-region L1, AKD and MKR, with the copy-the-source baseline, are written
to ``OUT.csv`` and drawn in ``OUT.png`` (one line per run, the baseline dashed). Checkpoints already in
``OUT.csv`` are not evaluated again, so the curve grows as a run goes on.
"""
from __future__ import annotations

import csv
import glob
import os
import re
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError
from modules.core.outputs import atomic_file  # noqa: E402

METRICS = ("l1", "motion_l1", "akd", "mkr")
COLUMNS = ("run", "checkpoint", "epoch", "step", "hours") + tuple(
    f"{who}_{metric}" for who in ("prediction", "copy_source") for metric in METRICS)


def checkpoints_of(run_dir: str, points: int) -> list[str]:
    """About ``points`` completed checkpoints of ``run_dir``, evenly spread by epoch, the last one always in."""
    found = sorted(glob.glob(os.path.join(run_dir, "*-checkpoint.pth.tar")))
    if not found:
        raise UserError(f"{run_dir}: no NNNNNNNN-checkpoint.pth.tar in it (expected a training run folder)")
    if len(found) <= points:
        return found
    if points == 1:
        return found[-1:]
    step = (len(found) - 1) / (points - 1)
    return [found[round(i * step)] for i in range(points)]


def hours_at(run_dir: str, step: int) -> Optional[float]:
    """Hours of training up to ``step``: the sum of the epoch times that log.txt's epoch lines
    (``NNNNNNNN) step S; ...; T s, R samples/s``) give up to that step, resumed starts included."""
    path = os.path.join(run_dir, "log.txt")
    if not os.path.isfile(path):
        return None
    seconds, seen = 0.0, False
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            match = re.match(r"\d+\) step (\d+);.*; ([\d.]+) s, [\d.]+ samples/s", line)
            if match and int(match.group(1)) <= step:
                seconds, seen = seconds + float(match.group(2)), True
    return seconds / 3600 if seen else None


def evaluate(path: str, data: Optional[str], batch_size: int) -> dict:
    """One checkpoint reconstructed on ``data``: its step and the metrics of prediction and copy-source."""
    import torch

    from modules.core.files import read_checkpoint
    from reconstruction import reconstruct

    result = reconstruct(path, torch.device("cpu"), batch_size=batch_size, exclude_first_frame=False,
                         num_videos=None, engine="torch", precision="no", data=data,
                         results_name="learning-curve")      # never over the run's own reconstruction/
    state = read_checkpoint(path, lazy=True)
    row = {"checkpoint": os.path.basename(path), "epoch": int(state.get("epoch", -1)), "step": int(state.get("step", -1))}
    for who, table in (("prediction", result["mean"]), ("copy_source", result["baselines"]["copy_source"])):
        for metric in METRICS:
            value = table.get(metric)
            row[f"{who}_{metric}"] = "" if value is None else float(value)
    return row


def read_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def write_rows(path: str, rows: list[dict]) -> None:
    """The table, written under a temporary name and renamed: a reader never sees half of it."""
    with atomic_file(path) as partial, open(partial, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["run"], int(r["step"]))))


def plot(rows: list[dict], path: str) -> None:
    """One panel per metric: a line per run against steps, the copy-source baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    runs = sorted({r["run"] for r in rows})
    for axis, metric in zip(axes, METRICS):
        for number, run in enumerate(runs):
            mine = sorted((r for r in rows if r["run"] == run and r[f"prediction_{metric}"] != ""),
                          key=lambda r: int(r["step"]))
            if not mine:
                continue
            steps = [int(r["step"]) for r in mine]
            colour = f"C{number}"
            axis.plot(steps, [float(r[f"prediction_{metric}"]) for r in mine], "o-", color=colour, label=run)
            axis.plot(steps, [float(r[f"copy_source_{metric}"]) for r in mine], "--", color=colour, alpha=0.5)
        axis.set_title(metric.replace("_", "-") + " (dashed: copy the source)", fontsize=9)
        axis.set_xlabel("training steps")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    with atomic_file(path) as partial:
        figure.savefig(partial, dpi=110)
    plt.close(figure)


def main(argv: Optional[list[str]] = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="training run folders, or single checkpoints of one")
    parser.add_argument("--data", default=None, help="dataset to reconstruct (default: each run's own test split)")
    parser.add_argument("--points", type=int, default=6, help="checkpoints evaluated per run (default 6)")
    parser.add_argument("--out", default="learning-curve", help="writes OUT.csv and OUT.png (default learning-curve)")
    parser.add_argument("--batch_size", type=int, default=8, help="frames generated at once (default 8)")
    args = parser.parse_args(argv)

    def command() -> None:
        if args.points < 1 or args.batch_size < 1:
            raise UserError(f"--points {args.points} / --batch_size {args.batch_size}: expected positive integers")
        table = f"{args.out}.csv"
        rows = read_rows(table)
        done = {(r["run"], r["checkpoint"]) for r in rows}
        for given in args.runs:
            # a run folder: --points of its checkpoints; a checkpoint file: that one (its folder is the run)
            run_dir = os.path.dirname(os.path.abspath(given)) if os.path.isfile(given) else given
            run = os.path.basename(os.path.normpath(run_dir))
            for path in [given] if os.path.isfile(given) else checkpoints_of(run_dir, args.points):
                if (run, os.path.basename(path)) in done:
                    continue
                row = {"run": run} | evaluate(path, args.data, args.batch_size)
                hours = hours_at(run_dir, row["step"])
                row["hours"] = "" if hours is None else round(hours, 3)
                rows.append(row)
                write_rows(table, rows)            # after each checkpoint: an interrupted curve keeps its points
        plot(rows, f"{args.out}.png")
        print(f"{len(rows)} points in {table} and {args.out}.png")

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
