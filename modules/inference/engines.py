"""Inference engines for animation and reconstruction: the same model, run by PyTorch or by an exported graph.

- ``torch``: today's eager path, the reference every speed-up is measured against.
- ``torch-opt``: PyTorch with the exact rewrites of modules/inference/optimize.py (BatchNorm folded, sub-pixel up
  blocks: 4/9 of the up blocks' multiplications). ``torch.compile`` is not used: measured on the taichi-256
  networks (2-core AVX2 CPU, inductor with freezing) it took 68 s to compile for a further 7% per frame,
  which pays only after some 15 minutes of video.
- ``onnxruntime`` and ``openvino``: the family's heavy parts (its record's ``export_parts``: for the
  keypoint-mask family the detector and the two generators) exported to ONNX once per model file and frame
  size (modules/inference/export.py), run by ONNX Runtime or OpenVINO; everything between the parts (relative motion,
  drawing circles, batching, video I/O) stays in PyTorch, so every mode, motion and flag works alike.
  ``--mixed_precision int8`` runs the parts quantised (calibrated on the run's own first frames).
- ``auto`` (the default) is modules/inference/choice.py's: the engines and precisions race on a run's first
  frames and the fastest is cached.

The cache is ``$KPMASK_CACHE`` or ``~/.cache/kpmask``; ``KPMASK_ENGINE`` sets the default engine (the tests
use ``torch``).
"""
from __future__ import annotations

import os
import platform
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from modules.config.family import ExportPart
from modules.core.errors import UserError
from modules.inference.export import (cache_dir, exported_graph, graph_stamp, named_type, quantize_graph,
                                      samples_digest, stamp_of, submodule)
from modules.inference.optimize import rewrite_blocks

ENGINES = ("auto", "torch", "torch-opt", "onnxruntime", "openvino")
EXPORTED = ("onnxruntime", "openvino")
PINS = {"onnxruntime": "onnxruntime==1.31.1 onnx==1.22.0", "openvino": "openvino==2026.4.1"}
Calibration = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]   # config -> (source, driving) frames


def default_engine() -> str:
    return os.environ.get("KPMASK_ENGINE", "auto")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def engine_versions() -> str:
    import importlib.metadata

    found = []
    for name in ("torch", "onnxruntime", "openvino"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def import_engine(engine: str):
    """The package that runs an exported engine, or a one-line error saying how to install it."""
    try:
        if engine == "onnxruntime":
            import onnxruntime as package
        else:
            import openvino as package
    except ImportError:
        raise UserError(f"--engine {engine}: {engine} is not installed (pip install {PINS[engine]}, or use "
                        f"--engine torch)") from None
    return package


def installed(engine: str) -> bool:
    try:
        import_engine(engine)
    except UserError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------
# Runners: an exported part installed as the part's ``forward`` (the module keeps its other attributes)

class ExportedPart:
    """Runs an exported graph and rebuilds the part's NamedTuple output (None where PyTorch gave None).
    ``bf16``: the engine computes in bf16 inside (OpenVINO's precision hint, where the CPU has it natively)."""

    def __init__(self, path: str, meta: dict[str, Any], spec: ExportPart, bf16: bool = False):
        self.meta, self.output_type, self.spec, self.bf16 = meta, named_type(meta["type"]), spec, bf16
        self.threads = torch.get_num_threads()

    def run(self, arrays: list) -> list:
        raise NotImplementedError

    def __call__(self, *args):
        inputs = self.spec.inputs(*args)
        device = inputs[0].device
        arrays = self.run([tensor.detach().float().cpu().contiguous().numpy() for tensor in inputs])
        outputs = {name: torch.from_numpy(array).to(device) for name, array in zip(self.meta["tensors"], arrays)}
        if self.output_type is None:                           # a part that returns one tensor
            return outputs["output"]
        return self.output_type(**{name: outputs.get(name) for name in self.meta["fields"]})


class OnnxRuntimePart(ExportedPart):
    def __init__(self, path: str, meta: dict[str, Any], spec: ExportPart, bf16: bool = False):
        super().__init__(path, meta, spec, bf16)
        onnxruntime = import_engine("onnxruntime")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        # by position: the exporter renames an input whose name a graph node already uses
        self.inputs = [node.name for node in self.session.get_inputs()]

    def run(self, arrays: list) -> list:
        return self.session.run(self.meta["tensors"], dict(zip(self.inputs, arrays)))


class OpenVinoPart(ExportedPart):
    """One compiled model per batch size: OpenVINO picks faster kernels for a static shape than for the
    graph's dynamic batch (taichi-256 generator, batch 4, this project's AVX2 CI CPU: 8% less time per
    frame, measured in turns), and compiling takes about 1.5 s, paid for each batch size a run meets
    (the full batch and the last, shorter one)."""

    def __init__(self, path: str, meta: dict[str, Any], spec: ExportPart, bf16: bool = False):
        super().__init__(path, meta, spec, bf16)
        self.core = import_engine("openvino").Core()
        self.model = self.core.read_model(path)
        self.compiled: dict[int, Any] = {}

    def _request(self, batch: int):
        if batch not in self.compiled:
            model = self.model.clone()
            model.reshape({port.get_any_name(): [batch] + list(port.get_partial_shape()[1:].to_shape())
                           for port in model.inputs})
            compiled = self.core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": "bf16" if self.bf16 else "f32", "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads})
            self.compiled[batch] = (compiled, compiled.create_infer_request())
        return self.compiled[batch]

    def run(self, arrays: list) -> list:
        compiled, request = self._request(arrays[0].shape[0])
        results = request.infer(arrays)
        return [results[port].copy() for port in compiled.outputs]     # the request reuses its buffers


