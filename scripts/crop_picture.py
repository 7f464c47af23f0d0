"""Draw the crop boxes ``--crop auto`` would choose in a photo: one per subject kind.

    python scripts/crop_picture.py PHOTO OUT.png [--kinds face body synthetic]

Each kind's finder (modules/inference/crop.py: dlib's face landmarks, MediaPipe Pose, the synthetic keypoint regressor)
looks at the photo; its box is drawn in its colour (face red, body blue, synthetic green) and printed as
x,y,w,h, the form ``--crop`` takes. A kind whose detector is missing or finds nothing is reported. With no
PHOTO given as ``astronaut``, scikit-image's astronaut photograph (public domain) is used.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402

COLOURS = {"face": (230, 40, 40), "body": (40, 90, 230), "synthetic": (30, 180, 60)}


def finder_of(kind: str):
    """The subject finder of ``kind``, or the reason there is none."""
    from modules.evaluation.landmarks import MetricsUnavailable
    from modules.inference.crop import finder_for_kind

    try:
        return finder_for_kind(kind)
    except MetricsUnavailable as reason:
        return str(reason)


def draw(image: np.ndarray, box, colour, width: int = 3) -> None:
    """Draw ``box``'s outline, ``width`` pixels thick inside its edge, into ``image`` (H, W, 3) in place."""
    for offset in range(width):
        x0, y0 = box.x + offset, box.y + offset
        x1, y1 = box.x + box.side - 1 - offset, box.y + box.side - 1 - offset
        image[y0, x0:x1 + 1] = image[y1, x0:x1 + 1] = colour
        image[y0:y1 + 1, x0] = image[y0:y1 + 1, x1] = colour


def main() -> int:
    from modules.data.video_io import load_image

    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", help="an image file, or astronaut")
    parser.add_argument("out")
    parser.add_argument("--kinds", nargs="+", choices=sorted(COLOURS), default=["face", "body"])
    args = parser.parse_args()
    if args.photo == "astronaut":
        from skimage.data import astronaut

        photo = astronaut()
    else:
        photo = load_image(args.photo)
    shown, status = photo.copy(), 0
    for kind in args.kinds:
        finder = finder_of(kind)
        box = None if isinstance(finder, str) else finder.image_box(photo)
        if box is None:
            print(f"{kind}: {finder if isinstance(finder, str) else 'nothing found'}")
            status = 1
            continue
        draw(shown, box, COLOURS[kind])
        print(f"{kind}: --crop {box}")
    Image.fromarray(shown).save(args.out, optimize=True)
    print(f"picture: {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(exit_status(main))
