"""A keypoint-labelled stage one (``family: detector``): FOMM's KPDetector trained on its own from labels.

The keypoint-mask paper needs only "a pre-trained keypoint detector" (sec. 1.1, 2.1). Unsupervised FOMM finds
keypoints on the limbs only after GPU-days; given per-frame labels (a dataset's annotations, the synthetic
figures' joints, or pseudo-labels from MediaPipe Pose / dlib, scripts/label_keypoints.py) the same detector
learns where the joints are in CPU-minutes. The network is exactly ``KPDetector(**detector_kwargs)``, saved
under FOMM's ``kp_detector`` key, so a checkpoint of this family is a ``--checkpoint_with_kp`` for the heatmap,
circles and FOMM configs with the same detector settings, and loads into FOMM's own code.

The losses, each optional by its weight:

* ``keypoint``: L1 of the soft-argmax keypoints to their labels on both frames of the pair, averaged over the
  labels present (a missing label contributes nothing);
* ``heatmap``: the mean squared difference of each raw (pre-softmax) heatmap to a Gaussian drawn at its label
  on the heatmap grid. It shapes the raw maps themselves, which is what the heatmap mask sums (sec. 2.2);
* ``equivariance_value`` / ``equivariance_jacobian``: FOMM's (Siarohin et al. 2019, sec. 3.4) under a random
  TPS transform of the driving frame; the Jacobians, which FOMM's relative motion uses, learn only from these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Optional

import torch
from torch import nn

from modules.config.checks import check_jacobian_weight, map_detector_scale_factor
from modules.config.family import Family, KeypointLabels, StepContext, StepOutput, Trainable, register
from modules.config.schema import fail
from modules.config.sections import (CommonParams, Config, DetectorSettings, KPDetectorParams, LabelParams, LossWeights,
                                     TrainParams, TransformParams)
from modules.core.errors import CheckpointError, ConfigError
from modules.core.pictures import draw_keypoints
from modules.data.augmentation import augment_batch
from modules.nets.keypoint_detector import (KPDetector, draw_circles_mask, draw_gaussians, load_detector_state,
                                            load_fomm_detector, normalize_and_pad)
from modules.nets.keypoints import Keypoints
from modules.training.losses import equivariance_jacobian_loss, equivariance_value_loss
from modules.training.transform import RandomTPS


class DetectorLossTerms(NamedTuple):
    keypoint: torch.Tensor                # scalar, weighted L1 to the labels
    heatmap: torch.Tensor                 # scalar, weighted raw-heatmap MSE to Gaussians at the labels
    equivariance_value: torch.Tensor      # scalar
    equivariance_jacobian: torch.Tensor   # scalar

    def total(self) -> torch.Tensor:
        return self.keypoint + self.heatmap + self.equivariance_value + self.equivariance_jacobian


def keypoint_label_loss(value: torch.Tensor, label: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean |value - label| over the labelled keypoints: (B, K, 2), (B, K, 2), (B, K) -> scalar (0 if none)."""
    per_point = (value.float() - label).abs().mean(dim=-1)                       # (B, K)
    return (per_point * visible).sum() / visible.sum().clamp_min(1)


def heatmap_label_loss(raw_heatmap: torch.Tensor, label: torch.Tensor, visible: torch.Tensor,
                       variance: float) -> torch.Tensor:
    """Mean squared difference of raw heatmaps (B, K, h, w) to Gaussians exp(-0.5 d^2 / variance) (peak 1) at
    the labels, over the labelled keypoints' maps -> scalar."""
    target = draw_gaussians(label, tuple(raw_heatmap.shape[-2:]), variance)     # (B, K, h, w)
    per_map = (raw_heatmap.float() - target).pow(2).mean(dim=(2, 3))            # (B, K)
    return (per_map * visible).sum() / visible.sum().clamp_min(1)


