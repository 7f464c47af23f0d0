"""The perturbed-masks family (perturbed-masks paper sec. 3): perturbations, gradient routing, ablations, and a tiny
train -> reconstruction -> animation round trip through run.py."""
from __future__ import annotations

import glob
import json
import os
import warnings

import pytest
import torch
import yaml
from conftest import TinyFeatures, config_path, train_ddp_on_two_gloo_processes, write_tiny

import run
from modules.config.family import StepContext
from modules.config.loading import config_from_dict
from modules.core.errors import ConfigError
from modules.training.perturbations import colour_augment, deform, perturb_train, threshold

SIDE = 64


def tiny_perturbed(**model_params):
    with open(config_path("tiny-perturbed.yaml")) as stream:
        data = yaml.safe_load(stream)
    data["model_params"].update(model_params)
    # PyTorch's initialisation (the paper's): with copy_source, h ignores its masks at step 0
    data["model_params"]["generator_params"]["high_res"]["init"] = "default"
    return config_from_dict(data, "tiny-perturbed.yaml")


def responsive(**model_params):
    """The tiny config with temperature 1 for m and r: with random weights, sigmoid(x / 0.1) saturates to the
    same 0/1 mask whatever the input, and the ablations would look alike for that reason alone."""
    nets = {name: {"block_expansion": 8, "max_features": 64, "num_blocks": 2, "temperature": 1.0}
            for name in ("mask_generator_params", "mask_refinement_params")}
    return tiny_perturbed(**nets, **model_params)


