"""The real-face demo: a portrait photo animated by another person's talking-head video with the face model.

    python scripts/demo_faces.py [--model models/faces-heatmap.pth.tar] [--photo examples/faces/lp-s12.jpg]
                                 [--video examples/faces/lp-d18.mp4] [--out demo-faces] [--device auto]

(``make demo`` runs it after the synthetic demo.) The photo and the video are of two people the model never
saw in training (examples/faces/README.md). ``--crop auto`` frames the face in both (dlib), the model animates
the 128x128 crops, and the result is pasted back into the photo. Writes into ``--out``:

    result.mp4                 the photo, its face animated
    result-side-by-side.mp4    source crop | driving crop | driving mask | result crop
    contact-sheet.png          the same columns as rows, 8 frames across
    metrics.json               the figures printed

There is no ground truth for another person's motion, so the summary measures what can be measured: how
closely the result's mouth opening, head turn and head tilt follow the driver's over time (the correlation of
dlib-landmark measures of the two crops, 1 = in step), and whose face the result shows (dlib's descriptor
distance to the photo and to the driver; under 0.6 is the same person by dlib's rule).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError

DEFAULT_MODEL = "models/faces-heatmap.pth.tar"
DEFAULT_PHOTO = "examples/faces/lp-s12.jpg"
DEFAULT_VIDEO = "examples/faces/lp-d18.mp4"
FILES = ("result.mp4", "result-side-by-side.mp4", "contact-sheet.png", "metrics.json")


def face_measures(points: np.ndarray) -> np.ndarray:
    """(T, 68, 2) dlib landmarks -> (T, 3): mouth opening (inner lips' gap over the nose-to-chin length), head
    turn (the nose tip's offset from the jaw ends' midpoint over the jaw's width) and head tilt (the slope of
    the line through the outer eye corners)."""
    nose_to_chin = np.linalg.norm(points[:, 8] - points[:, 27], axis=-1)
    mouth = np.linalg.norm(points[:, 66] - points[:, 62], axis=-1) / nose_to_chin
    jaw_width = points[:, 16, 0] - points[:, 0, 0]
    turn = (points[:, 30, 0] - (points[:, 0, 0] + points[:, 16, 0]) / 2) / jaw_width
    eyes = points[:, 45] - points[:, 36]
    tilt = np.arctan2(eyes[:, 1], eyes[:, 0])
    return np.stack([mouth, turn, tilt], axis=-1)


def following(driving, result) -> dict[str, Optional[float]]:
    """Correlation over frames of each face measure of the driver and of the result, where both have a face."""
    both = driving.found.all(axis=1) & result.found.all(axis=1)
    names = ("mouth_opening", "head_turn", "head_tilt")
    if both.sum() < 3:
        return dict.fromkeys(names)
    a, b = face_measures(driving.points[both]), face_measures(result.points[both])
    return {name: (float(np.corrcoef(a[:, i], b[:, i])[0, 1]) if a[:, i].std() > 0 and b[:, i].std() > 0 else None)
            for i, name in enumerate(names)}


def identity_distances(source, driving, result) -> dict[str, Optional[float]]:
    """dlib descriptor distance of the result's mean face to the photo's and to the driver's."""
    def mean(marks) -> Optional[np.ndarray]:
        rows = marks.embeddings[~np.isnan(marks.embeddings).any(axis=1)]
        return rows.mean(axis=0) if len(rows) else None

    mine, photo, driver = mean(result), mean(source), mean(driving)
    distance = (lambda x, y: None if x is None or y is None else float(np.linalg.norm(x - y)))
    return {"result_to_photo": distance(mine, photo), "result_to_driver": distance(mine, driver),
            "driver_to_photo": distance(driver, photo)}


def score(side_by_side: str, columns: int = 4) -> dict:
    """The summary's figures from the side-by-side video: its source, driving and result columns."""
    from tqdm import tqdm

    from modules.data.video_io import open_video
    from modules.evaluation.landmarks import FaceLandmarks, Landmarks

    frames = open_video(side_by_side).read_all()                      # (T, H, columns * W, 3)
    width = frames.shape[2] // columns
    column = (lambda c: np.ascontiguousarray(frames[:, :, c * width:(c + 1) * width]))
    landmarker = FaceLandmarks()
    with tqdm(total=2 * len(frames) + 1, unit="frame", desc="face landmarks", dynamic_ncols=True) as bar:
        def detect(images: np.ndarray) -> Landmarks:
            parts = []
            for start in range(0, len(images), 16):
                parts.append(landmarker.detect(images[start:start + 16]))
                bar.update(len(parts[-1]))
            return Landmarks(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("points", "found",
                                                                                        "embeddings")))

        # the source column repeats one crop: its first frame stands for all
        source, driving, result = detect(column(0)[:1]), detect(column(1)), detect(column(columns - 1))
    return {"following": following(driving, result), "identity": identity_distances(source, driving, result),
            "faces_found": {"driving": float(driving.found.all(axis=1).mean()),
                            "result": float(result.found.all(axis=1).mean())}}


