"""Mixed precision chosen once for training and inference: 'no' (fp32), 'bf16' (CPU or GPU), 'fp16' (GPU)."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

from modules.errors import UserError


def autocast_dtype(precision: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` (None for fp32); fp16 on a CPU is an error."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"mixed precision fp16 needs a CUDA device (this run is on {device}); use bf16 on CPU")
    return {None: None, "no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """torch.autocast for ``dtype``, or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
