"""KPDetector: FOMM's key contract, checkpoint loading and its errors, the original code's numbers."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import DATA, save_fomm_checkpoint

from modules.core.errors import CheckpointError
from modules.core.files import atomic_save, read_checkpoint
from modules.nets.blocks import AntiAliasDownsample, make_coordinate_grid
from modules.nets.keypoint_detector import KPDetector, infer_detector_params, load_fomm_detector

TAICHI_256 = dict(block_expansion=32, num_kp=10, num_channels=3, max_features=1024, num_blocks=5,
                  temperature=0.1, estimate_jacobian=True, scale_factor=0.25)


def fomm_keys(network: str = "kp_detector") -> dict[str, tuple[int, ...]]:
    """Keys and shapes of one network of FOMM's vox/taichi-256 checkpoints (copy of shared/fixtures' table)."""
    expected = {}
    with open(os.path.join(DATA, "fomm-vox-256-state-dict-keys.tsv")) as stream:
        for line in stream:
            if line.startswith("#") or line.startswith("network\t"):
                continue
            owner, key, shape = line.rstrip("\n").split("\t")
            if owner == network:
                expected[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return expected


def test_state_dict_has_exactly_fomm_keys_and_shapes():
    detector = KPDetector(**TAICHI_256)
    got = {k: tuple(v.shape) for k, v in detector.state_dict().items()}
    assert got == fomm_keys()


def test_fomm_checkpoint_loads_strictly_and_frozen(tmp_path):
    source = KPDetector(**TAICHI_256)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for name, buffer in source.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    path = save_fomm_checkpoint(str(tmp_path / "taichi-cpk.pth.tar"), source.state_dict())
    detector = load_fomm_detector(path, TAICHI_256)
    assert not detector.training
    assert all(not p.requires_grad for p in detector.parameters())
    for key, value in source.state_dict().items():
        assert torch.equal(detector.state_dict()[key], value), key
    image = torch.rand(1, 3, 256, 256)
    source.eval()
    assert torch.equal(detector(image).value, source(image).value)


def test_module_prefix_from_data_parallel_is_accepted(tmp_path):
    source = KPDetector(**TAICHI_256)
    path = save_fomm_checkpoint(str(tmp_path / "dp.pth.tar"), source.state_dict(), prefix="module.")
    detector = load_fomm_detector(path, TAICHI_256)
    assert torch.equal(detector.kp.weight, source.kp.weight)


def test_mismatched_config_names_keys_shapes_and_settings(tmp_path):
    path = save_fomm_checkpoint(str(tmp_path / "vox-cpk.pth.tar"), KPDetector(**TAICHI_256).state_dict())
    wrong = dict(TAICHI_256, num_kp=4, estimate_jacobian=False)
    with pytest.raises(CheckpointError) as info:
        load_fomm_detector(path, wrong)
    message = str(info.value)
    assert "\n" not in message
    assert "vox-cpk.pth.tar" in message
    assert "unexpected keys: jacobian.weight" in message
    assert "kp.weight (10, 35, 7, 7) vs (4, 35, 7, 7)" in message
    assert "num_kp=10" in message and "estimate_jacobian=True" in message and "scale_factor=0.25" in message


def test_mismatched_scale_factor_is_diagnosed(tmp_path):
    path = save_fomm_checkpoint(str(tmp_path / "c.pth.tar"), KPDetector(**TAICHI_256).state_dict())
    with pytest.raises(CheckpointError, match=r"scale_factor=0.25.*down.weight \(3, 1, 13, 13\) vs \(3, 1, 29, 29\)"):
        load_fomm_detector(path, dict(TAICHI_256, scale_factor=0.125))


def test_infer_detector_params_reads_the_settings_back():
    found = infer_detector_params(KPDetector(**TAICHI_256).state_dict())
    assert found == dict(num_blocks=5, num_channels=3, block_expansion=32, max_features=1024, num_kp=10,
                         estimate_jacobian=True, single_jacobian_map=False, scale_factor=0.25)


@pytest.mark.parametrize("content, pattern", [
    (None, "checkpoint file not found"),
    (b"this is not a checkpoint", "cannot read as a PyTorch checkpoint"),
])
def test_unreadable_checkpoints_give_one_line_errors(tmp_path, content, pattern):
    path = tmp_path / "bad.pth.tar"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_fomm_detector(str(path), TAICHI_256)
    assert "\n" not in str(info.value)


def test_checkpoint_without_kp_detector_is_refused(tmp_path):
    path = tmp_path / "gen-only.pth.tar"
    torch.save({"generator": {}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="no 'kp_detector' entry"):
        load_fomm_detector(str(path), TAICHI_256)


class NotATensor:
    pass


def test_weights_only_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"kp_detector": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only load refused"):
        read_checkpoint(str(path))


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(2)}, path)
    atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(read_checkpoint(path)["a"], torch.zeros(2))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_detector_matches_the_original_code(original):
    detector = KPDetector(**original["kp_detector_params"])
    detector.load_state_dict(original["kp_detector"], strict=True)
    detector.eval()
    with torch.no_grad():
        out = detector(original["input"])
    assert out.raw_heatmap.shape == (2, 4, 10, 10)
    torch.testing.assert_close(out.value, original["fomm_value"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.jacobian, original["fomm_jacobian"], atol=1e-5, rtol=0)


def test_jacobian_head_starts_at_identity():
    detector = KPDetector(**dict(TAICHI_256, block_expansion=8, max_features=64, num_blocks=3)).eval()
    jacobian = detector(torch.rand(2, 3, 64, 64)).jacobian
    torch.testing.assert_close(jacobian, torch.eye(2).expand(2, 10, 2, 2))


def test_coordinate_grid_corners_and_order():
    grid = make_coordinate_grid(3, 5)
    assert grid.shape == (3, 5, 2)
    assert grid[0, 0].tolist() == [-1.0, -1.0] and grid[-1, -1].tolist() == [1.0, 1.0]
    assert grid[0, -1].tolist() == [1.0, -1.0]           # x first, then y


def test_anti_alias_kernel_is_the_documented_gaussian():
    down = AntiAliasDownsample(3, 0.25)
    assert down.weight.shape == (3, 1, 13, 13)
    torch.testing.assert_close(down.weight.sum(dim=(1, 2, 3)), torch.ones(3))
    centre = down.weight[0, 0, 6]
    torch.testing.assert_close(centre[7] / centre[6], torch.exp(torch.tensor(-1 / (2 * 1.5 ** 2))))
    out = down(torch.full((1, 3, 64, 64), 0.5))
    assert out.shape == (1, 3, 16, 16)
    torch.testing.assert_close(out[:, :, 4:12, 4:12], torch.full((1, 3, 8, 8), 0.5))
