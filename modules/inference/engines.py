"""Inference engines for animation and reconstruction: the same model, run by PyTorch or by an exported graph.

- ``torch``: today's eager path, the reference every speed-up is measured against.
- ``torch-opt``: PyTorch with the exact rewrites of modules/inference/optimize.py (BatchNorm folded, sub-pixel up
  blocks: 4/9 of the up blocks' multiplications). ``torch.compile`` is not used: on the taichi-256 networks
  (2-core AVX2 CPU) it took 68 s to compile for a further 7% per frame.
- ``onnxruntime`` and ``openvino``: the family's heavy parts (its record's ``export_parts``) exported to ONNX
  once per model file and frame size (modules/inference/export.py); everything between the parts (relative
  motion, circles, batching, video I/O) stays in PyTorch, so every mode and flag works alike.
  ``--mixed_precision int8`` runs the parts quantised, calibrated on the run's own first frames (below).
- ``auto`` (the default) is modules/inference/choice.py's race. ``KPMASK_ENGINE`` sets the default engine.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import platform
import shutil
import tempfile
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from modules.config.family import ExportPart
from modules.core.errors import UserError
from modules.core.outputs import atomic_file
from modules.inference.export import (cache_dir, exported_graph, graph_stamp, named_type, stamp_graph, stamp_of,
                                      submodule)
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


# ----------------------------------------------------------------------------------------------------------
# int8: capturing the parts' inputs, calibrating and quantising (ONNX Runtime's quantiser, QDQ graphs)

class _Captured(Exception):
    """Ends a calibration frame's forward pass as soon as every part to quantise has its inputs."""


def capture_inputs(model: nn.Module, parts: Sequence[ExportPart], source: torch.Tensor,
                   driving: torch.Tensor) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    """The inputs each part to quantise receives while ``model`` animates ``source`` (1, 3, H, W) by ``driving``
    (n, 3, H, W) in fp32 (absolute motion): one tuple of batch 1 per frame. Once every such part has its inputs
    for a frame, the frame's forward pass stops there: the generator (97% of the work) is not run here, since
    calibration runs its graph on these inputs anyway (``quantize_graph``)."""
    wanted = [spec for spec in parts if spec.quantize]
    seen: dict[str, list[tuple[torch.Tensor, ...]]] = {spec.path: [] for spec in wanted}
    pending: set[str] = set()

    def stand_in(spec: ExportPart, forward: Callable) -> Callable:
        def call(*args, **kwargs):
            if spec.path not in pending:                   # encoding the source, or already captured
                return forward(*args, **kwargs)
            tensors = spec.inputs(*args)
            seen[spec.path].extend(tuple(t[i:i + 1].detach().float().contiguous() for t in tensors)
                                   for i in range(tensors[0].shape[0]))
            pending.discard(spec.path)
            if not pending:
                raise _Captured
            return forward(*args, **kwargs)
        return call

    modules = {spec.path: submodule(model, spec.path) for spec in wanted}
    installed = {path: vars(module).get("forward") for path, module in modules.items()}   # a runner, or None
    for spec in wanted:
        # the part's own PyTorch forward, not a runner already installed (an int8 one would feed the next part
        # rounded inputs): the samples are fp32's
        module = modules[spec.path]
        module.forward = stand_in(spec, type(module).forward.__get__(module))
    try:
        with torch.inference_mode():
            state = model.encode_source(source)
            for frame in driving.split(1):
                pending.update(seen)
                try:
                    model.animate(state, frame)
                except _Captured:
                    pass
    finally:
        for path, module in modules.items():
            if installed[path] is None:
                del module.forward                         # the class's forward again
            else:
                module.forward = installed[path]
    return seen


def samples_digest(samples: dict[str, list[tuple[torch.Tensor, ...]]]) -> str:
    digest = hashlib.sha256()
    for path in sorted(samples):
        for sample in samples[path]:
            for tensor in sample:
                digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


INT8_NEEDS = f"--mixed_precision int8 quantises with onnxruntime and onnx (pip install {PINS['onnxruntime']})"