def build(config, calibrated: bool = False):
    """The random-weight model in eval mode; ``calibrated``: its BatchNorm statistics set from one batch of
    random frames first (fresh statistics leave eval-mode activations near 0 and the masks near constant)."""
    from modules.families.build import build_model

    model = build_model(config)
    if calibrated:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0
        with torch.no_grad():
            frames = torch.rand(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
            state = model.encode_source(frames[:1])
            model.animate(state, frames)
    return model.eval()


def column_mask(column: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, SIDE, SIDE)
    mask[..., column] = 1.0
    return mask


def row_mass_and_centre(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row with mass: its sum over x and its mass-weighted x centre (pixel centres at i + 0.5)."""
    rows = mask[0, 0]
    mass = rows.sum(dim=1)
    keep = mass > 1e-3
    centres = (rows[keep] * (torch.arange(SIDE) + 0.5)).sum(dim=1) / mass[keep]
    return mass[keep], centres


# ----------------------------------------------------------------------------------------------------------
# P_train, P_test, A

def test_deform_with_given_factors_moves_and_widens_a_column_as_computed_by_hand():
    ones = torch.ones(1, 6)
    column = 10                                          # centre 10.5, 21.5 px left of the canvas centre
    # x zoom 1.25 about the centre: the column's centre goes to 32 - 21.5 * 1.25, its width becomes 1.25
    out = deform(column_mask(column), ones, torch.ones(1), ones, torch.tensor([1.25]))
    mass, centres = row_mass_and_centre(out)
    assert len(mass) == SIDE
    torch.testing.assert_close(centres, torch.full_like(centres, 32 - 21.5 * 1.25), atol=0.05, rtol=0)
    # bilinear resampling samples the stretched column's tent at whole pixels: its sum is within 0.1 of 1.25
    torch.testing.assert_close(mass, torch.full_like(mass, 1.25), atol=0.1, rtol=0)
    # strips: the first strip (x < 10.67) shrunk to 0.75 moves everything right of it left by the lost width,
    # and re-centring the layout moves it back by half of that; a column inside strip 1 keeps its width
    strips = torch.tensor([[0.75, 1, 1, 1, 1, 1]])
    out = deform(column_mask(column + 5), strips, torch.ones(1), ones, torch.ones(1))
    mass, centres = row_mass_and_centre(out)
    lost = SIDE / 6 * 0.25
    torch.testing.assert_close(centres, torch.full_like(centres, 15.5 - lost / 2), atol=0.05, rtol=0)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=0.02, rtol=0)
    # a vertical zoom 0.8 leaves a vertical column where it is but empties rows at the top and bottom
    out = deform(column_mask(column), ones, torch.tensor([0.8]), ones, torch.ones(1))
    mass, centres = row_mass_and_centre(out)
    assert 0.8 * SIDE - 2 <= len(mass) <= 0.8 * SIDE + 2
    torch.testing.assert_close(centres, torch.full_like(centres, 10.5), atol=0.05, rtol=0)


def test_p_train_keeps_shape_and_range_and_moves_a_column_within_the_scale_bounds():
    generator = torch.Generator().manual_seed(0)
    column = 26                                          # in the third of six strips (21.33 <= x < 32)
    moved = 0
    for _ in range(50):
        mask = column_mask(column) * 0.9
        out = perturb_train(mask, "median", 6, (0.75, 1.25), generator=generator)
        assert out.shape == mask.shape and out.min() >= 0 and out.max() <= 0.9 + 1e-6
        mass, centres = row_mass_and_centre(out[..., 16:48, :])    # rows every vertical scaling keeps whole
        assert len(mass) == 32
        # width: one strip scale times one zoom, each in [0.75, 1.25]
        assert ((mass / 0.9 > 0.75 ** 2 - 0.1) & (mass / 0.9 < 1.25 ** 2 + 0.1)).all()
        # position from the canvas centre, strips laid out about it (w = 64 / 6, s_k the strip scales):
        # w/2 (s_0 + s_1) - 0.167 s_2 - w/2 (s_3 + s_4 + s_5), in [-12.2, 1.21], then times the zoom
        offset = centres - 32
        assert (offset >= -12.21 * 1.25 - 0.1).all() and (offset <= 1.21 * 1.25 + 0.1).all()
        moved += bool((centres - (column + 0.5)).abs().mean() > 0.5)
        # all six strips of a row move together: the centre is the same on every row with mass
        assert float(centres.std()) < 0.05
    assert moved >= 30                                   # mostly moved (38 of 50 with this seed)


def test_p_train_is_repeatable_from_a_seed_and_differs_between_samples():
    mask = torch.rand(3, 1, SIDE, SIDE)
    first = perturb_train(mask, generator=torch.Generator().manual_seed(7))
    again = perturb_train(mask, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    same_input = perturb_train(mask[:1].expand(2, -1, -1, -1), generator=torch.Generator().manual_seed(7))
    assert not torch.equal(same_input[0], same_input[1])          # each sample draws its own factors


def test_p_test_median_zeroes_half_of_a_random_mask_and_keeps_the_rest():
    mask = torch.rand(2, 1, SIDE, SIDE)
    out = threshold(mask, "median")
    for sample in range(2):
        zeroed = (out[sample] == 0).float().mean().item()
        assert 0.5 <= zeroed <= 0.5 + 1 / SIDE ** 2
    kept = out > 0
    assert torch.equal(out[kept], mask[kept])
    fixed = threshold(mask, 60 / 255)
    assert torch.equal(fixed > 0, mask > 60 / 255)
    # the median of the inside only: a 16x16 mask with a 3 px zero border (61% of it) still loses half of
    # what is inside, not nothing
    padded = torch.nn.functional.pad(torch.rand(1, 1, 10, 10) + 0.01, (3, 3, 3, 3))
    assert torch.equal(threshold(padded, "median"), padded)
    assert (threshold(padded, "median", border=3)[..., 3:13, 3:13] > 0).sum() == 50


def test_colour_augmentation_stays_in_range_changes_colours_and_is_identity_at_zero():
    image = torch.rand(4, 3, 16, 16)
    out = colour_augment(image, generator=torch.Generator().manual_seed(0))
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    assert (out - image).abs().mean() > 0.01
    unchanged = colour_augment(image, 0, 0, 0, 0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(unchanged, image, atol=1e-5, rtol=0)
    hue_only = colour_augment(image, 0, 0, 0, 0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hue_only.max(1).values, image.max(1).values, atol=1e-5, rtol=0)   # HSV value kept


# ----------------------------------------------------------------------------------------------------------
# Networks, gradient routing, ablations

def test_mask_networks_give_padded_masks_in_range():
    model = build(tiny_perturbed())
    frames = torch.rand(2, 3, SIDE, SIDE)
    mask = model.mask_generator(frames)
    assert mask.shape == (2, 1, 16, 16) and mask.min() >= 0 and mask.max() <= 1
    assert mask[..., :3, :].abs().sum() == 0 and mask[..., :, -3:].abs().sum() == 0    # the 7x7 head's zeros
    out = model(frames, frames.flip(0))
    assert out.prediction.shape == (2, 3, SIDE, SIDE) and out.driving_mask.shape == (2, 1, 16, 16)


def _grads(loss: torch.Tensor, network: torch.nn.Module) -> float:
    params = [p for p in network.parameters() if p.requires_grad]
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_gradient_routing_mask_loss_trains_r_alone_and_the_loss_on_f_trains_h_alone():
    from modules.families.perturbed import PerturbedTraining
    from modules.training.losses import PerceptualLoss

    model = build(tiny_perturbed()).train()
    trainable = PerturbedTraining(model, PerceptualLoss(TinyFeatures(), scales=[1, 0.5], weights=[10, 10, 10]),
                                  mask_weight=100, refinement_start_epoch=1)
    source, driving = torch.rand(2, 3, SIDE, SIDE), torch.rand(2, 3, SIDE, SIDE)
    nets = {"m": model.mask_generator, "r": model.refinement, "l": model.generator.low_res,
            "h": model.generator.high_res}

    def step(epoch: int) -> dict:
        context = StepContext(autocast=_nothing, backward=lambda loss: None, epoch=epoch)
        return trainable.training_step(source, driving, context).losses

    first = step(0)                                        # r starts after the first epoch
    assert first["mask"] == 0 and _grads(first["mask"], nets["r"]) == 0
    later = step(1)
    assert later["mask"] > 0
    touched = {term: {name: _grads(later[term], net) > 0 for name, net in nets.items()}
               for term in ("mask", "perceptual_low_res", "perceptual_high_res")}
    assert touched["mask"] == {"m": False, "r": True, "l": False, "h": False}
    assert touched["perceptual_low_res"] == {"m": True, "r": False, "l": True, "h": False}
    assert touched["perceptual_high_res"] == {"m": False, "r": False, "l": False, "h": True}


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _nothing():
    return _Nothing()


def test_ablations_change_the_output_and_no_ref_never_calls_r():
    base = build(responsive(), calibrated=True)
    state_dict = base.state_dict()
    source, driving = torch.rand(1, 3, SIDE, SIDE), torch.rand(3, 3, SIDE, SIDE)
    outputs = {}
    for ablation in ("none", "no_pert", "no_ref", "no_id"):
        model = build(responsive(ablation=ablation), calibrated=True)
        model.load_state_dict(state_dict)
        calls = []
        model.refinement.register_forward_hook(lambda *args: calls.append(1))
        with torch.no_grad():
            out = model.animate(model.encode_source(source), driving)
        outputs[ablation] = out
        assert bool(calls) == (ablation in ("none", "no_pert")), ablation
        if ablation in ("no_ref", "no_id"):
            assert torch.equal(out.driving_mask, out.perturbed_mask)
        if ablation in ("no_pert", "no_id"):
            assert torch.equal(out.perturbed_mask, out.raw_driving_mask)
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(outputs[a].prediction, outputs[b].prediction), (a, b)
    # the test-time path with every part equals the chain written out
    model = build(responsive(), calibrated=True)
    model.load_state_dict(state_dict)
    with torch.no_grad():
        m_s, m_d = model.mask_generator(source), model.mask_generator(driving)
        m_dr = model.refinement(torch.cat([model.source_down(source).expand(3, -1, -1, -1),
                                           m_s.expand(3, -1, -1, -1), threshold(m_d, border=3)], dim=1))
        expected = model.generator(source.expand(3, -1, -1, -1), m_s.expand(3, -1, -1, -1), m_dr).prediction
    torch.testing.assert_close(outputs["none"].prediction, expected)


def test_reconstruction_follows_the_training_procedure_unless_asked():
    model = build(responsive(), calibrated=True)
    source, driving = torch.rand(1, 3, SIDE, SIDE), torch.rand(2, 3, SIDE, SIDE)
    with torch.no_grad():
        state = model.encode_source(source)
        training_path = model.reconstruct(state, driving)
        test_path = model.reconstruct(state, driving, test_time=True)
        expected = model.generator(source.expand(2, -1, -1, -1), state.mask.expand(2, -1, -1, -1),
                                   model.mask_generator(driving)).prediction
    torch.testing.assert_close(training_path.prediction, expected)
    torch.testing.assert_close(test_path.prediction, model.animate(state, driving).prediction)
    assert not torch.allclose(training_path.prediction, test_path.prediction)
    # reconstruction_params.test_time_path makes the test-time path the model's reconstruction
    config = responsive()
    config.reconstruction_params.test_time_path = True
    switched = build(config, calibrated=True)
    switched.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(switched.reconstruct(state, driving).prediction, test_path.prediction)


@pytest.mark.parametrize("key, value, fragment", [
    ("threshold", "mean", "threshold"), ("threshold", 1.5, "threshold"), ("scale_range", [1.2, 0.8], "scale_range"),
    ("num_strips", 0, "num_strips")])
def test_bad_perturbation_values_are_one_line_errors_naming_the_key(key, value, fragment):
    with pytest.raises(ConfigError, match=f"perturbation_params.{fragment}"):
        tiny_perturbed(perturbation_params={"threshold": "median", "num_strips": 6, "scale_range": [0.75, 1.25],
                                            key: value})
    with pytest.raises(ConfigError, match="ablation"):
        tiny_perturbed(ablation="no_mask")


def test_a_run_that_would_leave_r_untrained_is_a_config_error():
    with open(config_path("tiny-perturbed.yaml")) as stream:
        data = yaml.safe_load(stream)
    data["train_params"]["loss_weights"]["mask"] = 0
    with pytest.raises(ConfigError, match="loss_weights.mask: expected a positive number"):
        config_from_dict(data, "x.yaml")
    data["train_params"]["loss_weights"]["mask"] = 100
    data["train_params"]["refinement_start_epoch"] = data["train_params"]["num_epochs"]
    with pytest.raises(ConfigError, match="refinement_start_epoch: expected 0 to num_epochs - 1"):
        config_from_dict(data, "x.yaml")


def test_an_optimizer_whose_network_sat_out_the_step_is_not_stepped():
    """fp16's GradScaler refuses to step an optimizer without gradients: r's before its start epoch."""
    from train import has_gradients

    used, idle = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    used(torch.rand(3, 2)).sum().backward()
    assert has_gradients(torch.optim.Adam(used.parameters()))
    assert not has_gradients(torch.optim.Adam(idle.parameters()))


# ----------------------------------------------------------------------------------------------------------
# Through run.py

def _write(folder, dataset_root: str, **train_params) -> str:
    return write_tiny(folder, "tiny-perturbed.yaml", dataset_root, **{"num_epochs": 2, **train_params})


def test_train_reconstruct_and_animate_round_trip(tmp_path, dataset_root):
    from modules.core.files import read_checkpoint

    def quiet(*args):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run.main([*args, "--device", "cpu"])

    assert quiet("--mode", "train", "--config", _write(tmp_path, dataset_root), "--log_dir", str(tmp_path)) == 0
    (run_dir,) = glob.glob(str(tmp_path / "tiny-perturbed-*"))
    first = read_checkpoint(os.path.join(run_dir, "00000000-checkpoint.pth.tar"))
    last = read_checkpoint(os.path.join(run_dir, "00000001-checkpoint.pth.tar"))
    assert {"mask_generator", "mask_refinement", "generator", "optimizer_mask_generator",
            "optimizer_mask_refinement", "optimizer_generator"} <= set(last)
    assert "kp_detector" not in last
    # r is idle in epoch 0 (refinement_start_epoch 1) and trains in epoch 1; m and the generators train in both
    changed = {name: any(not torch.equal(first[name][k], last[name][k]) for k in first[name]
                         if first[name][k].is_floating_point())
               for name in ("mask_generator", "mask_refinement", "generator")}
    assert changed == {"mask_generator": True, "mask_refinement": True, "generator": True}
    assert not first["optimizer_mask_refinement"]["state"]          # no Adam step for r in epoch 0
    log_text = open(os.path.join(run_dir, "log.txt")).read()
    assert "mask" in log_text

    checkpoint = os.path.join(run_dir, "00000001-checkpoint.pth.tar")
    assert quiet("--mode", "reconstruction", "--checkpoint", checkpoint) == 0
    assert quiet("--mode", "animate", "--checkpoint", checkpoint) == 0
    for mode in ("reconstruction", "animation"):
        with open(os.path.join(run_dir, mode, "metrics.json")) as stream:
            metrics = json.load(stream)
        assert 0 < metrics["mean"]["l1"] < 1
        assert glob.glob(os.path.join(run_dir, mode, "*.mp4"))
    # the ablations from the same checkpoint, each into its own folder
    assert quiet("--mode", "animate", "--checkpoint", checkpoint, "--ablation", "no_ref") == 0
    with open(os.path.join(run_dir, "animation-no_ref", "metrics.json")) as stream:
        ablated = json.load(stream)
    with open(os.path.join(run_dir, "animation", "metrics.json")) as stream:
        full = json.load(stream)
    assert ablated["mean"]["l1"] != full["mean"]["l1"]
    assert ablated["baselines"] == full["baselines"]
    # it learns its masks: a keypoint detector has no place in it
    assert quiet("--mode", "train", "--config", _write(tmp_path, dataset_root), "--log_dir", str(tmp_path / "kp"),
                 "--checkpoint_with_kp", checkpoint) == 2
    assert not os.path.exists(tmp_path / "kp")


def test_ddp_on_two_gloo_processes_keeps_the_four_networks_identical(tmp_path, dataset_root):
    config = _write(tmp_path, dataset_root, batch_size=4, refinement_start_epoch=0)     # r trains from step 1
    train_ddp_on_two_gloo_processes(config, tmp_path / "log")


def test_bf16_autocast_trains_the_perturbed_model_on_cpu(tmp_path, dataset_root):
    from modules.core.files import read_checkpoint

    config = _write(tmp_path, dataset_root, refinement_start_epoch=0, mixed_precision="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run.main(["--mode", "train", "--config", config, "--device", "cpu", "--log_dir", str(tmp_path),
                         "--max_steps", "2"]) == 0
    (checkpoint,) = glob.glob(str(tmp_path / "tiny-perturbed-*" / "*.pth.tar"))
    state = read_checkpoint(checkpoint)
    assert all(v.dtype == torch.float32 for v in state["mask_refinement"].values() if v.is_floating_point())
    assert state["optimizer_mask_refinement"]["state"]                 # r took its steps under autocast too
