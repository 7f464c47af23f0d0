"""The perturbed-masks family (Shalev & Wolf, sec. 3): a learned mask generator m, a mask refinement
network r, and the keypoint-mask family's low-res and high-res generators l and h (modules/nets/generator.py, the
same classes: the keypoint-mask paper copied them from this one).

Animation (the test-time path)::

    m_s = m(s), m_d = m(d), m_dp = P_test(m_d), m_dr = r(D(s), m_s, m_dp), c = l(s, m_s, m_dr), f = h(...)

Training (source and driver from one video): m_d = m(A(d)) with A the colour augmentation; l and h take m_d
itself; r learns to undo P_train: m_dr = r(D(s), m_s, P_train(m_d)) against m_d (L_mask). Gradient routing:
L_mask trains only r, the loss on f only h, the loss on c trains l and m.

Ablations (``model_params.ablation``): ``no_pert`` skips P_test, ``no_ref`` skips r (l and h take m_dp),
``no_id`` skips both (l and h take m_d: the reconstruction path).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Optional

import torch
from torch import nn

from modules.config.checks import check_generator_training, check_mask_generators, perturbed_size_problem
from modules.config.family import (GENERATOR_INPUTS, ExportPart, Family, StepContext, StepOutput, Trainable,
                                   generator_example, random_frames, register)
from modules.config.schema import check_positive, check_widths, fail
from modules.config.sections import Config, GeneratorParams, GeneratorTrainParams, JitterParams, PerceptualLossWeights
from modules.core.errors import CheckpointError, ConfigError
from modules.core.files import load_state_strict
from modules.nets.blocks import AntiAliasDownsample
from modules.nets.generator import FrameGenerator, GeneratorOutput, build_frame_generator
from modules.nets.keypoints import Keypoints
from modules.nets.mask_network import MaskNetwork
from modules.training.losses import PerceptualLoss, pixel_l1
from modules.training.perturbations import Threshold, colour_augment, perturb_train, threshold

Ablation = Literal["none", "no_pert", "no_ref", "no_id"]


class PerturbedState(NamedTuple):
    """What animation needs of the source, computed once per source image."""
    image: torch.Tensor                   # (1, 3, H, W) in [0, 1]
    mask: torch.Tensor                    # (1, 1, h, w) m_s
    small: torch.Tensor                   # (1, 3, h, w) D(s), r's view of the source


class PerturbedOutput(NamedTuple):
    low_res_prediction: torch.Tensor      # (B, 3, H, W) c
    prediction: torch.Tensor              # (B, 3, H, W) f
    source_mask: torch.Tensor             # (B, 1, h, w) m_s
    driving_mask: torch.Tensor            # (B, 1, h, w) the mask l and h took (m_dr, m_dp or m_d)
    raw_driving_mask: torch.Tensor        # (B, 1, h, w) m_d
    perturbed_mask: torch.Tensor          # (B, 1, h, w) m_dp (m_d when not perturbed)


class PerturbedMaskModel(nn.Module):
    """m, r, l and h. Its state dict is the four networks' weights; the loss lives in PerturbedTraining."""

    def __init__(self, mask_generator: MaskNetwork, refinement: MaskNetwork, generator: FrameGenerator,
                 threshold_rule: Threshold = "median", ablation: Ablation = "none", scale_factor: float = 0.25,
                 reconstruct_test_time: bool = False):
        super().__init__()
        self.reconstruct_test_time = reconstruct_test_time     # reconstruction_params.test_time_path
        self.mask_generator = mask_generator
        self.refinement = refinement
        self.generator = generator
        self.threshold_rule = threshold_rule
        self.ablation = ablation
        self.source_down = AntiAliasDownsample(3, scale_factor) if scale_factor != 1 else nn.Identity()

    @property
    def perturbs(self) -> bool:
        return self.ablation in ("none", "no_ref")

    @property
    def refines(self) -> bool:
        return self.ablation in ("none", "no_pert")

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> PerturbedOutput:
        """source and driving (B, 3, H, W), pair by pair -> the test-time path's output."""
        return self.animate(self.encode_source(source), driving)

    def encode_source(self, source: torch.Tensor) -> PerturbedState:
        return PerturbedState(source, self.mask_generator(source), self.source_down(source))

    def keypoints(self, frames: torch.Tensor) -> Keypoints:
        raise ValueError("the perturbed-masks model has no keypoints: it animates with masks, absolutely")

    def driving_masks(self, state: PerturbedState, driving: torch.Tensor,
                      test_time: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (m_d, m_dp, the mask l and h take). test_time=False is the training procedure: m_d throughout."""
        raw = self.mask_generator(driving)
        if not test_time:
            return raw, raw, raw
        perturbed = threshold(raw, self.threshold_rule, self.mask_generator.border) if self.perturbs else raw
        if not self.refines:
            return raw, perturbed, perturbed
        batch = driving.shape[0]
        refined = self.refinement(torch.cat([state.small.expand(batch, -1, -1, -1).to(perturbed.dtype),
                                             state.mask.expand(batch, -1, -1, -1), perturbed], dim=1))
        return raw, perturbed, refined

    def animate(self, state: PerturbedState, driving: torch.Tensor, initial: Optional[Keypoints] = None,
                adapt_scale: bool = False, use_relative_jacobian: bool = True,
                test_time: bool = True) -> PerturbedOutput:
        """driving (B, 3, H, W) -> predictions (B, 3, H, W) by the test-time path (or the training one)."""
        if initial is not None:
            raise ValueError("the perturbed-masks model animates absolutely: it has no keypoints to move")
        batch = driving.shape[0]
        raw, perturbed, used = self.driving_masks(state, driving, test_time)
        out: GeneratorOutput = self.generator(state.image.expand(batch, -1, -1, -1),
                                              state.mask.expand(batch, -1, -1, -1), used)
        return PerturbedOutput(out.low_res_prediction, out.prediction, out.source_mask, used, raw, perturbed)

    def reconstruct(self, state: PerturbedState, driving: torch.Tensor,
                    test_time: Optional[bool] = None) -> PerturbedOutput:
        """Reconstruction follows the training procedure (l and h take m_d) unless ``test_time`` (default: the
        config's ``reconstruction_params.test_time_path``)."""
        return self.animate(state, driving, test_time=self.reconstruct_test_time if test_time is None else test_time)

    def visual_columns(self, state: PerturbedState, driving: torch.Tensor, output: PerturbedOutput,
                       detail: bool = False) -> list[torch.Tensor]:
        """source | driving | driving mask (the one used) | [m_d | m_dp | low-res |] prediction."""
        extra = [output.raw_driving_mask, output.perturbed_mask, output.low_res_prediction] if detail else []
        return [state.image.expand_as(driving), driving, output.driving_mask, *extra, output.prediction]


def checkpoint_networks(model: PerturbedMaskModel) -> dict[str, nn.Module]:
    """Checkpoint key -> network (the public code never released a checkpoint; these names are ours)."""
    return {"mask_generator": model.mask_generator, "mask_refinement": model.refinement,
            "generator": model.generator}


class PerturbedLossTerms(NamedTuple):
    perceptual_low_res: torch.Tensor      # trains l and m
    perceptual_high_res: torch.Tensor     # trains h only
    mask: torch.Tensor                    # L1(m_dr, m_d), trains r only
    l1: torch.Tensor                      # optional pixel L1 on c and f (0 in the paper)


class _Forward(nn.Module):
    """m, l and h for one training step: the part DDP wraps. r is left out (it has its own wrapper and is
    idle in the first epoch), so no parameter of this module ever goes without a gradient."""

    def __init__(self, mask_generator: MaskNetwork, generator: FrameGenerator):
        super().__init__()
        self.mask_generator = mask_generator
        self.generator = generator

    def forward(self, source: torch.Tensor, augmented: torch.Tensor) -> GeneratorOutput:
        masks = self.mask_generator(torch.cat([source, augmented]))    # one pass: m_s and m_d
        source_mask, driving_mask = masks.chunk(2)
        return self.generator(source, source_mask, driving_mask)


class Shown(NamedTuple):
    """The train-vis columns: frames, the masks m_s, m_d, its perturbation m_dp and refinement m_dr, outputs."""
    source: torch.Tensor
    driving: torch.Tensor
    m_s: torch.Tensor
    m_d: torch.Tensor
    m_dp: torch.Tensor
    m_dr: torch.Tensor
    low_res: torch.Tensor
    high_res: torch.Tensor


class PerturbedTraining(Trainable):
    """The loss of the perturbed-masks paper (sec. 3.1) with its gradient routing; r trains from
    ``refinement_start_epoch`` on."""

    loss_names = PerturbedLossTerms._fields

    def __init__(self, model: PerturbedMaskModel, perceptual: PerceptualLoss, mask_weight: float = 100.0,
                 l1_weight: float = 0.0, refinement_start_epoch: int = 1, augmentation: Optional[dict] = None,
                 num_strips: int = 6, scale_range: tuple[float, float] = (0.75, 1.25)):
        super().__init__()
        self.model = model
        self.perceptual = perceptual
        self.mask_weight = mask_weight
        self.l1_weight = l1_weight
        self.refinement_start_epoch = refinement_start_epoch
        self.augmentation = dict(augmentation or {})
        self.num_strips = num_strips
        self.scale_range = scale_range
        self.forward_model: nn.Module = _Forward(model.mask_generator, model.generator)
        self.forward_refinement: nn.Module = model.refinement

    def networks(self) -> dict[str, nn.Module]:
        return checkpoint_networks(self.model)

    def optimized(self) -> list[str]:
        return ["generator", "mask_generator", "mask_refinement"]

    def distribute(self, wrap) -> None:
        self.forward_model = wrap(_Forward(self.model.mask_generator, self.model.generator))
        if self.model.refines:
            self.forward_refinement = wrap(self.model.refinement)

    def trains_refinement(self, epoch: int) -> bool:
        return self.model.refines and self.mask_weight > 0 and epoch >= self.refinement_start_epoch

    def training_step(self, source: torch.Tensor, driving: torch.Tensor, context: StepContext,
                      labels=None) -> StepOutput:
        model = self.model
        zero = torch.zeros((), device=source.device)
        with context.autocast():
            augmented = colour_augment(driving, **self.augmentation)
            out = self.forward_model(source, augmented)
            low, high = self.perceptual([out.low_res_prediction, out.prediction], driving)
            l1 = zero
            if self.l1_weight:
                l1 = self.l1_weight * pixel_l1([out.low_res_prediction, out.prediction], driving)
            target = out.driving_mask.detach()
            perturbed = perturb_train(target.float(), model.threshold_rule, self.num_strips, self.scale_range,
                                      border=model.mask_generator.border)
            refined, mask_loss = None, zero
            if self.trains_refinement(context.epoch):
                # Inputs detached: L_mask reaches r alone.
                refined = self.forward_refinement(torch.cat([model.source_down(source), out.source_mask.detach(),
                                                     perturbed], dim=1))
                mask_loss = self.mask_weight * (refined.float() - target.float()).abs().mean()
        terms = PerturbedLossTerms(perceptual_low_res=low, perceptual_high_res=high, mask=mask_loss, l1=l1)
        context.backward(low + high + mask_loss + l1)

        def shown() -> Shown:
            dr = refined if refined is not None else torch.zeros_like(target)
            return Shown(source, driving, out.source_mask, target, perturbed, dr, out.low_res_prediction,
                         out.prediction)

        return StepOutput(terms._asdict(), shown)


# ----------------------------------------------------------------------------------------------------------
# Its config

@dataclass
@dataclass
class MaskCommonParams:
    num_channels: int = 3
    # m reads frame * scale_factor and draws its mask there; the low-res generator reads the same size.
    scale_factor: float = 0.25


@dataclass
class MaskNetworkParams:
    """m or r: an hourglass without skips, a 7x7 head, sigmoid(x / temperature) (perturbed-masks paper sec. 3)."""
    block_expansion: int
    max_features: int
    num_blocks: int
    temperature: float = 0.1


@dataclass
class PerturbationParams:
    """P_train and P_test. threshold: 'median' (each mask's own, the paper) or a fixed value in [0, 1) (the
    public code: 60/255 = 0.235 for Tai-Chi, 100/255 = 0.392 for VoxCeleb)."""
    threshold: Literal["median"] | float = "median"
    num_strips: int = 6
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])


