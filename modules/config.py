"""Typed, validated configs read from YAML (FOMM's section names plus ``mask_params``).

``model_params.family`` chooses the model family (modules/family.py; ``keypoint_mask``, the paper's, is the
default). The sections every family reads are the dataclasses below; a family's own ``model_params`` and
``train_params`` schemas and checks live in its module under ``modules/families/``.

``load_config(path)`` reads the file (``modules.yaml_reader``: safe loading, no duplicate keys, bounded
aliases), lets the family rewrite the legacy keys of older repositories, and builds the dataclasses
(``modules.schema``). Every problem (an unknown key, a missing key, a wrong type, a frame size the networks
cannot take) is a ``ConfigError`` whose one-line message names the file, the key path and what was expected.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from modules.errors import ConfigError, ConfigWarning
from modules.family import Family, family_name, family_of, registered
from modules.schema import build, check_positive, check_widths, convert, fail, is_inverse_integer, pop_path, set_path
from modules.yaml_reader import read_yaml


# ----------------------------------------------------------------------------------------------------------
# The schema every family shares. Field names are the YAML keys; defaults are the paper's values where the
# YAML may omit them.


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
    # Detector input = frame * scale_factor; the low-res generator reads the same size (keypoint-mask paper sec. 1.1, 2.3).
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
    """The low-res generator (keypoint-mask paper sec. 2.3) and, under ``high_res``, the high-res U-Net (the same section)."""
    block_expansion: int                  # channels after the last up block (64)
    max_features: int                     # cap on channels (512)
    num_up_blocks: int                    # x2 each: must take frame*scale_factor back to the frame size
    num_bottleneck_blocks: int            # residual blocks at block_expansion * 2**num_up_blocks channels
    high_res: HighResParams = field(default_factory=HighResParams)




class DetectorSettings:
    """Mixed into the model_params of the families that hold FOMM's KPDetector."""
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
class TransformParams:
    """FOMM's random TPS transform for the equivariance losses."""
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5



@dataclass
class LossWeights:
    """The loss weights of a family (each family's schema lists its own)."""


@dataclass
class PerceptualLossWeights(LossWeights):
    """The families with generators: the perceptual pyramid (one weight per VGG-19 slice, relu1_1 ...
    relu5_1) and an optional pixel L1 on the predictions (0 in the papers)."""
    perceptual: list[float] = field(default_factory=list)
    l1: float = 0.0

    @property
    def num_vgg_slices(self) -> int:
        """VGG-19 slices the loss needs: up to the deepest non-zero perceptual weight (at least one)."""
        return max((i + 1 for i, w in enumerate(self.perceptual) if w), default=1)


@dataclass
class TrainParams:
    """The train_params every family reads; a family's schema adds its own keys and loss weights."""
    num_epochs: int
    batch_size: int
    loss_weights: LossWeights
    checkpoint_freq: int
    num_repeats: int = 1
    epoch_milestones: list[int] = field(default_factory=list)
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])    # Adam (FOMM sec. 4)
    seed: int = 0                         # model init, data order and augmentation (--seed overrides)
    num_workers: int = 2                  # DataLoader worker processes per training process
    # Autocast: 'bf16' on CPU and GPU, 'fp16' (with a gradient scaler) on GPU only, 'no' for fp32.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = False           # NHWC tensors: faster convolutions on CPU and tensor cores
    log_freq: int = 10                    # training steps between TensorBoard scalar points

    def learning_rate(self, network: str) -> float:
        """The learning rate of ``network`` (generator, kp_detector, discriminator): its ``lr_<network>``, or
        ``lr_generator`` where that is null."""
        value = getattr(self, f"lr_{network}", None)
        return getattr(self, "lr_generator", None) if value is None else value


@dataclass
class GeneratorTrainParams(TrainParams):
    """The families with generators: their learning rate and the perceptual pyramid."""
    loss_weights: PerceptualLossWeights
    lr_generator: Optional[float] = None  # required (checked in check_generator_training)
    scales: list[float] = field(default_factory=list)   # perceptual pyramid scales, e.g. [1, 0.5, 0.25, 0.125]
    # VGG-19 weights for the perceptual loss: 'imagenet' (torchvision), 'random' (tests), or a file path.
    vgg_weights: str = "imagenet"


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
    # Pose and face detectors miss people in small frames (the perturbed-masks paper, sec. 4): below this side, skip them.
    min_landmark_size: int = 128


@dataclass
class VisualizerParams:
    kp_size: int = 5
    draw_border: bool = True
    colormap: str = "gist_rainbow"



@dataclass
class Config:
    dataset_params: DatasetParams
    model_params: Any                     # the family's model_params dataclass (Family.model_params)
    train_params: TrainParams             # the family's train_params dataclass (Family.train_params)
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
        # keys of reconstruction_params only some family reads (it would refuse them when reloaded)
        for key in {k for f in registered().values() for k in f.reconstruction_keys} - set(self.record.reconstruction_keys):
            data["reconstruction_params"].pop(key)
        return data

    @property
    def family(self) -> str:
        return self.model_params.family

    @property
    def record(self) -> Family:
        """The registered family of this config (what to build, load and train)."""
        return family_of(self.family)

    @property
    def relative_motion_possible(self) -> bool:
        """Whether the model has keypoints to move (FOMM, the circles mask) or animates absolutely (heatmap)."""
        return self.record.relative_motion(self.model_params)

    @property
    def motion_name(self) -> str:
        """How the model is named in messages: 'FOMM', 'heatmap mask', 'perturbed masks'."""
        return self.record.title(self.model_params)


