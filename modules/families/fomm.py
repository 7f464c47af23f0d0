"""FOMM as a model family: the inference model (``FommModel``) and its training losses (``FommTraining``).

Stage one of the keypoint-mask method: the detector trained here, inside FOMM, is what the keypoint-mask
generators later read through ``--checkpoint_with_kp``. A checkpoint of this family holds FOMM's top-level
keys (``kp_detector``, ``generator``, ``discriminator``, ``optimizer_*``, ``epoch``) with FOMM's state-dict
keys, so official FOMM checkpoints run here and ours run in FOMM's code.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, NamedTuple, Optional

import torch
from torch import nn

from modules.config.checks import (check_generator_training, check_jacobian_weight, fomm_size_problem,
                                   map_detector_scale_factor)
from modules.config.family import ExportPart, Family, StepContext, StepOutput, Trainable, random_frames, register
from modules.config.schema import check_positive, check_rules, check_widths, is_inverse_integer
from modules.config.sections import (CommonParams, Config, DetectorSettings, GeneratorTrainParams, KPDetectorParams,
                                     PerceptualLossWeights, TransformParams)
from modules.core.errors import CheckpointError, ConfigError
from modules.core.files import load_state_strict
from modules.core.pictures import draw_keypoints
from modules.nets.discriminator import MultiScaleDiscriminator
from modules.nets.fomm_generator import FommOutput, OcclusionAwareGenerator
from modules.nets.keypoint_detector import KPDetector, load_detector_state, load_fomm_detector
from modules.nets.keypoints import Keypoints
from modules.nets.motion import relative_keypoints
from modules.training.losses import (ImagePyramid, PerceptualLoss, discriminate, equivariance_jacobian_loss,
                                     equivariance_value_loss, feature_matching_loss, frozen, lsgan_discriminator_loss,
                                     lsgan_generator_loss, pixel_l1)
from modules.training.transform import RandomTPS


class FommSource(NamedTuple):
    image: torch.Tensor                   # (1, 3, H, W) in [0, 1]
    keypoints: Keypoints                  # (1, K, 2) values, (1, K, 2, 2) Jacobians


class FommAnimation(NamedTuple):
    prediction: torch.Tensor              # (B, 3, H, W) in [0, 1]
    deformed: torch.Tensor                # (B, 3, H, W) the source warped by the dense flow alone
    occlusion_map: Optional[torch.Tensor]  # (B, 1, h, w)
    kp_source: torch.Tensor               # (B, K, 2)
    kp_detected: torch.Tensor             # (B, K, 2) the driving frames' own keypoints


class FommModel(nn.Module):
    """FOMM's three networks under FOMM's names. The discriminator is only used in training."""

    def __init__(self, kp_detector: KPDetector, generator: OcclusionAwareGenerator,
                 discriminator: MultiScaleDiscriminator, kp_radius: float = 2.0):
        super().__init__()
        self.kp_detector = kp_detector
        self.generator = generator
        self.discriminator = discriminator
        self.kp_radius = kp_radius

    def keypoints(self, frames: torch.Tensor) -> Keypoints:
        return self.kp_detector(frames)

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> FommOutput:
        """Reconstruction as in training: source and driving (B, 3, H, W) -> the generator's output."""
        return self.generator(source, self.keypoints(driving), self.keypoints(source))

    def encode_source(self, source: torch.Tensor) -> FommSource:
        return FommSource(source, self.keypoints(source))

    def reconstruct(self, state: FommSource, driving: torch.Tensor) -> FommAnimation:
        """Frames of the source's own video from it: the absolute animation."""
        return self.animate(state, driving)

    def animate(self, state: FommSource, driving: torch.Tensor, initial: Optional[Keypoints] = None,
                adapt_scale: bool = False, use_relative_jacobian: bool = True,
                smooth: Optional[Callable[[Keypoints], Keypoints]] = None) -> FommAnimation:
        """driving (B, 3, H, W) -> the source moved like it: absolutely (the driver's keypoints as they are), or,
        given ``initial`` (the driver's reference keypoints, (1, K, 2)), relatively (FOMM's relative
        animation); ``smooth`` (modules/inference/smoothing.py) filters the detected keypoints and Jacobians first."""
        batch = driving.shape[0]
        kp_source = state.keypoints.expand(batch)
        detected = self.keypoints(driving) if smooth is None else smooth(self.keypoints(driving))
        reference = None if initial is None else initial.expand(batch)
        kp_driving = detected if reference is None else relative_keypoints(
            kp_source.value.float(), detected.value.float(), reference.value.float(),
            jacobian_source=kp_source.jacobian, jacobian_driving=detected.jacobian,
            jacobian_driving_initial=reference.jacobian,
            adapt_movement_scale=adapt_scale, use_relative_jacobian=use_relative_jacobian)
        out = self.generator(state.image.expand(batch, -1, -1, -1), kp_driving, kp_source)
        return FommAnimation(out.prediction, out.deformed, out.occlusion_map, kp_source.value, detected.value)

    def visual_columns(self, state: FommSource, driving: torch.Tensor, output: FommAnimation,
                       detail: bool = False) -> list[torch.Tensor]:
        """source + keypoints | driving + keypoints | [deformed source |] occlusion | prediction."""
        source = draw_keypoints(state.image.expand_as(driving), output.kp_source, self.kp_radius)
        driving = draw_keypoints(driving, output.kp_detected, self.kp_radius)
        occlusion = output.occlusion_map if output.occlusion_map is not None else torch.ones_like(driving[:, :1])
        middle = [output.deformed, occlusion] if detail else [occlusion]
        return [source, driving, *middle, output.prediction]


