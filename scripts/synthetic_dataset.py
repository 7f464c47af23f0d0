"""Write the synthetic articulated-figure dataset (the renderer and the layout: modules/data/synthetic.py).

    python scripts/synthetic_dataset.py --out data/synthetic [--seed 0] [--size 64] [--train_identities 32]
        [--test_identities 8] [--clips 2] [--frames 48] [--pairs 16] [--supersample 4] [--force]
        [--contact_sheet sheet.png] [--quiet]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.core.cli import OneLineArgumentParser  # noqa: E402
from modules.data.synthetic import DEFAULTS, DatasetArgumentError, contact_sheet, generate_dataset  # noqa: E402

OPTION_OF: dict[str, str] = {
    "root": "--out", "seed": "--seed", "size": "--size", "num_train_identities": "--train_identities",
    "num_test_identities": "--test_identities", "clips_per_identity": "--clips", "num_frames": "--frames",
    "num_pairs": "--pairs", "supersample": "--supersample",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="synthetic_dataset.py",
                            description="Write a synthetic articulated-figure video dataset with ground truth.")
    parser.add_argument("--out", required=True, help="output folder (refused if not empty, unless --force)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=DEFAULTS["size"], help="frame side in pixels (default 64)")
    parser.add_argument("--train_identities", type=int, default=DEFAULTS["num_train_identities"],
                        help="identities in train/ (default 32)")
    parser.add_argument("--test_identities", type=int, default=DEFAULTS["num_test_identities"],
                        help="identities in test/ (default 8)")
    parser.add_argument("--clips", type=int, default=DEFAULTS["clips_per_identity"],
                        help="videos per identity (default 2)")
    parser.add_argument("--frames", type=int, default=DEFAULTS["num_frames"], help="frames per video (default 48)")
    parser.add_argument("--pairs", type=int, default=DEFAULTS["num_pairs"],
                        help="test pairs with ground-truth animation (default 16)")
    parser.add_argument("--supersample", type=int, default=DEFAULTS["supersample"],
                        help="anti-aliasing samples per pixel side (default 4)")
    parser.add_argument("--force", action="store_true",
                        help="replace a dataset already in --out (other files there are kept)")
    parser.add_argument("--contact_sheet", default=None, help="also save a PNG contact sheet here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = generate_dataset(
            args.out, seed=args.seed, size=args.size, num_train_identities=args.train_identities,
            num_test_identities=args.test_identities, clips_per_identity=args.clips, num_frames=args.frames,
            num_pairs=args.pairs, supersample=args.supersample, overwrite=args.force, progress=not args.quiet)
    except DatasetArgumentError as error:
        print(f"error: {OPTION_OF.get(error.parameter, error.parameter)}: {error.message}", file=sys.stderr)
        return 2
    except FileExistsError as error:
        print(f"error: --out: {error}", file=sys.stderr)
        return 2
    if args.contact_sheet:
        contact_sheet(args.out, args.contact_sheet)
    if not args.quiet:
        print(f"wrote {summary['train_videos']} train and {summary['test_videos']} test videos "
              f"({summary['train_identities']}+{summary['test_identities']} identities) and {summary['pairs']} "
              f"ground-truth animations, {summary['frames_written']} frames of {summary['size']}x{summary['size']}, "
              f"to {summary['root']} in {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
