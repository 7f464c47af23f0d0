"""Relative motion: FOMM's animation normalisation, used by the circles mask (keypoint-mask paper sec. 2.2).

The driving video moves the *source's* keypoints by how far its own keypoints moved since its first frame,
so the source keeps its own body shape and position:

    kp_new = kp_source + (kp_driving - kp_driving_initial) * scale
    scale  = sqrt(area(hull(kp_source)) / area(hull(kp_driving_initial)))   with adapt_movement_scale, else 1
    J_new  = J_driving @ inverse(J_driving_initial) @ J_source

FOMM computes the hull areas from batch element 0 only; here each sample gets its own scale (the same
thing when, as in animation, every sample shares one source and one initial driving frame).
"""
from __future__ import annotations

from typing import Optional

import torch
from scipy.spatial import ConvexHull, QhullError

from modules.nets.keypoints import Keypoints


def convex_hull_area(points: torch.Tensor) -> torch.Tensor:
    """Area of the convex hull of each sample's points: (B, K, 2) -> (B,); 0 where they span no area (fewer than
    three distinct points, or all on one line). scipy's Qhull, as FOMM measures it."""
    areas = []
    for sample in points.detach().double().cpu().numpy():
        try:
            areas.append(ConvexHull(sample).volume)     # the "volume" of a 2-D hull is its area
        except QhullError:
            areas.append(0.0)
    return torch.tensor(areas, dtype=points.dtype, device=points.device)


def relative_keypoints(kp_source: torch.Tensor, kp_driving: torch.Tensor, kp_driving_initial: torch.Tensor, *,
                       jacobian_source: Optional[torch.Tensor] = None,
                       jacobian_driving: Optional[torch.Tensor] = None,
                       jacobian_driving_initial: Optional[torch.Tensor] = None,
                       adapt_movement_scale: bool = False, use_relative_movement: bool = True,
                       use_relative_jacobian: bool = True) -> Keypoints:
    """The keypoints (and Jacobians) that drive the source: kp_* (B, K, 2), jacobian_* (B, K, 2, 2).

    Without use_relative_movement the driving keypoints are used as they are (absolute motion).
    """
    if not use_relative_movement:
        return Keypoints(kp_driving, jacobian_driving)
    scale = torch.ones(kp_source.shape[0], dtype=kp_source.dtype, device=kp_source.device)
    if adapt_movement_scale:
        initial_area = convex_hull_area(kp_driving_initial)
        if (initial_area <= 0).any():
            raise ValueError("adapt_movement_scale: the initial driving keypoints span no area (all on a line)")
        scale = torch.sqrt(convex_hull_area(kp_source) / initial_area)
    value = kp_source + (kp_driving - kp_driving_initial) * scale.view(-1, 1, 1)
    jacobian = jacobian_driving
    if use_relative_jacobian and jacobian_source is not None and jacobian_driving is not None \
            and jacobian_driving_initial is not None:
        jacobian = jacobian_driving @ torch.linalg.inv(jacobian_driving_initial) @ jacobian_source
    return Keypoints(value, jacobian)
