"""The cross-field checks of a config that the families share (each family adds its own in ``Family.check``).

Each failure is a ``ConfigError`` whose one line names the file, the key and what was expected.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

from modules.config.bounds import check_bounds
from modules.config.family import family_of
from modules.config.schema import check_positive, check_widths, fail, is_inverse_integer, pop_path, set_path
from modules.config.sections import Config, DetectorSettings, GeneratorParams, GeneratorTrainParams
from modules.core.errors import ConfigError, ConfigWarning


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
    """l and h (modules/nets/generator.py), shared by the keypoint-mask and perturbed-masks families."""
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


def check_config(config: Config, file: str) -> None:
    """Every cross-field check of a built config: the bounds on its sizes first (modules/config/bounds.py: the
    checks below compute with them, 2 ** num_blocks among others), then the shared ones, then its family's."""
    check_bounds(config, file)
    _check_common(config, file)
    config.record.check(config, file)
    _check_frame_shape(config, file)
    if isinstance(config.train_params, GeneratorTrainParams):
        _check_vgg_levels(config, file)
    _warn_small_for_landmarks(config, file)


def _warn_small_for_landmarks(config: Config, file: str) -> None:
    """Say before training, not after it, that a pose or face model too small for its landmark detector will be
    measured without AKD, MKR and AED (the detectors miss people in small frames, perturbed-masks paper sec. 4)."""
    params, side = config.metrics_params, min(config.dataset_params.frame_shape[:2])
    if config.record.animates and params.landmarks in ("body", "face") and side < params.min_landmark_size:
        warnings.warn(f"{file}: frames of {side} px are smaller than metrics_params.min_landmark_size "
                      f"({params.min_landmark_size}): this {params.landmarks} model will get no AKD, MKR or AED, "
                      f"only L1, PSNR, SSIM and flicker (train at {params.min_landmark_size} px or more for them)",
                      ConfigWarning, stacklevel=3)


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


def fomm_size_problem(size: int, model: Any) -> Optional[str]:
    """FOMM: the dense motion network's and the generator's own size constraints (the detector's are shared)."""
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


def perturbed_size_problem(size: int, model: Any) -> Optional[str]:
    """The perturbed-masks model: m and r halve frame*scale_factor num_blocks times; h halves the frame."""
    side = round(size * model.common_params.scale_factor)
    for name in ("mask_generator_params", "mask_refinement_params"):
        blocks = getattr(model, name).num_blocks
        if side % 2 ** blocks:
            return f"{name} sees {side} px, which its {blocks}-block hourglass cannot halve {blocks} times"
    if side - 6 < 1:
        return f"the masks' {side} px leave nothing after their 7x7 heads"
    return high_res_size_problem(size, model.generator_params)