# ----------------------------------------------------------------------------------------------------------
# Cross-field checks shared by the families (each family adds its own in Family.check)

def frame_size_problem(size: int, model: Any) -> Optional[str]:
    """Why one frame side of ``size`` pixels cannot go through the networks, or None if it can."""
    scale = model.common_params.scale_factor
    detector_side = size * scale
    if abs(detector_side - round(detector_side)) > 1e-6:
        return f"{size} x scale_factor {scale} is not a whole number of pixels"
    record = family_of(model.family)
    if record.reads_detector:
        detector_side = round(detector_side)
        kp_blocks = model.kp_detector_params.num_blocks
        if detector_side % 2 ** kp_blocks:
            return (f"the detector sees {detector_side} px, which its {kp_blocks}-block hourglass cannot halve "
                    f"{kp_blocks} times")
        if detector_side - 6 + 2 * model.kp_detector_params.pad < 1:
            return f"the detector's {detector_side} px leave no heatmap after its 7x7 head"
    return record.frame_size_problem(size, model)


def high_res_size_problem(size: int, generator: GeneratorParams) -> Optional[str]:
    """The high-res U-Net halves the frame num_blocks times."""
    blocks = generator.high_res.num_blocks
    return f"the high-res U-Net's {blocks} blocks need a multiple of {2 ** blocks}" if size % 2 ** blocks else None


def check_mask_generators(config: Config, file: str) -> None:
    """l and h (modules/generator.py), shared by the keypoint-mask and perturbed-masks families."""
    model = config.model_params
    scale = model.common_params.scale_factor
    generator = model.generator_params
    if 2 ** generator.num_up_blocks * scale != 1:
        raise ConfigError(f"{file}: model_params.generator_params.num_up_blocks: {generator.num_up_blocks} "
                          f"up blocks turn frame*{scale} into frame*{2 ** generator.num_up_blocks * scale:g}; "
                          f"expected 2**num_up_blocks = 1/scale_factor = {round(1 / scale)}")
    check_widths(file, "model_params.generator_params", generator.block_expansion, generator.max_features)
    check_widths(file, "model_params.generator_params.high_res", generator.high_res.block_expansion,
                 generator.high_res.max_features)
    check_positive(file, [("model_params.generator_params.high_res.num_blocks", generator.high_res.num_blocks)])
    if generator.num_bottleneck_blocks < 0:
        fail(file, "model_params.generator_params.num_bottleneck_blocks", "0 or more", generator.num_bottleneck_blocks)


def check_generator_training(config: Config, file: str) -> None:
    """lr_generator, the perceptual weights and the pyramid scales of a family with generators."""
    train = config.train_params
    if train.lr_generator is None:
        raise ConfigError(f"{file}: missing key 'train_params.lr_generator' (a number)")
    if train.lr_generator <= 0:
        raise ConfigError(f"{file}: train_params.lr_generator: expected a positive number, got {train.lr_generator}")
    if any(w < 0 for w in train.loss_weights.perceptual) or train.loss_weights.l1 < 0:
        raise ConfigError(f"{file}: train_params.loss_weights: weights must be >= 0, got perceptual "
                          f"{train.loss_weights.perceptual}, l1 {train.loss_weights.l1}")
    weights = train.loss_weights.perceptual
    if not 1 <= len(weights) <= 5:
        raise ConfigError(f"{file}: train_params.loss_weights.perceptual: expected 1 to 5 weights "
                          f"(relu1_1 ... relu5_1 of VGG-19), got {len(weights)}")
    scales = train.scales
    if not scales or not all(is_inverse_integer(s) for s in scales):
        raise ConfigError(f"{file}: train_params.scales: expected pyramid scales 1/n for integers n, e.g. "
                          f"[1, 0.5, 0.25, 0.125], got {scales}")


def check_jacobian_weight(config: Config, file: str) -> None:
    """FOMM and the labelled detector: a Jacobian equivariance weight needs Jacobians to constrain."""
    weight = config.train_params.loss_weights.equivariance_jacobian
    if weight and not config.model_params.common_params.estimate_jacobian:
        raise ConfigError(f"{file}: train_params.loss_weights.equivariance_jacobian is {weight} but "
                          f"model_params.common_params.estimate_jacobian is false: there is no Jacobian to "
                          f"constrain (set it to 0)")


def map_detector_scale_factor(data: dict, file: str) -> None:
    """FOMM's configs put the detector's scale_factor in kp_detector_params; here it is common_params' (the
    low-res generator reads the same size). The legacy mapping of the families that read FOMM's keys as they are."""
    found, value = pop_path(data, "model_params.kp_detector_params.scale_factor")
    if found:
        set_path(data, "model_params.common_params.scale_factor", value, file,
                 "model_params.kp_detector_params.scale_factor")


