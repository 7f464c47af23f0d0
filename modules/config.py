"""Typed, validated configs read from YAML (FOMM's section names plus ``mask_params``).

``model_params.family`` chooses the model: ``keypoint_mask`` (the default: the paper's generators on a frozen
detector's masks) or ``fomm`` (FOMM itself, stage one: detector, dense motion, occlusion-aware generator and
discriminator trained together). Each family has its own ``model_params`` schema.

``load_config(path)`` reads the file with ``yaml.safe_load``, maps the legacy keys of FOMM and of the
keypoint-mask repository explicitly (``LEGACY_MOVES``), warns about keys those configs carry but this model
never uses (``IGNORED_KEYS``), and builds the dataclasses below. Every other problem (an unknown key, a
missing key, a wrong type, a frame size the networks cannot take) is a ``ConfigError`` whose one-line
message names the file, the key path and what was expected.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from modules.errors import ConfigError, ConfigWarning

REQUIRED = dataclasses.MISSING  # marker: a field without a default must be in the YAML


# ----------------------------------------------------------------------------------------------------------
# The schema. Field names are the YAML keys; defaults are the paper's values where the YAML may omit them.

@dataclass
class FlipParams:
    horizontal_flip: bool = False
    time_flip: bool = False


@dataclass
class JitterParams:
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


@dataclass
class AugmentationParams:
    flip_param: FlipParams = field(default_factory=FlipParams)
    jitter_param: JitterParams = field(default_factory=JitterParams)


@dataclass
class DatasetParams:
    root_dir: str
    frame_shape: list[int]                # [H, W] or FOMM's [H, W, C]
    id_sampling: bool = False
    pairs_list: Optional[str] = None
    augmentation_params: AugmentationParams = field(default_factory=AugmentationParams)
    # the folders a relative root_dir was looked for in (resolve_data_paths), for the not-found error
    searched: list = field(default_factory=list, metadata={"yaml": False})

    @property
    def size(self) -> tuple[int, int]:
        return self.frame_shape[0], self.frame_shape[1]


@dataclass
class CommonParams:
    num_kp: int
    num_channels: int = 3
    estimate_jacobian: bool = False
    # Detector input = frame * scale_factor; the low-res generator reads the same size (DESIGN.md 1.1, 1.3).
    scale_factor: float = 0.25


@dataclass
class KPDetectorParams:
    block_expansion: int
    max_features: int
    num_blocks: int
    temperature: float = 0.1
    single_jacobian_map: bool = False
    pad: int = 0


@dataclass
class HighResParams:
    """The high-res U-Net (the original hard-codes these three values; they are the defaults)."""
    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    # "copy_source" starts the U-Net's last convolution as (nearly) a copy of the source image; "default" is
    # PyTorch's initialisation, the paper's. Same weights and keys either way; see HighResGenerator.
    init: Literal["default", "copy_source"] = "default"


@dataclass
class GeneratorParams:
    """The low-res generator (DESIGN.md 1.3) and, under ``high_res``, the high-res U-Net (1.4)."""
    block_expansion: int                  # channels after the last up block (64)
    max_features: int                     # cap on channels (512)
    num_up_blocks: int                    # x2 each: must take frame*scale_factor back to the frame size
    num_bottleneck_blocks: int            # residual blocks at block_expansion * 2**num_up_blocks channels
    high_res: HighResParams = field(default_factory=HighResParams)


@dataclass
class MaskParams:
    kind: Literal["heatmap", "circles", "softmax"] = "heatmap"
    kp_variance: float = 0.003            # Gaussian variance of the circles, normalised coordinates


class _DetectorOwner:
    common_params: CommonParams
    kp_detector_params: KPDetectorParams

    def detector_kwargs(self) -> dict[str, Any]:
        """FOMM's KPDetector constructor arguments."""
        common, kp = self.common_params, self.kp_detector_params
        return dict(block_expansion=kp.block_expansion, num_kp=common.num_kp, num_channels=common.num_channels,
                    max_features=kp.max_features, num_blocks=kp.num_blocks, temperature=kp.temperature,
                    estimate_jacobian=common.estimate_jacobian, scale_factor=common.scale_factor,
                    single_jacobian_map=kp.single_jacobian_map, pad=kp.pad)


@dataclass
class ModelParams(_DetectorOwner):
    """The keypoint-mask model: a frozen FOMM detector's masks drive the low-res and high-res generators."""
    common_params: CommonParams
    kp_detector_params: KPDetectorParams
    generator_params: GeneratorParams
    mask_params: MaskParams = field(default_factory=MaskParams)
    family: Literal["keypoint_mask"] = "keypoint_mask"


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
class FommModelParams(_DetectorOwner):
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
class MaskCommonParams:
    num_channels: int = 3
    # m reads frame * scale_factor and draws its mask there; the low-res generator reads the same size.
    scale_factor: float = 0.25


@dataclass
class MaskNetworkParams:
    """m or r: an hourglass without skips, a 7x7 head, sigmoid(x / temperature) (DESIGN.md sec. 7)."""
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
class LabelParams:
    """Which labelled points become the detector's K keypoints (README "Keypoint labels").

    Labels live in ``<root_dir>/<folder>/<split>/<video>.npy`` (float32 (T, P, 2) pixels of the stored frames,
    or (T, P, 3) with a visibility in [0, 1]; NaN marks a point missing in a frame), beside
    ``<folder>/points.json`` (the P point names and the left/right pairs that a horizontal flip swaps).
    """
    points: list[str]                     # point names from points.json, in keypoint order (len = num_kp)
    folder: str = "keypoints"             # under dataset_params.root_dir
    min_visibility: float = 0.5           # a label counts where its visibility is at least this


