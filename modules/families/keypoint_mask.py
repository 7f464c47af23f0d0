"""The keypoint-mask family (Toledano, Marmor, Gertz): a frozen FOMM detector's structural masks (summed
pre-softmax heatmaps, or Gaussian circles at its keypoints; sec. 2.1) drive the low-res and the high-res
generators (sec. 2.2, 2.3), trained with the multi-scale perceptual loss (sec. 2.4)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple, Optional

import torch
from torch import nn

from modules.config.checks import check_generator_training, check_mask_generators, high_res_size_problem
from modules.config.family import (GENERATOR_INPUTS, ExportPart, Family, StepContext, StepOutput, Trainable,
                                   generator_example, random_frames, register)
from modules.config.schema import fail, pop_path, set_path
from modules.config.sections import (CommonParams, Config, DetectorSettings, GeneratorParams, GeneratorTrainParams,
                                     KPDetectorParams)
from modules.core.errors import ConfigError, ConfigWarning
from modules.core.files import load_state_strict
from modules.nets.generator import FrameGenerator, GeneratorOutput, build_frame_generator
from modules.nets.keypoint_detector import KeypointMask, KPDetector, load_detector_state, load_fomm_detector
from modules.nets.keypoints import Keypoints
from modules.nets.motion import relative_keypoints
from modules.training.losses import PerceptualLoss, pixel_l1

# ----------------------------------------------------------------------------------------------------------
# Its model_params

@dataclass
@dataclass
class MaskParams:
    kind: Literal["heatmap", "circles", "softmax"] = "heatmap"
    kp_variance: float = 0.003            # Gaussian variance of the circles, normalised coordinates



@dataclass
class KeypointMaskParams(DetectorSettings):
    """The keypoint-mask model: a frozen FOMM detector's masks drive the low-res and high-res generators."""
    common_params: CommonParams
    kp_detector_params: KPDetectorParams
    generator_params: GeneratorParams
    mask_params: MaskParams = field(default_factory=MaskParams)
    family: Literal["keypoint_mask"] = "keypoint_mask"



# ----------------------------------------------------------------------------------------------------------
# The networks and the loss

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

    def __init__(self, mask: KeypointMask, generator: FrameGenerator):
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
        return self.mask(frames).detection

    def reconstruct(self, state: SourceState, driving: torch.Tensor) -> GeneratorOutput:
        """Frames of the source's own video from it: the absolute animation."""
        return self.animate(state, driving)

    def animate(self, state: SourceState, driving: torch.Tensor, initial: Optional[Keypoints] = None,
                adapt_scale: bool = False, use_relative_jacobian: bool = True,
                smooth: Optional[Callable[[Keypoints], Keypoints]] = None) -> GeneratorOutput:
        """driving (B, 3, H, W) -> predictions (B, 3, H, W). Absolute motion: the driving frames' own masks.
        Relative (circles only), given the driver's reference keypoints ``initial`` (1, K, 2): the circles of
        the source's keypoints moved by the driver's motion since the reference (keypoint-mask paper
        sec. 2.2). ``smooth`` (circles only; modules/inference/smoothing.py) filters the driving keypoints first."""
        batch = driving.shape[0]
        if (initial is not None or smooth is not None) and not self.relative_motion_possible:
            raise ValueError(f"a {self.mask.kind} mask has no keypoints to move or smooth: it animates absolutely")
        if initial is None and smooth is None:
            driving_mask = self.mask(driving).mask
        else:
            kp_driving = self.mask(driving).keypoints.float()
            if smooth is not None:
                kp_driving = smooth(Keypoints(kp_driving)).value
            if initial is not None:
                kp_driving = relative_keypoints(state.keypoints.expand_as(kp_driving).float(), kp_driving,
                                                initial.value.expand_as(kp_driving).float(),
                                                adapt_movement_scale=adapt_scale).value
            driving_mask = self.mask.mask_from_keypoints(kp_driving, tuple(driving.shape[-2:]))
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
            l1 = self.l1_weight * pixel_l1([output.low_res_prediction, output.prediction], driving)
        return LossTerms(perceptual_low_res=low, perceptual_high_res=high, l1=l1)


