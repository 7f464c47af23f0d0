"""What the one trainer and the one inference path need of a model family (keypoint mask, FOMM, ...).

A family gives two objects:

* an inference model (``nn.Module``) with
    ``encode_source(image) -> state``          the source's part, once per source image
    ``keypoints(frames) -> Keypoints``          (B, K, 2) values and Jacobians of driving frames
    ``animate(state, driving, initial=None, adapt_scale=False, use_relative_jacobian=True) -> output``
                                               ``initial`` (the driver's reference keypoints) = relative motion
    ``visual_columns(state, driving, output)``  the (B, 3|1, h, w) pictures shown side by side
    ``reconstruct(state, driving)``             the reconstruction path (the absolute animation, except for
                                               perturbed masks, which follow their training procedure)
    ``relative_motion_possible``                whether it has keypoints to move;
* a ``Trainable`` that binds the networks to the losses for ``train.py``.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn


class KeypointLabels(NamedTuple):
    """Labelled keypoints of a training pair (the labelled detector's batches; frames_dataset.py)."""
    source: torch.Tensor                  # (B, K, 2) in [-1, 1], x first
    source_visible: torch.Tensor          # (B, K) 1 where the label exists, 0 where it is missing
    driving: torch.Tensor                 # (B, K, 2)
    driving_visible: torch.Tensor         # (B, K)


class Keypoints(NamedTuple):
    value: torch.Tensor                   # (B, K, 2) in [-1, 1], x first
    jacobian: Optional[torch.Tensor]      # (B, K, 2, 2) or None


@dataclass
class StepContext:
    """How the trainer wants a step run: the autocast region and the (possibly scaled) backward."""
    autocast: Callable[[], AbstractContextManager]
    backward: Callable[[torch.Tensor], None]
    epoch: int = 0                        # the epoch being trained (0-based): some terms start later


class StepOutput(NamedTuple):
    losses: dict[str, torch.Tensor]       # the weighted scalar terms, named as ``Trainable.loss_names``
    # the (B, C, h, w) columns of the train-vis picture, computed only when the trainer asks (once an epoch)
    shown: Callable[[], list[torch.Tensor]]


class Trainable(nn.Module):
    """The training side of a family: which networks are saved and optimised, and one step's losses.

    The loss (with its VGG-19) is held here, not in the inference model, so it never enters a checkpoint.
    """
    loss_names: tuple[str, ...] = ()
    shown_names: str = ""                 # "source|driving|...": TensorBoard's tag of the train-vis picture
    # The config's LabelParams if the step needs keypoint labels (the trainer's dataset then returns them)
    label_params: Optional[object] = None

    def networks(self) -> dict[str, nn.Module]:
        """Checkpoint key (FOMM's names) -> network; every one is saved."""
        raise NotImplementedError

    def optimized(self) -> list[str]:
        """The networks with an optimizer (a subset of ``networks()``), each named ``optimizer_<name>``."""
        raise NotImplementedError

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap the modules whose forward produces gradients (DistributedDataParallel)."""
        raise NotImplementedError

    def training_step(self, source: torch.Tensor, driving: torch.Tensor, context: StepContext,
                      labels: Optional[KeypointLabels] = None) -> StepOutput:
        """Forward, losses and ``context.backward`` of every loss; the trainer then steps the optimizers.
        ``labels`` are given when ``label_params`` asks for them."""
        raise NotImplementedError