@dataclass
class DetectorModelParams(_DetectorOwner):
    """A keypoint-labelled stage one: FOMM's KPDetector alone, its soft-argmax keypoints supervised by labels,
    FOMM's equivariance terms optional (they train the Jacobians). Its checkpoint is FOMM's ``kp_detector``."""
    common_params: CommonParams
    kp_detector_params: KPDetectorParams
    label_params: LabelParams
    # Variance of the target Gaussians of the heatmap term, normalised coordinates (the circles' 0.003 default)
    heatmap_variance: float = 0.003
    family: Literal["detector"] = "detector"
    align_corners: bool = True            # grid_sample of the equivariance transform, as FOMM's


FAMILIES = {"keypoint_mask": ModelParams, "fomm": FommModelParams, "perturbed": PerturbedModelParams,
            "detector": DetectorModelParams}


@dataclass
class LossWeights:
    # one weight per VGG-19 slice (relu1_1 ... relu5_1); required by every family but the labelled detector
    perceptual: list[float] = field(default_factory=list)
    l1: float = 0.0                       # optional pixel L1 on the predictions (0 in the papers)
    # FOMM only (its vox/taichi-256 values: 0, 1, [10, 10, 10, 10], 10, 10). With generator_gan 0 the
    # discriminator is neither used nor trained, as in FOMM.
    generator_gan: float = 0.0
    discriminator_gan: float = 0.0
    feature_matching: list[float] = field(default_factory=list)
    equivariance_value: float = 0.0
    equivariance_jacobian: float = 0.0
    mask: float = 0.0                     # perturbed masks only: L1(m_dr, m_d), 100 in the paper
    # Labelled detector only: L1 of the soft-argmax keypoints to their labels (normalised coordinates), and
    # the mean squared difference of the raw heatmaps to Gaussians drawn at the labels.
    keypoint: float = 0.0
    heatmap: float = 0.0

    @property
    def num_vgg_slices(self) -> int:
        """VGG-19 slices the loss needs: up to the deepest non-zero perceptual weight (at least one)."""
        return max((i + 1 for i, w in enumerate(self.perceptual) if w), default=1)


@dataclass
class TransformParams:
    """FOMM's random TPS transform for the equivariance losses."""
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5


FOMM_TRAIN_KEYS = ("lr_discriminator", "lr_kp_detector", "transform_params")
FOMM_LOSS_KEYS = ("generator_gan", "discriminator_gan", "feature_matching", "equivariance_value",
                  "equivariance_jacobian")
PERTURBED_TRAIN_KEYS = ("refinement_start_epoch",)
PERTURBED_LOSS_KEYS = ("mask",)
DETECTOR_LOSS_KEYS = ("keypoint", "heatmap")
# The optional train_params / loss_weights keys each family reads; to_dict leaves the others out.
FAMILY_TRAIN_KEYS = {"fomm": FOMM_TRAIN_KEYS, "perturbed": PERTURBED_TRAIN_KEYS,
                     "detector": ("lr_kp_detector", "transform_params")}
FAMILY_LOSS_KEYS = {"fomm": FOMM_LOSS_KEYS, "perturbed": PERTURBED_LOSS_KEYS,
                    "detector": ("equivariance_value", "equivariance_jacobian") + DETECTOR_LOSS_KEYS}


@dataclass
class TrainParams:
    num_epochs: int
    batch_size: int
    loss_weights: LossWeights
    checkpoint_freq: int
    # Required by every family with a generator (the labelled detector has none: lr_kp_detector).
    lr_generator: Optional[float] = None
    scales: list[float] = field(default_factory=list)   # perceptual pyramid scales, e.g. [1, 0.5, 0.25, 0.125]
    num_repeats: int = 1
    epoch_milestones: list[int] = field(default_factory=list)
    # VGG-19 weights for the perceptual loss: 'imagenet' (torchvision), 'random' (tests), or a file path.
    vgg_weights: str = "imagenet"
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])    # Adam (DESIGN.md 1.6)
    seed: int = 0                         # model init, data order and augmentation (--seed overrides)
    num_workers: int = 2                  # DataLoader worker processes per training process
    # Autocast: 'bf16' on CPU and GPU, 'fp16' (with a gradient scaler) on GPU only, 'no' for fp32.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = False           # NHWC tensors: faster convolutions on CPU and tensor cores
    log_freq: int = 10                    # training steps between TensorBoard scalar points
    # FOMM only: learning rates of the detector and discriminator (null: lr_generator), the TPS transform
    lr_kp_detector: Optional[float] = None
    lr_discriminator: Optional[float] = None
    transform_params: TransformParams = field(default_factory=TransformParams)
    # Perturbed masks only: the epoch (0-based) from which r trains; the paper starts it after the first.
    refinement_start_epoch: int = 1

    def learning_rate(self, network: str) -> float:
        """The learning rate of ``network`` (generator, kp_detector, discriminator)."""
        value = getattr(self, f"lr_{network}", None)
        return self.lr_generator if value is None else value


