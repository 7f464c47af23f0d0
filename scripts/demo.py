"""The demo: animate one synthetic test identity with another identity's motion, using a shipped model.

    python scripts/demo.py [--model models/tiny-heatmap.pth.tar] [--data data/synthetic] [--pair SRC__DRV]
                           [--out demo] [--device auto]

(``make demo`` runs it after installing and generating the synthetic dataset.) The source image is frame 0
of the pair's source video; the driving video is the other identity's test video; the synthetic dataset's
ground-truth animation (the source identity posed by the driver, ``animation-gt/``) is what the result
should look like. Writes into ``--out``:

    result.mp4          the animation
    side-by-side.mp4    source | driving | driving mask | result | ground truth (a FOMM model shows its
                        keypoints, deformed source and occlusion map in place of the mask)
    contact-sheet.png   the same columns as rows, 8 frames across
    metrics.json        L1, PSNR, SSIM (and AKD) of the result and of the two trivial baselines

and prints the result's L1 and SSIM against the ground truth beside copying the source and copying the
driving frame. The default pair is the first of ``test-pairs.csv``, the README's demo-pair row.
"""
from __future__ import annotations

import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError

DEFAULT_MODEL = "models/tiny-heatmap.pth.tar"


def demo_pair(root: str) -> str:
    """The first pair of ``<root>/test-pairs.csv`` as ``<source>__<driving>``."""
    path = os.path.join(root, "test-pairs.csv")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found; generate the synthetic dataset first "
                        f"(python scripts/synthetic_dataset.py --out {root})")
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or not {"source", "driving"} <= set(rows[0]):
        raise UserError(f"{path}: expected a 'source,driving' header and at least one pair")
    return f"{rows[0]['source']}__{rows[0]['driving']}"


DEMO_FILES = ("result.mp4", "side-by-side.mp4", "contact-sheet.png", "metrics.json")


def check_demo_folder(out_dir: str, inputs: tuple = (), files: tuple = DEMO_FILES) -> None:
    """``--out`` is replaced as a whole when the new demo is complete: refuse a folder that holds anything the
    demo did not write (the user's own files would go with it), and paths that cannot be written."""
    from modules.core.outputs import check_output_folder

    check_output_folder(out_dir, what="--out", inputs=inputs)
    if os.path.isdir(out_dir):
        foreign = sorted(set(os.listdir(out_dir)) - set(files))
        if foreign:
            raise UserError(f"--out {out_dir}: holds files the demo did not write ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}); the demo replaces its folder as a whole, "
                            f"give a new or empty folder")


