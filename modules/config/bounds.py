"""Sane upper bounds on the sizes a config asks for, checked before anything else looks at them.

A config is input: a model file carries one, and its numbers decide how much is allocated. A frame_shape of
[100000, 100000] or a million bottleneck blocks is nothing a model of this kind needs; without a bound it is a
process killed by the kernel at 22 GB or a build that never ends, instead of a one-line error. Each bound sits
well above every shipped config and every official FOMM config (vox, taichi, bair, mgif; 256 and 512 px), so a
real model never meets one. ``check_bounds`` runs first in ``check_config``, so it guards every way a config
is read: a YAML file, a training checkpoint and a model file alike. How much memory a bounded config still
needs is the families' estimate (modules/families/memory.py), compared with what the machine has.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from modules.core.errors import ConfigError


class Bound(NamedTuple):
    most: int
    why: str                              # said in the error: what the value means, what real models use


MAX_FRAME_SIDE = 4096                     # FOMM's frames are 256 px, the largest shipped config's 512
# By key name, wherever the key sits (num_blocks means the same in every hourglass and U-Net).
SIZE_BOUNDS: dict[str, Bound] = {
    "num_kp": Bound(256, "keypoints; FOMM uses 10"),
    "block_expansion": Bound(512, "channels of the first block; FOMM uses 32 to 64"),
    "max_features": Bound(4096, "the channel cap; FOMM uses 512 to 1024"),
    "num_blocks": Bound(10, "blocks that each halve the frame; FOMM uses 4 to 5"),
    "num_down_blocks": Bound(6, "blocks that each halve the frame; FOMM uses 2"),
    "num_up_blocks": Bound(6, "blocks that each double the frame; the paper uses 2"),
    "num_bottleneck_blocks": Bound(128, "residual blocks; FOMM uses 6"),
    "points_tps": Bound(32, "the TPS grid's side (its square is the control points); FOMM uses 5"),
    "num_strips": Bound(256, "perturbation strips; the paper uses 6"),
}


def check_bounds(config: Any, file: str) -> None:
    """Every size in the built config (its dataclasses, walked) within its bound, and the frame sides within
    MAX_FRAME_SIDE; the first one beyond is a ConfigError naming the file, the key and the bound."""
    shape = config.dataset_params.frame_shape
    for axis, side in zip(("height", "width"), shape[:2]):
        if side > MAX_FRAME_SIDE:
            raise ConfigError(f"{file}: dataset_params.frame_shape: {axis} {side} is beyond the bound of "
                              f"{MAX_FRAME_SIDE} px a side (FOMM's frames are 256)")
    for key, value in _sizes(config, ""):
        bound = SIZE_BOUNDS[key.rsplit(".", 1)[-1]]
        if value > bound.most:
            raise ConfigError(f"{file}: {key}: expected at most {bound.most} ({bound.why}), got {value}")


def _sizes(node: Any, prefix: str):
    """(dotted key, value) of every integer field named in SIZE_BOUNDS, depth first in field order."""
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        key = f"{prefix}.{field.name}" if prefix else field.name
        if dataclasses.is_dataclass(value):
            yield from _sizes(value, key)
        elif field.name in SIZE_BOUNDS and isinstance(value, int) and not isinstance(value, bool):
            yield key, value