class LabelledDetector(nn.Module):
    """The inference side: the detector alone. It finds keypoints; it has no generator to animate with."""

    def __init__(self, kp_detector: KPDetector, kp_radius: float = 2.0):
        super().__init__()
        self.kp_detector = kp_detector
        self.kp_radius = kp_radius

    def keypoints(self, frames: torch.Tensor) -> Keypoints:
        return self.kp_detector(frames)

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> Keypoints:
        """The driving frames' detection (B, 3, H, W) -> Keypoints; the other families' signature."""
        return self.kp_detector(driving)


def build_labelled_detector(config: Config) -> LabelledDetector:
    """The network of a ``family: detector`` config, with FOMM's constructor arguments (random weights)."""
    return LabelledDetector(KPDetector(**config.model_params.detector_kwargs()), config.visualizer_params.kp_size)


class Shown(NamedTuple):
    """The train-vis columns: the labels and the keypoints drawn on the frames, the driving masks they make."""
    source_labels: torch.Tensor
    source_kp: torch.Tensor
    driving_kp: torch.Tensor
    driving_heatmap_mask: torch.Tensor
    driving_circles_mask: torch.Tensor


class LabelledDetectorTraining(Trainable):
    """One optimizer (``optimizer_kp_detector``, as FOMM names it) on the detector, the losses above."""

    loss_names = DetectorLossTerms._fields

    def __init__(self, model: LabelledDetector, config: Config):
        super().__init__()
        self.model = model
        params, train = config.model_params, config.train_params
        self.label_params = params.label_params
        self.heatmap_variance = params.heatmap_variance
        self.align_corners = params.align_corners
        self.weights = train.loss_weights
        self.transform_params = train.transform_params
        self.augmentation = train.label_augmentation
        self.forward_model: nn.Module = model.kp_detector

    def networks(self) -> dict[str, nn.Module]:
        return {"kp_detector": self.model.kp_detector}

    def optimized(self) -> list[str]:
        return ["kp_detector"]

    def distribute(self, wrap) -> None:
        self.forward_model = wrap(self.model.kp_detector)

    def training_step(self, source: torch.Tensor, driving: torch.Tensor, context: StepContext,
                      labels: Optional[KeypointLabels] = None) -> StepOutput:
        if labels is None:
            raise ValueError("the labelled detector trains on keypoint labels; the batch has none")
        weights, batch = self.weights, source.shape[0]
        zero = torch.zeros((), device=source.device)
        if self.augmentation is not None:
            source, driving, labels = augment_labelled(source, driving, labels, self.augmentation)
        with context.autocast():
            # Source and driving in one pass: twice the labelled frames per step.
            detected = self.forward_model(torch.cat([source, driving]))
            value, raw = detected.value, detected.raw_heatmap                    # (2B, K, 2), (2B, K, h, w)
            label = torch.cat([labels.source, labels.driving])
            visible = torch.cat([labels.source_visible, labels.driving_visible])
            terms = dict.fromkeys(self.loss_names, zero)
            if weights.keypoint:
                terms["keypoint"] = weights.keypoint * keypoint_label_loss(value, label, visible)
            if weights.heatmap:
                terms["heatmap"] = weights.heatmap * heatmap_label_loss(raw, label, visible, self.heatmap_variance)
            if weights.equivariance_value or weights.equivariance_jacobian:
                params = self.transform_params
                transform = RandomTPS(batch, params.sigma_affine, params.sigma_tps, params.points_tps,
                                      device=source.device)
                transformed = self.forward_model(transform.transform_frame(driving, self.align_corners))
                if weights.equivariance_value:
                    terms["equivariance_value"] = weights.equivariance_value * equivariance_value_loss(
                        value[batch:], transformed.value, transform)
                if weights.equivariance_jacobian:
                    terms["equivariance_jacobian"] = weights.equivariance_jacobian * equivariance_jacobian_loss(
                        detected.jacobian[batch:], transformed.value, transformed.jacobian, transform)
            losses = DetectorLossTerms(**terms)
        context.backward(losses.total())

        def shown() -> Shown:
            radius = self.model.kp_radius
            # labels drawn where present; a missing one goes off the frame
            placed = torch.where(labels.source_visible[..., None] > 0, labels.source, torch.full_like(labels.source, 9))
            frame_size = tuple(driving.shape[-2:])
            mask_size = self.model.kp_detector.input_size(frame_size)
            raw_driving = raw[batch:].detach().float()
            heatmap_mask = normalize_and_pad(raw_driving.sum(dim=1, keepdim=True), mask_size)
            circles_mask = draw_circles_mask(value[batch:].detach().float(), tuple(raw_driving.shape[-2:]), mask_size)
            return Shown(draw_keypoints(source, placed, radius), draw_keypoints(source, value[:batch], radius),
                         draw_keypoints(driving, value[batch:], radius), heatmap_mask, circles_mask)

        return StepOutput(losses._asdict(), shown)