# ----------------------------------------------------------------------------------------------------------
# Building and loading

def build_fomm_model(config: Config) -> FommModel:
    """The networks of a ``family: fomm`` config, with FOMM's constructor arguments (random weights)."""
    model_params = config.model_params
    common, generator, disc = model_params.common_params, model_params.generator_params, \
        model_params.discriminator_params
    return FommModel(
        KPDetector(**model_params.detector_kwargs()),
        OcclusionAwareGenerator(common.num_channels, common.num_kp, generator.block_expansion, generator.max_features,
                                generator.num_down_blocks, generator.num_bottleneck_blocks,
                                estimate_occlusion_map=generator.estimate_occlusion_map,
                                dense_motion_params=asdict(generator.dense_motion_params),
                                estimate_jacobian=common.estimate_jacobian, align_corners=model_params.align_corners,
                                deformed_skip=generator.deformed_skip),
        MultiScaleDiscriminator(scales=disc.scales, num_channels=common.num_channels, num_kp=common.num_kp,
                                block_expansion=disc.block_expansion, max_features=disc.max_features,
                                num_blocks=disc.num_blocks, sn=disc.sn, use_kp=disc.use_kp,
                                kp_variance=disc.kp_variance),
        kp_radius=config.visualizer_params.kp_size)


def fomm_from_checkpoint(config: Config, checkpoint: dict, source: str) -> FommModel:
    """FOMM's networks with a checkpoint's weights: ``kp_detector`` and ``generator`` are needed, and
    ``discriminator`` is loaded when present (official inference-only files may lack it)."""
    model = build_fomm_model(config)
    for name in ("kp_detector", "generator"):
        if not isinstance(checkpoint.get(name), dict):
            raise CheckpointError(f"{source}: no '{name}' state dict (found: {', '.join(sorted(checkpoint))[:200]})")
    load_detector_state(model.kp_detector, checkpoint["kp_detector"], source)
    load_state_strict(model.generator, checkpoint["generator"], source, "generator")
    if isinstance(checkpoint.get("discriminator"), dict):
        load_state_strict(model.discriminator, checkpoint["discriminator"], source, "discriminator")
    return model


# ----------------------------------------------------------------------------------------------------------
# Training

class _GeneratorSide(nn.Module):
    """The detector and generator of one training step in one forward (what DDP wraps)."""

    def __init__(self, model: FommModel):
        super().__init__()
        self.kp_detector, self.generator = model.kp_detector, model.generator

    def forward(self, source: torch.Tensor, driving: torch.Tensor, transformed: Optional[torch.Tensor]):
        detect = self.kp_detector
        # Three detector calls, as FOMM makes them: BatchNorm sees each batch on its own.
        kp_source, kp_driving = detect(source), detect(driving)
        kp_transformed = detect(transformed) if transformed is not None else None
        return kp_source, kp_driving, kp_transformed, self.generator(source, kp_driving, kp_source)