@dataclass
class ReconstructionParams:
    num_videos: Optional[int] = None
    format: str = ".mp4"
    # FOMM's protocol counts frame 0 (the source itself); the perturbed-masks paper leaves it out.
    exclude_first_frame: bool = False
    # Perturbed masks only: reconstruct by the test-time path (P_test, r) instead of the training procedure
    # (l and h take m_d), which is what the paper reports and the default.
    test_time_path: bool = False


@dataclass
class NormalizationParams:
    adapt_movement_scale: bool = False
    use_relative_movement: bool = True
    use_relative_jacobian: bool = True


@dataclass
class AnimateParams:
    num_pairs: int = 50
    format: str = ".mp4"
    normalization_params: NormalizationParams = field(default_factory=NormalizationParams)


@dataclass
class MetricsParams:
    # Which landmarks AKD/MKR (and --find_best_frame) use: a pose estimator for bodies (Tai-Chi), 68 face
    # landmarks plus a face identity embedding for faces (VoxCeleb; AED too), the project's keypoint regressor
    # for the synthetic dataset, or none. Body and face need the metrics extra (pip install -e .[metrics]).
    landmarks: Literal["body", "face", "synthetic", "none"] = "body"
    # synthetic: the regressor's checkpoint; null means <dataset root_dir>/keypoint-regressor.pth
    keypoint_regressor: Optional[str] = None
    # Pose and face detectors miss people in small frames (DESIGN.md sec. 5): below this side, skip them.
    min_landmark_size: int = 128


@dataclass
class VisualizerParams:
    kp_size: int = 5
    draw_border: bool = True
    colormap: str = "gist_rainbow"