def run_graph(graph: str, samples: Sequence[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
    """``graph``'s outputs (name -> array (n, ...)) on ``samples`` (tuples of its inputs, batch 1), by ONNX
    Runtime in fp32: the reference an int8 graph is compared with when calibration did not just give it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(INT8_NEEDS) from None
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    runs = [session.run(None, {name: t.numpy() for name, t in zip(names, sample)}) for sample in samples]
    return {node.name: np.concatenate([run[i] for run in runs]) for i, node in enumerate(session.get_outputs())}


def _calibrate(model: Any, samples: Sequence[tuple[torch.Tensor, ...]],
               handled: set[str]) -> tuple[dict[str, tuple], dict[str, Any]]:
    """Min-max calibration of the shape-inferred ONNX ``model`` (changed in place): every float tensor in or out
    of a node of a type in ``handled`` (what the quantiser puts Q/DQ pairs on) gets ReduceMin and ReduceMax
    outputs, and ONNX Runtime runs it once per sample. Returns ({tensor: (min, max)}, the model's own outputs
    (name -> array (n, ...)))."""
    import onnx
    import onnxruntime

    types = {info.name: info.type.tensor_type.elem_type
             for info in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    constants = {initializer.name for initializer in model.graph.initializer}
    tensors = sorted({name for node in model.graph.node if node.op_type in handled
                      for name in (*node.input, *node.output) if name and name not in constants
                      and types.get(name) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)})
    outputs = [output.name for output in model.graph.output]
    taken = {name for node in model.graph.node for name in node.output}
    for name in tensors:
        for reduce in ("ReduceMin", "ReduceMax"):
            added = f"{name}::kpmask-{reduce}"
            assert added not in taken, added
            # keepdims: ONNX Runtime cannot drop a reduced axis of size 0
            model.graph.node.append(onnx.helper.make_node(reduce, [name], [added], keepdims=1))
            model.graph.output.append(onnx.helper.make_tensor_value_info(added, types[name], None))
    options = onnxruntime.SessionOptions()
    # no fusions: a fused node would hide the very tensors the quantiser puts Q/DQ pairs on
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    runs = [session.run(None, {name: t.numpy() for name, t in zip(names, sample)}) for sample in samples]
    ranges = {name: (np.float32(np.nanmin([run[len(outputs) + 2 * i] for run in runs])),
                     np.float32(np.nanmax([run[len(outputs) + 2 * i + 1] for run in runs])))
              for i, name in enumerate(tensors)}
    return ranges, {name: np.concatenate([run[i] for run in runs]) for i, name in enumerate(outputs)}


def quantize_graph(graph: str, samples: Sequence[tuple[torch.Tensor, ...]],
                   path: str, stamp: Optional[str] = None) -> dict[str, Any]:
    """Post-training static int8 quantisation of ``graph`` into ``path``, calibrated on ``samples``: QDQ
    format, per-channel int8 weights, uint8 activations with a 7-bit range (on CPUs without VNNI, the AVX2
    u8 x s8 multiply saturates at full range), min-max ranges of every tensor ONNX Runtime's quantiser would
    calibrate. Returns the fp32 graph's outputs on ``samples`` (name -> array (n, ...)), which calibrating
    computed anyway: the reference for the int8 graph's PSNR. (The caller caches: engines.use_exported
    quantises once per calibration set.)

    ONNX Runtime's ``quantize_static`` would calibrate by itself; doing it here instead (its ranges handed over
    through its calibration cache) costs the same forward passes without its two extra shape-inferred loads and
    augmented-model file (256-px generator, AVX2 EPYC: about 4 s), and keeps the reference outputs. The graph is
    first simplified by ONNX Runtime's basic optimisations (constants folded: 1,068 nodes become 369), which is
    what ``quant_pre_process`` does, without its extra shape-inference round trips."""
    try:
        import onnx
        import onnxruntime
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    except ImportError:
        raise UserError(INT8_NEEDS) from None
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(folder, "quantizing-*")):     # left by a process killed mid-way
        if time.time() - os.path.getmtime(stale) > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="quantizing-", dir=folder) as work, \
            atomic_file(path) as partial, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized, prepared = os.path.join(work, "optimized.onnx"), os.path.join(work, "prepared.onnx")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = optimized
        onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        onnx.shape_inference.infer_shapes_path(optimized, prepared)        # the tensors' types, for choosing

        ranges, reference = _calibrate(onnx.load(prepared), samples, set(QDQRegistry) | set(QLinearOpsRegistry))
        cache = os.path.join(work, "ranges.json")
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)

        # the quantiser logs a root-logger warning for every rank-1 weight it leaves per-tensor (BatchNorm)
        logging.disable(logging.WARNING)
        try:
            quantize_static(prepared, partial, None, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibration_cache_path=cache)
        finally:
            logging.disable(logging.NOTSET)
    if stamp is not None:
        stamp_graph(path, stamp)
    return reference


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
            quantized = quantized and _quantized(model, graph, spec, int8, quantized_path, stamp)   # quantised again
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