def run_face_demo(model_path: str, photo: str, video: str, out_dir: str, device_name: str = "auto") -> dict:
    """Animate, write the files of the module docstring, print the summary; returns metrics.json's content."""
    import imageio.v3 as iio

    from modules.core.device import choose_device
    from modules.core.outputs import results_folder
    from modules.core.pictures import contact_sheet
    from modules.data.video_io import open_video
    from modules.inference.pipeline import AnimationOptions, animate_single
    from modules.inference.results import write_results
    from scripts.demo import check_demo_folder

    for what, path in (("--model", model_path), ("--photo", photo), ("--video", video)):
        if not os.path.isfile(path):
            raise UserError(f"{what} {path}: file not found")
    check_demo_folder(out_dir, inputs=(model_path, photo, video), files=FILES)
    started = time.perf_counter()
    with results_folder(out_dir) as partial:
        result = os.path.join(partial, "result.mp4")
        # fp32 eager PyTorch: the printed figures do not depend on this CPU's engine or precision choice
        options = AnimationOptions(result_video=result, visualize=True, engine="torch", precision="no")
        animate_single(model_path, photo, video, options, device=choose_device(device_name))
        seconds = time.perf_counter() - started
        side = os.path.join(partial, "result-side-by-side.mp4")
        shown = open_video(side).read_all()
        iio.imwrite(os.path.join(partial, "contact-sheet.png"), contact_sheet(shown, 4))
        summary = {"model": model_path, "photo": photo, "video": video, "frames": len(shown),
                   "seconds": round(seconds, 1)} | score(side)
        write_results(partial, summary)
    print_summary(summary, out_dir)
    return summary


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def print_summary(summary: dict, folder: str) -> None:
    print(f"real faces: {summary['photo']} animated by {summary['video']} with {summary['model']}, "
          f"{summary['frames']} frames in {summary['seconds']:.0f} s")
    for name in FILES:
        print(f"  {os.path.join(folder, name)}")
    follow, identity = summary["following"], summary["identity"]
    print("how the result follows the driver (correlation over frames, 1 = in step): "
          + ", ".join(f"{name.replace('_', ' ')} {_number(value)}" for name, value in follow.items()))
    print(f"whose face (dlib distance, under 0.6 = same person): result to photo "
          f"{_number(identity['result_to_photo'])}, result to driver {_number(identity['result_to_driver'])}, "
          f"driver to photo {_number(identity['driver_to_photo'])}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a face model file (default {DEFAULT_MODEL})")
    parser.add_argument("--photo", default=DEFAULT_PHOTO, help=f"the portrait to animate (default {DEFAULT_PHOTO})")
    parser.add_argument("--video", default=DEFAULT_VIDEO, help=f"the driving video (default {DEFAULT_VIDEO})")
    parser.add_argument("--out", default="demo-faces", help="output folder (default demo-faces)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    args = parser.parse_args(argv)

    def command() -> None:
        run_face_demo(args.model, args.photo, args.video, args.out, args.device)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
