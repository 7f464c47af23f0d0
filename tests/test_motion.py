"""Relative motion (FOMM's relative animation; keypoint-mask paper sec. 2.2): translations carry over, adapt_scale scales them by the hulls' ratio."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import config_path

from modules.nets.motion import convex_hull_area, relative_keypoints


def square(side: float, centre=(0.0, 0.0)) -> torch.Tensor:
    half = side / 2
    corners = [(-half, -half), (half, -half), (half, half), (-half, half), (0.0, 0.0)]   # one point inside
    return torch.tensor([[(x + centre[0], y + centre[1]) for x, y in corners]])


def test_hull_area_of_known_shapes():
    assert convex_hull_area(square(0.5)).item() == pytest.approx(0.25)
    triangle = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2]]])
    assert convex_hull_area(triangle).item() == pytest.approx(0.5)
    assert convex_hull_area(torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])).item() == 0.0   # a line


def test_translating_the_driver_translates_the_source_by_the_same_amount():
    source = square(0.4, centre=(0.3, -0.2))
    initial = square(0.6)
    t = torch.tensor([0.1, -0.05])
    moved = relative_keypoints(source, initial + t, initial)
    assert torch.allclose(moved.value, source + t)
    # no motion since the first frame: the source keypoints, unchanged
    assert torch.allclose(relative_keypoints(source, initial, initial).value, source)


def test_adapt_scale_scales_the_displacement_by_the_hull_ratio():
    source = square(0.4)
    initial = square(0.4 * math.sqrt(2))            # twice the source's hull area
    t = torch.tensor([0.2, 0.1])
    moved = relative_keypoints(source, initial + t, initial, adapt_movement_scale=True)
    assert torch.allclose(moved.value, source + t / math.sqrt(2))


def test_absolute_motion_returns_the_driving_keypoints():
    source, driving, initial = square(0.4), square(0.5, (0.1, 0.1)), square(0.6)
    moved = relative_keypoints(source, driving, initial, use_relative_movement=False)
    assert torch.equal(moved.value, driving)


def test_relative_jacobian_composes_driving_change_with_the_source():
    eye = torch.eye(2).expand(1, 5, 2, 2)
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]]).expand(1, 5, 2, 2)
    stretch = torch.diag(torch.tensor([2.0, 1.0])).expand(1, 5, 2, 2)
    kp = square(0.4)
    moved = relative_keypoints(kp, kp, kp, jacobian_source=stretch, jacobian_driving=rotation,
                               jacobian_driving_initial=eye)
    assert torch.allclose(moved.jacobian, rotation @ stretch)
    unchanged = relative_keypoints(kp, kp, kp, jacobian_source=stretch, jacobian_driving=rotation,
                                   jacobian_driving_initial=rotation)
    assert torch.allclose(unchanged.jacobian, stretch)


@pytest.mark.parametrize("name, motion, flag, in_config, expected", [
    ("tiny-circles.yaml", None, False, False, ("relative", False)),
    ("tiny-circles.yaml", None, False, True, ("relative", True)),     # the config's adapt_movement_scale is read
    ("tiny-circles.yaml", None, True, False, ("relative", True)),     # the flag asks for it
    ("tiny-circles.yaml", "absolute", False, True, ("absolute", False)),
    ("tiny-heatmap.yaml", None, False, True, ("absolute", False)),    # no keypoints to scale: ignored
])
def test_choose_motion_reads_adapt_movement_scale_from_the_config(name, motion, flag, in_config, expected):
    from modules.config.loading import load_config
    from modules.inference.pipeline import choose_motion

    config = load_config(config_path(name))
    config.animate_params.normalization_params.adapt_movement_scale = in_config
    assert choose_motion(config, motion, flag, name) == expected


def test_adapt_scale_flag_with_absolute_motion_is_refused():
    from modules.config.loading import load_config
    from modules.core.errors import UserError
    from modules.inference.pipeline import choose_motion

    with pytest.raises(UserError, match="--adapt_scale scales relative motion"):
        choose_motion(load_config(config_path("tiny-heatmap.yaml")), None, True, "tiny-heatmap.yaml")