@dataclass
class Config:
    dataset_params: DatasetParams
    model_params: ModelParams | FommModelParams | PerturbedModelParams | DetectorModelParams
    train_params: TrainParams
    reconstruction_params: ReconstructionParams = field(default_factory=ReconstructionParams)
    animate_params: AnimateParams = field(default_factory=AnimateParams)
    metrics_params: MetricsParams = field(default_factory=MetricsParams)
    visualizer_params: VisualizerParams = field(default_factory=VisualizerParams)
    path: str = field(default="<dict>", metadata={"yaml": False})   # where it was read from

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML-able data (what a run folder saves)."""
        data = dataclasses.asdict(self)
        data.pop("path")
        data["dataset_params"].pop("searched")
        if not self.relative_motion_possible:
            # Only keypoints move relatively; writing it would make the saved config warn when reloaded.
            data["animate_params"].pop("normalization_params")
        # Other families' training keys mean nothing here (and would warn as ignored keys when reloaded).
        kept_train, kept_loss = FAMILY_TRAIN_KEYS.get(self.family, ()), FAMILY_LOSS_KEYS.get(self.family, ())
        for key in {k for keys in FAMILY_TRAIN_KEYS.values() for k in keys} - set(kept_train):
            data["train_params"].pop(key)
        for key in {k for keys in FAMILY_LOSS_KEYS.values() for k in keys} - set(kept_loss):
            data["train_params"]["loss_weights"].pop(key)
        if self.family != "perturbed":
            data["reconstruction_params"].pop("test_time_path")
        if self.family == "detector":          # nothing of the generators' pyramid applies
            for key in ("lr_generator", "scales", "vgg_weights"):
                data["train_params"].pop(key)
            data["train_params"]["loss_weights"].pop("perceptual")
            data["train_params"]["loss_weights"].pop("l1")
        return data

    @property
    def family(self) -> str:
        return self.model_params.family

    @property
    def relative_motion_possible(self) -> bool:
        """Whether the model has keypoints to move (FOMM, the circles mask) or animates absolutely (heatmap)."""
        if self.family == "keypoint_mask":
            return self.model_params.mask_params.kind == "circles"
        return self.family == "fomm"

    @property
    def motion_name(self) -> str:
        """How the model is named in messages: 'FOMM', 'heatmap mask', 'perturbed masks'."""
        if self.family == "keypoint_mask":
            return f"{self.model_params.mask_params.kind} mask"
        return {"fomm": "FOMM", "perturbed": "perturbed masks", "detector": "labelled keypoint detector"}[self.family]


# ----------------------------------------------------------------------------------------------------------
# Legacy keys (DESIGN.md sec. 1, "Where the YAML puts things")

# key path in a FOMM / keypoint-mask YAML -> where it lives here
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


def _pop_path(data: dict, dotted: str) -> tuple[bool, Any]:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return False, None
    if leaf not in node:
        return False, None
    return True, node.pop(leaf)


def _set_path(data: dict, dotted: str, value: Any, file: str, origin: str) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents):
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"{file}: {'.'.join(parents[:depth + 1])}: expected a mapping, got {node!r}")
    if leaf in node and node[leaf] != value:
        raise ConfigError(f"{file}: {dotted} is {node[leaf]!r} but the legacy key {origin} says {value!r}; "
                          f"keep one of them")
    node[leaf] = value


def _map_legacy(data: dict, file: str, family: str = "keypoint_mask") -> None:
    """Rewrite FOMM / keypoint-mask repository keys in place into this schema."""
    if family == "perturbed":
        return                                # no public config of it ever ran on this schema's ancestors
    if family in ("fomm", "detector"):
        # FOMM's own keys are this family's schema; only the detector's scale_factor moves.
        found, value = _pop_path(data, "model_params.kp_detector_params.scale_factor")
        if found:
            _set_path(data, "model_params.common_params.scale_factor", value, file,
                      "model_params.kp_detector_params.scale_factor")
        return
    for old, new in LEGACY_MOVES.items():
        found, value = _pop_path(data, old)
        if found:
            _set_path(data, new, value, file, old)
    # The keypoint-mask repository chooses the mask with two booleans in kp_detector_params.
    _, after_softmax = _pop_path(data, "model_params.kp_detector_params.kp_after_softmax")
    _, softmax_mask = _pop_path(data, "model_params.kp_detector_params.softmax_mask")
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
        _set_path(data, "model_params.mask_params.kind", kind, file, origin)
    ignored = []
    for dotted in sorted(IGNORED_KEYS):
        found, _ = _pop_path(data, dotted)
        if found:
            ignored.append(dotted)
    if ignored:
        warnings.warn(f"{file}: ignoring keys the keypoint-mask model never uses: {', '.join(ignored)} (a FOMM "
                      f"config? add model_params.family: fomm to train FOMM itself)", ConfigWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------------
# Generic dataclass builder with one-line errors

def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        return " or ".join(_describe(a) for a in args) + (" or null" if nullable else "")
    if origin is list:
        (item,) = typing.get_args(annotation)
        return "a list of " + {int: "integers", float: "numbers", str: "strings", bool: "booleans"}[item]
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[annotation]


def _convert(annotation: Any, value: Any, key: str, file: str) -> Any:
    def fail() -> typing.NoReturn:
        raise ConfigError(f"{file}: {key}: expected {_describe(annotation)}, got {value!r}")

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        for inner in [a for a in typing.get_args(annotation) if a is not type(None)]:
            try:
                return _convert(inner, value, key, file)
            except ConfigError:
                continue
        fail()
    if origin is Literal:
        if value not in typing.get_args(annotation):
            fail()
        return value
    if origin is list:
        if not isinstance(value, list):
            fail()
        (item,) = typing.get_args(annotation)
        return [_convert(item, v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            fail()
        return _build(annotation, value, key, file)
    if annotation is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if annotation is float:
        # YAML reads 2e-4 (no dot) as a string; accept it as the number it obviously is.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                fail()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail()
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"unsupported annotation {annotation!r}")


def _build(cls: type, data: dict, prefix: str, file: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"{file}: unknown key '{where}' (expected one of: {', '.join(fields)})")
    values = {}
    for name, spec in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(data.get(name)):
            values[name] = data[name]             # already built (model_params, by its family's schema)
            continue
        if name not in data:
            if spec.default is REQUIRED and spec.default_factory is REQUIRED:
                raise ConfigError(f"{file}: missing key '{key}' ({_describe(hints[name])})")
            continue
        values[name] = _convert(hints[name], data[name], key, file)
    return cls(**values)


# ----------------------------------------------------------------------------------------------------------
# Cross-field checks

def _is_inverse_integer(scale: float) -> bool:
    return 0 < scale <= 1 and abs(1 / scale - round(1 / scale)) <= 1e-6


def frame_size_problem(size: int, model: ModelParams | FommModelParams | PerturbedModelParams) -> Optional[str]:
    """Why one frame side of ``size`` pixels cannot go through the networks, or None if it can."""
    scale = model.common_params.scale_factor
    detector_side = size * scale
    if abs(detector_side - round(detector_side)) > 1e-6:
        return f"{size} x scale_factor {scale} is not a whole number of pixels"
    detector_side = round(detector_side)
    if model.family == "perturbed":
        for name in ("mask_generator_params", "mask_refinement_params"):
            blocks = getattr(model, name).num_blocks
            if detector_side % 2 ** blocks:
                return (f"{name} sees {detector_side} px, which its {blocks}-block hourglass cannot halve "
                        f"{blocks} times")
        if detector_side - 6 < 1:
            return f"the masks' {detector_side} px leave nothing after their 7x7 heads"
        hr_blocks = model.generator_params.high_res.num_blocks
        if size % 2 ** hr_blocks:
            return f"the high-res U-Net's {hr_blocks} blocks need a multiple of {2 ** hr_blocks}"
        return None
    kp_blocks = model.kp_detector_params.num_blocks
    if detector_side % 2 ** kp_blocks:
        return (f"the detector sees {detector_side} px, which its {kp_blocks}-block hourglass cannot halve "
                f"{kp_blocks} times")
    if detector_side - 6 + 2 * model.kp_detector_params.pad < 1:
        return f"the detector's {detector_side} px leave no heatmap after its 7x7 head"
    if model.family == "detector":
        return None
    if model.family == "keypoint_mask":
        hr_blocks = model.generator_params.high_res.num_blocks
        if size % 2 ** hr_blocks:
            return f"the high-res U-Net's {hr_blocks} blocks need a multiple of {2 ** hr_blocks}"
        return None
    generator = model.generator_params
    dense = generator.dense_motion_params
    motion_side = size * dense.scale_factor
    if abs(motion_side - round(motion_side)) > 1e-6:
        return f"{size} x dense_motion_params.scale_factor {dense.scale_factor} is not a whole number of pixels"
    if round(motion_side) % 2 ** dense.num_blocks:
        return (f"the dense motion network sees {round(motion_side)} px, which its {dense.num_blocks}-block "
                f"hourglass cannot halve {dense.num_blocks} times")
    if size % 2 ** generator.num_down_blocks:
        return f"the generator's {generator.num_down_blocks} down blocks need a multiple of " \
               f"{2 ** generator.num_down_blocks}"
    return None


def _fail(file: str, key: str, expected: str, value: Any) -> typing.NoReturn:
    raise ConfigError(f"{file}: {key}: expected {expected}, got {value}")


def _check_positive(file: str, items: list[tuple[str, int]]) -> None:
    for key, value in items:
        if value < 1:
            _fail(file, key, "a positive integer", value)


def _check_widths(file: str, prefix: str, block_expansion: int, max_features: int) -> None:
    _check_positive(file, [(f"{prefix}.block_expansion", block_expansion), (f"{prefix}.max_features", max_features)])
    if max_features < block_expansion:
        _fail(file, f"{prefix}.max_features", f"at least {prefix}.block_expansion ({block_expansion})", max_features)


def _check_mask_generators(config: Config, file: str) -> None:
    """l and h, shared by the keypoint-mask and perturbed-masks families."""
    model = config.model_params
    scale = model.common_params.scale_factor
    generator = model.generator_params
    if 2 ** generator.num_up_blocks * scale != 1:
        raise ConfigError(f"{file}: model_params.generator_params.num_up_blocks: {generator.num_up_blocks} "
                          f"up blocks turn frame*{scale} into frame*{2 ** generator.num_up_blocks * scale:g}; "
                          f"expected 2**num_up_blocks = 1/scale_factor = {round(1 / scale)}")
    _check_widths(file, "model_params.generator_params", generator.block_expansion, generator.max_features)
    _check_widths(file, "model_params.generator_params.high_res", generator.high_res.block_expansion,
                  generator.high_res.max_features)
    _check_positive(file, [("model_params.generator_params.high_res.num_blocks", generator.high_res.num_blocks)])
    if generator.num_bottleneck_blocks < 0:
        _fail(file, "model_params.generator_params.num_bottleneck_blocks", "0 or more", generator.num_bottleneck_blocks)


def _check_keypoint_mask(config: Config, file: str) -> None:
    _check_mask_generators(config, file)
    model = config.model_params
    if model.mask_params.kp_variance <= 0:
        _fail(file, "model_params.mask_params.kp_variance", "a positive number", model.mask_params.kp_variance)
    if not any(config.train_params.loss_weights.perceptual) and config.train_params.loss_weights.l1 == 0:
        raise ConfigError(f"{file}: train_params.loss_weights: every weight is 0, nothing would be trained")


def _check_perturbed(config: Config, file: str) -> None:
    _check_mask_generators(config, file)
    model, train = config.model_params, config.train_params
    for name in ("mask_generator_params", "mask_refinement_params"):
        params = getattr(model, name)
        _check_widths(file, f"model_params.{name}", params.block_expansion, params.max_features)
        _check_positive(file, [(f"model_params.{name}.num_blocks", params.num_blocks)])
        if params.temperature <= 0:
            _fail(file, f"model_params.{name}.temperature", "a positive number", params.temperature)
    perturbation = model.perturbation_params
    if perturbation.threshold != "median" and not 0 <= perturbation.threshold < 1:
        _fail(file, "model_params.perturbation_params.threshold", "'median' or a number in [0, 1)",
              perturbation.threshold)
    _check_positive(file, [("model_params.perturbation_params.num_strips", perturbation.num_strips)])
    low_high = perturbation.scale_range
    if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
        _fail(file, "model_params.perturbation_params.scale_range", "[low, high] with 0 < low <= high", low_high)
    colour = model.colour_augmentation
    for name in ("brightness", "contrast", "saturation"):
        if not 0 <= getattr(colour, name) < 1:
            _fail(file, f"model_params.colour_augmentation.{name}", "a number in [0, 1)", getattr(colour, name))
    if not 0 <= colour.hue <= 0.5:
        _fail(file, "model_params.colour_augmentation.hue", "a number in [0, 0.5]", colour.hue)
    if train.loss_weights.mask <= 0:
        # 0 would leave r at its random weights, and the test-time path (ablation none, no_pert) animates
        # through it
        _fail(file, "train_params.loss_weights.mask", "a positive number (100 in the paper): it is what trains "
              "the refinement network r", train.loss_weights.mask)
    if not 0 <= train.refinement_start_epoch < train.num_epochs:
        _fail(file, "train_params.refinement_start_epoch",
              f"0 to num_epochs - 1 ({train.num_epochs - 1}): r must train at least one epoch",
              train.refinement_start_epoch)
    if not any(train.loss_weights.perceptual) and train.loss_weights.l1 == 0:
        raise ConfigError(f"{file}: train_params.loss_weights: perceptual and l1 are both 0, the generators "
                          f"would learn nothing")


def _check_jacobian_weight(config: Config, file: str) -> None:
    """FOMM and the labelled detector: a Jacobian equivariance weight needs Jacobians to constrain."""
    weight = config.train_params.loss_weights.equivariance_jacobian
    if weight and not config.model_params.common_params.estimate_jacobian:
        raise ConfigError(f"{file}: train_params.loss_weights.equivariance_jacobian is {weight} but "
                          f"model_params.common_params.estimate_jacobian is false: there is no Jacobian to "
                          f"constrain (set it to 0)")


def _check_fomm(config: Config, file: str) -> None:
    model, train = config.model_params, config.train_params
    generator = model.generator_params
    dense = generator.dense_motion_params
    disc = model.discriminator_params
    prefix = "model_params.generator_params"
    _check_widths(file, prefix, generator.block_expansion, generator.max_features)
    _check_widths(file, f"{prefix}.dense_motion_params", dense.block_expansion, dense.max_features)
    _check_widths(file, "model_params.discriminator_params", disc.block_expansion, disc.max_features)
    _check_positive(file, [(f"{prefix}.dense_motion_params.num_blocks", dense.num_blocks),
                           ("model_params.discriminator_params.num_blocks", disc.num_blocks),
                           ("train_params.transform_params.points_tps", train.transform_params.points_tps)])
    for key, value in ((f"{prefix}.num_down_blocks", generator.num_down_blocks),
                       (f"{prefix}.num_bottleneck_blocks", generator.num_bottleneck_blocks)):
        if value < 0:
            _fail(file, key, "0 or more", value)
    if not _is_inverse_integer(dense.scale_factor):
        _fail(file, f"{prefix}.dense_motion_params.scale_factor", "1/n for an integer n (0.25 in FOMM)",
              dense.scale_factor)
    if not disc.scales or not all(_is_inverse_integer(s) for s in disc.scales):
        _fail(file, "model_params.discriminator_params.scales", "pyramid scales 1/n, e.g. [1]", disc.scales)
    for key, value in ((f"{prefix}.dense_motion_params.kp_variance", dense.kp_variance),
                       ("model_params.discriminator_params.kp_variance", disc.kp_variance)):
        if value <= 0:
            _fail(file, key, "a positive number", value)
    for name in ("lr_kp_detector", "lr_discriminator"):
        value = getattr(train, name)
        if value is not None and value < 0:
            _fail(file, f"train_params.{name}", "0 or more (0 freezes the network) or null", value)
    transform = train.transform_params
    if transform.sigma_affine < 0 or transform.sigma_tps < 0:
        _fail(file, "train_params.transform_params", "sigma_affine and sigma_tps >= 0",
              f"{transform.sigma_affine}, {transform.sigma_tps}")
    weights = train.loss_weights
    values = [weights.generator_gan, weights.discriminator_gan, weights.equivariance_value,
              weights.equivariance_jacobian] + weights.feature_matching
    if any(w < 0 for w in values):
        _fail(file, "train_params.loss_weights", "weights >= 0", values)
    if len(weights.feature_matching) > disc.num_blocks:
        _fail(file, "train_params.loss_weights.feature_matching",
              f"at most one weight per discriminator block ({disc.num_blocks})", weights.feature_matching)
    _check_jacobian_weight(config, file)
    if not any(weights.perceptual) and weights.l1 == 0 and weights.generator_gan == 0:
        raise ConfigError(f"{file}: train_params.loss_weights: perceptual, l1 and generator_gan are all 0, the "
                          f"generator would learn nothing")


def _check_detector(config: Config, file: str) -> None:
    model, train = config.model_params, config.train_params
    labels, weights = model.label_params, train.loss_weights
    if not labels.points:
        _fail(file, "model_params.label_params.points", "at least one point name", labels.points)
    if len(set(labels.points)) != len(labels.points):
        _fail(file, "model_params.label_params.points", "distinct point names", labels.points)
    if len(labels.points) != model.common_params.num_kp:
        _fail(file, "model_params.label_params.points", f"one name per keypoint (common_params.num_kp is "
              f"{model.common_params.num_kp})", f"{len(labels.points)} names")
    if not 0 < labels.min_visibility <= 1:
        _fail(file, "model_params.label_params.min_visibility", "a number in (0, 1]", labels.min_visibility)
    if model.heatmap_variance <= 0:
        _fail(file, "model_params.heatmap_variance", "a positive number", model.heatmap_variance)
    values = [weights.keypoint, weights.heatmap, weights.equivariance_value, weights.equivariance_jacobian]
    if any(w < 0 for w in values):
        _fail(file, "train_params.loss_weights", "keypoint, heatmap and equivariance weights >= 0", values)
    if weights.keypoint == 0 and weights.heatmap == 0:
        raise ConfigError(f"{file}: train_params.loss_weights: keypoint and heatmap are both 0, the labels would "
                          f"train nothing (a stage one without labels is family: fomm)")
    _check_jacobian_weight(config, file)
    transform = train.transform_params
    if transform.sigma_affine < 0 or transform.sigma_tps < 0 or transform.points_tps < 1:
        _fail(file, "train_params.transform_params", "sigma_affine, sigma_tps >= 0 and points_tps >= 1",
              f"{transform.sigma_affine}, {transform.sigma_tps}, {transform.points_tps}")


def _check(config: Config, file: str) -> None:
    model, data = config.model_params, config.dataset_params
    shape = data.frame_shape
    if len(shape) not in (2, 3) or any(side < 1 for side in shape):
        raise ConfigError(f"{file}: dataset_params.frame_shape: expected [height, width] or "
                          f"[height, width, channels] of positive integers, got {shape}")
    if len(shape) == 3 and shape[2] != model.common_params.num_channels:
        raise ConfigError(f"{file}: dataset_params.frame_shape: {shape[2]} channels but "
                          f"model_params.common_params.num_channels is {model.common_params.num_channels}")
    scale = model.common_params.scale_factor
    if not _is_inverse_integer(scale):
        raise ConfigError(f"{file}: model_params.common_params.scale_factor: expected 1/n for an integer n "
                          f"(0.25 in the paper), got {scale}")
    if model.common_params.num_channels != 3:
        raise ConfigError(f"{file}: model_params.common_params.num_channels: expected 3 (RGB: the VGG-19 loss "
                          f"and its ImageNet normalisation need colour images), got {model.common_params.num_channels}")
    train = config.train_params
    if config.family != "perturbed":              # the two families with FOMM's keypoint detector
        detector = model.kp_detector_params
        if not 0 <= detector.pad <= 3:
            raise ConfigError(f"{file}: model_params.kp_detector_params.pad: expected 0 to 3 (padding of the 7x7 "
                              f"heads; FOMM uses 0), got {detector.pad}")
        _check_widths(file, "model_params.kp_detector_params", detector.block_expansion, detector.max_features)
        _check_positive(file, [("model_params.common_params.num_kp", model.common_params.num_kp),
                               ("model_params.kp_detector_params.num_blocks", detector.num_blocks)])
        if detector.temperature <= 0:
            _fail(file, "model_params.kp_detector_params.temperature", "a positive number", detector.temperature)
    _check_positive(file, [("train_params.batch_size", train.batch_size),
                           ("train_params.num_epochs", train.num_epochs),
                           ("train_params.checkpoint_freq", train.checkpoint_freq),
                           ("train_params.num_repeats", train.num_repeats),
                           ("train_params.log_freq", train.log_freq)])
    if config.family == "detector":
        if train.lr_kp_detector is None or train.lr_kp_detector <= 0:
            _fail(file, "train_params.lr_kp_detector", "a positive number (the detector's learning rate)",
                  train.lr_kp_detector)
    elif train.lr_generator is None:
        raise ConfigError(f"{file}: missing key 'train_params.lr_generator' (a number)")
    elif train.lr_generator <= 0:
        raise ConfigError(f"{file}: train_params.lr_generator: expected a positive number, got {train.lr_generator}")
    if len(train.betas) != 2 or not all(0 <= b < 1 for b in train.betas):
        raise ConfigError(f"{file}: train_params.betas: expected two numbers in [0, 1) (Adam's beta1, beta2), "
                          f"got {train.betas}")
    if train.num_workers < 0:
        raise ConfigError(f"{file}: train_params.num_workers: expected 0 or more, got {train.num_workers}")
    milestones = train.epoch_milestones
    if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(f"{file}: train_params.epoch_milestones: expected increasing positive epochs, "
                          f"got {milestones}")
    if config.family == "detector":          # no generator: no perceptual pyramid to check
        _check_detector(config, file)
        _check_frame_shape(config, file)
        return
    if any(w < 0 for w in train.loss_weights.perceptual) or train.loss_weights.l1 < 0:
        raise ConfigError(f"{file}: train_params.loss_weights: weights must be >= 0, got perceptual "
                          f"{train.loss_weights.perceptual}, l1 {train.loss_weights.l1}")
    weights = train.loss_weights.perceptual
    if not 1 <= len(weights) <= 5:
        raise ConfigError(f"{file}: train_params.loss_weights.perceptual: expected 1 to 5 weights "
                          f"(relu1_1 ... relu5_1 of VGG-19), got {len(weights)}")
    scales = train.scales
    if not scales or not all(_is_inverse_integer(s) for s in scales):
        raise ConfigError(f"{file}: train_params.scales: expected pyramid scales 1/n for integers n, e.g. "
                          f"[1, 0.5, 0.25, 0.125], got {scales}")
    {"fomm": _check_fomm, "keypoint_mask": _check_keypoint_mask, "perturbed": _check_perturbed}[config.family](
        config, file)
    _check_frame_shape(config, file)
    deepest = train.loss_weights.num_vgg_slices - 1    # max-pools before that slice
    smallest_level = min(shape[:2]) * min(scales)
    if smallest_level < 2 ** deepest:
        raise ConfigError(f"{file}: train_params.scales: the {min(scales)} level of a {min(shape[:2])} px frame "
                          f"is {smallest_level:g} px, too small for VGG-19 slice {deepest + 1} "
                          f"(needs {2 ** deepest} px after {deepest} max-pools)")


def _check_frame_shape(config: Config, file: str) -> None:
    """Every frame side must pass through the networks; the error suggests sizes that do."""
    model, shape = config.model_params, config.dataset_params.frame_shape
    for axis, side in zip(("height", "width"), shape[:2]):
        problem = frame_size_problem(side, model)
        if problem:
            working = [n for n in range(1, 8193) if frame_size_problem(n, model) is None]
            smallest = working[0] if working else None
            if smallest is not None and side < smallest:
                advice = f"too small for these networks; the smallest size that works is {smallest}"
            else:
                nearby = [n for n in working if abs(n - side) <= 2 * smallest][:4] if smallest else []
                advice = f"sizes that work near it: {', '.join(map(str, nearby))}"
            raise ConfigError(f"{file}: dataset_params.frame_shape: {axis} {side} does not fit ({problem}); "
                              f"{advice}")


def _family(data: dict, file: str) -> str:
    model = data.get("model_params")
    family = model.get("family", "keypoint_mask") if isinstance(model, dict) else "keypoint_mask"
    if family not in FAMILIES:
        raise ConfigError(f"{file}: model_params.family: expected one of {', '.join(map(repr, FAMILIES))}, "
                          f"got {family!r}")
    return family


def config_from_dict(data: dict, file: str = "<dict>") -> Config:
    """Validate and build a Config from plain data (a parsed YAML document)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a YAML mapping at the top level, got {type(data).__name__}")
    data = _deep_copy(data)
    family = _family(data, file)
    _map_legacy(data, file, family)
    if isinstance(data.get("model_params"), dict):
        # The family picks the schema of model_params; _build takes the finished dataclass as it is.
        data["model_params"] = _convert(FAMILIES[family], data["model_params"], "model_params", file)
    config = _build(Config, data, "", file)
    config.path = file
    _check(config, file)
    if not config.relative_motion_possible and "animate_params" in data and \
            "normalization_params" in (data.get("animate_params") or {}):
        warnings.warn(f"{file}: animate_params.normalization_params has no effect with a "
                      f"{config.motion_name} (it animates absolutely)", ConfigWarning,
                      stacklevel=2)
    return config


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _repository_of(path: str) -> list[str]:
    """The folders a file's relative data paths may be meant from: its folder and the ones above it, up to the
    repository holding it (the first with setup.py or .git); just its folder and the one above if none does."""
    folder = os.path.dirname(os.path.abspath(path))
    chain = [folder]
    while True:
        if os.path.exists(os.path.join(chain[-1], "setup.py")) or os.path.exists(os.path.join(chain[-1], ".git")):
            return chain
        parent = os.path.dirname(chain[-1])
        if parent == chain[-1]:
            return chain[:2]
        chain.append(parent)


