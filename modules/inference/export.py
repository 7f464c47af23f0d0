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
import os
import re
import shutil
import sys
import tempfile
import warnings
from typing import Any, Callable, Optional

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
    (ONNX has no None and no names). The one forward the exporter traces also learns the output's structure:
    ``kind`` and ``all_fields``, and the tensor fields are appended to ``names`` and given a dynamic batch in
    ``axes`` (the exporter reads both after tracing), so the part is not run a second time just to learn them
    (a 256-px generator: about 2 s of a 12 s export)."""

    def __init__(self, part: nn.Module, unpack: Optional[Callable[..., tuple]], names: list[str],
                 axes: dict[str, dict[int, str]]):
        super().__init__()
        self.part, self.unpack, self.names, self.axes = part, unpack, names, axes
        self.kind: Optional[str] = None
        self.all_fields: list[str] = []

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.part(*(self.unpack(*inputs) if self.unpack else inputs))
        if isinstance(out, torch.Tensor):
            kind, all_fields, fields = TENSOR, ["output"], ["output"]
        else:
            kind, all_fields = type(out).__module__ + "." + type(out).__qualname__, list(out._fields)
            fields = [name for name in all_fields if isinstance(getattr(out, name), torch.Tensor)]
        if self.kind is None:
            self.kind, self.all_fields = kind, all_fields
            self.names.extend(fields)
            self.axes.update({name: {0: "batch"} for name in fields})
        return tuple(out if name == "output" else getattr(out, name) for name in self.names)


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
    fields: list[str] = []                                   # filled by the traced forward
    axes = {name: {0: "batch"} for name in input_names}
    flat = _Flat(rewritten, spec.unpack, fields, axes).eval()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path) as partial, warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.register_custom_op_symbolic("aten::linalg_inv", _inverse_2x2, OPSET)
            torch.onnx.export(flat, inputs, partial, dynamo=False, opset_version=OPSET,
                              input_names=list(input_names), output_names=fields, dynamic_axes=axes)
        except ImportError:
            raise UserError("exporting needs the onnx package (pip install onnx==1.22.0)") from None
        except Exception as error:                            # an operator ONNX lacks, a shape it cannot trace
            raise UserError(f"cannot export {type(part).__name__} to ONNX: {_first_line(error)}") from None
    kind, all_fields = flat.kind, flat.all_fields
    return {"type": kind, "fields": all_fields, "tensors": fields, "inputs": list(input_names)}


STAMP = "kpmask.model"                     # the graph's own metadata: the model file's sha256 and the frame size


def stamp_of(model_sha256: str, size: tuple[int, int]) -> str:
    return f"{model_sha256} {size[0]}x{size[1]}"


STAMP_HEAD = 1 << 16                        # bytes of a graph file read to find its stamp
STAMP_PATTERN = re.compile(rb"kpmask\.model ([0-9a-f]{64} [0-9]+x[0-9]+)")


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint."""
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def stamp_graph(path: str, stamp: str) -> None:
    """Write ``stamp`` into the graph's own ``doc_string`` (atomically): the graph itself then proves which
    model file and frame size it was made from, whatever the JSON beside it says. The field (ModelProto field
    6, a string) is written at the very head of the file, before the bytes the exporter wrote: protobuf parsers
    take a message's fields in any order, so the graph need not be parsed and serialised again (a 256-px
    generator is 250 MB: 1-1.4 s), and ``graph_stamp`` finds the stamp in the first bytes without parsing the
    weights."""
    if graph_stamp(path) == stamp:             # already there (a quantised graph keeps its fp32 graph's stamp)
        return
    text = f"{STAMP} {stamp}".encode()
    with atomic_file(path) as partial:
        with open(path, "rb") as graph, open(partial, "wb") as stamped:
            stamped.write(bytes([6 << 3 | 2]) + _varint(len(text)) + text)
            shutil.copyfileobj(graph, stamped, 1 << 22)


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