@dataclass
class PerturbedModelParams:
    """The perturbed-masks model: mask generator m, refinement r, and the keypoint-mask generators l and h."""
    mask_generator_params: MaskNetworkParams
    mask_refinement_params: MaskNetworkParams
    generator_params: GeneratorParams
    common_params: MaskCommonParams = field(default_factory=MaskCommonParams)
    perturbation_params: PerturbationParams = field(default_factory=PerturbationParams)
    # A, on the driver frame that m sees in training: factors U[1 - a, 1 + a], hue shift U[-hue, hue]
    colour_augmentation: JitterParams = field(default_factory=lambda: JitterParams(0.1, 0.1, 0.1, 0.1))
    # The paper's ablations: no_pert (no P_test), no_ref (no r), no_id (neither).
    ablation: Literal["none", "no_pert", "no_ref", "no_id"] = "none"
    family: Literal["perturbed"] = "perturbed"



@dataclass
class PerturbedLossWeights(PerceptualLossWeights):
    mask: float = 0.0                     # L1(m_dr, m_d), 100 in the paper


@dataclass
class PerturbedTrainParams(GeneratorTrainParams):
    loss_weights: PerturbedLossWeights
    # the epoch (0-based) from which r trains; the paper starts it after the first
    refinement_start_epoch: int = 1