def _check_detector_settings(model: DetectorSettings, file: str) -> None:
    detector = model.kp_detector_params
    if not 0 <= detector.pad <= 3:
        raise ConfigError(f"{file}: model_params.kp_detector_params.pad: expected 0 to 3 (padding of the 7x7 "
                          f"heads; FOMM uses 0), got {detector.pad}")
    check_widths(file, "model_params.kp_detector_params", detector.block_expansion, detector.max_features)
    check_positive(file, [("model_params.common_params.num_kp", model.common_params.num_kp),
                          ("model_params.kp_detector_params.num_blocks", detector.num_blocks)])
    if detector.temperature <= 0:
        fail(file, "model_params.kp_detector_params.temperature", "a positive number", detector.temperature)


def _check_common(config: Config, file: str) -> None:
    model, shape = config.model_params, config.dataset_params.frame_shape
    if len(shape) not in (2, 3) or any(side < 1 for side in shape):
        raise ConfigError(f"{file}: dataset_params.frame_shape: expected [height, width] or "
                          f"[height, width, channels] of positive integers, got {shape}")
    if len(shape) == 3 and shape[2] != model.common_params.num_channels:
        raise ConfigError(f"{file}: dataset_params.frame_shape: {shape[2]} channels but "
                          f"model_params.common_params.num_channels is {model.common_params.num_channels}")
    scale = model.common_params.scale_factor
    if not is_inverse_integer(scale):
        raise ConfigError(f"{file}: model_params.common_params.scale_factor: expected 1/n for an integer n "
                          f"(0.25 in the paper), got {scale}")
    if model.common_params.num_channels != 3:
        raise ConfigError(f"{file}: model_params.common_params.num_channels: expected 3 (RGB: the VGG-19 loss "
                          f"and its ImageNet normalisation need colour images), got {model.common_params.num_channels}")
    if config.record.reads_detector:
        _check_detector_settings(model, file)
    train = config.train_params
    check_positive(file, [("train_params.batch_size", train.batch_size),
                          ("train_params.num_epochs", train.num_epochs),
                          ("train_params.checkpoint_freq", train.checkpoint_freq),
                          ("train_params.num_repeats", train.num_repeats),
                          ("train_params.log_freq", train.log_freq)])
    if len(train.betas) != 2 or not all(0 <= b < 1 for b in train.betas):
        raise ConfigError(f"{file}: train_params.betas: expected two numbers in [0, 1) (Adam's beta1, beta2), "
                          f"got {train.betas}")
    if train.num_workers < 0:
        raise ConfigError(f"{file}: train_params.num_workers: expected 0 or more, got {train.num_workers}")
    milestones = train.epoch_milestones
    if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(f"{file}: train_params.epoch_milestones: expected increasing positive epochs, "
                          f"got {milestones}")


def _check_vgg_levels(config: Config, file: str) -> None:
    """The smallest pyramid level must survive the max-pools before the deepest VGG-19 slice in use."""
    shape, train = config.dataset_params.frame_shape, config.train_params
    deepest = train.loss_weights.num_vgg_slices - 1    # max-pools before that slice
    smallest_level = min(shape[:2]) * min(train.scales)
    if smallest_level < 2 ** deepest:
        raise ConfigError(f"{file}: train_params.scales: the {min(train.scales)} level of a {min(shape[:2])} px frame "
                          f"is {smallest_level:g} px, too small for VGG-19 slice {deepest + 1} "
                          f"(needs {2 ** deepest} px after {deepest} max-pools)")


def _check(config: Config, file: str) -> None:
    _check_common(config, file)
    config.record.check(config, file)
    _check_frame_shape(config, file)
    if isinstance(config.train_params, GeneratorTrainParams):
        _check_vgg_levels(config, file)


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



def _family(data: dict, file: str) -> Family:
    name = family_name(data)
    families = registered()
    if name not in families:
        raise ConfigError(f"{file}: model_params.family: expected one of {', '.join(map(repr, families))}, "
                          f"got {name!r}")
    return families[name]


def config_from_dict(data: dict, file: str = "<dict>") -> Config:
    """Validate and build a Config from plain data (a parsed YAML document)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a YAML mapping at the top level, got {type(data).__name__}")
    data = _deep_copy(data)
    family = _family(data, file)
    family.map_legacy(data, file)
    # The family picks the schemas of model_params and train_params; build takes the finished dataclasses.
    for section, schema in (("model_params", family.model_params), ("train_params", family.train_params)):
        if section not in data:
            raise ConfigError(f"{file}: missing key '{section}' (a mapping)")
        data[section] = convert(schema, data[section], section, file)
    config = build(Config, data, "", file)
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



def load_config(path: str | os.PathLike) -> Config:
    """Read a YAML config (``read_yaml``: safe loading, no duplicate keys, bounded aliases) and validate it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a folder, expected a YAML config file")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    return config_from_dict(read_yaml(path), path)
