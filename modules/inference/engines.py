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
- ``auto`` (the default): times each candidate on this CPU with the model's own frame size at first use,
  keeps the fastest and caches the choice keyed by the model file's hash, the frame size, the precision, the
  package versions, the CPU and the thread count.

The cache is ``$KPMASK_CACHE`` or ``~/.cache/kpmask``; ``KPMASK_ENGINE`` sets the default engine (the tests
use ``torch``).
"""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from modules.config.family import ExportPart
from modules.core.errors import UserError
from modules.core.outputs import write_json
from modules.inference.export import (cache_dir, capture_inputs, exported_graph, file_digest, named_type,
                                      quantize_graph, samples_digest, submodule)
from modules.inference.optimize import rewrite_blocks

ENGINES = ("auto", "torch", "torch-opt", "onnxruntime", "openvino")
EXPORTED = ("onnxruntime", "openvino")
PINS = {"onnxruntime": "onnxruntime==1.31.1 onnx==1.22.0", "openvino": "openvino==2026.4.1"}
Calibration = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]   # config -> (source, driving) frames


def default_engine() -> str:
    return os.environ.get("KPMASK_ENGINE", "auto")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> str:
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
    """Runs an exported graph and rebuilds the part's NamedTuple output (None where PyTorch gave None)."""

    def __init__(self, path: str, meta: dict[str, Any], spec: ExportPart):
        self.meta, self.output_type, self.spec = meta, named_type(meta["type"]), spec
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
    def __init__(self, path: str, meta: dict[str, Any], spec: ExportPart):
        super().__init__(path, meta, spec)
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

    def __init__(self, path: str, meta: dict[str, Any], spec: ExportPart):
        super().__init__(path, meta, spec)
        self.core = import_engine("openvino").Core()
        self.model = self.core.read_model(path)
        self.compiled: dict[int, Any] = {}

    def _request(self, batch: int):
        if batch not in self.compiled:
            model = self.model.clone()
            model.reshape({port.get_any_name(): [batch] + list(port.get_partial_shape()[1:].to_shape())
                           for port in model.inputs})
            compiled = self.core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads})
            self.compiled[batch] = (compiled, compiled.create_infer_request())
        return self.compiled[batch]

    def run(self, arrays: list) -> list:
        compiled, request = self._request(arrays[0].shape[0])
        results = request.infer(arrays)
        return [results[port].copy() for port in compiled.outputs]     # the request reuses its buffers


RUNNERS = {"onnxruntime": OnnxRuntimePart, "openvino": OpenVinoPart}


class Int8Calibration:
    """int8's calibration set, named by ``digest``; ``samples()`` (the inputs per part, computed by running the
    fp32 model once) is asked for only when a quantised graph is not cached yet."""

    def __init__(self, digest: str, samples: Callable[[], dict]):
        self.digest, self._samples, self._cached = digest, samples, None

    def samples(self) -> dict:
        if self._cached is None:
            self._cached = self._samples()
        return self._cached

    @staticmethod
    def of(samples: dict) -> "Int8Calibration":
        return Int8Calibration(samples_digest(samples), lambda: samples)


def graph_folder(model_sha256: str, size: tuple[int, int]) -> str:
    return os.path.join(cache_dir(), "onnx", f"{model_sha256[:24]}-{size[0]}x{size[1]}")


def use_exported(model: nn.Module, parts: Sequence[ExportPart], size: tuple[int, int], model_sha256: str,
                 engine: str, int8: Optional[Int8Calibration] = None) -> None:
    """Export each part once (cached by the model file's hash and the frame size), quantise it to int8 with
    ``int8``'s calibration (once per calibration set), and run it on ``engine`` from now on."""
    import_engine(engine)
    folder = graph_folder(model_sha256, size)
    for spec in parts:
        graph, meta = exported_graph(model, spec, size, folder, model_sha256)
        quantized = int8 is not None and spec.quantize
        if quantized:
            quantized_path = os.path.join(folder, f"{spec.path}.int8-{int8.digest}.onnx")
            if not os.path.isfile(quantized_path):
                quantize_graph(graph, int8.samples()[spec.path], quantized_path)
            graph = quantized_path
        try:
            runner = RUNNERS[engine](graph, meta, spec)
        except UserError:
            raise
        except Exception:                    # a damaged or foreign cached graph: made again, once
            os.remove(graph)
            graph, meta = exported_graph(model, spec, size, folder, model_sha256, fresh=not quantized)
            if quantized:
                graph = quantize_graph(graph, int8.samples()[spec.path], quantized_path)
            runner = RUNNERS[engine](graph, meta, spec)
        submodule(model, spec.path).forward = runner


