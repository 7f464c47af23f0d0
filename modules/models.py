"""The model families behind one interface (modules/family.py), and the keypoint-mask family itself: a frozen
detector's masks, the two generators, and their training losses.

``build_model(config)``, ``build_trainable(config, model)`` and ``model_from_checkpoint(config, checkpoint)``
are the one place that turns a ``Config`` into networks, whatever its ``model_params.family``; the FOMM family
lives in modules/fomm.py.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import NamedTuple, Optional

import torch
from torch import nn

from modules.checkpoint import load_state_strict
from modules.config import Config
from modules.errors import CheckpointError, ConfigError
from modules.family import Keypoints, StepContext, StepOutput, Trainable
from modules.fomm import FommModel, FommTraining, build_fomm_model, fomm_from_checkpoint
from modules.generator import GeneratorOutput, HighResGenerator, LowResGenerator, MaskGenerator
from modules.keypoint_detector import KeypointMask, KPDetector, load_detector_state, load_fomm_detector
from modules.labelled_detector import LabelledDetector, LabelledDetectorTraining, build_labelled_detector
from modules.losses import FeatureExtractor, PerceptualLoss, build_vgg19_features
from modules.motion import relative_keypoints
from modules.perturbed import MaskNetwork, PerturbedMaskModel, PerturbedTraining, checkpoint_networks


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

    @property
    def relative_motion_possible(self) -> bool:
        return self.mask.kind == "circles"

    def encode_source(self, source: torch.Tensor) -> SourceState:
        """source (1, 3, H, W) -> its mask and keypoints, computed once for a whole driving video."""
        output = self.mask(source)
        return SourceState(source, output.mask, output.keypoints)

    def keypoints(self, frames: torch.Tensor) -> Keypoints:
        output = self.mask(frames)
        return Keypoints(output.keypoints, output.jacobian)

    def reconstruct(self, state: SourceState, driving: torch.Tensor) -> GeneratorOutput:
        """Frames of the source's own video from it: the absolute animation."""
        return self.animate(state, driving)

    def animate(self, state: SourceState, driving: torch.Tensor, initial: Optional[Keypoints] = None,
                adapt_scale: bool = False, use_relative_jacobian: bool = True) -> GeneratorOutput:
        """driving (B, 3, H, W) -> predictions (B, 3, H, W). Absolute motion: the driving frames' own masks.
        Relative (circles only), given the driver's reference keypoints ``initial`` (1, K, 2): the circles of
        the source's keypoints moved by the driver's motion since the reference (DESIGN.md sec. 3)."""
        batch = driving.shape[0]
        if initial is None:
            driving_mask = self.mask(driving).mask
        else:
            if not self.relative_motion_possible:
                raise ValueError(f"a {self.mask.kind} mask has no keypoints to move: it animates absolutely")
            kp_driving = self.mask(driving).keypoints.float()
            moved = relative_keypoints(state.keypoints.expand_as(kp_driving).float(), kp_driving,
                                       initial.value.expand_as(kp_driving).float(), adapt_movement_scale=adapt_scale)
            driving_mask = self.mask.mask_from_keypoints(moved.value, tuple(driving.shape[-2:]))
        return self.generator(state.image.expand(batch, -1, -1, -1), state.mask.expand(batch, -1, -1, -1),
                              driving_mask)

    def visual_columns(self, state: SourceState, driving: torch.Tensor, output: GeneratorOutput,
                       detail: bool = False) -> list[torch.Tensor]:
        """source | driving | driving mask | [low-res |] prediction."""
        low = [output.low_res_prediction] if detail else []
        return [state.image.expand_as(driving), driving, output.driving_mask, *low, output.prediction]


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