class Shown(NamedTuple):
    """The train-vis columns, (B, C, H, W) or the masks' (B, 1, h, w)."""
    source: torch.Tensor
    source_mask: torch.Tensor
    driving: torch.Tensor
    driving_mask: torch.Tensor
    low_res: torch.Tensor
    high_res: torch.Tensor


class KeypointMaskTraining(Trainable):
    """The keypoint-mask family's training step: the perceptual pyramid on both predictions, the generators
    alone optimised (the detector stays frozen, and is saved only so that the checkpoint is self-contained)."""

    loss_names = LossTerms._fields

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
        return StepOutput(terms._asdict(), lambda: Shown(source, output.source_mask, driving, output.driving_mask,
                                                         output.low_res_prediction, output.prediction))


def build_detector(config: Config, checkpoint_with_kp: Optional[str] = None) -> KPDetector:
    """The FOMM detector: loaded (and frozen) from ``checkpoint_with_kp`` if given, else random (with a warning)."""
    kwargs = config.model_params.detector_kwargs()
    if checkpoint_with_kp:
        return load_fomm_detector(checkpoint_with_kp, kwargs)
    warnings.warn("keypoint detector has RANDOM weights (no --checkpoint_with_kp): masks carry no learned "
                  "structure", RandomDetectorWarning, stacklevel=2)
    return KPDetector(**kwargs)     # frozen by KeypointMask


def build(config: Config, checkpoint_with_kp: Optional[str] = None,
          detector: Optional[KPDetector] = None) -> KeypointMaskModel:
    """The detector given (or loaded from ``checkpoint_with_kp``, or random with a warning), frozen inside
    ``KeypointMask``, and the two generators."""
    if detector is None:
        detector = build_detector(config, checkpoint_with_kp)
    mask_params = config.model_params.mask_params
    return KeypointMaskModel(KeypointMask(detector, mask_params.kind, mask_params.kp_variance),
                             build_frame_generator(config.model_params))


def load(config: Config, checkpoint: dict, source: str) -> KeypointMaskModel:
    """The networks with a checkpoint's weights, loaded strictly (the detector is built empty for them)."""
    model = build(config, detector=KPDetector(**config.model_params.detector_kwargs()))
    load_detector_state(model.mask.detector, checkpoint["kp_detector"], source)
    load_state_strict(model.generator, checkpoint["generator"], source, "generator")
    return model


def trainable(config: Config, model: KeypointMaskModel, perceptual) -> KeypointMaskTraining:
    return KeypointMaskTraining(model, KeypointMaskLoss(perceptual(), config.train_params.loss_weights.l1))


def build_loss(config: Config, *, vgg_weights: Optional[str] = None, vgg_source: str = "train_params.vgg_weights",
               feature_extractor=None) -> KeypointMaskLoss:
    """The loss of ``config`` (the arguments as modules.families.build.build_trainable's); only the VGG slices up to
    the deepest non-zero weight are built and run."""
    from modules.families.build import build_perceptual
    return KeypointMaskLoss(build_perceptual(config, vgg_weights, vgg_source, feature_extractor),
                            config.train_params.loss_weights.l1)


# ----------------------------------------------------------------------------------------------------------
# Config checks and the older repositories' keys

def check(config: Config, file: str) -> None:
    check_generator_training(config, file)
    check_mask_generators(config, file)
    model = config.model_params
    if model.mask_params.kp_variance <= 0:
        fail(file, "model_params.mask_params.kp_variance", "a positive number", model.mask_params.kp_variance)
    if not any(config.train_params.loss_weights.perceptual) and config.train_params.loss_weights.l1 == 0:
        raise ConfigError(f"{file}: train_params.loss_weights: every weight is 0, nothing would be trained")