def check(config: Config, file: str) -> None:
    check_generator_training(config, file)
    check_mask_generators(config, file)
    model, train = config.model_params, config.train_params
    for name in ("mask_generator_params", "mask_refinement_params"):
        params = getattr(model, name)
        check_widths(file, f"model_params.{name}", params.block_expansion, params.max_features)
        check_positive(file, [(f"model_params.{name}.num_blocks", params.num_blocks)])
        if params.temperature <= 0:
            fail(file, f"model_params.{name}.temperature", "a positive number", params.temperature)
    perturbation = model.perturbation_params
    if perturbation.threshold != "median" and not 0 <= perturbation.threshold < 1:
        fail(file, "model_params.perturbation_params.threshold", "'median' or a number in [0, 1)",
              perturbation.threshold)
    check_positive(file, [("model_params.perturbation_params.num_strips", perturbation.num_strips)])
    low_high = perturbation.scale_range
    if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
        fail(file, "model_params.perturbation_params.scale_range", "[low, high] with 0 < low <= high", low_high)
    colour = model.colour_augmentation
    for name in ("brightness", "contrast", "saturation"):
        if not 0 <= getattr(colour, name) < 1:
            fail(file, f"model_params.colour_augmentation.{name}", "a number in [0, 1)", getattr(colour, name))
    if not 0 <= colour.hue <= 0.5:
        fail(file, "model_params.colour_augmentation.hue", "a number in [0, 0.5]", colour.hue)
    if train.loss_weights.mask <= 0:
        # 0 would leave r at its random weights, and the test-time path (ablation none, no_pert) animates
        # through it
        fail(file, "train_params.loss_weights.mask", "a positive number (100 in the paper): it is what trains "
              "the refinement network r", train.loss_weights.mask)
    if not 0 <= train.refinement_start_epoch < train.num_epochs:
        fail(file, "train_params.refinement_start_epoch",
              f"0 to num_epochs - 1 ({train.num_epochs - 1}): r must train at least one epoch",
              train.refinement_start_epoch)
    if not any(train.loss_weights.perceptual) and train.loss_weights.l1 == 0:
        raise ConfigError(f"{file}: train_params.loss_weights: perceptual and l1 are both 0, the generators "
                          f"would learn nothing")



