"""A model's vital signs for a config: parameters per network, tensor shapes, time and memory of one step.

Used by ``run.py --mode inspect`` (the smoke run of a fresh install) and by ``benchmarks/``.
"""
from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from modules.config.family import KeypointLabels, StepContext, Trainable


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process's peak resident memory on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10   # bytes on macOS, KiB on Linux


@dataclass
class Summary:
    parameters: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    forward_s: float
    forward_backward_s: float
    peak_memory_mib: float
    loss: dict[str, float] = field(default_factory=dict)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(trainable: Trainable, frame_size: tuple[int, int], device: torch.device, batch_size: int = 1,
              seed: int = 0) -> Summary:
    """Parameter counts, one timed forward (no grad) and one timed forward+backward with the loss.

    The inputs are generated (seeded smooth random images), so nothing is read from disk.
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = frame_size
    # Smooth random images: a coarse noise field upsampled, closer to photos than white noise.
    coarse = torch.rand(2 * batch_size, 3, max(height // 16, 2), max(width // 16, 2), generator=generator)
    images = nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    images = images.clamp(0, 1)
    source, driving = images.to(device).chunk(2, dim=0)
    trainable = trainable.to(device)
    model = trainable.model
    parameters = {}
    for name, network in trainable.networks().items():
        parts = [(f"{name}.{child}", module) for child, module in network.named_children()
                 if child in ("low_res", "high_res", "dense_motion_network")]
        parameters[name] = count_parameters(network)
        parameters.update({label: count_parameters(module) for label, module in parts})

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.eval()
    with torch.no_grad():
        _synchronize(device)
        start = time.perf_counter()
        output = model(source, driving)
        _synchronize(device)
        forward_s = time.perf_counter() - start
    shapes = {name: tuple(getattr(output, name).shape) for name in output._fields if getattr(output, name) is not None}
    shapes["source"] = tuple(source.shape)

    trainable.train()
    trainable.zero_grad(set_to_none=True)
    _synchronize(device)
    start = time.perf_counter()
    labels = None
    if trainable.label_params is not None:       # a labelled family: random keypoints, all visible
        num_kp = len(trainable.label_params.points)
        points = (torch.rand(2, batch_size, num_kp, 2, generator=generator) * 1.6 - 0.8).to(device)
        visible = torch.ones(batch_size, num_kp, device=device)
        labels = KeypointLabels(points[0], visible, points[1], visible)
    step = trainable.training_step(source, driving, StepContext(autocast=contextlib.nullcontext,
                                                                backward=lambda loss: loss.backward()), labels=labels)
    _synchronize(device)
    forward_backward_s = time.perf_counter() - start
    loss = {name: float(value.detach()) for name, value in step.losses.items()}
    return Summary(parameters, shapes, forward_s, forward_backward_s, peak_memory_mib(device), loss)
