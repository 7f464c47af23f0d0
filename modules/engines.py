"""Inference engines for animation and reconstruction: the same model, run by PyTorch or by an exported graph.

``--engine torch`` is the eager fp32 path every speed-up is measured against. ``--engine onnxruntime``
exports the family's heavy parts (its record's ``export_parts``: for the keypoint-mask family the detector
and the two generators) to ONNX once, caches the graphs, and runs them in ONNX Runtime; everything between
the parts (relative motion, drawing the circles, batching, video I/O) stays in PyTorch, so every mode,
motion and flag works alike. ``--engine auto`` (the default) times each installed engine on this CPU with
the model's own frame size at first use, keeps the faster one, and caches the choice keyed by the model
file's hash, the frame size, the package versions and the CPU.

The cache (exported graphs, choices) is ``$KPMASK_CACHE`` or ``~/.cache/kpmask``; ``KPMASK_ENGINE`` sets the
default engine (the tests use ``torch``).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from modules.errors import UserError
from modules.outputs import atomic_file

ENGINES = ("auto", "torch", "onnxruntime")
OPSET = 17                                  # 4-D grid_sample (FOMM) needs 16 or later


@dataclass(frozen=True)
class ExportPart:
    """One submodule of a family's inference model that an engine may run instead of PyTorch."""
    path: str                                               # attribute path in the model, e.g. "mask.detector"
    input_names: tuple[str, ...]
    example: Callable[[nn.Module, tuple[int, int]], tuple]  # (the part, frame size) -> inputs of batch 2


def default_engine() -> str:
    return os.environ.get("KPMASK_ENGINE", "auto")


def cache_dir() -> str:
    return os.environ.get("KPMASK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kpmask")


def _submodule(model: nn.Module, path: str) -> nn.Module:
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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--engine onnxruntime: onnxruntime is not installed (pip install onnxruntime==1.31.1 "
                        "onnx==1.22.0, or use --engine torch)") from None
    return onnxruntime


# ----------------------------------------------------------------------------------------------------------
# Export

class _Flat(nn.Module):
    """A part whose NamedTuple output is flattened to its tensor fields (ONNX has no None and no names)."""

    def __init__(self, part: nn.Module, fields: Sequence[str]):
        super().__init__()
        self.part, self.fields = part, tuple(fields)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.part(*inputs)
        return tuple(getattr(out, name) for name in self.fields)


def export_part(part: nn.Module, inputs: tuple, input_names: Sequence[str], path: str) -> dict[str, Any]:
    """Write ``part`` as an ONNX graph with a dynamic batch to ``path`` (atomically); returns its metadata:
    the output type's fields, which of them are tensors (the others were None), and the input names."""
    import warnings

    part.eval()
    with torch.no_grad():
        sample = part(*inputs)
    fields = [name for name in sample._fields if isinstance(getattr(sample, name), torch.Tensor)]
    axes = {name: {0: "batch"} for name in (*input_names, *fields)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_file(path) as partial, warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(_Flat(part, fields), inputs, partial, dynamo=False, opset_version=OPSET,
                              input_names=list(input_names), output_names=fields, dynamic_axes=axes)
        except ImportError:
            raise UserError("exporting needs the onnx package (pip install onnx==1.22.0)") from None
        except Exception as error:                            # an operator ONNX lacks, a shape it cannot trace
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"cannot export {type(part).__name__} to ONNX: {first[:200]}") from None
    return {"type": type(sample).__module__ + "." + type(sample).__qualname__, "fields": list(sample._fields),
            "tensors": fields, "inputs": list(input_names)}


class OnnxRuntimePart:
    """Runs an exported part in ONNX Runtime and rebuilds the part's NamedTuple output (None where the
    PyTorch part gave None). Installed as the part's ``forward``: the module keeps its other attributes."""

    def __init__(self, path: str, meta: dict[str, Any], output_type: type, threads: Optional[int] = None):
        onnxruntime = _import_onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.meta, self.output_type = meta, output_type

    def __call__(self, *inputs: torch.Tensor):
        device = inputs[0].device
        # by position: the exporter renames an input whose name a graph node already uses
        feed = {node.name: tensor.detach().float().cpu().contiguous().numpy()
                for node, tensor in zip(self.session.get_inputs(), inputs)}
        outputs = dict(zip(self.meta["tensors"], self.session.run(self.meta["tensors"], feed)))
        return self.output_type(**{name: torch.from_numpy(outputs[name]).to(device) if name in outputs else None
                                   for name in self.meta["fields"]})


def use_onnxruntime(model: nn.Module, parts: Sequence[ExportPart], size: tuple[int, int], key: str) -> None:
    """Export each part once (cached under ``key``, the model file's hash and the frame size) and run it in
    ONNX Runtime from now on."""
    _import_onnxruntime()
    folder = os.path.join(cache_dir(), "onnx", key)
    for spec in parts:
        part = _submodule(model, spec.path)
        graph, meta_path = os.path.join(folder, spec.path + ".onnx"), os.path.join(folder, spec.path + ".json")
        if not (os.path.isfile(graph) and os.path.isfile(meta_path)):
            meta = export_part(part, spec.example(part, size), spec.input_names, graph)
            with atomic_file(meta_path) as partial:
                with open(partial, "w", encoding="utf-8") as stream:
                    json.dump(meta, stream)
        with open(meta_path, encoding="utf-8") as stream:
            meta = json.load(stream)
        try:
            runner = OnnxRuntimePart(graph, meta, _named_type(meta["type"]))
        except UserError:
            raise
        except Exception:                    # a damaged or foreign cached graph: export it again, once
            os.remove(graph)
            meta = export_part(part, spec.example(part, size), spec.input_names, graph)
            runner = OnnxRuntimePart(graph, meta, _named_type(meta["type"]))
        part.forward = runner