class Shown(NamedTuple):
    """The train-vis columns: the frames with their keypoints drawn, the warped source, occlusion, prediction."""
    source_kp: torch.Tensor
    driving_kp: torch.Tensor
    deformed: torch.Tensor
    occlusion: torch.Tensor
    prediction: torch.Tensor


class FommTraining(Trainable):
    """FOMM's losses (sec. 3.4 of its paper): perceptual pyramid, equivariance of keypoints and Jacobians under
    a random TPS transform, and, with generator_gan > 0, LSGAN and feature matching against a discriminator
    that then trains in its own phase on the detached prediction.

    Gradient routing: in the generator phase the discriminator's parameters are frozen (gradients pass through
    it to the prediction only); in the discriminator phase the prediction is detached.
    """

    loss_names = ("perceptual", "l1", "equivariance_value", "equivariance_jacobian", "generator_gan",
                  "feature_matching", "discriminator_gan")

    def __init__(self, model: FommModel, perceptual: PerceptualLoss, config: Config):
        super().__init__()
        self.model = model
        self.perceptual = perceptual
        train = config.train_params
        self.weights = train.loss_weights
        self.transform_params = train.transform_params
        self.align_corners = config.model_params.align_corners
        self.pyramid = ImagePyramid(config.model_params.discriminator_params.scales,
                                    config.model_params.common_params.num_channels)
        self.forward_model: nn.Module = _GeneratorSide(model)
        self.forward_discriminator: nn.Module = model.discriminator

    @property
    def uses_gan(self) -> bool:
        # As in FOMM: with generator_gan 0 the discriminator is neither used nor trained.
        return self.weights.generator_gan != 0

    def networks(self) -> dict[str, nn.Module]:
        return {"kp_detector": self.model.kp_detector, "generator": self.model.generator,
                "discriminator": self.model.discriminator}

    def optimized(self) -> list[str]:
        return ["generator", "kp_detector", "discriminator"]

    def distribute(self, wrap) -> None:
        self.forward_model = wrap(self.forward_model)
        if self.uses_gan:
            self.forward_discriminator = wrap(self.model.discriminator)

    def training_step(self, source: torch.Tensor, driving: torch.Tensor, context: StepContext,
                      labels=None) -> StepOutput:
        weights = self.weights
        zero = torch.zeros((), device=source.device)
        losses = dict.fromkeys(self.loss_names, zero)
        with context.autocast():
            transform = transformed = None
            if weights.equivariance_value or weights.equivariance_jacobian:
                params = self.transform_params
                transform = RandomTPS(source.shape[0], params.sigma_affine, params.sigma_tps, params.points_tps,
                                      device=source.device)
                transformed = transform.transform_frame(driving, self.align_corners)
            kp_source, kp_driving, kp_transformed, generated = self.forward_model(source, driving, transformed)
            prediction = generated.prediction
            losses["perceptual"] = self.perceptual([prediction], driving)[0]
            if weights.l1:
                losses["l1"] = weights.l1 * pixel_l1([prediction], driving)
            if weights.equivariance_value:
                losses["equivariance_value"] = weights.equivariance_value * equivariance_value_loss(
                    kp_driving.value, kp_transformed.value, transform)
            if weights.equivariance_jacobian:
                losses["equivariance_jacobian"] = weights.equivariance_jacobian * equivariance_jacobian_loss(
                    kp_driving.jacobian, kp_transformed.value, kp_transformed.jacobian, transform)
            kp = kp_driving.value.detach()
            if self.uses_gan:
                with frozen(self.model.discriminator):
                    real, fake = discriminate(self.model.discriminator, self.pyramid, driving, prediction, kp)
                losses["generator_gan"] = weights.generator_gan * lsgan_generator_loss([m for _, m in fake])
                if any(weights.feature_matching):
                    losses["feature_matching"] = feature_matching_loss(
                        [[f.detach() for f in maps] for maps, _ in real], [maps for maps, _ in fake],
                        weights.feature_matching).to(source.device)
        context.backward(sum(value for name, value in losses.items() if name != "discriminator_gan"))
        if self.uses_gan:
            with context.autocast():
                real, fake = discriminate(self.forward_discriminator, self.pyramid, driving, prediction.detach(), kp)
                losses["discriminator_gan"] = weights.discriminator_gan * lsgan_discriminator_loss(
                    [m for _, m in real], [m for _, m in fake])
            context.backward(losses["discriminator_gan"])

        def shown() -> Shown:
            radius = self.model.kp_radius
            occlusion = generated.occlusion_map if generated.occlusion_map is not None else torch.ones_like(
                prediction[:, :1])
            return Shown(draw_keypoints(source, kp_source.value, radius), draw_keypoints(driving, kp_driving.value,
                         radius), generated.deformed, occlusion, prediction)

        return StepOutput(losses, shown)


