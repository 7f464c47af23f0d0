"""A small keypoint regressor for the synthetic stick figures: the pose estimator behind AKD on that data.

AKD (average keypoint distance) compares the keypoints of a generated frame with those of its ground truth.
On real faces and bodies FOMM uses an off-the-shelf landmark / pose estimator; those see no person in the
synthetic figures of ``scripts/synthetic_dataset.py``, so this module supplies a regressor trained on the
renderer's exact joint positions instead (``python scripts/train_keypoint_regressor.py --data data/synthetic``
writes ``data/synthetic/keypoint-regressor.pth``).

The network is a small convolutional encoder-decoder (64 -> 8 px and back to 32 px, skip connections) that
outputs one heatmap per joint at half the input resolution; a spatial soft-argmax (the softmax-weighted mean
of the cell centres) turns each heatmap into sub-pixel coordinates, so the whole thing is trained end to end
with an L1 loss on coordinates. 190k weights (a 780 kB checkpoint); on 2 CPU cores it scores about 2,000
frames/s at 64 px. The default training (3 minutes on 2 CPU cores: the 3,072 train-split frames plus 8,192
frames of 512 freshly rendered bodies) measured, on the 768 test-split frames of bodies it never saw: mean
error 0.57 px of a 64-px frame (2.3 px at 256), median 0.41 px, 97% of keypoints within 2 px; the same on the
ground-truth animations, and 0.58 px on the test frames blurred with a Gaussian of sigma 1 px (generated frames
are softer than rendered ones). Elbows and knees are the least exact (about 1 px): on a straight limb only the
body's unseen limb proportions say where the joint is. The training script stores its own measured figures
in the checkpoint's ``info``.

Coordinates are (x, y) normalised to [0, 1] of the frame width / height with pixel centre i of an N-pixel
axis at (i + 0.5) / N: the convention of ``F.interpolate`` / ``grid_sample(align_corners=False)``, which is
what makes the normalised output independent of the frame size (multiply by N and subtract 0.5 to get the
dataset's pixel coordinates, whose pixel centres are 0..N-1).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modules.core.errors import UserError
from modules.core.files import atomic_save, read_checkpoint

FORMAT = "kpmask-keypoint-regressor-1"
DEFAULT_SIZE = 64
DEFAULT_CHANNELS = 32
TRAIN_COMMAND = "python scripts/train_keypoint_regressor.py --data <dataset root>"

# Joint order of the synthetic renderer (scripts/synthetic_dataset.py JOINTS). Repeated here so that loading a
# checkpoint does not import the renderer; tests check the two stay equal.
JOINTS: tuple[str, ...] = (
    "head", "neck", "pelvis",
    "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_hand", "r_hand",
    "l_hip", "r_hip", "l_knee", "r_knee", "l_foot", "r_foot",
)


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU (no conv bias: BatchNorm has one)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) heatmap logits -> (B, K, 2) expected (x, y) of the softmax over each map, in [0, 1].

    Cell j of an n-cell axis has its centre at (j + 0.5) / n, the same convention as the output, so a map of
    any resolution gives coordinates in the frame's normalised units.
    """
    batch, keypoints, height, width = logits.shape
    probabilities = logits.float().flatten(2).softmax(dim=-1).view(batch, keypoints, height, width)
    xs = (torch.arange(width, device=logits.device, dtype=torch.float32) + 0.5) / width      # (w,)
    ys = (torch.arange(height, device=logits.device, dtype=torch.float32) + 0.5) / height    # (h,)
    # Marginals first: sum over rows then weight by x (and vice versa): cheaper than a full (h, w, 2) grid.
    x = (probabilities.sum(dim=2) * xs).sum(dim=-1)     # (B, K)
    y = (probabilities.sum(dim=3) * ys).sum(dim=-1)     # (B, K)
    return torch.stack([x, y], dim=-1)