def _named_type(name: str) -> type:
    """The NamedTuple class ``module.qualname`` a part returns."""
    import importlib

    module, _, qualname = name.rpartition(".")
    found = importlib.import_module(module)
    for attribute in qualname.split("."):
        found = getattr(found, attribute)
    return found


# ----------------------------------------------------------------------------------------------------------
# Choosing

def _time_animation(model: nn.Module, size: tuple[int, int], batch: int, repeats: int = 3) -> float:
    """Median seconds per frame of ``model.animate`` on random frames (after one warm-up batch)."""
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, *size, generator=generator)
    driving = torch.rand(batch, 3, *size, generator=generator)
    times = []
    with torch.inference_mode():
        state = model.encode_source(source)
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            model.animate(state, driving)
            if attempt:
                times.append((time.perf_counter() - started) / batch)
    return sorted(times)[len(times) // 2]


def _versions() -> str:
    import importlib.metadata

    found = []
    for name in ("torch", "onnxruntime"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def choose_engine(load: Callable[[], nn.Module], parts: Sequence[ExportPart], size: tuple[int, int],
                  model_path: str, engine: str, device: torch.device, precision: Optional[str],
                  batch: int = 4) -> tuple[nn.Module, str, str]:
    """(the model, the engine it runs on, one line saying why). ``load()`` gives a fresh model (the timed
    copies must not share a patched part); the engines other than torch need a family that exports and the
    CPU in fp32 (autocast belongs to PyTorch)."""
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    model = load()
    other_reason = None
    if not parts:
        other_reason = "this model family exports no parts"
    elif device.type != "cpu":
        other_reason = f"the exported engines run on the CPU; this run uses {device}"
    elif precision not in (None, "no"):
        other_reason = f"--mixed_precision {precision} is PyTorch's autocast"
    if engine == "torch":
        return model, "torch", "engine: torch (eager)"
    if other_reason:
        if engine != "auto":
            raise UserError(f"--engine {engine}: {other_reason}; use --engine torch")
        return model, "torch", f"engine: torch ({other_reason})"
    key = f"{file_digest(model_path)[:24]}-{size[0]}x{size[1]}"
    if engine == "onnxruntime":
        use_onnxruntime(model, parts, size, key)
        return model, "onnxruntime", "engine: onnxruntime (as asked)"
    choice_file = os.path.join(cache_dir(), "engine-choices.json")
    choice_key = f"{key} | {_versions()} | {_cpu_name()} | {torch.get_num_threads()} threads"
    choices = {}
    if os.path.isfile(choice_file):
        try:
            with open(choice_file, encoding="utf-8") as stream:
                choices = json.load(stream)
        except (OSError, ValueError):
            choices = {}                      # a damaged cache is measured again
    candidate = None                          # the timed onnxruntime copy, kept if it wins
    if choice_key not in choices:
        try:
            _import_onnxruntime()
        except UserError:
            return model, "torch", "engine: torch (onnxruntime is not installed)"
        timed = {"torch": _time_animation(model, size, batch)}
        candidate = load()
        use_onnxruntime(candidate, parts, size, key)
        timed["onnxruntime"] = _time_animation(candidate, size, batch)
        choices[choice_key] = {"times": timed, "engine": min(timed, key=timed.get)}
        os.makedirs(cache_dir(), exist_ok=True)
        with atomic_file(choice_file) as partial:
            with open(partial, "w", encoding="utf-8") as stream:
                json.dump(choices, stream, indent=1)
    chosen = choices[choice_key]
    times = ", ".join(f"{name} {seconds * 1000:.1f} ms/frame" for name, seconds in chosen["times"].items())
    if chosen["engine"] == "onnxruntime":
        if candidate is not None:             # measured just now: keep the timed copy
            model = candidate
        else:                                 # chosen earlier: this run's model gets the cached graphs
            use_onnxruntime(model, parts, size, key)
    return model, chosen["engine"], f"engine: {chosen['engine']} (auto, measured on this CPU: {times})"


def load_for_inference(path: str, device: torch.device, *, config_path: Optional[str] = None,
                       ablation: Optional[str] = None, engine: Optional[str] = None,
                       precision: Optional[str] = None) -> tuple[Any, nn.Module, dict, str]:
    """``modules.checkpoint.load_model`` on the engine asked for (None: ``default_engine()``): (config, model,
    checkpoint, the line that says which engine runs and why)."""
    from modules.checkpoint import load_model

    config, model, checkpoint = load_model(path, device, config_path, ablation)
    first = [model]

    def load() -> nn.Module:
        return first.pop() if first else load_model(path, device, config_path, ablation)[1]

    parts = config.record.export_parts(config.model_params)
    model, _, line = choose_engine(load, parts, config.dataset_params.size, checkpoint["path"],
                                   engine or default_engine(), device, precision)
    return config, model, checkpoint, line
