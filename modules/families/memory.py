"""How much memory a model needs, estimated before a byte of it is allocated, and the check against what the
device has: a one-line error instead of a process the kernel kills half-way (or a GPU out of memory).

The estimate builds the config's networks on PyTorch's ``meta`` device, where tensors have shapes but no
storage: the parameter count is exact, and one forward pass (the source's encoding and the animation of a
batch of driving frames at ``dataset_params.frame_shape``) on meta tensors gives the activations, counted as
the peak of the bytes alive at once (``_LiveBytes``). Both at fp32, the widest precision a run may use.
Training adds the gradients and Adam's two moments (3x the weights) and keeps the forward's activations for the
backward; the perceptual loss's VGG-19 is left out, so a training estimate is a lower bound. The config's
sizes are first bounded (modules/config/bounds.py), so the meta build itself stays small and fast.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
import weakref
from typing import Any, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from modules.config.sections import Config
from modules.core.errors import ConfigError, UserError
from modules.core.memory import available_memory

MAX_PARAMETERS = 1_000_000_000            # 4 GB of fp32 weights; FOMM's 256-px model has 60 M, ours 59 to 89 M
BYTES = 4                                 # fp32
SKIP_VARIABLE = "KPMASK_MEMORY_CHECK"     # =off skips the check (an estimate can be wrong; the user decides)
GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    parameters: int                       # how many
    parameter_bytes: int                  # the weights, plus gradients and Adam's moments when training
    activation_bytes: int                 # peak of one forward at the batch (0 where the forward was not possible)
    batch: int
    training: bool

    @property
    def total(self) -> int:
        return self.parameter_bytes + self.activation_bytes


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensors the operations create while any tensor still holds them, and the peak.
    Storages met first as inputs (weights, the frames) are not counted; views add no bytes."""

    def __init__(self, external: list[torch.Tensor]):
        super().__init__()
        self.live = self.peak = 0
        self._holders: dict[int, list[int]] = {_key(t): [-1, 0] for t in external}   # key -> [holders, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._hold(tensor)
        return out

    def _hold(self, tensor: torch.Tensor) -> None:
        key = _key(tensor)
        record = self._holders.get(key)
        if record is None:
            record = self._holders[key] = [0, tensor.untyped_storage().nbytes()]
            self.live += record[1]
            self.peak = max(self.peak, self.live)
        if record[0] >= 0:                # external storages (holders -1) are never released
            record[0] += 1
            weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        record = self._holders.get(key)
        if record is None:                # already released through another holder's count
            return
        record[0] -= 1
        if record[0] == 0:
            self.live -= record[1]
            del self._holders[key]


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


_CACHE: dict[tuple, Any] = {}             # (model_params, frame size, batch, training) -> result


def _meta_model(config: Config) -> torch.nn.Module:
    """The config's networks on the meta device (nothing allocated, the random generators untouched)."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # e.g. "random detector": this model is never run on data
        return config.record.build(config, None)


def _cache_key(config: Config, *rest: Any) -> tuple:
    return (repr(dataclasses.asdict(config.model_params)), tuple(config.dataset_params.size)) + rest


def parameter_count(config: Config) -> int:
    """Parameters of the config's inference networks (those a model file holds), counted on the meta device."""
    key = _cache_key(config, "parameters")
    if key not in _CACHE:
        _CACHE[key] = sum(p.numel() for p in _meta_model(config).parameters())
    return _CACHE[key]


def activation_peak(config: Config, batch: int, training: bool) -> int:
    """Peak bytes of the tensors one forward keeps alive: the source's encoding and the animation of ``batch``
    driving frames (training: ``batch`` sources too, gradients on), or the detection of ``batch`` frames for a
    family that does not animate. 0 where the forward fails on meta tensors (an operation without a meta kernel,
    a model without that API): the check then rests on the weights."""
    key = _cache_key(config, "activations", batch, training)
    if key in _CACHE:
        return _CACHE[key]
    model = _meta_model(config)
    height, width = config.dataset_params.size
    channels = config.model_params.common_params.num_channels
    source = torch.empty(batch if training else 1, channels, height, width, device="meta")
    driving = torch.empty(batch, channels, height, width, device="meta")
    counter = _LiveBytes([*model.parameters(), *model.buffers(), source, driving])
    try:
        with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(training), counter:
            if config.record.animates:
                kept = model.animate(model.encode_source(source), driving)
            else:
                kept = model.keypoints(driving)
            del kept
        peak = counter.peak
    except Exception:  # an op without a meta kernel, a family without this API: the estimate is best effort
        peak = 0
    _CACHE[key] = peak
    return peak


def estimate_memory(config: Config, *, batch: int = 1, training: bool = False) -> MemoryEstimate:
    """What a run of ``config`` needs: its weights (with training's gradients and Adam state) and the activation
    peak of one forward of ``batch`` frames at its frame size, all at fp32."""
    count = parameter_count(config)
    copies = 4 if training else 1         # weights; + gradients and Adam's exp_avg and exp_avg_sq
    return MemoryEstimate(count, count * BYTES * copies, activation_peak(config, batch, training), batch, training)


def check_memory(config: Config, source: str, *, device: Optional[torch.device] = None, batch: int = 1,
                 training: bool = False) -> Optional[MemoryEstimate]:
    """Refuse a model whose parameter count is beyond MAX_PARAMETERS, or whose estimate is beyond the memory
    ``device`` (None: the host) has available, with a one-line error naming ``source`` (the file the config
    came from), the estimate and what is available. Returns the estimate (None with KPMASK_MEMORY_CHECK=off)."""
    if os.environ.get(SKIP_VARIABLE, "").lower() in ("off", "0", "no"):
        return None
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ConfigError(f"{source}: model_params: these networks would have {count / 1e6:,.0f} M parameters, "
                          f"beyond the bound of {MAX_PARAMETERS / 1e6:,.0f} M (FOMM's 256-px model has 60 M)")
    estimate = estimate_memory(config, batch=batch, training=training)
    available, where = available_memory(device)
    if available is not None and estimate.total > available:
        smaller_batch = ", or a smaller --batch_size" if batch > 1 else ""
        raise UserError(f"{source}: {_describe(config, estimate)}, but only {available / GIB:.2f} GiB is available "
                        f"({where}); use a smaller model or frame size{smaller_batch} ({SKIP_VARIABLE}=off skips "
                        f"this estimate)")
    return estimate


def _describe(config: Config, estimate: MemoryEstimate) -> str:
    height, width = config.dataset_params.size
    weights = "weights, gradients and Adam state" if estimate.training else "weights"
    return (f"this {config.motion_name} model needs about {estimate.total / GIB:.2f} GiB "
            f"({estimate.parameters / 1e6:.1f} M parameters: {estimate.parameter_bytes / GIB:.2f} GiB of {weights}; "
            f"{estimate.activation_bytes / GIB:.2f} GiB of activations for {estimate.batch} frame"
            f"{'s' if estimate.batch > 1 else ''} of {height}x{width} at fp32)")
