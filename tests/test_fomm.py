"""FOMM (stage one): invariants of its parts, official checkpoint keys, gradient routing, and the pipeline
stage one -> stage two through run.py."""
from __future__ import annotations

import glob
import os
import warnings

import numpy as np
import pytest
import torch
import yaml
from conftest import TinyFeatures, config_path, train_ddp_on_two_gloo_processes, write_tiny
from test_detector import fomm_keys

import run
from modules.config.family import StepContext
from modules.config.loading import config_from_dict, load_config
from modules.core.errors import ConfigError
from modules.nets.blocks import make_coordinate_grid
from modules.nets.dense_motion import warp
from modules.nets.keypoint_detector import KPDetector
from modules.nets.keypoints import Keypoints
from modules.training.transform import RandomTPS

FRAME = 64


def tiny_fomm(**train_params):
    with open(config_path("tiny-fomm.yaml")) as stream:
        data = yaml.safe_load(stream)
    data["train_params"].update(train_params)
    return config_from_dict(data, "tiny-fomm.yaml")


def build(config):
    from modules.families.build import build_model

    return build_model(config)


# ----------------------------------------------------------------------------------------------------------
# Invariants

def test_coordinate_grid_corners_are_exactly_minus_one_and_one():
    grid = make_coordinate_grid(7, 5)
    assert grid.shape == (7, 5, 2)
    assert grid[0, 0].tolist() == [-1.0, -1.0] and grid[-1, -1].tolist() == [1.0, 1.0]
    assert grid[0, -1].tolist() == [1.0, -1.0]                                 # x first, then y


def test_jacobian_head_starts_at_the_identity():
    detector = KPDetector(block_expansion=8, num_kp=4, num_channels=3, max_features=64, num_blocks=3,
                          temperature=0.1, estimate_jacobian=True, scale_factor=0.25).eval()
    jacobian = detector(torch.rand(3, 3, FRAME, FRAME)).jacobian
    torch.testing.assert_close(jacobian, torch.eye(2).expand(3, 4, 2, 2), atol=1e-6, rtol=0)


def test_tps_with_zero_parameters_is_the_identity():
    transform = RandomTPS.identity(2)
    points = torch.rand(2, 9, 2) * 2 - 1
    assert torch.equal(transform.warp_coordinates(points), points)
    torch.testing.assert_close(transform.jacobian(points), torch.eye(2).expand(2, 9, 2, 2))
    frame = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(transform.transform_frame(frame, align_corners=True), frame, atol=1e-5, rtol=0)


