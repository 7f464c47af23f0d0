"""The perceptual pyramid loss and the VGG-19 feature extractor."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from conftest import IdentityFeatures

from modules.core.errors import UserError
from modules.nets.blocks import AntiAliasDownsample
from modules.training.losses import PerceptualLoss, RandomWeightsWarning, VGG19Features, build_vgg19_features


def test_identity_extractor_gives_the_hand_computed_value():
    prediction = torch.full((2, 3, 8, 8), 0.25)
    target = torch.full((2, 3, 8, 8), 0.75)
    loss = PerceptualLoss(IdentityFeatures(), scales=[1], weights=[10])
    (value,) = loss([prediction], target)
    assert value.item() == pytest.approx(10 * 0.5)


def test_layers_and_scales_are_summed_with_their_weights():
    class TwoLayers(torch.nn.Module):
        def forward(self, image):
            return [image, 2 * image]

    prediction, target = torch.rand(2, 1, 3, 16, 16).unbind(0)
    loss = PerceptualLoss(TwoLayers(), scales=[1, 0.5], weights=[1.0, 3.0])
    (value,) = loss([prediction], target)
    half = AntiAliasDownsample(3, 0.5)
    by_hand = 0.0
    for p, t in [(prediction, target), (half(prediction), half(target))]:
        difference = (p - t).abs().mean()
        by_hand += 1.0 * difference + 3.0 * 2 * difference
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_target_features_computed_once_per_scale_and_shared():
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, image):
            calls.append(image.shape[-1])
            return [image]

    loss = PerceptualLoss(Counting(), scales=[1, 0.5], weights=[1])
    target = torch.rand(1, 3, 16, 16)
    low, high = torch.rand(2, 1, 3, 16, 16, requires_grad=True).unbind(0)
    values = loss([low, high], target)
    assert len(values) == 2
    assert len(calls) == 2 + 2 * 2                    # target once per scale, each prediction per scale
    assert sorted(calls[:2]) == [8, 16]


def test_no_gradient_flows_into_the_target():
    target = torch.rand(1, 3, 16, 16, requires_grad=True)
    prediction = torch.rand(1, 3, 16, 16, requires_grad=True)
    (value,) = PerceptualLoss(IdentityFeatures(), [1, 0.5], [1])([prediction], target)
    value.backward()
    assert target.grad is None and prediction.grad is not None


def test_only_the_needed_vgg_layers_are_built():
    features = VGG19Features(num_slices=3)
    assert len(features.features) == 12                 # up to relu3_1 (torchvision indices 0-11)
    outputs = features(torch.rand(1, 3, 32, 32))
    assert [o.shape[1] for o in outputs] == [64, 128, 256]
    assert [o.shape[-1] for o in outputs] == [32, 16, 8]
    assert all(not p.requires_grad for p in features.parameters())
    assert len(VGG19Features(num_slices=5).features) == 30   # up to relu5_1


def test_feature_layers_match_torchvision_vgg19():
    from torchvision.models import vgg19

    reference = vgg19(weights=None).features[:30]
    ours = VGG19Features(num_slices=5).features
    assert [type(m) for m in ours] == [type(m) for m in reference]
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}


def test_slices_end_at_the_relus_of_torchvision_vgg19_after_imagenet_normalisation():
    from torchvision.models import vgg19

    reference = vgg19(weights=None).features.eval()
    ours = VGG19Features(num_slices=5)
    ours.load_vgg_state_dict({f"features.{k}": v for k, v in reference.state_dict().items()}, "test")
    image = torch.rand(1, 3, 32, 32)
    normalized = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        outputs = ours(image)
        for output, (start, end) in zip(outputs, [(0, 2), (2, 7), (7, 12), (12, 21), (21, 30)]):
            normalized = reference[start:end](normalized)
            assert isinstance(reference[end - 1], torch.nn.ReLU)
            torch.testing.assert_close(output, normalized)
            assert output.min() >= 0


def test_build_loss_builds_only_up_to_the_last_non_zero_weight(tiny_config):
    from modules.families.keypoint_mask import build_loss

    tiny_config.train_params.loss_weights.perceptual = [10, 0, 10, 0, 0]
    with pytest.warns(RandomWeightsWarning):
        loss = build_loss(tiny_config)
    assert len(loss.perceptual.features.features) == 12 and loss.perceptual.weights == [10, 0, 10]


def test_extractor_and_weights_must_agree():
    loss = PerceptualLoss(IdentityFeatures(), scales=[1], weights=[1, 1])
    with pytest.raises(ValueError, match="1 maps for 2 perceptual weights"):
        loss([torch.rand(1, 3, 8, 8)], torch.rand(1, 3, 8, 8))


def test_scale_one_is_the_identity_with_a_finite_kernel():
    down = AntiAliasDownsample(3, 1.0)
    image = torch.rand(1, 3, 8, 8)
    assert torch.equal(down(image), image) and torch.isfinite(down.weight).all()


def test_random_weights_warn_loudly():
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        build_vgg19_features("random", num_slices=1)


def test_local_weights_file_loads(tmp_path):
    reference = VGG19Features(num_slices=2)
    torch.nn.init.normal_(reference.features[0].weight)
    # torchvision layout: features.N.weight (classifier keys would be ignored)
    state = {f"features.{k}": v for k, v in reference.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loaded = build_vgg19_features(str(path), num_slices=2)
    image = torch.rand(1, 3, 16, 16)
    for a, b in zip(loaded(image), reference(image)):
        assert torch.equal(a, b)


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "not-vgg.pth"
    torch.save({"something": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="not a VGG-19 state dict"):
        build_vgg19_features(str(path), num_slices=2)
    with pytest.raises(UserError, match="no such file"):
        build_vgg19_features(str(tmp_path / "missing.pth"), num_slices=2)


def test_imagenet_offline_is_a_clear_error(monkeypatch):
    from torchvision.models import VGG19_Weights

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(type(VGG19_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(UserError, match="cannot download VGG-19 ImageNet weights.*--vgg_weights PATH") as info:
        build_vgg19_features("imagenet", num_slices=1)
    assert "\n" not in str(info.value)
