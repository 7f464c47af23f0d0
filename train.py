"""Training: ``python run.py --config CONFIG --mode train [--checkpoint_with_kp FOMM_CKPT] [--log_dir DIR]``.

The keypoint-mask paper's recipe (sec. 2.4, DESIGN.md 1.6): Adam (lr 2e-4, betas 0.5/0.999) on both
generators, LR x0.1 at ``epoch_milestones``, the perceptual pyramid on both predictions. The detector is
frozen (eval mode, no gradient, not in the optimizer). What this loop adds to the original:

- exact resume: a checkpoint holds weights, optimizer, scheduler, grad scaler, RNG states, the epoch, the
  batch within it and the config; data order and augmentation are functions of (seed, epoch, index), so a
  run stopped anywhere and resumed gives the parameters an uninterrupted run gives, bit for bit on CPU;
- atomic checkpoints (``kill -9`` never leaves a broken one), Ctrl-C / SIGTERM save and exit 0, a NaN or
  infinite loss stops with the step named and the last checkpoint intact;
- autocast (bf16 on CPU and GPU, fp16 with a gradient scaler on GPU), channels_last, and DDP through
  ``torchrun`` (SyncBatchNorm on GPUs; on CPU each rank normalises its own part of the batch).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

import logger as run_log
from modules.checkpoint import read_checkpoint
from modules.config import Config, config_from_dict, load_config
from modules.errors import CheckpointError, ConfigError, UserError
from modules.keypoint_detector import KPDetector, load_detector_state
from modules.generator import GeneratorOutput
from modules.models import KeypointMaskLoss, KeypointMaskModel, LossTerms, build_loss, build_model

LOSS_NAMES = LossTerms._fields


class TrainingDiverged(UserError):
    """A loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------------------
# Options and process group

@dataclass
class TrainOptions:
    """What ``run.py --mode train`` passes in (None = take it from the config or the checkpoint)."""
    config: Optional[str] = None              # YAML; optional when resuming
    checkpoint: Optional[str] = None          # resume this run (a file or a run folder: its latest)
    init_checkpoint: Optional[str] = None     # start a new run from these weights (fine-tuning)
    checkpoint_with_kp: Optional[str] = None  # FOMM checkpoint with the pretrained kp_detector
    log_dir: str = "log"
    device: Any = "cpu"                       # torch.device chosen by run.py
    seed: Optional[int] = None
    mixed_precision: Optional[str] = None     # no | bf16 | fp16
    channels_last: Optional[bool] = None
    vgg_weights: Optional[str] = None
    max_steps: Optional[int] = None           # stop (with a checkpoint) after this many steps in total
    argv: Sequence[str] = ()


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes in the environment (a single process needs nothing)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device
    dist = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


# ----------------------------------------------------------------------------------------------------------
# Data order