# ----------------------------------------------------------------------------------------------------------
# Building, loading, training

def build(config: Config, checkpoint_with_kp: Optional[str] = None) -> PerturbedMaskModel:
    """m, r, l and h of a perturbed-masks config (random weights: nothing of it is pretrained)."""
    if checkpoint_with_kp:
        raise ConfigError(f"{config.path}: --checkpoint_with_kp: the perturbed-masks model has no keypoint "
                          f"detector (its mask generator trains with it); leave the flag out")
    params = config.model_params
    common = params.common_params

    def mask_network(in_channels: int, net: MaskNetworkParams, scale: float) -> MaskNetwork:
        return MaskNetwork(in_channels, net.block_expansion, net.max_features, net.num_blocks, net.temperature,
                           scale_factor=scale)

    return PerturbedMaskModel(
        mask_generator=mask_network(common.num_channels, params.mask_generator_params, common.scale_factor),
        refinement=mask_network(common.num_channels + 2, params.mask_refinement_params, 1.0),
        generator=build_frame_generator(params), threshold_rule=params.perturbation_params.threshold,
        ablation=params.ablation, scale_factor=common.scale_factor,
        reconstruct_test_time=config.reconstruction_params.test_time_path)


def load(config: Config, checkpoint: dict, source: str) -> PerturbedMaskModel:
    model = build(config)
    for name, network in checkpoint_networks(model).items():
        if name not in checkpoint:
            raise CheckpointError(f"{source}: no '{name}' weights (a perturbed-masks checkpoint holds "
                                  f"{', '.join(checkpoint_networks(model))})")
        load_state_strict(network, checkpoint[name], source, name)
    return model