RUNNERS = {"onnxruntime": OnnxRuntimePart, "openvino": OpenVinoPart}


class Int8Calibration:
    """int8's calibration set, named by ``digest``; ``samples(model)`` (the inputs per part to quantise, found by
    running ``model`` in fp32 up to those parts) is computed only when a quantised graph is not cached yet.
    ``reference`` collects, per part quantised in this process, the fp32 graph's outputs on the samples
    (calibrating computes them): what the int8 graph's PSNR is measured against."""

    def __init__(self, digest: str, samples: Callable[[nn.Module], dict]):
        self.digest, self._samples, self._cached = digest, samples, None
        self.reference: dict[str, dict[str, Any]] = {}

    def samples(self, model: nn.Module) -> dict:
        if self._cached is None:
            self._cached = self._samples(model)
        return self._cached

    @staticmethod
    def of(samples: dict) -> "Int8Calibration":
        return Int8Calibration(samples_digest(samples), lambda model: samples)


def graph_folder(model_sha256: str, size: tuple[int, int]) -> str:
    return os.path.join(cache_dir(), "onnx", f"{model_sha256[:24]}-{size[0]}x{size[1]}")


def use_exported(model: nn.Module, parts: Sequence[ExportPart], size: tuple[int, int], model_sha256: str,
                 engine: str, int8: Optional[Int8Calibration] = None, bf16: bool = False) -> None:
    """Export each part once (cached by the model file's hash and the frame size), quantise it to int8 with
    ``int8``'s calibration (once per calibration set), and run it on ``engine`` from now on."""
    import_engine(engine)
    folder = graph_folder(model_sha256, size)
    stamp = stamp_of(model_sha256, size)
    for spec in parts:
        graph, meta = exported_graph(model, spec, size, folder, model_sha256)
        quantized_path = os.path.join(folder, f"{spec.path}.int8-{int8.digest}.onnx") if int8 else ""
        quantized = int8 is not None and spec.quantize and _quantized(model, graph, spec, int8, quantized_path, stamp)
        try:
            runner = RUNNERS[engine](quantized_path if quantized else graph, meta, spec, bf16)
        except UserError:
            raise
        except Exception:                    # a damaged or foreign cached graph: made again, once
            os.remove(quantized_path if quantized else graph)
            graph, meta = exported_graph(model, spec, size, folder, model_sha256, fresh=not quantized)
            if quantized:
                int8.reference[spec.path] = quantize_graph(graph, int8.samples(model)[spec.path], quantized_path, stamp)
            runner = RUNNERS[engine](quantized_path if quantized else graph, meta, spec, bf16)
        submodule(model, spec.path).forward = runner


def _quantized(model: nn.Module, graph: str, spec: ExportPart, int8: Int8Calibration, path: str, stamp: str) -> bool:
    """Whether ``spec``'s part runs int8 from ``path``: quantised now unless cached there. A part the
    calibration frames never reached (an ablation that skips it) has nothing to calibrate on and stays fp32."""
    if os.path.isfile(path) and graph_stamp(path) == stamp:
        return True
    samples = int8.samples(model)[spec.path]
    if not samples:
        return False
    int8.reference[spec.path] = quantize_graph(graph, samples, path, stamp)
    return True


def prepare(model: nn.Module, engine: str, parts: Sequence[ExportPart], size: tuple[int, int], model_sha256: str,
            int8: Optional[Int8Calibration] = None, precision: Optional[str] = None) -> nn.Module:
    """Put ``model`` on ``engine`` (in place) and return it. ``precision`` bf16 on an exported engine: its
    bf16 hint (PyTorch's engines take bf16 as autocast around their calls instead)."""
    if engine == "torch-opt":
        rewrite_blocks(model)
    elif engine in EXPORTED:
        use_exported(model, parts, size, model_sha256, engine, int8, bf16=precision == "bf16")
    return model
