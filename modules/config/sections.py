"""Typed, validated configs read from YAML (FOMM's section names plus ``mask_params``).

``model_params.family`` chooses the model family (modules/config/family.py; ``keypoint_mask``, the paper's, is the
default). The sections every family reads are the dataclasses below; a family's own ``model_params`` and
``train_params`` schemas and checks live in its module under ``modules/families/``.

``load_config(path)`` (modules/config/loading.py) reads the file (``modules.config.yaml_reader``: safe loading, no duplicate keys, bounded
aliases), lets the family rewrite the legacy keys of older repositories, and builds the dataclasses
(``modules.config.schema``). Every problem (an unknown key, a missing key, a wrong type, a frame size the networks
cannot take) is a ``ConfigError`` whose one-line message names the file, the key path and what was expected.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from modules.config.family import Family, family_of, registered

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
    # Detector input = frame * scale_factor; the low-res generator reads the same size (keypoint-mask paper
    # sec. 1.1, 2.3).
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
    """The low-res generator and, under ``high_res``, the high-res U-Net (keypoint-mask paper sec. 2.3)."""
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
    """Which labelled points become the detector's K keypoints (docs/data.md, "Keypoint labels").

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
    # Pose and face detectors miss people in small frames (perturbed-masks paper sec. 4): below this side, skip
    # them.
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
        others = {k for f in registered().values() for k in f.reconstruction_keys}
        for key in others - set(self.record.reconstruction_keys):
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