def prepare(model: nn.Module, engine: str, parts: Sequence[ExportPart], size: tuple[int, int], model_sha256: str,
            int8: Optional[Int8Calibration] = None) -> nn.Module:
    """Put ``model`` on ``engine`` (in place) and return it."""
    if engine == "torch-opt":
        rewrite_blocks(model)
    elif engine in EXPORTED:
        use_exported(model, parts, size, model_sha256, engine, int8)
    return model


# ----------------------------------------------------------------------------------------------------------
# Choosing

def _time_animation(model: nn.Module, size: tuple[int, int], batch: int = 2, repeats: int = 2) -> float:
    """Fastest seconds per frame of ``model.animate`` on random frames, channels_last as animate feeds them
    (after one warm-up batch; the minimum is the least disturbed by other work on the machine)."""
    generator = torch.Generator().manual_seed(0)
    layout = torch.channels_last
    model = model.to(memory_format=layout)
    source = torch.rand(1, 3, *size, generator=generator).contiguous(memory_format=layout)
    driving = torch.rand(batch, 3, *size, generator=generator).contiguous(memory_format=layout)
    times = []
    with torch.inference_mode():
        state = model.encode_source(source)
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            model.animate(state, driving)
            if attempt:
                times.append((time.perf_counter() - started) / batch)
    return min(times)


def candidates(engine: str, parts: Sequence[ExportPart], device: torch.device, precision: Optional[str]) -> list[str]:
    """The engines ``engine`` may run on (one, or for auto those installed that can); a one-line error when the
    asked engine cannot run this model, device or precision."""
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    int8, autocast = precision == "int8", precision in ("bf16", "fp16")
    problem = ("this model family exports no parts" if not parts else
               f"the exported engines run on the CPU; this run uses {device}" if device.type != "cpu" else
               f"--mixed_precision {precision} is PyTorch's autocast (the exported engines run fp32 or int8)"
               if autocast else None)
    if engine == "auto":
        if int8 and problem:
            raise UserError(f"--mixed_precision int8 runs on the exported engines: {problem}")
        found = [name for name in EXPORTED if not problem and installed(name)]
        if int8 and not found:
            raise UserError(f"--mixed_precision int8 needs onnxruntime or openvino (pip install {PINS['onnxruntime']})")
        return found if int8 else ["torch", "torch-opt"] + found
    if engine in EXPORTED:
        if problem:
            raise UserError(f"--engine {engine}: {problem}; use --engine torch")
        import_engine(engine)
    elif int8:
        raise UserError(f"--engine {engine} with --mixed_precision int8: int8 runs on the exported engines "
                        f"(--engine auto, onnxruntime or openvino)")
    return [engine]


def _read_json(path: str) -> dict:
    """A cached JSON table (engine choices, int8 PSNRs), or {} when there is none or it is damaged."""
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return {}                             # measured again