class KeypointRegressor(nn.Module):
    """Frames (B, 3, H, W) in [0, 1] -> keypoints (B, K, 2), (x, y) normalised to [0, 1] (module docstring)."""

    def __init__(self, num_keypoints: int = len(JOINTS), channels: int = DEFAULT_CHANNELS,
                 size: int = DEFAULT_SIZE):
        super().__init__()
        if num_keypoints < 1 or channels < 2 or size < 8 or size % 8:
            raise ValueError(f"need num_keypoints >= 1, channels >= 2 and size a multiple of 8 (>= 8), got "
                             f"num_keypoints={num_keypoints}, channels={channels}, size={size}")
        self.num_keypoints, self.channels, self.size = num_keypoints, channels, size
        c = channels
        # Encoder, for size 64: 64 -> 32 -> 16 -> 8 px. At 8 px the 3x3 convs see the whole figure, which is
        # what tells a left hand from a right one when the arms cross.
        self.stem = nn.Sequential(_conv(3, c // 2), _conv(c // 2, c, stride=2))           # (B, c, 32, 32)
        self.down16 = nn.Sequential(_conv(c, 2 * c, stride=2), _conv(2 * c, 2 * c))        # (B, 2c, 16, 16)
        self.down8 = nn.Sequential(_conv(2 * c, 2 * c, stride=2), _conv(2 * c, 2 * c))     # (B, 2c, 8, 8)
        # Decoder: upsample, concatenate the encoder map of the same resolution (the fine detail the
        # sub-pixel position needs), fuse.
        self.up16 = _conv(4 * c, c)                                                         # (B, c, 16, 16)
        self.up32 = _conv(2 * c, c)                                                         # (B, c, 32, 32)
        self.head = nn.Conv2d(c, num_keypoints, 1)                                          # (B, K, 32, 32)

    def heatmaps(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, 3, H, W) in [0, 1] -> heatmap logits (B, K, size/2, size/2)."""
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected frames of shape (B, 3, H, W), got {tuple(frames.shape)}")
        if frames.shape[-2:] != (self.size, self.size):
            # The network was trained at one resolution; antialiased resize (the data loader's) to it.
            frames = F.interpolate(frames, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                   antialias=True)
        s32 = self.stem(frames - 0.5)          # (B, c, 32, 32); centred input, the first BatchNorm does the rest
        s16 = self.down16(s32)                 # (B, 2c, 16, 16)
        s8 = self.down8(s16)                   # (B, 2c, 8, 8)
        d16 = self.up16(torch.cat([F.interpolate(s8, scale_factor=2, mode="bilinear", align_corners=False),
                                   s16], dim=1))                                            # (B, c, 16, 16)
        d32 = self.up32(torch.cat([F.interpolate(d16, scale_factor=2, mode="bilinear", align_corners=False),
                                   s32], dim=1))                                            # (B, c, 32, 32)
        return self.head(d32)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return soft_argmax(self.heatmaps(frames))


@torch.inference_mode()
def predict(model: KeypointRegressor, frames_uint8: np.ndarray, batch_size: int = 64,
            device: str | torch.device = "cpu") -> np.ndarray:
    """uint8 frames (T, H, W, 3) -> float32 keypoints (T, K, 2), (x, y) normalised to [0, 1].

    The model should be in eval mode (``load_regressor`` returns it so): BatchNorm in training mode would make
    each frame's keypoints depend on the rest of its batch.
    """
    frames_uint8 = np.asarray(frames_uint8)
    if frames_uint8.ndim != 4 or frames_uint8.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames_uint8.shape}")
    if frames_uint8.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames_uint8.dtype}")
    model = model.to(device)
    out = [np.zeros((0, model.num_keypoints, 2), np.float32)]
    for start in range(0, len(frames_uint8), batch_size):
        # a copy: decoded frames may be read-only, which torch.from_numpy warns about
        chunk = torch.from_numpy(np.array(frames_uint8[start:start + batch_size])).to(device)   # (b, H, W, 3)
        chunk = chunk.permute(0, 3, 1, 2).float().div_(255)                                   # (b, 3, H, W)
        out.append(model(chunk).float().cpu().numpy())
    return np.concatenate(out)


@torch.inference_mode()
def predict_with_confidence(model: KeypointRegressor, frames_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames (T, H, W, 3) -> keypoints (T, K, 2) as ``predict`` gives them, and a confidence per frame
    (T,): the mean over keypoints of the peak of each heatmap's softmax. A figure framed as in training gives
    sharp peaks; a frame without one, flat maps (what the crop finder ranks windows by, modules/inference/crop.py)."""
    frames = torch.from_numpy(np.array(frames_uint8)).permute(0, 3, 1, 2).float().div_(255)
    logits = model.heatmaps(frames)
    peaks = logits.float().flatten(2).softmax(dim=-1).amax(dim=-1).mean(dim=-1)
    return soft_argmax(logits).float().numpy(), peaks.numpy()


def pixels_to_normalised(keypoints: np.ndarray, size: int) -> np.ndarray:
    """Dataset keypoints in pixels (pixel centres 0..size-1) -> normalised [0, 1] ((x + 0.5) / size)."""
    return (np.asarray(keypoints, np.float32) + 0.5) / size


def normalised_to_pixels(keypoints: np.ndarray, size: int) -> np.ndarray:
    """Normalised [0, 1] keypoints -> pixels of a size x size frame (pixel centres 0..size-1)."""
    return np.asarray(keypoints, np.float32) * size - 0.5


def save_regressor(path: str | os.PathLike, model: KeypointRegressor, info: dict[str, Any],
                   joints: Optional[list[str]] = None) -> None:
    """Write the model and ``info`` (how it was trained, its accuracy) to ``path``, atomically."""
    atomic_save({"format": FORMAT,
                 "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                 "num_keypoints": model.num_keypoints, "channels": model.channels, "size": model.size,
                 "joints": list(joints if joints is not None else JOINTS[:model.num_keypoints]),
                 "info": dict(info)}, path)


def load_regressor(path: str | os.PathLike, device: str | torch.device = "cpu"
                   ) -> tuple[KeypointRegressor, dict[str, Any]]:
    """The regressor saved at ``path``, in eval mode on ``device``, and the whole checkpoint dict.

    Raises UserError (one line, naming the path) for a missing file, a file that is not a torch checkpoint,
    or a checkpoint of another kind.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: keypoint regressor not found; train it with {TRAIN_COMMAND}")
    checkpoint = read_checkpoint(path)      # CheckpointError (a UserError) for anything torch cannot read
    if checkpoint.get("format") != FORMAT:
        found = checkpoint.get("format")
        raise UserError(f"{path}: not a keypoint regressor checkpoint (expected format {FORMAT!r}, found "
                        f"{'no format key' if found is None else repr(found)}); train one with {TRAIN_COMMAND}")
    try:
        model = KeypointRegressor(int(checkpoint["num_keypoints"]), int(checkpoint["channels"]),
                                  int(checkpoint["size"]))
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: damaged keypoint regressor checkpoint ({reason})") from None
    return model.to(device).eval(), checkpoint