# ----------------------------------------------------------------------------------------------------------
# Its config: FOMM's own model_params and train_params keys

@dataclass
class DenseMotionParams:
    block_expansion: int                  # hourglass width (64 in FOMM's 256 configs)
    max_features: int
    num_blocks: int
    scale_factor: float = 0.25            # the flow is computed at frame * scale_factor
    kp_variance: float = 0.01             # Gaussians of the heatmap differences, normalised coordinates


@dataclass
class FommGeneratorParams:
    block_expansion: int
    max_features: int
    num_down_blocks: int
    num_bottleneck_blocks: int
    dense_motion_params: DenseMotionParams
    estimate_occlusion_map: bool = True
    # Not in FOMM: the last convolution also reads the warped source and starts as a copy of it, so a short
    # CPU run learns motion instead of first learning to autoencode (see OcclusionAwareGenerator).
    deformed_skip: bool = False


@dataclass
class DiscriminatorParams:
    scales: list[float] = field(default_factory=lambda: [1.0])
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 4
    sn: bool = True                       # spectral norm (the official checkpoints have it)
    use_kp: bool = False                  # keypoint Gaussians as extra input channels
    kp_variance: float = 0.01


@dataclass
class FommModelParams(DetectorSettings):
    """FOMM (stage one): detector, dense motion and occlusion-aware generator, optional discriminator."""
    common_params: CommonParams
    kp_detector_params: KPDetectorParams
    generator_params: FommGeneratorParams
    discriminator_params: DiscriminatorParams = field(default_factory=DiscriminatorParams)
    family: Literal["fomm"] = "fomm"
    # grid_sample's align_corners in the dense motion, the generator and the equivariance transform. FOMM's
    # official checkpoints were trained with PyTorch 1.0, which sampled like align_corners=True: keep true to
    # run them. True is also what the coordinate grid means (pixel centres at -1 and +1).
    align_corners: bool = True


@dataclass
class FommLossWeights(PerceptualLossWeights):
    # FOMM's vox/taichi-256 values: 0, 1, [10, 10, 10, 10], 10, 10. With generator_gan 0 the discriminator is
    # neither used nor trained, as in FOMM.
    generator_gan: float = 0.0
    discriminator_gan: float = 0.0
    feature_matching: list[float] = field(default_factory=list)
    equivariance_value: float = 0.0
    equivariance_jacobian: float = 0.0


@dataclass
class FommTrainParams(GeneratorTrainParams):
    loss_weights: FommLossWeights
    # learning rates of the detector and discriminator (null: lr_generator), the TPS transform
    lr_kp_detector: Optional[float] = None
    lr_discriminator: Optional[float] = None
    transform_params: TransformParams = field(default_factory=TransformParams)


