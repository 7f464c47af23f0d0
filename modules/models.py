"""The keypoint-mask model: a frozen detector's masks, the two generators, and their training losses.

``build_model(config)`` is the one place that turns a ``Config`` into networks.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch
from torch import nn

from modules.config import Config
from modules.generator import GeneratorOutput, HighResGenerator, LowResGenerator, MaskGenerator
from modules.errors import CheckpointError
from modules.keypoint_detector import KeypointMask, KPDetector, load_detector_state, load_fomm_detector
from modules.losses import FeatureExtractor, PerceptualLoss, build_vgg19_features


class RandomDetectorWarning(UserWarning):
    """The keypoint detector was not loaded from a checkpoint: its masks carry no learned structure."""


class LossTerms(NamedTuple):
    perceptual_low_res: torch.Tensor      # scalar, trains only the low-res generator
    perceptual_high_res: torch.Tensor     # scalar, trains only the high-res generator
    l1: torch.Tensor                      # scalar, weighted pixel L1 on both predictions (0 in the paper)

    def total(self) -> torch.Tensor:
        return self.perceptual_low_res + self.perceptual_high_res + self.l1


class KeypointMaskModel(nn.Module):
    """Source image + driving frame -> masks from the frozen detector -> low-res and high-res predictions.

    Holds the networks only: its state dict is the detector's and the generators' weights. The loss and
    its VGG-19 live in ``KeypointMaskLoss`` so that they never end up in a checkpoint.
    """

    def __init__(self, mask: KeypointMask, generator: MaskGenerator):
        super().__init__()
        self.mask = mask
        self.generator = generator

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> GeneratorOutput:
        """source, driving (B, 3, H, W) in [0, 1] -> GeneratorOutput (predictions and the masks used)."""
        # One detector pass for both frames: half the kernel launches, identical results (eval-mode BN).
        masks = self.mask(torch.cat([source, driving], dim=0)).mask
        source_mask, driving_mask = masks.chunk(2, dim=0)
        return self.generator(source, source_mask, driving_mask)

    def encode_source(self, source: torch.Tensor) -> SourceState:
        """source (1, 3, H, W) -> its mask and keypoints, computed once for a whole driving video."""
        output = self.mask(source)
        return SourceState(source, output.mask, output.keypoints)

    def animate(self, state: SourceState, driving: torch.Tensor) -> GeneratorOutput:
        """Absolute motion: the driving frames' own masks. driving (B, 3, H, W) -> predictions (B, 3, H, W)."""
        batch = driving.shape[0]
        driving_mask = self.mask(driving).mask
        return self.generator(state.image.expand(batch, -1, -1, -1), state.mask.expand(batch, -1, -1, -1),
                              driving_mask)


class SourceState(NamedTuple):
    """What animation needs of the source, computed once per source image."""
    image: torch.Tensor                   # (1, 3, H, W) in [0, 1]
    mask: torch.Tensor                    # (1, 1, h, w) structural mask
    keypoints: torch.Tensor               # (1, K, 2) in [-1, 1]


class KeypointMaskLoss(nn.Module):
    """The paper's loss: the perceptual pyramid on both predictions against the driving frame (sec. 2.4),
    plus an optional pixel L1 (weight 0 in the paper configs)."""

    def __init__(self, perceptual: PerceptualLoss, l1_weight: float = 0.0):
        super().__init__()
        self.perceptual = perceptual
        self.l1_weight = l1_weight

    def forward(self, output: GeneratorOutput, driving: torch.Tensor) -> LossTerms:
        low, high = self.perceptual([output.low_res_prediction, output.prediction], driving)
        l1 = driving.new_zeros((), dtype=torch.float32)
        if self.l1_weight:
            l1 = self.l1_weight * ((output.low_res_prediction.float() - driving).abs().mean()
                                   + (output.prediction.float() - driving).abs().mean())
        return LossTerms(perceptual_low_res=low, perceptual_high_res=high, l1=l1)


def model_from_checkpoint(config: Config, checkpoint: dict, source: str) -> KeypointMaskModel:
    """The networks of ``config`` with a training checkpoint's ``kp_detector`` and ``generator``, loaded strictly
    (the detector is built empty: its weights come from the checkpoint, not from a FOMM file)."""
    model = build_model(config, detector=KPDetector(**config.model_params.detector_kwargs()))
    load_detector_state(model.mask.detector, checkpoint["kp_detector"], source)
    try:
        model.generator.load_state_dict(checkpoint["generator"], strict=True)
    except RuntimeError as error:
        lines = str(error).splitlines()
        raise CheckpointError(f"{source}: generator does not fit the config "
                              f"({lines[1].strip() if len(lines) > 1 else error})") from None
    return model


def build_detector(config: Config, checkpoint_with_kp: Optional[str] = None) -> KPDetector:
    """The FOMM detector: loaded (and frozen) from ``checkpoint_with_kp`` if given, else random (with a warning)."""
    kwargs = config.model_params.detector_kwargs()
    if checkpoint_with_kp:
        return load_fomm_detector(checkpoint_with_kp, kwargs)
    warnings.warn("keypoint detector has RANDOM weights (no --checkpoint_with_kp): masks carry no learned "
                  "structure", RandomDetectorWarning, stacklevel=2)
    return KPDetector(**kwargs)     # frozen by KeypointMask


def build_generator(config: Config) -> MaskGenerator:
    common, generator = config.model_params.common_params, config.model_params.generator_params
    low_res = LowResGenerator(common.num_channels, generator.block_expansion, generator.max_features,
                              generator.num_up_blocks, generator.num_bottleneck_blocks, common.scale_factor)
    high = generator.high_res
    high_res = HighResGenerator(common.num_channels, high.block_expansion, high.max_features, high.num_blocks)
    return MaskGenerator(low_res, high_res)


def build_model(config: Config, *, detector: Optional[KPDetector] = None,
                checkpoint_with_kp: Optional[str] = None) -> KeypointMaskModel:
    """The networks for ``config``: the detector given (or loaded from ``checkpoint_with_kp``, or random with
    a warning), frozen inside ``KeypointMask``, and the two generators."""
    if detector is None:
        detector = build_detector(config, checkpoint_with_kp)
    mask_params = config.model_params.mask_params
    return KeypointMaskModel(KeypointMask(detector, mask_params.kind, mask_params.kp_variance), build_generator(config))


def build_loss(config: Config, *, vgg_weights: Optional[str] = None, vgg_source: str = "train_params.vgg_weights",
               feature_extractor: Optional[FeatureExtractor] = None) -> KeypointMaskLoss:
    """The loss for ``config``.

    vgg_weights: overrides ``train_params.vgg_weights`` ('imagenet', 'random' or a file path); vgg_source
    names where that value came from, for error messages (e.g. '--vgg_weights').
    feature_extractor: replaces VGG-19 altogether (tests inject a tiny one); it must return one feature map
    per perceptual weight up to the last non-zero one.
    """
    train = config.train_params
    # Only the VGG slices up to the deepest non-zero weight are built and run.
    num_slices = train.loss_weights.num_vgg_slices
    if feature_extractor is None:
        if vgg_weights is None:
            vgg_weights = train.vgg_weights
        feature_extractor = build_vgg19_features(vgg_weights, num_slices=num_slices, source=vgg_source)
    perceptual = PerceptualLoss(feature_extractor, train.scales, train.loss_weights.perceptual[:num_slices],
                                config.model_params.common_params.num_channels)
    return KeypointMaskLoss(perceptual, train.loss_weights.l1)