def test_tps_jacobian_in_closed_form_equals_autograd():
    transform = RandomTPS(3, sigma_affine=0.05, sigma_tps=0.005, points_tps=5,
                          generator=torch.Generator().manual_seed(1))
    points = (torch.rand(3, 6, 2, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    warped = transform.warp_coordinates(points)
    rows = [torch.autograd.grad(warped[..., i].sum(), points, retain_graph=True)[0] for i in range(2)]
    torch.testing.assert_close(transform.jacobian(points.detach()), torch.stack(rows, dim=-2))


def test_warping_with_the_identity_flow_reproduces_the_frame_with_align_corners_true():
    frame = torch.rand(2, 3, 16, 16)
    identity = make_coordinate_grid(16, 16).expand(2, -1, -1, -1)
    torch.testing.assert_close(warp(frame, identity, align_corners=True), frame, atol=1e-6, rtol=0)
    # The documented choice matters: today's default reads pixel centres half a pixel off and blurs.
    assert (warp(frame, identity, align_corners=False) - frame).abs().max() > 0.05


def test_relative_jacobians_follow_driving_times_inverse_initial_times_source():
    config = tiny_fomm()
    model = build(config).eval()
    recorded = {}
    original = model.generator.forward

    def spy(source, kp_driving, kp_source):
        recorded["kp"] = kp_driving
        return original(source, kp_driving, kp_source)

    model.generator.forward = spy
    generator = torch.Generator().manual_seed(0)

    def random_kp(batch):
        return Keypoints(torch.rand(batch, 4, 2, generator=generator) - 0.5,
                         torch.eye(2) + 0.3 * torch.rand(batch, 4, 2, 2, generator=generator))

    source, initial, driving = random_kp(1), random_kp(1), random_kp(2)
    model.keypoints = lambda frames: driving
    with torch.no_grad():
        model.animate(type(model.encode_source(torch.rand(1, 3, FRAME, FRAME)))(torch.rand(1, 3, FRAME, FRAME), source),
                      torch.rand(2, 3, FRAME, FRAME), initial)
    expected = driving.jacobian @ torch.linalg.inv(initial.jacobian) @ source.jacobian
    torch.testing.assert_close(recorded["kp"].jacobian, expected)
    torch.testing.assert_close(recorded["kp"].value, source.value + driving.value - initial.value)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint compatibility

@pytest.mark.parametrize("name", ["vox-256-fomm.yaml", "taichi-256-fomm.yaml"])
def test_networks_have_exactly_the_official_keys_and_shapes(name):
    model = build(load_config(config_path(name)))
    for network in ("kp_detector", "generator", "discriminator"):
        got = {k: tuple(v.shape) for k, v in getattr(model, network).state_dict().items()}
        assert got == fomm_keys(network), network


def test_deformed_skip_starts_as_the_warped_source_and_keeps_fomm_keys():
    with_skip = tiny_fomm()
    assert with_skip.model_params.generator_params.deformed_skip            # the tiny config turns it on
    without = tiny_fomm()
    without.model_params.generator_params.deformed_skip = False
    skip_model, plain_model = build(with_skip).eval(), build(without).eval()
    skip_state, plain_state = skip_model.generator.state_dict(), plain_model.generator.state_dict()
    assert skip_state.keys() == plain_state.keys()
    assert skip_state["final.weight"].shape[1] == plain_state["final.weight"].shape[1] + 3   # + the warped source
    source, driving = torch.rand(2, 3, FRAME, FRAME), torch.rand(2, 3, FRAME, FRAME)
    with torch.no_grad():
        out = skip_model(source, driving)
    # whatever the decoder computes, at step 0 the prediction is the warped source through the sigmoid copy
    torch.testing.assert_close(out.prediction, torch.sigmoid(4.4 * (out.deformed - 0.5)))
    assert (out.deformed - source).abs().mean() > 1e-3                       # and it did move


def _official_format(model) -> dict:
    """What an official vox-cpk.pth.tar holds: FOMM's top-level keys, state dicts without prefixes."""
    return {"generator": model.generator.state_dict(), "discriminator": model.discriminator.state_dict(),
            "kp_detector": model.kp_detector.state_dict(), "optimizer_generator": {},
            "optimizer_discriminator": {}, "optimizer_kp_detector": {}, "epoch": 99}


def test_an_official_format_checkpoint_loads_strictly_and_runs_with_its_config(tmp_path):
    from modules.inference.loading import load_model

    torch.manual_seed(5)
    original = build(load_config(config_path("vox-256-fomm.yaml")))
    path = str(tmp_path / "vox-cpk.pth.tar")
    torch.save(_official_format(original), path)
    config, model, checkpoint = load_model(path, torch.device("cpu"), config_path("vox-256-fomm.yaml"))
    for network in ("kp_detector", "generator", "discriminator"):
        mine, theirs = getattr(model, network).state_dict(), getattr(original, network).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), network
    assert checkpoint["results_root"] == str(tmp_path / "vox-cpk")
    with pytest.raises(Exception, match="holds no config; pass --config"):
        load_model(path, torch.device("cpu"))


def test_a_checkpoint_of_other_networks_is_a_one_line_error(tmp_path, capsys):
    small = build(tiny_fomm())
    path = str(tmp_path / "tiny.pth.tar")
    torch.save(_official_format(small), path)
    code = run.main(["--mode", "reconstruction", "--checkpoint", path, "--config", config_path("vox-256-fomm.yaml")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "does not fit" in error and "tiny.pth.tar" in error


# ----------------------------------------------------------------------------------------------------------
# Training

def test_generator_phase_leaves_the_discriminator_alone_and_vice_versa():
    from modules.families.build import build_trainable

    config = tiny_fomm(loss_weights={"perceptual": [10, 10, 10], "l1": 10, "generator_gan": 1, "discriminator_gan": 1,
                                     "feature_matching": [10, 10, 10], "equivariance_value": 10,
                                     "equivariance_jacobian": 10})
    model = build(config)
    trainable = build_trainable(config, model, feature_extractor=TinyFeatures()).train()
    seen = []

    def backward(loss):
        loss.backward()
        seen.append({name: [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in network.parameters()]
                     for name, network in trainable.networks().items()})
        for parameter in trainable.parameters():
            parameter.grad = None

    step = trainable.training_step(torch.rand(2, 3, FRAME, FRAME), torch.rand(2, 3, FRAME, FRAME),
                                   StepContext(autocast=__import__("contextlib").nullcontext, backward=backward))
    generator_phase, discriminator_phase = seen
    assert not any(generator_phase["discriminator"])
    assert any(generator_phase["generator"]) and any(generator_phase["kp_detector"])
    assert not any(discriminator_phase["generator"]) and not any(discriminator_phase["kp_detector"])
    assert any(discriminator_phase["discriminator"])
    assert all(float(value.detach()) > 0 for value in step.losses.values())
    assert all(p.requires_grad for p in model.discriminator.parameters())     # unfrozen again afterwards


def test_without_generator_gan_the_discriminator_is_neither_used_nor_trained():
    from modules.families.build import build_trainable

    config = tiny_fomm()
    trainable = build_trainable(config, build(config), feature_extractor=TinyFeatures()).train()
    calls = []
    trainable.model.discriminator.register_forward_hook(lambda *_: calls.append(1))
    losses = []
    step = trainable.training_step(torch.rand(2, 3, FRAME, FRAME), torch.rand(2, 3, FRAME, FRAME),
                                   StepContext(__import__("contextlib").nullcontext, lambda l: losses.append(l)))
    assert calls == [] and len(losses) == 1
    assert float(step.losses["discriminator_gan"]) == 0 and float(step.losses["equivariance_jacobian"].detach()) > 0


def test_config_errors_name_the_key():
    with open(config_path("tiny-fomm.yaml")) as stream:
        data = yaml.safe_load(stream)
    bad = {**data, "model_params": {**data["model_params"], "family": "fom"}}
    with pytest.raises(ConfigError, match="model_params.family: expected one of 'keypoint_mask', 'fomm'"):
        config_from_dict(bad, "x.yaml")
    data["model_params"]["common_params"]["estimate_jacobian"] = False
    with pytest.raises(ConfigError, match="equivariance_jacobian"):
        config_from_dict(data, "x.yaml")


def _write(folder, name: str, dataset_root: str) -> str:
    return write_tiny(folder, name, dataset_root)


def test_stage_one_then_stage_two_then_both_reconstruct_and_animate(tmp_path, dataset_root):
    from modules.core.files import read_checkpoint

    def quiet(*args):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run.main([*args, "--device", "cpu"])

    # FOMM trains the detector of tiny-heatmap.yaml (the labelled stage one's settings: 15 keypoints, 32 px)
    fomm = _write(tmp_path, "tiny-fomm.yaml", dataset_root)
    with open(fomm) as stream:
        data = yaml.safe_load(stream)
    with open(config_path("tiny-heatmap.yaml")) as stream:
        heatmap = yaml.safe_load(stream)["model_params"]
    data["model_params"]["common_params"].update(heatmap["common_params"])
    data["model_params"]["kp_detector_params"] = heatmap["kp_detector_params"]
    with open(fomm, "w") as stream:
        yaml.safe_dump(data, stream)
    assert quiet("--mode", "train", "--config", fomm, "--log_dir", str(tmp_path / "one")) == 0
    (stage_one,) = glob.glob(str(tmp_path / "one" / "*" / "00000000-checkpoint.pth.tar"))
    checkpoint = read_checkpoint(stage_one)
    assert {"generator", "discriminator", "kp_detector", "optimizer_generator", "optimizer_discriminator",
            "optimizer_kp_detector", "epoch"} <= set(checkpoint)
    assert os.listdir(os.path.join(os.path.dirname(stage_one), "train-vis"))

    assert quiet("--mode", "train", "--config", _write(tmp_path, "tiny-heatmap.yaml", dataset_root),
                 "--checkpoint_with_kp", os.path.dirname(stage_one), "--log_dir", str(tmp_path / "two")) == 0   # its run folder
    (stage_two,) = glob.glob(str(tmp_path / "two" / "*" / "00000000-checkpoint.pth.tar"))
    second = read_checkpoint(stage_two)
    for key, value in checkpoint["kp_detector"].items():        # the frozen detector came from stage one
        assert torch.equal(second["kp_detector"][key], value), key

    for path in (stage_one, stage_two):
        assert quiet("--mode", "reconstruction", "--checkpoint", path) == 0
        assert quiet("--mode", "animate", "--checkpoint", path) == 0
    from modules.data.video_io import open_video

    folder = os.path.dirname(stage_one)
    video = open_video(glob.glob(os.path.join(folder, "reconstruction", "*.mp4"))[0])
    assert video.read([0]).shape == (1, FRAME, 5 * FRAME, 3)     # source+kp | driving+kp | deformed | occl. | pred.
    assert os.path.isfile(os.path.join(folder, "reconstruction", "metrics.json"))
    assert os.path.isfile(os.path.join(folder, "animation", "metrics.json"))


def test_keypoints_vs_joints_tells_a_tracking_keypoint_from_a_still_one():
    from scripts.measure.keypoints_vs_joints import compare

    rng = np.random.default_rng(0)
    joints = [rng.uniform(10, 50, size=(20, 3, 2)) for _ in range(2)]
    following = [np.stack([j[:, 1] + 1.5, np.full((20, 2), 32.0)], axis=1) for j in joints]   # on joint 1; still
    result = compare(following, joints, ["a", "b", "c"])
    (joint0, distance0, mover0, explained0), (_, _, _, explained1) = result["per_keypoint"]
    assert joint0 == "b" and mover0 == "b" and distance0 == pytest.approx(1.5 * np.sqrt(2))
    assert explained0 == pytest.approx(1.0) and explained1 == pytest.approx(0.0)


def test_pose_from_keypoints_needs_keypoints_that_carry_the_pose():
    from scripts.measure.keypoints_vs_joints import regress_joints

    rng = np.random.default_rng(0)
    joints = rng.uniform(5, 60, size=(400, 3, 2))
    on_limbs = joints[:, [0, 2]] * 0.5 + 3.0          # keypoints on two of the three joints (scaled, shifted)
    train, test = slice(0, 300), slice(300, 400)
    partial = regress_joints(on_limbs[train], joints[train], on_limbs[test], joints[test])
    complete = regress_joints(joints[train] + 1.0, joints[train], joints[test] + 1.0, joints[test])
    still = np.full((400, 2, 2), 32.0)
    nothing = regress_joints(still[train], joints[train], still[test], joints[test])
    assert complete["pose_px"] < 0.01                                  # any affine image of the joints: exact
    mean_pose = nothing["mean_pose_px"]
    assert nothing["pose_px"] == pytest.approx(mean_pose, rel=0.02)    # still keypoints: no better than the mean
    # the two joints the keypoints sit on are exact; the third, independent, one is only its mean
    assert partial["pose_px"] == pytest.approx(mean_pose / 3, rel=0.15)


def test_keypoints_are_drawn_in_their_colours_and_nothing_else_changes():
    from modules.core.pictures import draw_keypoints, keypoint_colours

    images = torch.zeros(1, 3, 21, 21)
    drawn = draw_keypoints(images, torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]), radius=2)
    torch.testing.assert_close(drawn[0, :, 10, 10], keypoint_colours(2)[0])
    torch.testing.assert_close(drawn[0, :, 20, 20], keypoint_colours(2)[1])
    assert drawn[0, :, 0, 0].abs().sum() == 0 and drawn[0, :, 10, 16].abs().sum() == 0
    assert images.abs().sum() == 0


def test_results_table_puts_models_and_baselines_in_rows(tmp_path):
    import json

    from scripts.measure.results_table import table

    for name, l1 in (("a", 0.05), ("b", 0.04)):
        for mode in ("reconstruction", "animation"):
            os.makedirs(tmp_path / name / mode)
            baselines = {"copy_source": {"l1": 0.03, "ssim": 0.7, "akd": 10.0}}
            if mode == "animation":
                baselines["copy_driving"] = {"l1": 0.14, "ssim": 0.2, "akd": 9.0}
            with open(tmp_path / name / mode / "metrics.json", "w") as stream:
                json.dump({"mean": {"l1": l1, "ssim": 0.6}, "baselines": baselines}, stream)
    os.makedirs(tmp_path / "b" / "animation-no_ref")
    with open(tmp_path / "b" / "animation-no_ref" / "metrics.json", "w") as stream:
        json.dump({"mean": {"l1": 0.045, "ssim": 0.5}}, stream)
    lines = table([str(tmp_path / "a"), str(tmp_path / "b")], ["FOMM", "heatmap"])
    assert lines[0].startswith("| model | reconstruction L1 | reconstruction motion-region L1 | reconstruction SSIM")
    assert lines[2] == "| FOMM | 0.0500 | - | 0.6000 | - | 0.0500 | - | 0.6000 | - |"
    assert lines[4] == "| heatmap, no_ref | - | - | - | - | 0.0450 | - | 0.5000 | - |"     # an ablation follows its run
    assert lines[5] == "| *copy source* | 0.0300 | - | 0.7000 | 10.00 | 0.0300 | - | 0.7000 | 10.00 |"
    assert lines[6] == "| *copy driving* | - | - | - | - | 0.1400 | - | 0.2000 | 9.00 |" and len(lines) == 7


def test_ddp_on_two_gloo_processes_trains_both_phases_with_identical_weights(tmp_path, dataset_root):
    config_file = _write(tmp_path, "tiny-fomm.yaml", dataset_root)
    with open(config_file) as stream:
        data = yaml.safe_load(stream)
    data["train_params"]["batch_size"] = 4
    data["train_params"]["loss_weights"]["generator_gan"] = 1          # both phases, both DDP wrappers
    with open(config_file, "w") as stream:
        yaml.safe_dump(data, stream)
    run_dir = train_ddp_on_two_gloo_processes(config_file, tmp_path / "log")
    from modules.core.files import read_checkpoint

    (checkpoint,) = glob.glob(os.path.join(run_dir, "*.pth.tar"))
    state = read_checkpoint(checkpoint)
    assert state["optimizer_discriminator"]["state"]                   # the discriminator did take steps
