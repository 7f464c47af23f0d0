"""The losses: the multi-scale VGG-19 perceptual loss (keypoint-mask paper sec. 2.4), the pixel L1, and
FOMM's equivariance, LSGAN and feature-matching terms (FOMM sec. 3.4).

``PerceptualLoss`` takes any feature extractor that maps (B, 3, H, W) images to a list of feature maps,
so tests can inject a tiny one; ``VGG19Features`` is the real one, built only as deep as the loss needs.
"""
from __future__ import annotations

import contextlib
import os
import socket
import warnings
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from modules.core.errors import UserError
from modules.nets.blocks import AntiAliasDownsample

# End index (exclusive) in torchvision's vgg19().features of each slice: relu1_1, relu2_1, ..., relu5_1.
VGG_SLICE_ENDS = (2, 7, 12, 21, 30)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomWeightsWarning(UserWarning):
    """The perceptual loss runs on an untrained VGG-19."""


# VGG-19 (configuration "E"): channels of each 3x3 conv, "M" for a 2x2 max-pool.
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def vgg19_feature_layers(end: int) -> nn.Sequential:
    """The first ``end`` modules of torchvision's ``vgg19().features``, with the same indices.

    Built directly rather than through ``torchvision.models.vgg19()``: that would also allocate and
    initialise the 120M-parameter classifier (about 500 MB and 2 s) only to throw it away.
    """
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG19_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
        if len(layers) >= end:
            break
    return nn.Sequential(*layers[:end])