class KeypointMaskTraining(Trainable):
    """The keypoint-mask family's training step: the perceptual pyramid on both predictions, the generators
    alone optimised (the detector stays frozen, and is saved only so that the checkpoint is self-contained)."""

    loss_names = LossTerms._fields
    shown_names = "source|source_mask|driving|driving_mask|low_res|high_res"

    def __init__(self, model: KeypointMaskModel, loss: KeypointMaskLoss):
        super().__init__()
        self.model = model
        self.loss = loss
        self.forward_model: nn.Module = model

    def networks(self) -> dict[str, nn.Module]:
        return {"kp_detector": self.model.mask.detector, "generator": self.model.generator}

    def optimized(self) -> list[str]:
        return ["generator"]

    def distribute(self, wrap) -> None:
        self.forward_model = wrap(self.model)

    def training_step(self, source: torch.Tensor, driving: torch.Tensor, context: StepContext,
                      labels=None) -> StepOutput:
        with context.autocast():
            output = self.forward_model(source, driving)
            terms = self.loss(output, driving)
        # The detector ran under no_grad inside the model: this backward touches the generators only.
        context.backward(terms.total())
        return StepOutput(terms._asdict(), lambda: [source, output.source_mask, driving, output.driving_mask,
                                                    output.low_res_prediction, output.prediction])


def model_from_checkpoint(config: Config, checkpoint: dict,
                          source: str) -> KeypointMaskModel | FommModel | LabelledDetector:
    """The networks of ``config`` with a checkpoint's weights (FOMM's keys), loaded strictly. For the
    keypoint-mask family the detector is built empty: its weights come from the checkpoint."""
    if config.family == "fomm":
        return fomm_from_checkpoint(config, checkpoint, source)
    if config.family == "detector":
        model = build_labelled_detector(config)
        if not isinstance(checkpoint.get("kp_detector"), dict):
            raise CheckpointError(f"{source}: no 'kp_detector' state dict")
        load_detector_state(model.kp_detector, checkpoint["kp_detector"], source)
        return model
    if config.family == "perturbed":
        model = build_perturbed_model(config)
        for name, network in checkpoint_networks(model).items():
            if name not in checkpoint:
                raise CheckpointError(f"{source}: no '{name}' weights (a perturbed-masks checkpoint holds "
                                      f"{', '.join(checkpoint_networks(model))})")
            load_state_strict(network, checkpoint[name], source, name)
        return model
    model = build_model(config, detector=KPDetector(**config.model_params.detector_kwargs()))
    load_detector_state(model.mask.detector, checkpoint["kp_detector"], source)
    load_state_strict(model.generator, checkpoint["generator"], source, "generator")
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
    high_res = HighResGenerator(common.num_channels, high.block_expansion, high.max_features, high.num_blocks,
                                copy_source_init=high.init == "copy_source")
    return MaskGenerator(low_res, high_res)


def build_perturbed_model(config: Config) -> PerturbedMaskModel:
    """m, r, l and h of a perturbed-masks config (random weights: nothing of it is pretrained)."""
    params = config.model_params
    common = params.common_params

    def mask_network(in_channels: int, net, scale: float) -> MaskNetwork:
        return MaskNetwork(in_channels, net.block_expansion, net.max_features, net.num_blocks, net.temperature,
                           scale_factor=scale)

    return PerturbedMaskModel(
        mask_generator=mask_network(common.num_channels, params.mask_generator_params, common.scale_factor),
        refinement=mask_network(common.num_channels + 2, params.mask_refinement_params, 1.0),
        generator=build_generator(config), threshold_rule=params.perturbation_params.threshold,
        ablation=params.ablation, scale_factor=common.scale_factor,
        reconstruct_test_time=config.reconstruction_params.test_time_path)


