"""Exporting a family's heavy parts to ONNX graphs, cached, and quantising them to int8.

A family names the parts an exported engine may run (its record's ``export_parts``). Each part is exported
after the exact inference rewrites of modules/inference/optimize.py (BatchNorm folded, sub-pixel up blocks), with a
dynamic batch, by torch's TorchScript exporter at opset 17 (4-D grid_sample, which FOMM needs, is in 16+).
Graphs live under ``$KPMASK_CACHE`` (default ``~/.cache/kpmask``) in a folder named by the model file's hash
and the frame size, so a model file exports once per size; a damaged graph is exported again.

``scripts/export_onnx.py`` writes the same graphs to a folder of the user's choosing.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from modules.config.family import ExportPart
from modules.core.errors import UserError
from modules.core.outputs import atomic_file, write_json
from modules.inference.optimize import optimize_for_inference

OPSET = 17


_WRITABLE: dict[str, str] = {}              # the cache folder asked for -> the one this process uses


def cache_dir() -> str:
    """``$KPMASK_CACHE`` or ``~/.cache/kpmask``. Where it cannot be written (a read-only folder, a full disk), a
    temporary folder for this process instead, with one warning: the run works, and only the next one pays for
    exporting and choosing again."""
    wanted = os.environ.get("KPMASK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kpmask")
    if wanted not in _WRITABLE:
        try:
            os.makedirs(wanted, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=wanted):
                pass
            _WRITABLE[wanted] = wanted
        except OSError as error:
            folder = tempfile.mkdtemp(prefix="kpmask-cache-")
            atexit.register(shutil.rmtree, folder, True)
            warnings.warn(f"{wanted}: the engine cache cannot be written ({error.strerror or error}); this run "
                          f"works in a temporary folder instead (set KPMASK_CACHE to a writable folder to keep "
                          f"exported graphs and engine choices)", UserWarning)
            _WRITABLE[wanted] = folder
    return _WRITABLE[wanted]


def submodule(model: nn.Module, path: str) -> nn.Module:
    module = model
    for name in path.split("."):
        module = getattr(module, name)
    return module


def file_digest(path: str) -> str:
    """sha256 of a model file (or of a run folder's latest checkpoint, which load_model resolved)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


TENSOR = "tensor"                          # the metadata's type of a part that returns one tensor


class _Flat(nn.Module):
    """A part called with its graph's input tensors, its NamedTuple output flattened to its tensor fields
    (ONNX has no None and no names)."""

    def __init__(self, part: nn.Module, fields: Sequence[str], unpack: Optional[Callable[..., tuple]]):
        super().__init__()
        self.part, self.fields, self.unpack = part, tuple(fields), unpack

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.part(*(self.unpack(*inputs) if self.unpack else inputs))
        return (out,) if isinstance(out, torch.Tensor) else tuple(getattr(out, name) for name in self.fields)


def _inverse_2x2(g, matrix):
    """ONNX has no matrix inverse; FOMM's dense motion inverts the driving keypoints' 2x2 Jacobians (FOMM
    sec. 3, eq. 4). In the graph: the closed form [[d, -b], [-c, a]] / (ad - bc). PyTorch's own path keeps
    torch.inverse; the two agree to float rounding."""
    def constant(values):
        return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    def entry(row: int, column: int):                                      # (..., 1, 1)
        return g.op("Slice", matrix, constant([row, column]), constant([row + 1, column + 1]), constant([-2, -1]))

    a, b, c, d = entry(0, 0), entry(0, 1), entry(1, 0), entry(1, 1)
    determinant = g.op("Sub", g.op("Mul", a, d), g.op("Mul", b, c))
    top = g.op("Concat", d, g.op("Neg", b), axis_i=-1)
    bottom = g.op("Concat", g.op("Neg", c), a, axis_i=-1)
    return g.op("Div", g.op("Concat", top, bottom, axis_i=-2), determinant)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def export_part(part: nn.Module, spec: ExportPart, size: tuple[int, int], path: str) -> dict[str, Any]:
    """Write ``part`` (rewritten for inference; ``part`` itself is untouched) as an ONNX graph with a dynamic
    batch to ``path`` (atomically); returns its metadata: the output type (a NamedTuple, or one tensor) and its
    fields, which of them are tensors (the others were None), and the input names."""
    was_training = part.training
    rewritten = optimize_for_inference(part.eval())
    part.train(was_training)
    arguments = spec.example(part, size)
    inputs, input_names = spec.inputs(*arguments), spec.input_names
    with torch.no_grad():
        sample = rewritten(*arguments)
    if isinstance(sample, torch.Tensor):
        kind, all_fields, fields = TENSOR, ["output"], ["output"]
    else:
        kind = type(sample).__module__ + "." + type(sample).__qualname__
        all_fields = list(sample._fields)
        fields = [name for name in all_fields if isinstance(getattr(sample, name), torch.Tensor)]
    axes = {name: {0: "batch"} for name in (*input_names, *fields)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path) as partial, warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.register_custom_op_symbolic("aten::linalg_inv", _inverse_2x2, OPSET)
            torch.onnx.export(_Flat(rewritten, fields, spec.unpack).eval(), inputs, partial, dynamo=False, opset_version=OPSET,
                              input_names=list(input_names), output_names=fields, dynamic_axes=axes)
        except ImportError:
            raise UserError("exporting needs the onnx package (pip install onnx==1.22.0)") from None
        except Exception as error:                            # an operator ONNX lacks, a shape it cannot trace
            raise UserError(f"cannot export {type(part).__name__} to ONNX: {_first_line(error)}") from None
    return {"type": kind, "fields": all_fields, "tensors": fields, "inputs": list(input_names)}


STAMP = "kpmask.model"                     # the graph's own metadata: the model file's sha256 and the frame size


def stamp_of(model_sha256: str, size: tuple[int, int]) -> str:
    return f"{model_sha256} {size[0]}x{size[1]}"


STAMP_HEAD = 1 << 16                        # bytes of a graph file read to find its stamp
STAMP_PATTERN = re.compile(rb"kpmask\.model ([0-9a-f]{64} [0-9]+x[0-9]+)")


def stamp_graph(path: str, stamp: str) -> None:
    """Write ``stamp`` into the graph's own ``doc_string`` (atomically): the graph itself then proves which
    model file and frame size it was made from, whatever the JSON beside it says. Protobuf writes fields in
    their number order and the model's doc_string (field 6) comes before its graph (field 7), so the stamp
    sits in the file's first bytes and is read back without parsing the weights (a 256-px generator is 238 MiB:
    0.8 s to parse on every start)."""
    import onnx

    graph = onnx.load(path, load_external_data=False)
    graph.doc_string = f"{STAMP} {stamp}"
    with atomic_file(path) as partial:
        onnx.save(graph, partial)


def graph_stamp(path: str) -> Optional[str]:
    """The stamp at the head of a cached graph (None: none, or not a readable file)."""
    try:
        with open(path, "rb") as stream:
            found = STAMP_PATTERN.search(stream.read(STAMP_HEAD))
    except OSError:                          # unreadable: the callers export it again
        return None
    return None if found is None else found.group(1).decode()


def exported_graph(model: nn.Module, spec: ExportPart, size: tuple[int, int], folder: str, model_sha256: str,
                   fresh: bool = False) -> tuple[str, dict[str, Any]]:
    """(graph path, metadata) of ``spec``'s part of ``model`` (whose file has hash ``model_sha256``) under
    ``folder``: exported unless already there (``fresh``: exported again, for a graph that would not open).
    A graph exported from another model file is refused: its metadata names the file's hash."""
    graph, meta_path = os.path.join(folder, spec.path + ".onnx"), os.path.join(folder, spec.path + ".json")
    exported_now = fresh or not (os.path.isfile(graph) and os.path.isfile(meta_path))
    if exported_now:
        meta = export_part(submodule(model, spec.path), spec, size, graph)
        stamp_graph(graph, stamp_of(model_sha256, size))
        write_json(meta_path, meta | {"model_sha256": model_sha256, "size": list(size)})
    try:
        with open(meta_path, encoding="utf-8") as stream:
            meta = json.load(stream)
    except ValueError:
        raise UserError(f"{meta_path}: damaged (not JSON); remove {folder} to export again") from None
    if meta.get("model_sha256") != model_sha256 or meta.get("size") != list(size):
        raise UserError(f"{graph}: exported from another model file or frame size (sha256 "
                        f"{str(meta.get('model_sha256'))[:12]}..., size {meta.get('size')}), not this one "
                        f"({model_sha256[:12]}..., {list(size)}); remove {folder} to export again")
    try:
        named_type(meta.get("type", TENSOR))
    except LookupError:                     # written by an older layout of the code: its output type moved
        if fresh:
            raise
        return exported_graph(model, spec, size, folder, model_sha256, fresh=True)
    if not exported_now and graph_stamp(graph) != stamp_of(model_sha256, size):
        # the JSON beside it says this model, the graph itself does not (another model's graph put in its place,
        # or one exported before graphs carried a stamp): never run it, export it again
        warnings.warn(f"{graph}: not stamped with this model file's hash (another model's graph, or damaged); "
                      f"exported again", UserWarning)
        return exported_graph(model, spec, size, folder, model_sha256, fresh=True)
    return graph, meta


def named_type(name: str) -> Optional[type]:
    """The NamedTuple class ``module.qualname`` a part returns (None for one tensor). It is looked up among the
    modules already imported (the model's own, imported when it was built), never imported by name; a name that
    is not there (a graph exported by an older layout of the code) raises LookupError."""
    if name == TENSOR:
        return None
    module, _, qualname = name.rpartition(".")
    found = sys.modules.get(module)
    for attribute in qualname.split("."):
        found = getattr(found, attribute, None)
    if not isinstance(found, type):
        raise LookupError(f"output type {name} is not among the loaded modules")
    return found


# ----------------------------------------------------------------------------------------------------------
# int8

def capture_inputs(model: nn.Module, parts: Sequence[ExportPart], source: torch.Tensor,
                   driving: torch.Tensor) -> tuple[dict[str, list[tuple[torch.Tensor, ...]]], torch.Tensor]:
    """The inputs each part receives while ``model`` animates ``source`` (1, 3, H, W) by ``driving``
    (n, 3, H, W) in fp32 (absolute motion), one tuple of batch 1 per call and frame; and the predictions
    (n, 3, H, W)."""
    seen: dict[str, list[tuple[torch.Tensor, ...]]] = {spec.path: [] for spec in parts}
    hooks = []
    for spec in parts:
        def record(module, args, spec=spec):
            tensors = spec.inputs(*args)
            for index in range(tensors[0].shape[0]):
                seen[spec.path].append(tuple(t[index:index + 1].detach().float().contiguous() for t in tensors))
        hooks.append(submodule(model, spec.path).register_forward_pre_hook(record))
    try:
        with torch.inference_mode():
            state = model.encode_source(source)
            predictions = [model.animate(state, frame).prediction for frame in driving.split(1)]
    finally:
        for hook in hooks:
            hook.remove()
    return seen, torch.cat(predictions)


def samples_digest(samples: dict[str, list[tuple[torch.Tensor, ...]]]) -> str:
    digest = hashlib.sha256()
    for path in sorted(samples):
        for sample in samples[path]:
            for tensor in sample:
                digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def quantize_graph(graph: str, samples: Sequence[tuple[torch.Tensor, ...]],
                   path: str, stamp: Optional[str] = None) -> str:
    """Post-training static int8 quantisation of ``graph`` into ``path``, calibrated on ``samples``: QDQ
    format, per-channel int8 weights, uint8 activations with a 7-bit range (on CPUs without VNNI, the AVX2
    u8 x s8 multiply saturates at full range), min-max calibration. (The caller caches: engines.use_exported
    quantises once per calibration set.)"""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise UserError("--mixed_precision int8 quantises with onnxruntime and onnx (pip install "
                        "onnxruntime==1.31.1 onnx==1.22.0)") from None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(samples)

        def get_next(self) -> Optional[dict]:
            item = next(self.items, None)
            return None if item is None else {name: t.numpy() for name, t in zip(names, item)}

    import onnx

    # by position: the exporter renames an input whose name a graph node already uses
    names = [node.name for node in onnx.load(graph, load_external_data=False).graph.input]

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path) as partial, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = partial + ".prepared.onnx"
        # the quantiser logs a root-logger warning for every rank-1 weight it leaves per-tensor (BatchNorm)
        logging.disable(logging.WARNING)
        try:
            quant_pre_process(graph, prepared, skip_symbolic_shape=True)
            quantize_static(prepared, partial, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
            if os.path.exists(prepared):
                os.remove(prepared)
    if stamp is not None:
        stamp_graph(path, stamp)
    return path
