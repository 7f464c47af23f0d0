"""Choosing the engine and the precision together: ``--engine auto`` with ``--mixed_precision auto`` (the defaults).

The rule (docs/inference.md, "How auto chooses"):

- the candidates are the (engine, precision) pairs that are installed and exact enough on this device:
  torch-opt in fp32 (and eager torch on a GPU: ``candidates`` says why not on the CPU); onnxruntime and openvino
  in fp32 where the family exports parts and the run is on the CPU; and where the hardware runs bf16 natively
  (AMX, AVX512-BF16, a GPU that supports it) the same under bf16 autocast and openvino with its bf16 hint
  (ONNX Runtime has none), raced first. int8 is never a candidate unless asked
  (``--mixed_precision int8``: then the candidates are the exported engines, quantised); an explicit engine or
  precision narrows the candidates to it;
- they race on the run's own first frames (``EngineRace``): each candidate animates PROBE frames to warm up
  (compiling, allocating), then PROBE frames timed, and PROBE more only if it is not already clearly slower
  (SLOWER) than the best so far. Every frame of the race is a frame of the result, so a first run pays only for
  preparing the candidates (the rewrite, one ONNX export shared by both exported engines, a session or a
  compile), not for timing them;
- the fastest animates the rest, and the choice is cached under ``$KPMASK_CACHE`` keyed by the model file's
  hash, the frame size, the precision asked, the package versions, the CPU and the thread count: a later run
  prepares the winner alone. ``scripts/prepare_engine.py`` runs the race ahead of time.
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from modules.config.family import ExportPart
from modules.core.errors import UserError
from modules.core.outputs import write_json
from modules.core.precision import autocast, autocast_dtype, native_bf16
from modules.inference.engines import (ENGINES, EXPORTED, PINS, Int8Calibration, cache_dir, capture_inputs, cpu_name,
                                       default_engine, engine_versions, graph_folder, import_engine, installed, prepare,
                                       run_graph, samples_digest)
from modules.inference.export import file_digest

PROBE = 2               # frames a candidate animates per turn of the race
SLOWER = 1.25           # a candidate this much slower than the best after its first timed turn gets no second
# int8 calibrates on the source and this many driving frames: 4 gave what 8 gave (taichi-256 networks, random
# weights, AVX2 EPYC: 62.8 dB on the calibration frames, 49.3 dB over a 48-frame clip against eager fp32), with
# half the frames in the fp32 pass and in ONNX Runtime's calibration.
CALIBRATION_FRAMES = 4


class Candidate(NamedTuple):
    engine: str
    precision: str      # 'no' (fp32), 'bf16' or 'int8'

    @property
    def label(self) -> str:
        return self.engine if self.precision == "no" else f"{self.engine} {self.precision}"


def candidates(engine: str, parts: Sequence[ExportPart], device: torch.device,
               precision: Optional[str]) -> list[Candidate]:
    """The (engine, precision) pairs ``engine`` and ``precision`` ('auto' or None: this device's choice) allow
    here; a one-line error when the asked pair cannot run this model, device or precision."""
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    precision = precision or "auto"
    problem = ("this model family exports no parts" if not parts else
               f"the exported engines run on the CPU; this run uses {device}" if device.type != "cpu" else None)
    # OpenVINO first: the faster of the two on every CPU kind met so far
    exported = [name for name in ("openvino", "onnxruntime") if not problem and installed(name)]
    if precision == "int8":
        if engine == "auto":
            if problem:
                raise UserError(f"--mixed_precision int8 runs on the exported engines: {problem}")
            if not exported:
                raise UserError(f"--mixed_precision int8 needs onnxruntime or openvino (pip install "
                                f"{PINS['onnxruntime']})")
            return [Candidate(name, "int8") for name in exported]
        if engine not in EXPORTED:
            raise UserError(f"--engine {engine} with --mixed_precision int8: int8 runs on the exported engines "
                            f"(--engine auto, onnxruntime or openvino)")
    if engine in EXPORTED:
        if problem:
            raise UserError(f"--engine {engine}: {problem}; use --engine torch")
        import_engine(engine)
        if precision == "fp16" or (precision == "bf16" and engine == "onnxruntime"):
            raise UserError(f"--engine {engine} with --mixed_precision {precision}: it runs fp32"
                            f"{', bf16' if engine == 'openvino' else ''} or int8 (use --engine torch for "
                            f"{precision} autocast)")
    # native bf16 first: the likely faster of the two where the hardware has it (AMX: 4x)
    precisions = [precision] if precision != "auto" else (["bf16"] if native_bf16(device) else []) + ["no"]
    # the likely fastest first (the exported engines, then torch's rewrite, then eager torch): a candidate that is
    # clearly slower than the best so far gets no second timed turn, so the slow ones cost the fewest frames.
    # Eager torch races only on a GPU: on the CPU torch-opt runs the same kernels with the BatchNorm passes folded
    # away and 4/9 of the up blocks' multiplications, and it was the faster on every CPU kind met (AVX2 EPYC,
    # taichi-256 networks, 256 px: 1.15 against 1.91 s/frame; AVX512-BF16 EPYC in bf16: 1.17x), so racing eager
    # torch there only spent a first run's frames (4 s of its 23 s overhead on the AVX2 EPYC). A GPU keeps it:
    # cuDNN's 3x3 Winograd kernels may beat the rewrite's 2x2 convolutions.
    engines = [engine] if engine != "auto" else exported + ["torch-opt"] + (["torch"] if device.type != "cpu" else [])
    return [Candidate(name, chosen) for chosen in precisions for name in engines
            if not (chosen == "bf16" and name == "onnxruntime") and not (chosen == "fp16" and name in EXPORTED)]


def _joined(pieces: list) -> Any:
    """Outputs of consecutive chunks of one batch as one output: tensors concatenated along the batch,
    NamedTuples field by field, None kept."""
    first = pieces[0]
    if len(pieces) == 1 or first is None:
        return first
    if torch.is_tensor(first):
        return torch.cat(pieces)
    return type(first)(*(_joined([piece[i] for piece in pieces]) for i in range(len(first))))


class EngineRace:
    """Stands for the model while the candidates race on a run's first frames, then for the winner. Each
    candidate's model is prepared when its first turn comes (``make``); ``finish(times, winner, model)`` hears
    each candidate's best seconds per frame and the winner with its model, and returns the line that says what
    was chosen."""

    def __init__(self, entrants: Sequence[Candidate], make: Callable[[Candidate], nn.Module], device: torch.device,
                 finish: Callable[[dict[Candidate, float], Candidate, nn.Module], str]):
        self.make, self.device, self.finish = make, device, finish
        self.turns = [(candidate, turn) for candidate in entrants for turn in ("warm", "timed", "again")]
        self.times: dict[Candidate, list[float]] = {candidate: [] for candidate in entrants}
        self.models: dict[Candidate, nn.Module] = {}
        self.layout: dict[str, Any] = {}
        # the source's state and the reference keypoints, shared by every candidate until a winner is crowned,
        # come from the first entrant that is not bf16: the race's frames stay within 1e-4 of eager fp32 (bf16
        # races first where it is native)
        self.first = next((c for c in entrants if c.precision != "bf16"), entrants[0])
        self.winner, self.line = None, None
        self._model(self.first)

    # what the pipeline calls
    def encode_source(self, *args, **kwargs):
        return self._call(self.winner or self.first, "encode_source", *args, **kwargs)

    def keypoints(self, *args, **kwargs):
        return self._call(self.winner or self.first, "keypoints", *args, **kwargs)

    def visual_columns(self, *args, **kwargs):
        return self._call(self.winner or self.first, "visual_columns", *args, **kwargs)

    def to(self, *args, **kwargs) -> "EngineRace":
        self.layout = {"args": args, "kwargs": kwargs}
        for model in self.models.values():
            model.to(*args, **kwargs)
        return self

    def animate(self, state, driving: torch.Tensor, *args, **kwargs):
        pieces, done, racing = [], 0, self.winner is None
        while self.winner is None and done < len(driving):
            candidate, turn = self.turns.pop(0)
            chunk = driving[done:done + PROBE]
            started = time.perf_counter()
            pieces.append(self._call(candidate, "animate", state, chunk, *args, **kwargs))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if turn != "warm":
                self.times[candidate].append((time.perf_counter() - started) / len(chunk))
            done += len(chunk)
            self._after_turn()
        # the rest of the batch the race ended in goes PROBE frames at a time: a batch size the winner has run
        # already (OpenVINO compiles once per batch size, 1-1.5 s for a 256-px generator)
        step = PROBE if racing else len(driving)
        for start in range(done, len(driving), step):
            pieces.append(self._call(self.winner, "animate", state, driving[start:start + step], *args, **kwargs))
        return _joined(pieces)

    # the race
    def _model(self, candidate: Candidate) -> nn.Module:
        if candidate not in self.models:
            self.models[candidate] = self.make(candidate)
            if self.layout:
                self.models[candidate].to(*self.layout["args"], **self.layout["kwargs"])
        return self.models[candidate]

    def _call(self, candidate: Candidate, method: str, *args, **kwargs):
        with autocast(self.device, autocast_dtype(candidate.precision, self.device)):
            return getattr(self._model(candidate), method)(*args, **kwargs)

    def _after_turn(self) -> None:
        """Drop the second timed turn of a candidate already clearly slower; with no turn left, crown the winner."""
        best = {c: min(t) for c, t in self.times.items() if t}
        while self.turns and self.turns[0][1] == "again":
            candidate = self.turns[0][0]
            others = [seconds for c, seconds in best.items() if c != candidate]
            if not others or best[candidate] <= SLOWER * min(others):
                break
            self.turns.pop(0)                       # already clearly slower: no second timed turn
        if not self.turns:
            self.winner = min(best, key=best.get)
            self.line = self.finish(best, self.winner, self.models[self.winner])
            self.models = {self.winner: self.models[self.winner]}       # the others are freed
            tqdm.write(self.line)


# ----------------------------------------------------------------------------------------------------------
# int8's calibration and its PSNR against fp32

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


def _int8_psnr(model: nn.Module, parts: Sequence[ExportPart], calibration: Int8Calibration, folder: str,
               source: torch.Tensor, driving: torch.Tensor) -> float:
    """PSNR of the int8 model's predictions against fp32's on the calibration frames (absolute motion, as
    calibrated). fp32's are the ``prediction`` output of the quantised part that makes it (the generator), from
    its fp32 graph on fp32 inputs: calibrating computed them (a graph quantised by an earlier run runs them
    again). int8's come from the model as it runs, every part on its engine, the frames PROBE at a time: a
    batch size the race compiled already. NaN where no quantised part gives the ``prediction``."""
    for spec in reversed(parts):
        samples = calibration.samples(model)[spec.path] if spec.quantize else []
        # (a part the calibration frames never reach stays fp32)
        if samples and "prediction" in _read_json(os.path.join(folder, spec.path + ".json")).get("tensors", ()):
            fp32 = (calibration.reference.get(spec.path)
                    or run_graph(os.path.join(folder, spec.path + ".onnx"), samples))["prediction"]
            break
    else:                                     # no family quantises parts without the prediction; none measured
        return float("nan")
    state = model.encode_source(source)
    int8 = torch.cat([model.animate(state, chunk).prediction for chunk in driving.split(PROBE)])
    return _psnr(torch.from_numpy(fp32), int8)


def _int8_calibration(parts: Sequence[ExportPart], size: tuple[int, int],
                      calibrate: Optional[Callable[[tuple[int, int]], tuple]],
                      model_sha256: str) -> tuple[Int8Calibration, Callable[[nn.Module, str], str]]:
    """(the calibration set, a function giving an int8 model's PSNR line against fp32). ``calibrate(size)``
    gives the frames: source (1, 3, H, W), driving (n, 3, H, W); without it, random frames. The PSNR is
    measured once per calibration set and engine and cached beside the quantised graphs.

    A model quantised before (on another clip's frames) is reused: its static int8 ranges carry over between
    clips of one model, and a new clip would otherwise pay a calibration on every first run. Delete ``int8-*``
    in the model's cache folder to calibrate again."""
    if calibrate is None:
        frames = torch.rand(1 + CALIBRATION_FRAMES, 3, *size, generator=torch.Generator().manual_seed(0))
        source, driving = frames[:1], frames[1:]
    else:
        source, driving = calibrate(size)
    folder = graph_folder(model_sha256, size)
    digest = samples_digest({"frames": [(source, driving)]})
    earlier = sorted(glob.glob(os.path.join(folder, "int8-*.json")), key=os.path.getmtime)
    reused = bool(earlier) and not os.path.isfile(os.path.join(folder, f"int8-{digest}.json"))
    if reused:
        digest = os.path.basename(earlier[-1])[len("int8-"):-len(".json")]
    calibration = Int8Calibration(digest, lambda model: capture_inputs(model, parts, source, driving))
    psnr_file = os.path.join(folder, f"int8-{digest}.json")

    def psnr_line(model: nn.Module, engine: str) -> str:
        stored = _read_json(psnr_file)
        where = "random frames" if calibrate is None else f"the {len(driving)} calibration frames"
        if engine not in stored:
            with torch.inference_mode():
                stored[engine] = _int8_psnr(model, parts, calibration, folder, source, driving)
            write_json(psnr_file, stored)
            where = where if not reused else f"this run's first {len(driving)} frames (calibrated by an earlier run)"
        elif reused:
            where = "the frames an earlier run calibrated it on (reused)"
        return f"int8: PSNR {stored[engine]:.1f} dB against fp32 on {where}"
    return calibration, psnr_line


# ----------------------------------------------------------------------------------------------------------
# Choosing

class Chosen(NamedTuple):
    model: Any              # the model on its engine, or an EngineRace that becomes the winner
    candidate: Optional[Candidate]   # None while a race decides
    line: str               # what runs and why (printed before the first frame)
    precision: str          # the autocast the caller wraps the model's calls in ('no' during a race: it does)


def _times_line(times: dict, chosen: Candidate, where: str) -> str:
    measured = ", ".join(f"{Candidate(*c).label} {seconds * 1000:.1f}" for c, seconds in times)
    return f"engine: {chosen.label} (auto, ms/frame measured on {where}: {measured})"


def choose_engine(load: Callable[[], nn.Module], parts: Sequence[ExportPart], size: tuple[int, int],
                  model_path: str, engine: str, device: torch.device, precision: Optional[str],
                  calibrate: Optional[Callable[[tuple[int, int]], tuple]] = None) -> Chosen:
    """The model on the engine and precision ``engine``/``precision`` allow (the module doc's rule). ``load()``
    gives a fresh model (candidates must not share a rewritten part)."""
    entrants = candidates(engine, parts, device, precision)
    digest = file_digest(model_path)
    int8, psnr_line = _int8_calibration(parts, size, calibrate, digest) if precision == "int8" else (None, None)

    def make(candidate: Candidate) -> nn.Module:
        return prepare(load(), candidate.engine, parts, size, digest, int8, candidate.precision)

    def with_psnr(model: nn.Module, candidate: Candidate, line: str) -> str:
        return line + (f"; {psnr_line(model, candidate.engine)}" if int8 else "")

    if len(entrants) == 1:
        (only,) = entrants
        model = make(only)
        how = "eager" if only.engine == "torch" and engine != "auto" else \
            "auto: the only candidate here" if engine == "auto" else "as asked"
        return Chosen(model, only, with_psnr(model, only, f"engine: {only.label} ({how})"), only.precision)
    choice_file = os.path.join(cache_dir(), "engine-choices.json")
    choice_key = (f"{digest[:24]}-{size[0]}x{size[1]} | {precision or 'auto'} | {engine_versions()} | {cpu_name()} | "
                  f"{torch.get_num_threads()} threads | {', '.join(c.label for c in entrants)}")
    cached = _read_json(choice_file).get(choice_key)
    if cached is not None:
        winner = Candidate(*cached["chosen"])
        model = make(winner)
        line = _times_line(cached["times"], winner, "this CPU before; cached")
        return Chosen(model, winner, with_psnr(model, winner, line), winner.precision)

    def finish(times: dict[Candidate, float], winner: Candidate, model: nn.Module) -> str:
        table = [(list(c), seconds) for c, seconds in times.items()]
        choices = _read_json(choice_file)
        choices[choice_key] = {"times": table, "chosen": list(winner)}
        try:
            write_json(choice_file, choices)
        except OSError:                       # an unwritable cache: the choice holds for this run only
            pass
        line = _times_line(table, winner, f"this run's first frames, {PROBE} per turn")
        return with_psnr(model, winner, line)

    race = EngineRace(entrants, make, device, finish)
    line = (f"engine: auto, racing {', '.join(c.label for c in entrants)} on the first frames (once per model "
            f"file, size and CPU; cached in {choice_file})")
    return Chosen(race, None, line, "no")


def dataset_frames(config, count: int = CALIBRATION_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """int8's calibration frames in the dataset modes: the first test video's frame 0 and first ``count``
    frames."""
    from modules.data.dataset import FramesDataset, frames_to_tensor

    video = FramesDataset.from_config(config.dataset_params, is_train=False).video(0)
    frames = video.read(list(range(min(count, len(video)))))
    return frames_to_tensor(frames[:1]), frames_to_tensor(frames)


def load_for_inference(path: str, device: torch.device, *, config_path: Optional[str] = None,
                       ablation: Optional[str] = None, engine: Optional[str] = None,
                       precision: Optional[str] = None,
                       calibrate: Optional[Callable[[Any], tuple]] = None,
                       batch_size: int = 8) -> tuple[Any, Any, dict, Chosen]:
    """``modules.inference.loading.load_model`` on the engine and precision asked for (None: ``default_engine()``
    and auto): (config, model, checkpoint, what was chosen). ``calibrate(config)`` gives int8's calibration
    frames (source (1, 3, H, W), driving (n, 3, H, W)); without it int8 calibrates on random frames.
    ``batch_size``: the driving frames animated at once, for load_model's memory check."""
    from modules.inference.loading import load_model

    config, model, checkpoint = load_model(path, device, config_path, ablation, batch_size=batch_size)
    first = [model]

    def load() -> nn.Module:
        return first.pop() if first else load_model(path, device, config_path, ablation, batch_size=batch_size)[1]

    parts = config.record.export_parts(config.model_params)
    chosen = choose_engine(load, parts, config.dataset_params.size, checkpoint["path"], engine or default_engine(),
                           device, precision, (lambda size: calibrate(config)) if calibrate else None)
    return config, chosen.model, checkpoint, chosen