def _psnr(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    mse = (reference.float() - candidate.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def _int8_calibration(load: Callable[[], nn.Module], parts: Sequence[ExportPart], size: tuple[int, int],
                      calibrate: Optional[Callable[[tuple[int, int]], tuple]],
                      model_sha256: str) -> tuple[Int8Calibration, Callable[[nn.Module, str], str]]:
    """(the calibration set, a function giving an int8 model's PSNR line against fp32). ``calibrate(size)``
    gives the frames: source (1, 3, H, W), driving (n, 3, H, W); without it, random frames. The PSNR is
    measured once per calibration set and engine and cached beside the quantised graphs."""
    if calibrate is None:
        frames = torch.rand(5, 3, *size, generator=torch.Generator().manual_seed(0))
        source, driving = frames[:1], frames[1:]
    else:
        source, driving = calibrate(size)
    digest = samples_digest({"frames": [(source, driving)]})
    captured = {}                             # the fp32 pass: the parts' inputs and the reference predictions

    def samples() -> dict:
        captured["samples"], captured["reference"] = capture_inputs(load(), parts, source, driving)
        return captured["samples"]

    calibration = Int8Calibration(digest, samples)            # runs samples() once, when first asked
    psnr_file = os.path.join(graph_folder(model_sha256, size), f"int8-{digest}.json")

    def psnr_line(model: nn.Module, engine: str) -> str:
        stored = _read_json(psnr_file)
        if engine not in stored:
            calibration.samples()
            with torch.inference_mode():
                prediction = model.animate(model.encode_source(source), driving).prediction
            stored[engine] = _psnr(captured["reference"], prediction)
            write_json(psnr_file, stored)
        where = "random frames" if calibrate is None else f"the {len(driving)} calibration frames"
        return f"int8: PSNR {stored[engine]:.1f} dB against fp32 on {where}"
    return calibration, psnr_line


def choose_engine(load: Callable[[], nn.Module], parts: Sequence[ExportPart], size: tuple[int, int],
                  model_path: str, engine: str, device: torch.device, precision: Optional[str],
                  calibrate: Optional[Callable[[tuple[int, int]], tuple]] = None) -> tuple[nn.Module, str, str]:
    """(the model on its engine, the engine's name, the line that says which and why). ``load()`` gives a fresh
    model (timed copies must not share a rewritten part)."""
    names = candidates(engine, parts, device, precision)
    digest = file_digest(model_path)
    key = f"{digest[:24]}-{size[0]}x{size[1]}"
    int8, psnr_line = _int8_calibration(load, parts, size, calibrate, digest) if precision == "int8" else (None, None)
    if len(names) == 1:
        model = prepare(load(), names[0], parts, size, digest, int8)
        how = "eager" if names[0] == "torch" else "auto: the one that can run this" if engine == "auto" else "as asked"
        return model, names[0], f"engine: {names[0]} ({how})" + (f"; {psnr_line(model, names[0])}" if int8 else "")
    choice_file = os.path.join(cache_dir(), "engine-choices.json")
    choice_key = (f"{key} | {'int8' if int8 else 'fp32'} | {_versions()} | {_cpu_name()} | "
                  f"{torch.get_num_threads()} threads | {', '.join(names)}")
    choices = _read_json(choice_file)
    kept: dict[str, nn.Module] = {}           # the copies timed just now: the winner is kept, not made again
    if choice_key not in choices:
        print(f"engine: measuring {', '.join(names)} on this CPU at {size[0]}x{size[1]} (once per model file, "
              f"size and CPU; cached in {choice_file})", flush=True)
        timed = {}
        for name in names:
            kept[name] = prepare(load(), name, parts, size, digest, int8)
            timed[name] = _time_animation(kept[name], size)
        choices[choice_key] = {"times": timed, "engine": min(timed, key=timed.get)}
        write_json(choice_file, choices)
    chosen = choices[choice_key]
    name = chosen["engine"]
    model = kept.get(name) or prepare(load(), name, parts, size, digest, int8)
    times = ", ".join(f"{engine_name} {seconds * 1000:.1f}" for engine_name, seconds in chosen["times"].items())
    line = f"engine: {name} (auto, ms/frame measured on this CPU: {times})"
    return model, name, line + (f"; {psnr_line(model, name)}" if int8 else "")


def dataset_frames(config, count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """int8's calibration frames in the dataset modes: the first test video's frame 0 and first ``count``
    frames."""
    from modules.data.dataset import FramesDataset, frames_to_tensor

    video = FramesDataset.from_config(config.dataset_params, is_train=False).video(0)
    frames = video.read(list(range(min(count, len(video)))))
    return frames_to_tensor(frames[:1]), frames_to_tensor(frames)


def load_for_inference(path: str, device: torch.device, *, config_path: Optional[str] = None,
                       ablation: Optional[str] = None, engine: Optional[str] = None,
                       precision: Optional[str] = None,
                       calibrate: Optional[Calibration] = None) -> tuple[Any, nn.Module, dict, str]:
    """``modules.inference.loading.load_model`` on the engine asked for (None: ``default_engine()``): (config, model,
    checkpoint, the line that says which engine runs and why). ``calibrate(config)`` gives int8's calibration
    frames (source (1, 3, H, W), driving (n, 3, H, W)); without it int8 calibrates on random frames."""
    from modules.inference.loading import load_model

    config, model, checkpoint = load_model(path, device, config_path, ablation)
    first = [model]

    def load() -> nn.Module:
        return first.pop() if first else load_model(path, device, config_path, ablation)[1]

    parts = config.record.export_parts(config.model_params)
    model, _, line = choose_engine(load, parts, config.dataset_params.size, checkpoint["path"],
                                   engine or default_engine(), device, precision,
                                   (lambda size: calibrate(config)) if calibrate else None)
    return config, model, checkpoint, line
