"""Export a training checkpoint as a model file: its networks and config, without optimizer or RNG state.

    python scripts/export_model.py log/tiny-heatmap-<ts> --out models/tiny-heatmap.pth.tar \\
        [--note "what made it"] [--training_time "17 min 34 s on 2 CPU cores"]

The model file (format ``kpmask-model-1``) animates and reconstructs like the checkpoint
(``run.py --mode animate|reconstruction --checkpoint FILE``) and serves as ``--checkpoint_with_kp``; it
cannot resume training. It records where it came from: the run's commands, seed, git commit and packages
(the run folder's run.json), the step and epoch, and the note and training time given here. For a FOMM
(stage one) checkpoint the discriminator is dropped: inference does not use it.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.errors import OneLineArgumentParser, UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a training checkpoint of this project or its run folder (its latest)")
    parser.add_argument("--out", required=True, help="the model file to write (.pth.tar)")
    parser.add_argument("--note", default="", help="free text kept in the file's provenance")
    parser.add_argument("--training_time", default="", help="wall-clock training time, kept in the provenance")
    args = parser.parse_args(argv)
    try:
        import logger as run_log
        from modules.checkpoint import atomic_save

        checkpoint = run_log.load_training_checkpoint(args.checkpoint)
        run_json = os.path.join(os.path.dirname(os.path.abspath(checkpoint["path"])), "run.json")
        sessions = []
        if os.path.isfile(run_json):
            with open(run_json, encoding="utf-8") as stream:
                sessions = json.load(stream).get("sessions", [])
        provenance = {"source": os.path.basename(checkpoint["path"]), "seed": checkpoint.get("seed"),
                      "sessions": sessions, "note": args.note, "training_time": args.training_time}
        model = run_log.model_file(checkpoint, provenance)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_save(model, args.out)
        run_log.load_model(args.out, device=__import__("torch").device("cpu"))    # it loads, strictly
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = os.path.getsize(args.out) / 2 ** 20
    print(f"{args.out}: {model['config']['model_params'].get('family', 'keypoint_mask')} model, step "
          f"{model['step']}, {size:.2f} MiB (from {checkpoint['path']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
