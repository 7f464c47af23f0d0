"""The generators and the model: shapes, ranges, sizes from the config, gradient routing, frozen detector."""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import TinyFeatures, config_path

from modules.config.loading import load_config
from modules.families.build import build_model
from modules.families.keypoint_mask import build_loss
from modules.nets.generator import build_frame_generator


def test_paper_parameter_counts():
    config = load_config(config_path("taichi-256-heatmap.yaml"))
    generator = build_frame_generator(config.model_params)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # the original implementation's sizes: low-res 7.53M, high-res 37.64M (no unused down blocks), detector 14.2M.
    assert count(generator.low_res) == 7_529_219
    assert count(generator.high_res) == 37_635_867
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config)
    assert count(model.mask.detector) == 14_215_368


@pytest.mark.parametrize("name, size", [("tiny-heatmap.yaml", 64), ("taichi-256-heatmap.yaml", 256)])
def test_shapes_and_ranges(name, size):
    config = load_config(config_path(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config).eval()
    source, driving = torch.rand(2, 1, 3, size, size).unbind(0)
    with torch.no_grad():
        out = model(source, driving)
    assert out.low_res_prediction.shape == out.prediction.shape == (1, 3, size, size)
    side = round(size * config.model_params.common_params.scale_factor)     # the detector's input size
    assert out.source_mask.shape == out.driving_mask.shape == (1, 1, side, side)
    for tensor in out:
        assert 0 <= tensor.min() and tensor.max() <= 1


def test_high_res_sizes_come_from_the_config(tiny_config):
    tiny_config.model_params.generator_params.high_res.num_blocks = 2
    tiny_config.model_params.generator_params.high_res.block_expansion = 4
    generator = build_frame_generator(tiny_config.model_params)
    assert len(generator.high_res.hourglass.encoder.down_blocks) == 2
    assert generator.high_res.hourglass.decoder.up_blocks[-1].conv.out_channels == 4
    assert generator.high_res(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16),
                              torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_every_generator_parameter_gets_a_gradient_and_the_detector_none(tiny_model, tiny_loss):
    tiny_model.train()
    source, driving = torch.rand(2, 2, 3, 64, 64).unbind(0)
    terms = tiny_loss(tiny_model(source, driving), driving)
    terms.total().backward()
    for name, parameter in tiny_model.generator.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for name, parameter in tiny_model.mask.named_parameters():
        assert parameter.grad is None, name


def test_high_res_loss_reaches_no_low_res_parameter(tiny_model, tiny_loss):
    tiny_model.train()
    source, driving = torch.rand(2, 2, 3, 64, 64).unbind(0)
    terms = tiny_loss(tiny_model(source, driving), driving)
    terms.perceptual_high_res.backward()
    assert all(p.grad is None for p in tiny_model.generator.low_res.parameters())
    assert all(p.grad is not None for p in tiny_model.generator.high_res.parameters())


def test_low_res_loss_trains_the_low_res_generator(tiny_model, tiny_loss):
    source, driving = torch.rand(2, 2, 3, 64, 64).unbind(0)
    terms = tiny_loss(tiny_model(source, driving), driving)
    terms.perceptual_low_res.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.generator.low_res.parameters())


def test_model_state_is_the_networks_only(tiny_model, tiny_loss):
    keys = tiny_model.state_dict().keys()
    assert all(k.startswith(("mask.detector.", "generator.low_res.", "generator.high_res.")) for k in keys)
    assert all(torch.isfinite(v.float()).all() for v in tiny_model.state_dict().values())


def test_frozen_detector_buffers_are_bit_identical_after_optimisation(tiny_model, tiny_loss):
    detector_state = {k: v.clone() for k, v in tiny_model.mask.detector.state_dict().items()}
    generator_state = {k: v.clone() for k, v in tiny_model.generator.state_dict().items()}
    tiny_model.train()
    assert not tiny_model.mask.detector.training
    assert not any(m.training for m in tiny_model.mask.detector.modules())
    trainable = [p for p in tiny_model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in tiny_model.generator.parameters()}
    optimizer = torch.optim.Adam(trainable, lr=2e-4, betas=(0.5, 0.999))
    for _ in range(3):
        source, driving = torch.rand(2, 2, 3, 64, 64).unbind(0)
        terms = tiny_loss(tiny_model(source, driving), driving)
        optimizer.zero_grad()
        terms.total().backward()
        optimizer.step()
    for key, value in tiny_model.mask.detector.state_dict().items():
        assert torch.equal(value, detector_state[key]), key
    # ... while the generator did learn (its BatchNorm statistics and weights moved)
    changed = [k for k, v in tiny_model.generator.state_dict().items() if not torch.equal(v, generator_state[k])]
    assert any(k.endswith("running_mean") for k in changed) and any(k.endswith("conv.weight") for k in changed)


def test_circles_model_runs_and_masks_are_circles(tiny_circles_config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(tiny_circles_config)
    loss = build_loss(tiny_circles_config, feature_extractor=TinyFeatures())
    source, driving = torch.rand(2, 2, 3, 64, 64).unbind(0)
    out = model(source, driving)
    terms = loss(out, driving)
    keypoints = model.mask(driving).keypoints
    torch.testing.assert_close(out.driving_mask, model.mask.mask_from_keypoints(keypoints, (64, 64)))
    assert torch.isfinite(terms.total())


def test_copy_source_init_starts_the_u_net_as_a_copy_of_the_source_with_the_same_keys(tmp_path):
    import yaml

    from modules.core.errors import ConfigError
    from modules.nets.generator import HighResGenerator

    with open(config_path("tiny-heatmap.yaml")) as stream:
        data = yaml.safe_load(stream)
    data["model_params"]["generator_params"]["high_res"]["init"] = "copy_source"
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(data))
    copying = build_frame_generator(load_config(str(path)).model_params).high_res
    data["model_params"]["generator_params"]["high_res"]["init"] = "default"
    path.write_text(yaml.safe_dump(data))
    plain = build_frame_generator(load_config(str(path)).model_params).high_res
    assert isinstance(copying, HighResGenerator)
    assert copying.state_dict().keys() == plain.state_dict().keys()          # checkpoints stay interchangeable
    copying.eval()
    source = torch.rand(2, 3, 64, 64)
    with torch.no_grad():                     # whatever the masks and the low-res prediction say
        out = copying(source, torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(out, torch.sigmoid(4.4 * (source - 0.5)))
    middle = (source > 0.2) & (source < 0.8)
    assert (out - source)[middle].abs().max() < 0.011
    with torch.no_grad():
        assert (plain(source, *(torch.rand(2, 1, 16, 16),) * 2, torch.rand(2, 3, 64, 64)) - source).abs().mean() > 0.1
    data["model_params"]["generator_params"]["high_res"]["init"] = "zeros"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="init"):
        load_config(str(path))