def run_demo(model_path: str, root: str, pair: str | None, out_dir: str, device_name: str = "auto") -> dict:
    """Animate the pair, write the files of the module docstring, return metrics.json's content."""
    import imageio.v3 as iio
    import torch
    from tqdm import tqdm

    from modules.core.device import choose_device
    from modules.core.outputs import results_folder
    from modules.core.pictures import contact_sheet
    from modules.data.video_io import VideoWriter
    from modules.evaluation.scorer import FrameScorer, score_against_truth, table_lines
    from modules.inference.pipeline import choose_motion, prepare_model, stream_animation
    from modules.inference.results import write_results

    check_demo_folder(out_dir, inputs=(model_path,))
    device = choose_device(device_name)
    # fp32 eager PyTorch: the figures the README prints do not depend on this CPU's engine or precision choice
    prepared = prepare_model(model_path, device, precision="no", engine="torch", channels_last=False)
    config, model, checkpoint = prepared.config, prepared.model, prepared.checkpoint
    pair = pair or demo_pair(root)
    size = config.dataset_params.size
    source, driving, truth = open_pair(root, pair, size)
    motion, adapt_scale = choose_motion(config, None, False, checkpoint["path"])
    final_dir = out_dir
    # Built beside an earlier demo and swapped in when complete: an interrupted run keeps the earlier one.
    with results_folder(final_dir) as out_dir:
        fps = driving.fps or 25.0
        strip: list[np.ndarray] = []
        visual: list[np.ndarray] = []
        progress = tqdm(total=driving.num_frames, unit="frame", desc="animating", dynamic_ncols=True)
        relative_jacobian = config.animate_params.normalization_params.use_relative_jacobian
        with torch.inference_mode(), VideoWriter(os.path.join(out_dir, "result.mp4"), fps=fps) as writer:
            stream_animation(model, source, driving.iter_frames(8), writer, size=size, device=device,
                             motion=motion, adapt_scale=adapt_scale, progress=progress, strip=strip, visual=visual,
                             use_relative_jacobian=relative_jacobian)
        progress.close()
        prediction = np.concatenate(strip)                                              # (T, H, W, 3)
        count = min(len(prediction), truth.num_frames)
        truth_frames = truth.read(list(range(count)))
        shown = np.concatenate([np.concatenate(visual)[:count], truth_frames], axis=2)  # + ground-truth column
        columns = shown.shape[2] // size[1]
        with VideoWriter(os.path.join(out_dir, "side-by-side.mp4"), fps=fps) as writer:
            writer.write(shown)
        iio.imwrite(os.path.join(out_dir, "contact-sheet.png"), contact_sheet(shown, columns))

        scorer = FrameScorer(config, size)
        scores = score_against_truth(scorer, prediction, source, driving, truth, batch_size=16)
        table = scorer.table(scores, ("prediction", "copy_source", "copy_driving"))
        result = {"pair": pair, "model": model_path, "step": checkpoint.get("step"), "motion": motion,
                  "frames": count, "result": table["prediction"], "copy_source": table["copy_source"],
                  "copy_driving": table["copy_driving"], "skipped": scorer.skipped}
        write_results(out_dir, result)
    print_summary(result, final_dir, table_lines({"result": table["prediction"], "copy_source": table["copy_source"],
                                                  "copy_driving": table["copy_driving"]}, scorer.skipped))
    return result


def open_pair(root: str, pair: str, size: tuple[int, int]):
    """(source frame (H, W, 3) uint8, driving video, ground-truth video) of ``<source>__<driving>`` in the
    synthetic dataset at ``root``; a malformed or absent pair is a one-line error."""
    from modules.data.video_io import open_video

    if "__" not in pair:
        raise UserError(f"--pair {pair!r}: expected <source video>__<driving video>, e.g. {demo_pair(root)}")
    source_name, driving_name = pair.split("__", 1)
    paths = {"source": os.path.join(root, "test", source_name), "driving": os.path.join(root, "test", driving_name),
             "ground truth": os.path.join(root, "animation-gt", pair)}
    for what, path in paths.items():
        if not os.path.isdir(path):
            raise UserError(f"{path}: not found (the {what} of pair {pair}); expected the synthetic dataset's layout")
    return (open_video(paths["source"], size).read([0])[0], open_video(paths["driving"], size),
            open_video(paths["ground truth"], size))


def print_summary(result: dict, folder: str, lines: list[str]) -> None:
    """What the demo wrote and its figures against the ground truth (``lines``: the metrics table)."""
    print(f"demo pair {result['pair']}: {result['model']} (step {result['step']}, {result['motion']} motion), "
          f"{result['frames']} frames")
    for name in ("result.mp4", "side-by-side.mp4", "contact-sheet.png", "metrics.json"):
        print(f"  {os.path.join(folder, name)}")
    print("against the ground-truth animation:")
    for line in lines:
        print("  " + line)
    print(f"result: L1 {result['result']['l1']:.4f}, SSIM {result['result']['ssim']:.4f}")
    print("your own image and video with the same model:\n"
          f"  .venv/bin/kpmask --mode animate --checkpoint {result['model']} --source_image IMAGE --driving_video "
          f"VIDEO [--visualize]")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a model file or checkpoint (default {DEFAULT_MODEL})")
    parser.add_argument("--data", default="data/synthetic", help="the synthetic dataset (default data/synthetic)")
    parser.add_argument("--pair", default=None, help="<source>__<driving> (default: the first of test-pairs.csv)")
    parser.add_argument("--out", default="demo", help="output folder (default demo)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    args = parser.parse_args(argv)

    def command() -> None:
        run_demo(args.model, args.data, args.pair, args.out, args.device)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