class VGG19Features(nn.Module):
    """VGG-19 ``features`` up to the deepest ReLU the loss uses; returns the activation after each slice.

    Frozen and always in eval mode (it has no BatchNorm, but eval keeps it a fixed function).
    """

    def __init__(self, num_slices: int = 5):
        super().__init__()
        if not 1 <= num_slices <= len(VGG_SLICE_ENDS):
            raise ValueError(f"num_slices must be 1..5, got {num_slices}")
        self.slice_ends = VGG_SLICE_ENDS[:num_slices]
        self.features = vgg19_feature_layers(self.slice_ends[-1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)

    def load_vgg_state_dict(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Load from a torchvision vgg19 state dict (``features.N.weight`` keys; classifier keys ignored)."""
        own = self.features.state_dict()
        picked = {}
        for key in own:
            for candidate in (f"features.{key}", key):
                if candidate in state_dict:
                    picked[key] = state_dict[candidate]
                    break
        missing = [k for k in own if k not in picked]
        if missing:
            raise UserError(f"{source}: not a VGG-19 state dict: missing {', '.join('features.' + k for k in missing[:3])}"
                            f"{' ...' if len(missing) > 3 else ''} (expected torchvision's vgg19 keys)")
        wrong = [k for k in own if tuple(picked[k].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise UserError(f"{source}: features.{k} has shape {tuple(picked[k].shape)}, VGG-19 has "
                            f"{tuple(own[k].shape)}")
        self.features.load_state_dict(picked)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> one feature map per slice."""
        out = (image - self.mean) / self.std
        outputs, start = [], 0
        for end in self.slice_ends:
            out = self.features[start:end](out)
            outputs.append(out)
            start = end
        return outputs


def _load_imagenet(features: VGG19Features, source: str, timeout_s: float = 15.0) -> None:
    """torchvision's ImageNet weights: from its cache, else downloaded (and cached) as torchvision does."""
    from torchvision.models import VGG19_Weights

    weights = VGG19_Weights.IMAGENET1K_V1
    previous = socket.getdefaulttimeout()
    # Offline, a download must fail within seconds instead of hanging on a dead connection.
    socket.setdefaulttimeout(timeout_s)
    try:
        state_dict = weights.get_state_dict(progress=False)
    except Exception as error:  # URLError, timeouts, HTTP errors: all mean "could not fetch"
        reason = str(getattr(error, "reason", error)).splitlines()[0]
        raise UserError(f"{source} 'imagenet': cannot download VGG-19 ImageNet weights "
                        f"({reason}); put torchvision's vgg19 file in {torch.hub.get_dir()}/checkpoints, pass "
                        f"--vgg_weights PATH, or set vgg_weights: random (not a perceptual loss)") from None
    finally:
        socket.setdefaulttimeout(previous)
    features.load_vgg_state_dict(state_dict, "torchvision VGG19_Weights.IMAGENET1K_V1")


def build_vgg19_features(weights: str, num_slices: int = 5, source: str = "train_params.vgg_weights") -> VGG19Features:
    """VGG-19 features with ``weights``: 'imagenet', 'random', or a path to a torchvision vgg19 state dict.

    source: where ``weights`` came from (a config key or a command-line flag), named in error messages.
    """
    features = VGG19Features(num_slices)
    if weights == "imagenet":
        _load_imagenet(features, source)
    elif weights == "random":
        warnings.warn("VGG-19 has RANDOM weights: the perceptual loss is not perceptual and results are not "
                      "comparable with the papers (use vgg_weights: imagenet or a local weights file)",
                      RandomWeightsWarning, stacklevel=2)
    else:
        from modules.core.files import read_checkpoint

        if not os.path.isfile(weights):
            what = "is a folder" if os.path.isdir(weights) else "no such file"
            raise UserError(f"{source}: {weights}: {what} (expected 'imagenet', 'random' or a path to a "
                            f"VGG-19 state dict)")
        state_dict = read_checkpoint(weights)
        features.load_vgg_state_dict(state_dict.get("state_dict", state_dict), weights)
    return features


class ImagePyramid(nn.Module):
    """The image at each scale (anti-aliased downsampling; scale 1 is the image itself)."""

    def __init__(self, scales: Sequence[float], num_channels: int = 3):
        super().__init__()
        self.scales = list(scales)
        self.downs = nn.ModuleList([AntiAliasDownsample(num_channels, s) for s in self.scales])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [down(image) for down in self.downs]


FeatureExtractor = Callable[[torch.Tensor], Sequence[torch.Tensor]]


class PerceptualLoss(nn.Module):
    """sum over scales s and layers i of weight_i * mean |N_i(pred_s) - N_i(target_s)|, for each prediction.

    The target's features are computed once per scale (without gradient) and shared by all predictions.
    """

    def __init__(self, feature_extractor: FeatureExtractor, scales: Sequence[float], weights: Sequence[float],
                 num_channels: int = 3):
        super().__init__()
        self.features = feature_extractor
        self.pyramid = ImagePyramid(scales, num_channels)
        self.weights = list(weights)

    def forward(self, predictions: Sequence[torch.Tensor], target: torch.Tensor) -> list[torch.Tensor]:
        """One scalar loss per prediction, each (B, 3, H, W) against the (B, 3, H, W) target."""
        if not any(self.weights):
            # every weight 0 (the tiny configs, which train on the pixel term): no feature pass at all
            return [prediction.new_zeros((), dtype=torch.float32) for prediction in predictions]
        with torch.no_grad():
            # detach as well: an extractor that returns its input (scale 1) would hand back the target itself
            target_features = [[f.detach() for f in self.features(level)] for level in self.pyramid(target)]
        losses = []
        for prediction in predictions:
            total = prediction.new_zeros((), dtype=torch.float32)
            for level, reference in zip(self.pyramid(prediction), target_features):
                generated_features = self.features(level)
                if len(generated_features) != len(self.weights):
                    raise ValueError(f"the feature extractor gave {len(generated_features)} maps for "
                                     f"{len(self.weights)} perceptual weights")
                for weight, generated, real in zip(self.weights, generated_features, reference):
                    if weight:
                        # in fp32 under autocast: a bf16 mean of small differences loses the loss's digits
                        total = total + weight * (generated.float() - real.float()).abs().mean()
            losses.append(total)
        return losses


def pixel_l1(predictions: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """sum over ``predictions`` of mean |prediction - target| in float32: the optional pixel term beside the
    perceptual pyramid (weight ``l1``; what the tiny configs train on when VGG-19 is random)."""
    return sum((prediction.float() - target.float()).abs().mean() for prediction in predictions)


# ----------------------------------------------------------------------------------------------------------
# FOMM's other terms (Siarohin et al. 2019, sec. 3.4; weights from its vox/taichi-256 configs)

def equivariance_value_loss(kp_driving: torch.Tensor, kp_transformed: torch.Tensor, transform) -> torch.Tensor:
    """mean |z - T(z')| where z' are the keypoints found in the transformed frame: (B, K, 2) each -> scalar."""
    return (kp_driving.float() - transform.warp_coordinates(kp_transformed.float())).abs().mean()


def equivariance_jacobian_loss(jacobian_driving: torch.Tensor, kp_transformed: torch.Tensor,
                               jacobian_transformed: torch.Tensor, transform) -> torch.Tensor:
    """mean |I - inverse(J_z) (dT(z') J_z')|: the Jacobians must follow the transform too. (B, K, 2, 2) each."""
    moved = transform.jacobian(kp_transformed.float()) @ jacobian_transformed.float()
    product = torch.linalg.inv(jacobian_driving.float()) @ moved
    return (torch.eye(2, dtype=product.dtype, device=product.device) - product).abs().mean()


def lsgan_generator_loss(generated_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum over scales of mean (1 - D(G))^2."""
    return sum(((1 - m.float()) ** 2).mean() for m in generated_maps)


def lsgan_discriminator_loss(real_maps: Sequence[torch.Tensor], generated_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum over scales of mean (1 - D(x))^2 + D(G)^2."""
    return sum(((1 - r.float()) ** 2 + g.float() ** 2).mean() for r, g in zip(real_maps, generated_maps))


def feature_matching_loss(real_features: Sequence[Sequence[torch.Tensor]],
                          generated_features: Sequence[Sequence[torch.Tensor]], weights: Sequence[float]) -> torch.Tensor:
    """sum over scales and discriminator blocks i of weights[i] * mean |D_i(x) - D_i(G)| (zero weights skipped)."""
    total = torch.zeros(())
    for real_scale, generated_scale in zip(real_features, generated_features):
        for weight, real, generated in zip(weights, real_scale, generated_scale):
            if weight:
                total = total.to(generated.device) + weight * (real.float() - generated.float()).abs().mean()
    return total


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No gradients into ``module``'s parameters inside the block (they still flow through it): the
    generator's GAN phase, in which the discriminator judges but does not learn."""
    flags = [p.requires_grad for p in module.parameters()]
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(module.parameters(), flags):
            parameter.requires_grad_(flag)


def discriminate(discriminator: nn.Module, pyramid: ImagePyramid, real: torch.Tensor, generated: torch.Tensor,
                 kp: torch.Tensor) -> tuple[list, list]:
    """Real and generated frames in one batch (instance norm keeps samples apart) -> (real, generated), each
    per scale a (feature maps, prediction map) pair."""
    batch = real.shape[0]
    outputs = discriminator(pyramid(torch.cat([real, generated])), torch.cat([kp, kp]))
    split = [([f[:batch] for f in o.feature_maps], o.prediction_map[:batch]) for o in outputs]
    split_generated = [([f[batch:] for f in o.feature_maps], o.prediction_map[batch:]) for o in outputs]
    return split, split_generated
