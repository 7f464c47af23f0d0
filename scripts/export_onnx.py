"""Export a model file's or checkpoint's inference parts as ONNX graphs (and OpenVINO IR), with a parity check.

    python scripts/export_onnx.py models/tiny-heatmap.pth.tar --out exported/ [--size 256 256] [--openvino] \\
        [--overwrite]

Writes ``<part>.onnx`` and ``<part>.json`` (its inputs, outputs and the model file's sha256) for each part the
model's family exports (keypoint mask: ``mask.detector`` and ``generator``; FOMM: ``kp_detector`` and
``generator``; perturbed masks: ``mask_generator``, ``refinement`` and ``generator``), after the exact
inference rewrites (BatchNorm folded, sub-pixel up blocks), with a dynamic batch, at ONNX opset 17. With
``--openvino`` also ``<part>.xml``/``.bin``. Each graph is run once by ONNX Runtime on random inputs and its
largest difference from PyTorch fp32 printed (an error above 1e-4). Between the parts (masks from heatmaps,
circles, relative motion, FOMM's Keypoints) the glue is PyTorch: ``run.py --engine onnxruntime|openvino`` runs
these same graphs (exported into its cache on first use), so this script is for serving them elsewhere.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError

TOLERANCE = 1e-4


def _parity(graph: str, part, spec, size: tuple[int, int], meta: dict) -> float:
    """Largest |ONNX Runtime - PyTorch| over the part's outputs on its random example inputs."""
    import torch

    from modules.inference.engines import OnnxRuntimePart

    arguments = spec.example(part, size)
    with torch.inference_mode():
        expected = part(*arguments)
        got = OnnxRuntimePart(graph, meta, spec)(*arguments)
    if isinstance(expected, torch.Tensor):
        return (expected - got).abs().max().item()
    return max((getattr(expected, name) - getattr(got, name)).abs().max().item() for name in meta["tensors"])


def export_graphs(checkpoint_path: str, out: str, size: tuple[int, int] | None = None, openvino: bool = False,
                  overwrite: bool = False) -> dict[str, float]:
    """Write the graphs of ``checkpoint_path`` under ``out``; returns each part's parity error."""
    import torch

    from modules.inference.engines import import_engine
    from modules.inference.export import exported_graph, file_digest, submodule
    from modules.inference.loading import load_model

    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: is a file; expected a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise UserError(f"--out {out}: folder is not empty; give --overwrite to replace its graphs")
    config, model, checkpoint = load_model(checkpoint_path, torch.device("cpu"))
    parts = config.record.export_parts(config.model_params)
    if not parts:
        raise UserError(f"{checkpoint_path}: the {config.family} family exports no parts")
    size = tuple(size or config.dataset_params.size)
    digest = file_digest(checkpoint["path"])
    errors = {}
    for spec in parts:
        graph, meta = exported_graph(model, spec, size, out, digest, fresh=True)
        errors[spec.path] = _parity(graph, submodule(model, spec.path), spec, size, meta)
        line = f"{graph}: {', '.join(meta['inputs'])} -> {', '.join(meta['tensors'])}; " \
               f"max |onnxruntime - torch| {errors[spec.path]:.1e}"
        if openvino:
            package = import_engine("openvino")
            package.save_model(package.convert_model(graph), graph.removesuffix(".onnx") + ".xml")
            line += f"; OpenVINO IR {graph.removesuffix('.onnx')}.xml"
        print(line)
        if errors[spec.path] > TOLERANCE:
            raise UserError(f"{graph}: differs from PyTorch by {errors[spec.path]:.1e} (more than {TOLERANCE:g})")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a model file, training checkpoint or run folder")
    parser.add_argument("--out", required=True, help="the folder to write the graphs to")
    parser.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                        help="frame size the graphs are traced at (default: the model's; the batch stays dynamic)")
    parser.add_argument("--openvino", action="store_true", help="also write OpenVINO IR (needs openvino)")
    parser.add_argument("--overwrite", action="store_true", help="replace the graphs in a non-empty --out")
    args = parser.parse_args(argv)
    def command() -> None:
        export_graphs(args.checkpoint, args.out, args.size, args.openvino, args.overwrite)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