def resolve_data_paths(config: "Config", anchor: Optional[str]) -> None:
    """Relative ``dataset_params.root_dir`` / ``pairs_list`` and ``metrics_params.keypoint_regressor``: the
    current folder first (what they always meant), then the folders of the repository that ``anchor`` (the model
    file, checkpoint or config they came from) lies in, so ``models/tiny-heatmap.pth.tar`` works from any folder.
    A path found nowhere is left as it is; ``dataset_params.searched`` keeps where it was looked for."""
    bases = [os.getcwd()] + ([] if anchor is None or not os.path.exists(anchor) else _repository_of(anchor))
    bases = list(dict.fromkeys(os.path.abspath(b) for b in bases))

    def find(value: Optional[str]) -> tuple[Optional[str], list[str]]:
        if value is None or os.path.isabs(value) or os.path.exists(value):
            return value, []
        tried = [os.path.join(base, value) for base in bases]
        return next((path for path in tried if os.path.exists(path)), value), tried

    data = config.dataset_params
    data.root_dir, data.searched = find(data.root_dir)
    data.pairs_list, _ = find(data.pairs_list)
    metrics = config.metrics_params
    metrics.keypoint_regressor, _ = find(metrics.keypoint_regressor)


# A config holds a few hundred values; aliases may not expand it beyond this (a "billion laughs" bomb of a few
# hundred bytes would otherwise fill the memory when the document is copied).
MAX_YAML_VALUES = 100_000


