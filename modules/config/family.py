"""The model families' registry, and what the one trainer and the one inference path need of a family.

Each family is one module under ``modules/families/`` that calls ``register(Family(...))`` once: its name,
its ``model_params`` and ``train_params`` schemas and checks, how to build and load its networks, its
``Trainable``, its checkpoint network names and whether it moves relatively. The config reader, the trainer,
the inference modes and the checkpoint code ask the record (``family_of(name)``), never the name.

A family gives two objects:

* an inference model (``nn.Module``) with
    ``encode_source(image) -> state``          the source's part, once per source image
    ``keypoints(frames) -> Keypoints``          (B, K, 2) values and Jacobians of driving frames
    ``animate(state, driving, initial=None, adapt_scale=False, use_relative_jacobian=True[, smooth]) -> output``
                                               ``initial`` (the driver's reference keypoints) = relative motion;
                                               families with keypoints take ``smooth`` (Keypoints -> Keypoints,
                                               modules/inference/smoothing.py), applied to the detected driving keypoints
    ``visual_columns(state, driving, output)``  the (B, 3|1, h, w) pictures shown side by side
    ``reconstruct(state, driving)``             the reconstruction path (the absolute animation, except for
                                               perturbed masks, which follow their training procedure;
                                               whether it may move relatively is the record's ``relative_motion``)
* a ``Trainable`` that binds the networks to the losses for ``train.py``.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import nn


class KeypointLabels(NamedTuple):
    """Labelled keypoints of a training pair (the labelled detector's batches; modules/data/dataset.py)."""
    source: torch.Tensor                  # (B, K, 2) in [-1, 1], x first
    source_visible: torch.Tensor          # (B, K) 1 where the label exists, 0 where it is missing
    driving: torch.Tensor                 # (B, K, 2)
    driving_visible: torch.Tensor         # (B, K)

    @classmethod
    def from_batch(cls, batch: dict, device: torch.device) -> "KeypointLabels":
        """The labels of a training batch (its keys source_keypoints, source_visible, ... ) on ``device``."""
        keys = ("source_keypoints", "source_visible", "driving_keypoints", "driving_visible")
        return cls(*(batch[key].to(device, non_blocking=True) for key in keys))


@dataclass
class StepContext:
    """How the trainer wants a step run: the autocast region and the (possibly scaled) backward."""
    autocast: Callable[[], AbstractContextManager]
    backward: Callable[[torch.Tensor], None]
    epoch: int = 0                        # the epoch being trained (0-based): some terms start later


class StepOutput(NamedTuple):
    losses: dict[str, torch.Tensor]       # the weighted scalar terms, named as ``Trainable.loss_names``
    # The train-vis picture's (B, C, h, w) columns, computed only when the trainer asks (once an epoch): a
    # NamedTuple whose field names are the column names (TensorBoard's tag "train/<a>|<b>|...").
    shown: Callable[[], tuple]


class Trainable(nn.Module):
    """The training side of a family: which networks are saved and optimised, and one step's losses.

    The loss (with its VGG-19) is held here, not in the inference model, so it never enters a checkpoint.
    """
    loss_names: tuple[str, ...] = ()
    # The config's LabelParams if the step needs keypoint labels (the trainer's dataset then returns them)
    label_params: Optional[object] = None

    def networks(self) -> dict[str, nn.Module]:
        """Checkpoint key (FOMM's names) -> network; every one is saved."""
        raise NotImplementedError

    def optimized(self) -> list[str]:
        """The networks with an optimizer (a subset of ``networks()``), each named ``optimizer_<name>``."""
        raise NotImplementedError

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap the modules whose forward produces gradients (DistributedDataParallel). By convention each is
        an attribute ``forward_<part>`` (``forward_model``, FOMM's ``forward_discriminator``, the perturbed
        family's ``forward_refinement``) that the step calls, and that is the bare module without DDP."""
        raise NotImplementedError

    def training_step(self, source: torch.Tensor, driving: torch.Tensor, context: StepContext,
                      labels: Optional[KeypointLabels] = None) -> StepOutput:
        """Forward, losses and ``context.backward`` of every loss; the trainer then steps the optimizers.
        ``labels`` are given when ``label_params`` asks for them."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------------
# The registry

def _no_check(config: Any, file: str) -> None:
    pass


def _no_legacy(data: dict, file: str) -> None:
    pass


# What an exported engine runs instead of PyTorch (modules/inference/export.py exports it).

@dataclass(frozen=True)
class ExportPart:
    """One submodule of a family's inference model that an exported engine may run instead of PyTorch."""
    path: str                                               # attribute path in the model, e.g. "mask.detector"
    input_names: tuple[str, ...]
    example: Callable[[nn.Module, tuple[int, int]], tuple]  # (the part, frame size) -> inputs of batch 1
    # int8 quantises this part; False where its outputs are positions that rounding would move (a detector)
    quantize: bool = True
    # for a part called with other things than tensors (FOMM's generator takes Keypoints): the part's arguments
    # -> the graph's input tensors, and back (None: the arguments are the tensors)
    pack: Optional[Callable[..., tuple]] = None
    unpack: Optional[Callable[..., tuple]] = None

    def inputs(self, *args) -> tuple:
        return self.pack(*args) if self.pack else args


def random_frames(channels: int) -> Callable[[nn.Module, tuple[int, int]], tuple]:
    """ExportPart.example of a part that reads frames: (1, channels, H, W). Batch 1 is traced (the graph's batch
    stays dynamic, tests/test_engines.py runs it at 5): half the traced forward of batch 2."""
    return lambda part, size: (torch.rand(1, channels, *size),)


def generator_example(channels: int, scale_factor: float) -> Callable[[nn.Module, tuple[int, int]], tuple]:
    """ExportPart.example of the keypoint-mask generators (l and h): source, source mask, driving mask."""
    def example(part: nn.Module, size: tuple[int, int]) -> tuple:
        mask = tuple(int(round(side * scale_factor)) for side in size)
        return torch.rand(1, channels, *size), torch.rand(1, 1, *mask), torch.rand(1, 1, *mask)
    return example


GENERATOR_INPUTS = ("source", "source_mask", "driving_mask")


@dataclass(frozen=True)
class Family:
    """Everything the shared code needs to know of one family; ``register`` it from its module."""
    name: str                              # model_params.family in the YAML
    model_params: type                     # the dataclass of its model_params section
    train_params: type                     # its train_params dataclass (modules.config.sections.TrainParams or a subclass)
    # (config, checkpoint_with_kp) -> the inference model with fresh weights (a given detector loaded, frozen)
    build: Callable[[Any, Optional[str]], nn.Module]
    # (config, checkpoint, source) -> the inference model with a checkpoint's weights, loaded strictly
    load: Callable[[Any, dict, str], nn.Module]
    # (config, model, perceptual) -> its Trainable; ``perceptual()`` builds the config's perceptual loss
    trainable: Callable[[Any, nn.Module, Callable[[], nn.Module]], "Trainable"]
    networks: tuple[str, ...]              # the checkpoint keys of its networks (FOMM's names where FOMM has them)
    title: Callable[[Any], str]            # model_params -> its name in messages ("FOMM", "circles mask")
    training_only: tuple[str, ...] = ()    # those of ``networks`` inference never runs (a model file leaves them out)
    relative_motion: Callable[[Any], bool] = lambda params: False   # has keypoints to move relatively
    check: Callable[[Any, str], None] = _no_check                   # (config, file): its cross-field checks
    # (frame side in px, model_params) -> why that side cannot go through its networks, or None
    frame_size_problem: Callable[[int, Any], Optional[str]] = lambda size, params: None
    map_legacy: Callable[[dict, str], None] = _no_legacy            # rewrites older repositories' keys in place
    animates: bool = True                  # it has a generator: it reconstructs and animates
    reads_detector: bool = True            # it holds FOMM's KPDetector (--checkpoint_with_kp applies)
    needs_pretrained_detector: bool = False   # a random detector makes its results meaningless (a warning)
    reconstruction_keys: tuple[str, ...] = ()  # reconstruction_params keys only this family reads
    ablations: tuple[str, ...] = ()        # values of --ablation it accepts (the first: none)
    # model_params -> the submodules an exported engine may run (ExportPart above); () = none
    export_parts: Callable[[Any], tuple] = lambda params: ()

    @property
    def inference_networks(self) -> tuple[str, ...]:
        """What a model file carries: the networks inference runs."""
        return tuple(name for name in self.networks if name not in self.training_only)


_REGISTRY: dict[str, Family] = {}
DEFAULT_FAMILY = "keypoint_mask"          # a config without model_params.family: the paper's model


def family_name(config_data: Any) -> Any:
    """The family a plain config mapping names (``model_params.family``, else DEFAULT_FAMILY)."""
    model = config_data.get("model_params") if isinstance(config_data, dict) else None
    return model.get("family", DEFAULT_FAMILY) if isinstance(model, dict) else DEFAULT_FAMILY


def register(family: Family) -> Family:
    """Add a family (each module under modules/families/ calls this once, at import)."""
    if family.name in _REGISTRY and _REGISTRY[family.name] is not family:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _REGISTRY[family.name] = family
    return family


def registered() -> dict[str, Family]:
    """name -> Family of every family (importing modules/families/ registers the project's own)."""
    import modules.families  # noqa: F401  (its modules register themselves)
    return dict(_REGISTRY)


def family_of(name: str) -> Family:
    """The record of family ``name``; KeyError if none is registered under it."""
    return registered()[name]