def build_model(config: Config, *, detector: Optional[KPDetector] = None,
                checkpoint_with_kp: Optional[str] = None) -> KeypointMaskModel | FommModel | LabelledDetector:
    """The networks for ``config``. Keypoint mask: the detector given (or loaded from ``checkpoint_with_kp``, or
    random with a warning), frozen inside ``KeypointMask``, and the two generators. FOMM: its three networks,
    random (stage one trains the detector; ``checkpoint_with_kp`` starts it from a FOMM checkpoint's)."""
    if config.family == "fomm":
        model = build_fomm_model(config)
        if checkpoint_with_kp:
            model.kp_detector.load_state_dict(load_fomm_detector(
                checkpoint_with_kp, config.model_params.detector_kwargs()).state_dict())
        return model
    if config.family == "detector":
        model = build_labelled_detector(config)
        if checkpoint_with_kp:      # fine-tune a FOMM detector (official or ours) on labels
            model.kp_detector.load_state_dict(load_fomm_detector(
                checkpoint_with_kp, config.model_params.detector_kwargs()).state_dict())
            model.kp_detector.requires_grad_(True)
        return model
    if config.family == "perturbed":
        if checkpoint_with_kp:
            raise ConfigError(f"{config.path}: --checkpoint_with_kp: the perturbed-masks model has no keypoint "
                              f"detector (its mask generator trains with it); leave the flag out")
        return build_perturbed_model(config)
    if detector is None:
        detector = build_detector(config, checkpoint_with_kp)
    mask_params = config.model_params.mask_params
    return KeypointMaskModel(KeypointMask(detector, mask_params.kind, mask_params.kp_variance), build_generator(config))


def build_trainable(config: Config, model: KeypointMaskModel | FommModel, *, vgg_weights: Optional[str] = None,
                    vgg_source: str = "train_params.vgg_weights",
                    feature_extractor: Optional[FeatureExtractor] = None) -> Trainable:
    """The family's training side for ``model``: its losses bound to its networks."""
    if config.family == "fomm":
        return FommTraining(model, build_perceptual(config, vgg_weights, vgg_source, feature_extractor), config)
    if config.family == "detector":
        return LabelledDetectorTraining(model, config)      # no generator, no perceptual loss
    if config.family == "perturbed":
        train, params = config.train_params, config.model_params
        perturbation = params.perturbation_params
        return PerturbedTraining(model, build_perceptual(config, vgg_weights, vgg_source, feature_extractor),
                                 mask_weight=train.loss_weights.mask, l1_weight=train.loss_weights.l1,
                                 refinement_start_epoch=train.refinement_start_epoch,
                                 augmentation=dataclasses.asdict(params.colour_augmentation),
                                 num_strips=perturbation.num_strips, scale_range=tuple(perturbation.scale_range))
    return KeypointMaskTraining(model, build_loss(config, vgg_weights=vgg_weights, vgg_source=vgg_source,
                                                  feature_extractor=feature_extractor))


def build_perceptual(config: Config, vgg_weights: Optional[str] = None, vgg_source: str = "train_params.vgg_weights",
                     feature_extractor: Optional[FeatureExtractor] = None) -> PerceptualLoss:
    """The multi-scale perceptual loss of ``config`` (VGG-19 only as deep as its weights need)."""
    train = config.train_params
    num_slices = train.loss_weights.num_vgg_slices
    if feature_extractor is None:
        if vgg_weights is None:
            vgg_weights = train.vgg_weights
        feature_extractor = build_vgg19_features(vgg_weights, num_slices=num_slices, source=vgg_source)
    return PerceptualLoss(feature_extractor, train.scales, train.loss_weights.perceptual[:num_slices],
                          config.model_params.common_params.num_channels)


def build_loss(config: Config, *, vgg_weights: Optional[str] = None, vgg_source: str = "train_params.vgg_weights",
               feature_extractor: Optional[FeatureExtractor] = None) -> KeypointMaskLoss:
    """The loss for ``config``.

    vgg_weights: overrides ``train_params.vgg_weights`` ('imagenet', 'random' or a file path); vgg_source
    names where that value came from, for error messages (e.g. '--vgg_weights').
    feature_extractor: replaces VGG-19 altogether (tests inject a tiny one); it must return one feature map
    per perceptual weight up to the last non-zero one.
    """
    # Only the VGG slices up to the deepest non-zero weight are built and run.
    return KeypointMaskLoss(build_perceptual(config, vgg_weights, vgg_source, feature_extractor),
                            config.train_params.loss_weights.l1)