def augment_labelled(source: torch.Tensor, driving: torch.Tensor, labels: KeypointLabels,
                     params: "LabelAugmentation") -> tuple[torch.Tensor, torch.Tensor, KeypointLabels]:
    """Both frames of every pair augmented independently, their labels moved along; a label pushed out of the
    frame counts as missing. The draws come from the global torch generator, which the trainer saves in every
    checkpoint, so a resumed run augments as an uninterrupted one."""
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
    geometry = dict(scale_range=tuple(params.scale), rotation_max=params.rotation, shift_max=params.shift)
    moved = []
    for frames, points, visible in ((source, labels.source, labels.source_visible),
                                    (driving, labels.driving, labels.driving_visible)):
        # augment_batch speaks normalised [0, 1] coordinates; the labels are in [-1, 1]
        frames, points, inside = augment_batch(frames, (points + 1) / 2, generator, **geometry)
        moved.append((frames, points * 2 - 1, visible * inside.to(visible.dtype)))
    (source, source_points, source_visible), (driving, driving_points, driving_visible) = moved
    return source, driving, KeypointLabels(source_points, source_visible, driving_points, driving_visible)


# ----------------------------------------------------------------------------------------------------------
# Its config

@dataclass
@dataclass
class DetectorModelParams(DetectorSettings):
    """A keypoint-labelled stage one: FOMM's KPDetector alone, its soft-argmax keypoints supervised by labels,
    FOMM's equivariance terms optional (they train the Jacobians). Its checkpoint is FOMM's ``kp_detector``."""
    common_params: CommonParams
    kp_detector_params: KPDetectorParams
    label_params: LabelParams
    # Variance of the target Gaussians of the heatmap term, normalised coordinates (the circles' 0.003 default)
    heatmap_variance: float = 0.003
    family: Literal["detector"] = "detector"
    align_corners: bool = True            # grid_sample of the equivariance transform, as FOMM's



@dataclass
class DetectorLossWeights(LossWeights):
    # L1 of the soft-argmax keypoints to their labels (normalised coordinates), and the mean squared difference
    # of the raw heatmaps to Gaussians drawn at the labels; FOMM's equivariance terms (they train the Jacobians)
    keypoint: float = 0.0
    heatmap: float = 0.0
    equivariance_value: float = 0.0
    equivariance_jacobian: float = 0.0


@dataclass
class LabelAugmentation:
    """Random similarity transforms and colour changes of each labelled frame, its labels moved with it
    (modules/augmentation.augment_batch, each frame its own draw). A stage one pseudo-labelled on a handful
    of videos memorises each video's framing and colours without it; off when absent from the config."""
    scale: list[float] = field(default_factory=lambda: [0.85, 1.15])   # zoom range about the frame centre
    rotation: float = 0.25                # radians, at most
    shift: float = 0.06                   # frame fractions, at most, in x and in y


