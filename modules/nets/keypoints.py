"""The one keypoint type every part passes: the detector finds it, relative motion moves it, dense motion
and the generators read it, and each family's ``keypoints(frames)`` returns it (FOMM sec. 3: a keypoint is a
position and the Jacobian of the motion's local affine approximation there)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class Keypoints(NamedTuple):
    value: torch.Tensor                          # (B, K, 2) in [-1, 1], x first
    jacobian: Optional[torch.Tensor] = None      # (B, K, 2, 2); None unless the detector estimates Jacobians
    raw_heatmap: Optional[torch.Tensor] = None   # (B, K, h, w) the detector's pre-softmax maps, when it found them

    def expand(self, batch: int) -> "Keypoints":
        """A batch-1 set repeated ``batch`` times (a view, no copy); the heatmaps are not carried."""
        jacobian = None if self.jacobian is None else self.jacobian.expand(batch, -1, -1, -1)
        return Keypoints(self.value.expand(batch, -1, -1), jacobian)

    def without_jacobian(self) -> "Keypoints":
        return Keypoints(self.value)

    def with_jacobian(self) -> "Keypoints":
        """The same keypoints with identity Jacobians where they have none (a graph exported with Jacobian
        inputs always takes them; a model without Jacobians ignores them)."""
        if self.jacobian is not None:
            return self
        return Keypoints(self.value, torch.eye(2, device=self.value.device).expand(*self.value.shape[:2], 2, 2))

    @staticmethod
    def random(batch: int, num_kp: int, generator: Optional[torch.Generator] = None) -> "Keypoints":
        """Keypoints inside the frame with near-identity Jacobians: example inputs for exporting a graph."""
        value = torch.rand(batch, num_kp, 2, generator=generator) * 1.6 - 0.8
        return Keypoints(value, torch.eye(2) + 0.1 * torch.randn(batch, num_kp, 2, 2, generator=generator))