class EpochBatchSampler(torch.utils.data.Sampler):
    """Seeded shuffle per epoch, this rank's share, full batches only; can skip the first batches (resume).

    Rank r takes every world_size-th index of the permutation, so the ranks' batch k together are exactly
    the single-process batch k of the global batch size: results do not depend on how many GPUs ran them.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, dist: Distributed):
        self.dataset_size, self.batch_size, self.seed, self.dist = dataset_size, batch_size, seed, dist
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    @property
    def batches_per_epoch(self) -> int:
        return self.dataset_size // self.dist.world_size // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator).tolist()
        mine = order[self.dist.rank::self.dist.world_size]
        for batch in range(self.skip, self.batches_per_epoch):
            yield mine[batch * self.batch_size:(batch + 1) * self.batch_size]


def _quiet_worker(_: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop, so workers keep going
    # (a worker that dies on SIGINT makes the DataLoader raise before the checkpoint is saved).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ----------------------------------------------------------------------------------------------------------
# Stop requests: Ctrl-C and SIGTERM finish the current step, save, and exit 0

class StopRequest:
    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt          # a second Ctrl-C: stop now, without a checkpoint
        self.requested = True
        print(f"\n{signal.Signals(number).name}: finishing this step, saving a checkpoint "
              f"(Ctrl-C again to quit without saving)", flush=True)

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


# ----------------------------------------------------------------------------------------------------------
# Setting up: config, checkpoints, model

def _first_difference(a: Any, b: Any, prefix: str) -> Optional[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(key), b.get(key), f"{prefix}.{key}")
            if found:
                return found
        return None
    return None if a == b else f"{prefix} is {a!r} in the checkpoint, {b!r} in the config"


def _check_same_model(checkpoint: dict, config: Config, flag: str) -> None:
    difference = _first_difference(checkpoint["config"]["model_params"], config.to_dict()["model_params"],
                                   "model_params")
    if difference:
        raise ConfigError(f"{config.path}: model_params differ from {flag} {checkpoint['path']}: {difference} "
                          f"(the networks must be the same; only train_params may change)")


def _resolve_config(options: TrainOptions, resume: Optional[dict], init: Optional[dict]) -> Config:
    if options.config:
        config = load_config(options.config)
    elif resume:
        config = config_from_dict(resume["config"], f"{resume['path']}:config")
    else:
        raise UserError("--mode train needs --config (or --checkpoint to resume a run)")
    for checkpoint, flag in ((resume, "--checkpoint"), (init, "--init_checkpoint")):
        if checkpoint and options.config:
            _check_same_model(checkpoint, config, flag)
    train = config.train_params
    if options.mixed_precision is not None:
        train.mixed_precision = options.mixed_precision
    if options.channels_last is not None:
        train.channels_last = options.channels_last
    if resume:
        train.seed = int(resume["seed"])        # the data order of the resumed run depends on it
    elif options.seed is not None:
        train.seed = options.seed
    return config


def _load_weights(model: KeypointMaskModel, checkpoint: dict) -> None:
    load_detector_state(model.mask.detector, checkpoint["kp_detector"], checkpoint["path"])
    try:
        model.generator.load_state_dict(checkpoint["generator"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{checkpoint['path']}: generator does not fit the config "
                              f"({str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else error})"
                              ) from None


def _build_model(config: Config, options: TrainOptions, weights: Optional[dict]) -> KeypointMaskModel:
    torch.manual_seed(config.train_params.seed)
    if weights is not None:
        # The detector comes from the checkpoint: build it empty and load it strictly.
        model = build_model(config, detector=KPDetector(**config.model_params.detector_kwargs()))
        _load_weights(model, weights)
    else:
        model = build_model(config, checkpoint_with_kp=options.checkpoint_with_kp)
    return model


def _autocast_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    if mode == "fp16" and device.type != "cuda":
        raise UserError(f"mixed precision fp16 needs a CUDA device (this run is on {device}); use bf16 on CPU")
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _parameter_checksum(module: nn.Module) -> torch.Tensor:
    return torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().cpu()


# ----------------------------------------------------------------------------------------------------------
# The loop

def forward_backward(train_model: nn.Module, loss_fn: KeypointMaskLoss, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, autocast_dtype: Optional[torch.dtype], source: torch.Tensor,
                     driving: torch.Tensor) -> tuple[LossTerms, GeneratorOutput]:
    """Predictions, losses and gradients of one batch (the caller checks the losses, then steps)."""
    autocast = (torch.autocast(source.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        output = train_model(source, driving)
        terms = loss_fn(output, driving)
    optimizer.zero_grad(set_to_none=True)
    # The detector ran under no_grad inside the model: this backward touches the generators only.
    scaler.scale(terms.total()).backward()
    return terms, output


def run_training(options: TrainOptions) -> str:
    """Train (or resume) as ``options`` say; returns the run folder."""
    dist, device = init_distributed(torch.device(options.device))
    try:
        return _train(options, dist, device)
    finally:
        if dist.enabled:
            torch_dist.destroy_process_group()


def _train(options: TrainOptions, dist: Distributed, device: torch.device) -> str:
    resume = run_log.load_training_checkpoint(options.checkpoint) if options.checkpoint else None
    init = run_log.load_training_checkpoint(options.init_checkpoint) if options.init_checkpoint else None
    if resume and init:
        raise UserError("--checkpoint (resume a run) and --init_checkpoint (start a new run from weights) "
                        "exclude each other")
    config = _resolve_config(options, resume, init)
    train = config.train_params
    autocast_dtype = _autocast_dtype(train.mixed_precision, device)
    if train.batch_size % dist.world_size:
        raise ConfigError(f"{config.path}: train_params.batch_size {train.batch_size} is the global batch and must "
                          f"divide among {dist.world_size} processes")
    batch_size = train.batch_size // dist.world_size
    notes: list[str] = []

    # Data: every random choice is a function of (seed, epoch, index), so workers and ranks agree.
    from frames_dataset import DatasetRepeater, FramesDataset

    dataset = FramesDataset(root_dir=config.dataset_params.root_dir, frame_shape=config.dataset_params.frame_shape,
                            id_sampling=config.dataset_params.id_sampling, is_train=True,
                            augmentation_params=config.dataset_params.augmentation_params,
                            random_seed=train.seed)
    notes += dataset.notes
    if train.num_repeats > 1:
        dataset = DatasetRepeater(dataset, train.num_repeats)
    sampler = EpochBatchSampler(len(dataset), batch_size, train.seed, dist)
    if sampler.batches_per_epoch == 0:
        raise ConfigError(f"{config.path}: train_params.batch_size {train.batch_size} is larger than an epoch "
                          f"({len(dataset)} training items in {config.dataset_params.root_dir}; raise num_repeats "
                          f"or lower batch_size)")
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=train.num_workers,
                                         pin_memory=device.type == "cuda", worker_init_fn=_quiet_worker)

    # Networks, loss, optimizer.
    if resume is None and init is None and options.checkpoint_with_kp is None and dist.is_main:
        notes.append("the keypoint detector has RANDOM weights (no --checkpoint_with_kp): masks carry no "
                     "learned structure")
    if resume and options.checkpoint_with_kp:
        notes.append("--checkpoint_with_kp ignored: the resumed checkpoint holds its detector")
    model = _build_model(config, options, resume or init)
    loss_fn = build_loss(config, vgg_weights=options.vgg_weights,
                         vgg_source="--vgg_weights" if options.vgg_weights else "train_params.vgg_weights")
    memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    loss_fn.to(device, memory_format=memory_format)
    if dist.enabled:
        if device.type == "cuda":
            model.generator = nn.SyncBatchNorm.convert_sync_batchnorm(model.generator)
        else:
            notes.append(f"DDP on CPU ({dist.world_size} processes, gloo): SyncBatchNorm needs GPUs, so each rank's "
                         f"BatchNorm normalises its own {batch_size} samples; running statistics are rank 0's")
    optimizer = torch.optim.Adam(model.generator.parameters(), lr=train.lr_generator, betas=tuple(train.betas))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, train.epoch_milestones, gamma=0.1)
    scaler = torch.amp.GradScaler(device.type, enabled=train.mixed_precision == "fp16")
    start_epoch, start_batch, step = 0, 0, 0
    if resume:
        optimizer.load_state_dict(resume["optimizer_generator"])
        scheduler.load_state_dict(resume["scheduler_generator"])
        scheduler.milestones = type(scheduler.milestones)(train.epoch_milestones)   # the config may move them
        if "grad_scaler" in resume and scaler.is_enabled():
            scaler.load_state_dict(resume["grad_scaler"])
        _set_rng_state(resume["rng"], device)
        step = int(resume["step"])
        start_epoch, start_batch = int(resume["epoch"]), int(resume["batch"])
        if resume["epoch_complete"]:
            start_epoch, start_batch = start_epoch + 1, 0
        elif int(resume.get("global_batch", train.batch_size)) != train.batch_size:
            start_batch = int(resume["batch"]) * int(resume["global_batch"]) // train.batch_size
            notes.append(f"batch size changed mid-epoch: resuming epoch {start_epoch} at batch {start_batch}")
        notes.append(f"resumed from {resume['path']} (step {step}): continuing at epoch {start_epoch}, "
                     f"batch {start_batch}")
    elif init:
        notes.append(f"weights initialised from {init['path']} (step {init['step']}); new optimizer and schedule")
    train_model: nn.Module = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # Run folder and logs (rank 0 only).
    run_dir = os.path.dirname(os.path.abspath(resume["path"])) if resume else None
    log = None
    if dist.is_main:
        if run_dir is None:
            run_dir = run_log.make_run_dir(options.log_dir, options.config or "run")
        stale = run_log.remove_stale_temporaries(run_dir)
        log = run_log.RunLogger(run_dir)
        run_log.write_run_info(run_dir, config.to_dict(), argv=options.argv, seed=train.seed,
                               extra={"device": str(device), "world_size": dist.world_size,
                                      "resumed_from": resume["path"] if resume else None})
        notes += [f"removed {path}: a checkpoint write that never finished" for path in stale]
        for message in [f"run folder {run_dir}"] + notes:
            log.note(message)

    epochs = train.num_epochs
    total_steps = epochs * sampler.batches_per_epoch
    if options.max_steps is not None:
        total_steps = min(total_steps, options.max_steps)
    progress = tqdm(total=total_steps, initial=min(step, total_steps), disable=not dist.is_main,
                    dynamic_ncols=True, unit="step")

    def save(epoch: int, batch: int, complete: bool) -> None:
        if dist.enabled:
            # Every rank must hold the same weights; a checksum per rank proves it before rank 0 writes.
            sums = [torch.zeros((), dtype=torch.float64) for _ in range(dist.world_size)]
            torch_dist.all_gather(sums, _parameter_checksum(model.generator))
            if dist.is_main:
                same = all(s.item() == sums[0].item() for s in sums)
                log.note(f"DDP: parameters {'identical' if same else 'DIFFER'} on {dist.world_size} ranks "
                         f"(checksum {sums[0].item():.10g})", echo=not same)
        if not dist.is_main:
            return
        state = {"kp_detector": model.mask.detector.state_dict(), "generator": model.generator.state_dict(),
                 "optimizer_generator": optimizer.state_dict(), "scheduler_generator": scheduler.state_dict(),
                 "epoch": epoch, "epoch_complete": complete, "batch": batch, "step": step,
                 "global_batch": train.batch_size, "world_size": dist.world_size, "seed": train.seed,
                 "rng": _rng_state(device), "config": config.to_dict()}
        if scaler.is_enabled():
            state["grad_scaler"] = scaler.state_dict()
        path = run_log.checkpoint_path(run_dir, epoch, interrupted=not complete)
        run_log.save_checkpoint(path, state)
        log.note(f"checkpoint {path} (epoch {epoch}, step {step})", echo=False)

    def train_step(batch: dict) -> tuple[dict[str, float], bool, Any]:
        """One optimizer step; returns the (all-rank mean) losses, whether any rank asked to stop, the output."""
        source = batch["source"].to(device, non_blocking=True, memory_format=memory_format)
        driving = batch["driving"].to(device, non_blocking=True, memory_format=memory_format)
        terms, output = forward_backward(train_model, loss_fn, optimizer, scaler, autocast_dtype, source, driving)
        # One small all-reduce: mean losses for the log, and every rank sees the same NaN or stop request
        # (a rank leaving alone would hang the others in their next all-reduce).
        values = torch.cat([torch.stack([t.detach().float() for t in terms]).double().cpu(),
                            torch.tensor([float(stop.requested)], dtype=torch.float64)])
        if dist.enabled:
            torch_dist.all_reduce(values)
            values[:-1] /= dist.world_size
        losses = dict(zip(LOSS_NAMES, values[:-1].tolist()))
        if not all(math.isfinite(v) for v in losses.values()):
            raise TrainingDiverged(
                f"step {step + 1}: loss is not finite ({', '.join(f'{k} {v:.4g}' for k, v in losses.items())}); "
                f"stopped before the update, the last checkpoint in {run_dir or options.log_dir} is intact "
                f"(lower lr_generator, or train with mixed_precision: no)")
        scaler.step(optimizer)
        scaler.update()
        return losses, values[-1].item() > 0, (source, driving, output)

    stopping = False
    if start_epoch >= epochs and dist.is_main:
        log.note(f"nothing to train: the run has done {epochs} epochs (raise train_params.num_epochs with --config)")
    with StopRequest() as stop:
        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch, start_batch)
            dataset.set_epoch(epoch)           # workers copy the dataset when the iterator starts
            batch_index, start_batch = start_batch, 0
            sums, batches, started, shown = dict.fromkeys(LOSS_NAMES, 0.0), 0, time.time(), None
            stopping = False
            model.train()
            for batch in loader:
                losses, stop_requested, (source, driving, output) = train_step(batch)
                step, batch_index, batches = step + 1, batch_index + 1, batches + 1
                sums = {k: sums[k] + v for k, v in losses.items()}
                if batch_index == sampler.batches_per_epoch:   # keep the epoch's last batch for the picture
                    shown = [t[:4].detach() for t in (source, output.source_mask, driving, output.driving_mask,
                                                       output.low_res_prediction, output.prediction)]
                if dist.is_main:
                    progress.update(1)
                    progress.set_description(f"epoch {epoch + 1}/{epochs}")
                    progress.set_postfix({k.replace("perceptual_", ""): f"{v:.3f}" for k, v in losses.items()},
                                         refresh=False)
                    if step % train.log_freq == 0:
                        log.scalars(step, {f"loss/{k}": v for k, v in losses.items()}
                                    | {"loss/total": sum(losses.values()), "lr": optimizer.param_groups[0]["lr"]})
                stopping = stop_requested or (options.max_steps is not None and step >= options.max_steps)
                if stopping:
                    break
            complete = batch_index == sampler.batches_per_epoch
            if complete:
                scheduler.step()
                if dist.is_main:
                    means = {k: v / max(batches, 1) for k, v in sums.items()}
                    log.epoch(epoch, step, means | {"total": sum(means.values())}, optimizer.param_groups[0]["lr"],
                              time.time() - started, batches * train.batch_size)
                    if shown is not None:
                        log.images(epoch, step, run_log.training_grid(shown))
            if stopping or (complete and ((epoch + 1) % train.checkpoint_freq == 0 or epoch + 1 == epochs)):
                save(epoch, batch_index, complete)
            if stopping:
                break
    progress.close()
    if dist.is_main:
        if stopping:
            log.note(f"stopped at step {step} (epoch {epoch}, batch {batch_index}); resume with "
                     f"--checkpoint {run_dir}")
        else:
            log.note(f"finished {epochs} epochs, step {step}")
        log.close()
    return run_dir