@dataclass
class DetectorTrainParams(TrainParams):
    loss_weights: DetectorLossWeights
    lr_kp_detector: Optional[float] = None   # required (checked)
    transform_params: TransformParams = field(default_factory=TransformParams)
    label_augmentation: Optional[LabelAugmentation] = None


def check(config: Config, file: str) -> None:
    model, train = config.model_params, config.train_params
    if train.lr_kp_detector is None or train.lr_kp_detector <= 0:
        fail(file, "train_params.lr_kp_detector", "a positive number (the detector's learning rate)",
             train.lr_kp_detector)
    labels, weights = model.label_params, train.loss_weights
    if not labels.points:
        fail(file, "model_params.label_params.points", "at least one point name", labels.points)
    if len(set(labels.points)) != len(labels.points):
        fail(file, "model_params.label_params.points", "distinct point names", labels.points)
    if len(labels.points) != model.common_params.num_kp:
        fail(file, "model_params.label_params.points", f"one name per keypoint (common_params.num_kp is "
              f"{model.common_params.num_kp})", f"{len(labels.points)} names")
    if not 0 < labels.min_visibility <= 1:
        fail(file, "model_params.label_params.min_visibility", "a number in (0, 1]", labels.min_visibility)
    if model.heatmap_variance <= 0:
        fail(file, "model_params.heatmap_variance", "a positive number", model.heatmap_variance)
    values = [weights.keypoint, weights.heatmap, weights.equivariance_value, weights.equivariance_jacobian]
    if any(w < 0 for w in values):
        fail(file, "train_params.loss_weights", "keypoint, heatmap and equivariance weights >= 0", values)
    if weights.keypoint == 0 and weights.heatmap == 0:
        raise ConfigError(f"{file}: train_params.loss_weights: keypoint and heatmap are both 0, the labels would "
                          f"train nothing (a stage one without labels is family: fomm)")
    check_jacobian_weight(config, file)
    augmentation = train.label_augmentation
    if augmentation is not None and not (len(augmentation.scale) == 2 and 0 < augmentation.scale[0]
                                         <= augmentation.scale[1] and augmentation.rotation >= 0
                                         and 0 <= augmentation.shift < 0.5):
        fail(file, "train_params.label_augmentation", "scale [low, high] with 0 < low <= high, rotation >= 0 "
             "and 0 <= shift < 0.5", f"{augmentation.scale}, {augmentation.rotation}, {augmentation.shift}")
    transform = train.transform_params
    if transform.sigma_affine < 0 or transform.sigma_tps < 0 or transform.points_tps < 1:
        fail(file, "train_params.transform_params", "sigma_affine, sigma_tps >= 0 and points_tps >= 1",
              f"{transform.sigma_affine}, {transform.sigma_tps}, {transform.points_tps}")



def build(config: Config, checkpoint_with_kp: Optional[str] = None) -> LabelledDetector:
    """The detector, random or (fine-tuning on labels) from a FOMM checkpoint's, official or ours."""
    model = build_labelled_detector(config)
    if checkpoint_with_kp:
        model.kp_detector.load_state_dict(load_fomm_detector(
            checkpoint_with_kp, config.model_params.detector_kwargs()).state_dict())
        model.kp_detector.requires_grad_(True)
    return model


def load(config: Config, checkpoint: dict, source: str) -> LabelledDetector:
    model = build_labelled_detector(config)
    if not isinstance(checkpoint.get("kp_detector"), dict):
        raise CheckpointError(f"{source}: no 'kp_detector' state dict")
    load_detector_state(model.kp_detector, checkpoint["kp_detector"], source)
    return model


FAMILY = register(Family(
    name="detector", model_params=DetectorModelParams, train_params=DetectorTrainParams,
    build=build, load=load, trainable=lambda config, model, perceptual: LabelledDetectorTraining(model, config),
    networks=("kp_detector",), title=lambda params: "labelled keypoint detector", check=check,
    map_legacy=map_detector_scale_factor, animates=False))