def check(config: Config, file: str) -> None:
    """FOMM's own keys: widths, counts, scales, variances, learning rates and weights in range."""
    check_generator_training(config, file)
    model, train = config.model_params, config.train_params
    generator, disc = model.generator_params, model.discriminator_params
    dense, transform, weights = generator.dense_motion_params, train.transform_params, train.loss_weights
    prefix = "model_params.generator_params"
    check_widths(file, prefix, generator.block_expansion, generator.max_features)
    check_widths(file, f"{prefix}.dense_motion_params", dense.block_expansion, dense.max_features)
    check_widths(file, "model_params.discriminator_params", disc.block_expansion, disc.max_features)
    check_positive(file, [(f"{prefix}.dense_motion_params.num_blocks", dense.num_blocks),
                          ("model_params.discriminator_params.num_blocks", disc.num_blocks),
                          ("train_params.transform_params.points_tps", transform.points_tps)])
    lr_rule = (lambda v: v is None or v >= 0, "0 or more (0 freezes the network) or null")
    gan_weights = [weights.generator_gan, weights.discriminator_gan, weights.equivariance_value,
                   weights.equivariance_jacobian] + weights.feature_matching
    check_rules(file, [
        (f"{prefix}.num_down_blocks", generator.num_down_blocks, lambda v: v >= 0, "0 or more"),
        (f"{prefix}.num_bottleneck_blocks", generator.num_bottleneck_blocks, lambda v: v >= 0, "0 or more"),
        (f"{prefix}.dense_motion_params.scale_factor", dense.scale_factor, is_inverse_integer,
         "1/n for an integer n (0.25 in FOMM)"),
        ("model_params.discriminator_params.scales", disc.scales,
         lambda scales: bool(scales) and all(is_inverse_integer(s) for s in scales), "pyramid scales 1/n, e.g. [1]"),
        (f"{prefix}.dense_motion_params.kp_variance", dense.kp_variance, lambda v: v > 0, "a positive number"),
        ("model_params.discriminator_params.kp_variance", disc.kp_variance, lambda v: v > 0, "a positive number"),
        ("train_params.lr_kp_detector", train.lr_kp_detector, *lr_rule),
        ("train_params.lr_discriminator", train.lr_discriminator, *lr_rule),
        ("train_params.transform_params", (transform.sigma_affine, transform.sigma_tps), lambda v: min(v) >= 0,
         "sigma_affine and sigma_tps >= 0"),
        ("train_params.loss_weights", gan_weights, lambda v: all(w >= 0 for w in v), "weights >= 0"),
        ("train_params.loss_weights.feature_matching", weights.feature_matching, lambda v: len(v) <= disc.num_blocks,
         f"at most one weight per discriminator block ({disc.num_blocks})")])
    check_jacobian_weight(config, file)
    if not any(weights.perceptual) and weights.l1 == 0 and weights.generator_gan == 0:
        raise ConfigError(f"{file}: train_params.loss_weights: perceptual, l1 and generator_gan are all 0, the "
                          f"generator would learn nothing")


def _build(config: Config, checkpoint_with_kp: Optional[str] = None) -> FommModel:
    """Its three networks, random (stage one trains the detector; ``checkpoint_with_kp`` starts it from a FOMM
    checkpoint's)."""
    model = build_fomm_model(config)
    if checkpoint_with_kp:
        model.kp_detector.load_state_dict(load_fomm_detector(
            checkpoint_with_kp, config.model_params.detector_kwargs()).state_dict())
    return model


def export_parts(params: FommModelParams) -> tuple[ExportPart, ...]:
    """What an exported engine runs: the detector (fp32 under int8: rounding would move its keypoints) and the
    generator (dense motion, 4-D grid_sample warps, occlusion), its Keypoints passed as tensors."""
    channels, num_kp = params.common_params.num_channels, params.common_params.num_kp

    def generator_inputs(part: nn.Module, size: tuple[int, int]) -> tuple:
        rng = torch.Generator().manual_seed(0)
        return torch.rand(1, channels, *size), Keypoints.random(1, num_kp, rng), Keypoints.random(1, num_kp, rng)

    return (ExportPart("kp_detector", ("frames",), random_frames(channels), quantize=False),
            ExportPart("generator", ("source", "kp_driving", "jacobian_driving", "kp_source", "jacobian_source"),
                       generator_inputs, pack=lambda source, driving, kp_source: (
                           source, *driving.with_jacobian()[:2], *kp_source.with_jacobian()[:2]),
                       unpack=lambda source, *points: (source, Keypoints(*points[:2]), Keypoints(*points[2:]))))


FAMILY = register(Family(
    name="fomm", model_params=FommModelParams, train_params=FommTrainParams,
    build=_build, load=fomm_from_checkpoint,
    trainable=lambda config, model, perceptual: FommTraining(model, perceptual(), config),
    networks=("kp_detector", "generator", "discriminator"), training_only=("discriminator",),
    title=lambda params: "FOMM",
    relative_motion=lambda params: True, check=check, frame_size_problem=fomm_size_problem,
    map_legacy=map_detector_scale_factor, export_parts=export_parts))
