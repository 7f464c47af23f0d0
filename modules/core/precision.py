"""Mixed precision chosen once for training and inference: 'no' (fp32), 'bf16' (CPU or GPU), 'fp16' (GPU)."""
from __future__ import annotations

import contextlib
import os
from typing import ContextManager, Optional

import torch

from modules.core.errors import UserError

CPUINFO = "/proc/cpuinfo"                 # where Linux lists the CPU's flags


def autocast_dtype(precision: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` (None for fp32); fp16 on a CPU is an error."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"mixed precision fp16 needs a CUDA device (this run is on {device}); use bf16 on CPU")
    # int8 is the exported engines' (modules/inference/engines.py); the PyTorch parts around them run fp32
    return {None: None, "no": None, "int8": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """torch.autocast for ``dtype``, or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def cpu_flags() -> list[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no /proc/cpuinfo)."""
    try:
        with open(CPUINFO, encoding="utf-8") as stream:
            return next((line.split(":", 1)[1].split() for line in stream if line.startswith("flags")), [])
    except OSError:
        return []


def native_bf16(device: torch.device) -> Optional[str]:
    """Why ``device`` runs bf16 at full speed (the CPU's AMX or AVX512-BF16 flag, a GPU that supports it), or
    None: elsewhere bf16 autocast is emulated and several times slower than fp32."""
    if device.type == "cuda":
        return "this GPU supports bf16" if torch.cuda.is_bf16_supported() else None
    flags = cpu_flags()
    for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16")):
        if flag in flags:
            return f"this CPU has {name}"
    return None


def inference_precision(precision: Optional[str], device: torch.device) -> tuple[str, str]:
    """Animation and reconstruction: ``auto`` (the default, None too) stays auto, chosen together with the
    engine (modules/inference/choice.py) among fp32 and, where the hardware runs it natively, bf16; an explicit
    choice stays. Returns (precision, the line that says so)."""
    if precision is None:
        precision = os.environ.get("KPMASK_PRECISION", "auto")      # the tests pin fp32 with "no"
    if precision != "auto":
        return precision, f"precision: {'fp32' if precision == 'no' else precision} (as asked)"
    reason = native_bf16(device)
    if reason:
        return "auto", f"precision: auto (fp32 or bf16, with the engine: {reason})"
    return "auto", "precision: fp32 (auto: no native bf16 here, where bf16 autocast would be slower)"