LEGACY_MOVES = {
    "model_params.kp_detector_params.scale_factor": "model_params.common_params.scale_factor",
    "model_params.generator_params.num_down_blocks": "model_params.generator_params.num_up_blocks",
}

# Keys FOMM's or the keypoint-mask repository's configs carry that this model never reads.
IGNORED_KEYS = {
    "model_params.discriminator_params",
    "model_params.generator_params.estimate_occlusion_map",
    "model_params.generator_params.dense_motion_params",
    "train_params.lr_discriminator",
    "train_params.lr_kp_detector",
    "train_params.transform_params",
    "train_params.loss_weights.generator_gan",
    "train_params.loss_weights.discriminator_gan",
    "train_params.loss_weights.feature_matching",
    "train_params.loss_weights.equivariance_value",
    "train_params.loss_weights.equivariance_jacobian",
}


def map_legacy(data: dict, file: str) -> None:
    """Rewrite FOMM / keypoint-mask repository keys in place into this schema."""
    for old, new in LEGACY_MOVES.items():
        found, value = pop_path(data, old)
        if found:
            set_path(data, new, value, file, old)
    # The keypoint-mask repository chooses the mask with two booleans in kp_detector_params.
    _, after_softmax = pop_path(data, "model_params.kp_detector_params.kp_after_softmax")
    _, softmax_mask = pop_path(data, "model_params.kp_detector_params.softmax_mask")
    for name, flag in (("kp_after_softmax", after_softmax), ("softmax_mask", softmax_mask)):
        if flag is not None and not isinstance(flag, bool):
            raise ConfigError(f"{file}: model_params.kp_detector_params.{name}: expected true or false, "
                              f"got {flag!r}")
    if after_softmax and softmax_mask:
        raise ConfigError(f"{file}: model_params.kp_detector_params: kp_after_softmax and softmax_mask are "
                          f"both true; the original code allows one mask kind")
    if after_softmax is not None or softmax_mask is not None:
        kind = "circles" if after_softmax else "softmax" if softmax_mask else "heatmap"
        origin = "model_params.kp_detector_params.kp_after_softmax/softmax_mask"
        set_path(data, "model_params.mask_params.kind", kind, file, origin)
    ignored = []
    for dotted in sorted(IGNORED_KEYS):
        found, _ = pop_path(data, dotted)
        if found:
            ignored.append(dotted)
    if ignored:
        warnings.warn(f"{file}: ignoring keys the keypoint-mask model never uses: {', '.join(ignored)} (a FOMM "
                      f"config? add model_params.family: fomm to train FOMM itself)", ConfigWarning, stacklevel=3)



def export_parts(params: KeypointMaskParams) -> tuple[ExportPart, ...]:
    """What an exported engine runs: the detector (frames -> keypoints and heatmaps) and the two generators
    (source, its mask, the driving mask -> predictions). Masks, circles and relative motion stay in PyTorch.
    The detector stays fp32 under int8: its keypoints are positions that rounding would move, and it is 3% of
    the work at 256x256."""
    channels = params.common_params.num_channels
    return (ExportPart("mask.detector", ("frames",), random_frames(channels), quantize=False),
            ExportPart("generator", GENERATOR_INPUTS, generator_example(channels, params.common_params.scale_factor)))


FAMILY = register(Family(
    name="keypoint_mask", model_params=KeypointMaskParams, train_params=GeneratorTrainParams,
    build=build, load=load, trainable=trainable, networks=("kp_detector", "generator"),
    title=lambda params: f"{params.mask_params.kind} mask",
    relative_motion=lambda params: params.mask_params.kind == "circles",
    check=check, frame_size_problem=lambda size, params: high_res_size_problem(size, params.generator_params),
    map_legacy=map_legacy, needs_pretrained_detector=True, export_parts=export_parts))