def trainable(config: Config, model: PerturbedMaskModel, perceptual) -> PerturbedTraining:
    train, params = config.train_params, config.model_params
    perturbation = params.perturbation_params
    return PerturbedTraining(model, perceptual(), mask_weight=train.loss_weights.mask, l1_weight=train.loss_weights.l1,
                             refinement_start_epoch=train.refinement_start_epoch,
                             augmentation=dataclasses.asdict(params.colour_augmentation),
                             num_strips=perturbation.num_strips, scale_range=tuple(perturbation.scale_range))


def export_parts(params: PerturbedModelParams) -> tuple[ExportPart, ...]:
    """What an exported engine runs of the test-time path: m, r and the two generators. P_test between m and r
    stays in PyTorch; m stays fp32 under int8: P_test thresholds its output at its median, where rounding would
    flip pixels, and it is the cheapest network."""
    channels, scale = params.common_params.num_channels, params.common_params.scale_factor

    def refinement_inputs(part: nn.Module, size: tuple[int, int]) -> tuple:       # (D(s), m_s, m_dp)
        return (torch.rand(1, channels + 2, *(int(round(side * scale)) for side in size)),)

    return (ExportPart("mask_generator", ("frames",), random_frames(channels), quantize=False),
            ExportPart("refinement", ("source_and_masks",), refinement_inputs),
            ExportPart("generator", GENERATOR_INPUTS, generator_example(channels, scale)))


FAMILY = register(Family(
    name="perturbed", model_params=PerturbedModelParams, train_params=PerturbedTrainParams,
    build=build, load=load, trainable=trainable, networks=("mask_generator", "mask_refinement", "generator"),
    title=lambda params: "perturbed masks", check=check, frame_size_problem=perturbed_size_problem,
    reads_detector=False, reconstruction_keys=("test_time_path",), ablations=("none", "no_pert", "no_ref", "no_id"),
    export_parts=export_parts))