def _yaml_problem(node: yaml.Node) -> Optional[str]:
    """What makes a composed YAML document unfit for a config: a duplicate key, a recursive alias, or more than
    MAX_YAML_VALUES values once aliases are expanded. Counted on the node graph, where an alias is one shared
    node, so the check itself never expands anything."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(current: yaml.Node) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _YamlRefused(f"a recursive alias at line {current.start_mark.line + 1}")
        active.add(key)
        total = 1
        if isinstance(current, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise _YamlRefused(f"duplicate key {key_node.value!r} at line {key_node.start_mark.line + 1} "
                                           f"(first at line {seen[key_node.value]})")
                    seen[key_node.value] = key_node.start_mark.line + 1
                total += size(key_node) + size(value_node)
        elif isinstance(current, yaml.SequenceNode):
            total += sum(size(child) for child in current.value)
        if total > MAX_YAML_VALUES:
            raise _YamlRefused(f"its aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?)")
        active.discard(key)
        sizes[key] = total
        return total

    try:
        size(node)
    except _YamlRefused as refused:
        return str(refused)
    return None


class _YamlRefused(Exception):
    pass


def read_yaml(path: str) -> Any:
    """``yaml.safe_load`` of a file, refusing duplicate keys and alias bombs (``_yaml_problem``) before the
    document is built; a ConfigError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as stream:
            loader = yaml.SafeLoader(stream)
            try:
                node = loader.get_single_node()
                if node is None:
                    return None
                problem = _yaml_problem(node)
                if problem:
                    raise ConfigError(f"{path}: {problem}")
                return loader.construct_document(node)
            finally:
                loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a YAML config file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror or error})") from None


def load_config(path: str | os.PathLike) -> Config:
    """Read a YAML config (``read_yaml``: safe loading, no duplicate keys, bounded aliases) and validate it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a folder, expected a YAML config file")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    return config_from_dict(read_yaml(path), path)
