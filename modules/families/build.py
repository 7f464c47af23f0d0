"""Config -> networks, whatever the family: the one place the trainer and the inference modes build models.

Each family's record (modules/config/family.py, registered by its module under modules/families/) says how;
these functions only look it up.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from modules.config.family import Trainable
from modules.config.sections import Config
from modules.families.memory import check_memory
from modules.training.losses import FeatureExtractor, PerceptualLoss, build_vgg19_features


def model_from_checkpoint(config: Config, checkpoint: dict, source: str, *, device: Optional[torch.device] = None,
                          batch: int = 1, training: bool = False) -> nn.Module:
    """The networks of ``config`` with a checkpoint's weights (FOMM's keys), loaded strictly; first the memory
    check (modules/families/memory.py) for a run of ``batch`` frames on ``device`` (None: the host)."""
    check_memory(config, source, device=device, batch=batch, training=training)
    return config.record.load(config, checkpoint, source)


def build_model(config: Config, *, checkpoint_with_kp: Optional[str] = None, device: Optional[torch.device] = None,
                batch: int = 1, training: bool = True) -> nn.Module:
    """The networks for ``config`` with fresh weights; ``checkpoint_with_kp`` gives the families that hold FOMM's
    detector its weights (frozen for the keypoint-mask family, a starting point for the stage ones). First the
    memory check for ``batch`` frame pairs on ``device`` (None: the host), as training (fresh weights are
    trained) unless ``training`` is False."""
    check_memory(config, config.path, device=device, batch=batch, training=training)
    return config.record.build(config, checkpoint_with_kp)


def build_trainable(config: Config, model: nn.Module, *, vgg_weights: Optional[str] = None,
                    vgg_source: str = "train_params.vgg_weights",
                    feature_extractor: Optional[FeatureExtractor] = None) -> Trainable:
    """The family's training side for ``model``: its losses bound to its networks.

    vgg_weights: overrides ``train_params.vgg_weights`` ('imagenet', 'random' or a file path); vgg_source
    names where that value came from, for error messages (e.g. '--vgg_weights').
    feature_extractor: replaces VGG-19 altogether (tests inject a tiny one); it must return one feature map
    per perceptual weight up to the last non-zero one.
    """
    return config.record.trainable(config, model,
                                   lambda: build_perceptual(config, vgg_weights, vgg_source, feature_extractor))


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
