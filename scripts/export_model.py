"""Export a training checkpoint as a model file: its networks and config, without optimizer or RNG state.

    python scripts/export_model.py log/tiny-heatmap-<ts> --out models/tiny-heatmap.pth.tar [--overwrite] \\
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

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402


def export(checkpoint_path: str, out: str, note: str = "", training_time: str = "",
           overwrite: bool = False) -> dict:
    """Write the model file of ``checkpoint_path`` (a checkpoint or run folder) to ``out``; returns its content.
    An existing ``out`` is refused unless ``overwrite``. The file is checked to load strictly into the networks
    of its config before anything is written, and written atomically."""
    from modules.core.outputs import check_output_file

    check_output_file(out, what="--out", inputs=(checkpoint_path,), overwrite=overwrite)
    from modules.config.formats import ModelFileError, load_training_checkpoint, model_file
    from modules.config.loading import config_from_dict
    from modules.core.files import atomic_save
    from modules.families.build import model_from_checkpoint

    try:
        checkpoint = load_training_checkpoint(checkpoint_path)
    except ModelFileError:
        raise ModelFileError(f"{checkpoint_path}: already a model file; export_model.py exports a "
                             f"training checkpoint or its run folder (log/<run>)") from None
    run_json = os.path.join(os.path.dirname(os.path.abspath(checkpoint["path"])), "run.json")
    sessions = []
    if os.path.isfile(run_json):
        with open(run_json, encoding="utf-8") as stream:
            sessions = json.load(stream).get("sessions", [])
    provenance = {"source": os.path.basename(checkpoint["path"]), "seed": checkpoint.get("seed"),
                  "sessions": sessions, "note": note, "training_time": training_time}
    config = config_from_dict(checkpoint["config"], f"{checkpoint['path']}:config")
    model = model_file(checkpoint, config.record.inference_networks, provenance)
    model_from_checkpoint(config, model, checkpoint["path"])          # it loads strictly, or nothing is written
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_save(model, out)
    size = os.path.getsize(out) / 2 ** 20
    print(f"{out}: {config.family} model, step {model['step']}, {size:.2f} MiB (from {checkpoint['path']})")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a training checkpoint of this project or its run folder (its latest)")
    parser.add_argument("--out", required=True, help="the model file to write (.pth.tar)")
    parser.add_argument("--note", default="", help="free text kept in the file's provenance")
    parser.add_argument("--training_time", default="", help="wall-clock training time, kept in the provenance")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)

    def command() -> None:
        export(args.checkpoint, args.out, args.note, args.training_time, overwrite=args.overwrite)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
