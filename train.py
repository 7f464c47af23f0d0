"""Training: ``python run.py --config CONFIG --mode train [--checkpoint_with_kp FOMM_CKPT] [--log_dir DIR]``.

One loop for every model family (modules/family.py): the family says which networks are saved and which get
an Adam optimizer (betas from the config, LR x0.1 at ``epoch_milestones``), and computes one step's losses
and backward passes; the loop does the rest. Keypoint mask (the paper's recipe, sec. 2.4):
the two generators are optimised, the detector is frozen (eval mode, no gradient, not in an optimizer).
FOMM (stage one): generator, detector and discriminator, each with its own optimizer and learning rate.
What this loop adds to the original code:

- exact resume: a checkpoint holds weights, optimizer, scheduler, grad scaler, RNG states, the epoch, the
  batch within it and the config; data order and augmentation are functions of (seed, epoch, index), so a
  run stopped anywhere and resumed gives the parameters an uninterrupted run gives, bit for bit on CPU;
- atomic checkpoints (``kill -9`` never leaves a broken one), Ctrl-C / SIGTERM save and exit 0, a NaN or
  infinite loss stops with the step named and the last checkpoint intact;
- autocast (bf16 on CPU and GPU, fp16 with a gradient scaler on GPU), channels_last, and DDP through
  ``torchrun`` (SyncBatchNorm on GPUs; on CPU each rank normalises its own part of the batch).
"""
from __future__ import annotations

import bisect
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

import logger as run_log
from modules.config import Config, config_from_dict, load_config, resolve_data_paths
from modules.errors import CheckpointError, ConfigError, UserError
from modules.family import KeypointLabels, StepContext, Trainable
from modules.models import build_model, build_trainable, model_from_checkpoint
from modules.precision import autocast, autocast_dtype


# The batch keys of keypoint labels (frames_dataset.py), in KeypointLabels' order.
LABEL_KEYS = ("source_keypoints", "source_visible", "driving_keypoints", "driving_visible")


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
    # NCCL for CUDA tensors, gloo for the small CPU tensors (loss values, checksums) the loop all-reduces.
    torch_dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
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
        entropy = np.random.SeedSequence([self.seed % 2 ** 64, self.epoch]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(entropy[0]) << 31 | int(entropy[1]) >> 1)
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
    # Both sides resolved by the same schema: defaults the older file did not write compare equal.
    saved = config_from_dict(checkpoint["config"], f"{checkpoint['path']}:config").to_dict()
    difference = _first_difference(saved["model_params"], config.to_dict()["model_params"], "model_params")
    if difference:
        raise ConfigError(f"{config.path}: {difference}: model_params differ from {flag} {checkpoint['path']} "
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
    resolve_data_paths(config, options.config or (resume or {}).get("path"))
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


def _build_model(config: Config, options: TrainOptions, weights: Optional[dict]) -> nn.Module:
    torch.manual_seed(config.train_params.seed)
    if weights is not None:
        return model_from_checkpoint(config, weights, weights["path"])
    return build_model(config, checkpoint_with_kp=options.checkpoint_with_kp)


def _short(loss_name: str) -> str:
    """A loss name short enough for the progress bar: perceptual_low_res -> low_res, equivariance_value -> eq_value."""
    return loss_name.replace("perceptual_", "").replace("equivariance_", "eq_").replace("feature_matching", "fm")


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

def step_context(device: torch.device, dtype: Optional[torch.dtype], scaler: torch.amp.GradScaler) -> StepContext:
    """Autocast as configured; backward through the gradient scaler (a no-op unless fp16)."""
    return StepContext(autocast=lambda: autocast(device, dtype), backward=lambda loss: scaler.scale(loss).backward())


def run_training(options: TrainOptions) -> str:
    """Train (or resume) as ``options`` say; returns the run folder."""
    if options.checkpoint and options.init_checkpoint:
        raise UserError("--checkpoint (resume a run) and --init_checkpoint (start a new run from weights) "
                        "exclude each other")
    device = torch.device(options.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)          # else pinned-memory threads open a context on GPU 0
    dist, device = init_distributed(device)
    try:
        trainer = Trainer(options, dist, device)
        try:
            run_dir = trainer.fit()
        except BaseException as error:
            trainer.close(error)
            raise
        trainer.close()
        if dist.enabled:
            # Leave together: a rank tearing gloo down while rank 0 still writes the checkpoint can abort.
            torch_dist.barrier()
        return run_dir
    finally:
        if dist.enabled:
            torch_dist.destroy_process_group()


def _resume_position(checkpoint: dict, global_batch: int, batches_per_epoch: int, dataset_size: int,
                     notes: list[str]) -> tuple[int, int]:
    """(epoch, batch) at which a resumed run goes on."""
    epoch, batch = int(checkpoint["epoch"]), int(checkpoint["batch"])
    if checkpoint["epoch_complete"]:
        return epoch + 1, 0
    if int(checkpoint.get("dataset_size", dataset_size)) != dataset_size:
        notes.append(f"the training set has changed size ({checkpoint['dataset_size']} -> {dataset_size} items): "
                     f"epoch {epoch} goes on with the new order, not bit-identical to an uninterrupted run")
    if int(checkpoint.get("global_batch", global_batch)) != global_batch:
        batch = batch * int(checkpoint["global_batch"]) // global_batch
        notes.append(f"batch size changed mid-epoch: resuming epoch {epoch} at batch {batch}")
    return epoch, min(batch, batches_per_epoch)


def _apply_schedule_changes(before: Any, train: Any, name: str, optimizer: torch.optim.Optimizer,
                            scheduler: torch.optim.lr_scheduler.MultiStepLR, notes: list[str]) -> None:
    """Make the resumed optimizer of network ``name`` follow the train_params of --config when they differ from
    the checkpoint's (``before``). Left alone when nothing changed, so that an ordinary resume stays bit-identical.
    """
    changed = [key for key in ("betas", "epoch_milestones") if getattr(before, key) != getattr(train, key)]
    if before.learning_rate(name) != train.learning_rate(name):
        changed.insert(0, f"lr_{name}")
    if not changed:
        return
    lr = train.learning_rate(name)
    milestones = sorted(train.epoch_milestones)
    scheduler.milestones = type(scheduler.milestones)(milestones)
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    decays = bisect.bisect_right(milestones, scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * scheduler.gamma ** decays
        group["betas"] = tuple(train.betas)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    notes.append(f"train_params changed on resume ({', '.join(changed)}): {name} learning rate now "
                 f"{optimizer.param_groups[0]['lr']:.3g}")


def has_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether any parameter of ``optimizer`` received a gradient in this step."""
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


class Trainer:
    """One training run: set up from options (new, resumed or fine-tuned), then ``fit()``."""

    def __init__(self, options: TrainOptions, dist: Distributed, device: torch.device):
        from frames_dataset import DatasetRepeater, FramesDataset

        self.options, self.dist, self.device = options, dist, device
        self.log: Optional[run_log.RunLogger] = None
        self.progress: Optional[tqdm] = None
        resume = run_log.load_training_checkpoint(options.checkpoint) if options.checkpoint else None
        init = run_log.load_training_checkpoint(options.init_checkpoint) if options.init_checkpoint else None
        self.config = config = _resolve_config(options, resume, init)
        self.train = train = config.train_params
        self.autocast_dtype = autocast_dtype(train.mixed_precision, device)
        if train.batch_size % dist.world_size:
            raise ConfigError(f"{config.path}: train_params.batch_size {train.batch_size} is the global batch and "
                              f"must divide among {dist.world_size} processes")
        notes: list[str] = []
        ignored = [(resume, options.seed is not None and options.seed != train.seed, "--seed",
                    "a resumed run keeps its seed"),
                   (resume, options.checkpoint_with_kp, "--checkpoint_with_kp", "the checkpoint holds its detector"),
                   (init, options.checkpoint_with_kp, "--checkpoint_with_kp", "the checkpoint holds its detector")]
        notes += [f"{flag} ignored: {why}" for checkpoint, given, flag, why in ignored if checkpoint and given]

        # Networks and loss first: a wrong checkpoint or VGG path fails before a dataset is scanned.
        self.model = model = _build_model(config, options, resume or init)
        self.trainable: Trainable = build_trainable(
            config, model, vgg_weights=options.vgg_weights,
            vgg_source="--vgg_weights" if options.vgg_weights else "train_params.vgg_weights")
        self.networks = self.trainable.networks()
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        self.trainable.to(device, memory_format=self.memory_format)
        if dist.enabled and device.type == "cuda":
            for name in self.trainable.optimized():      # converted in place (a network is never a BN itself)
                nn.SyncBatchNorm.convert_sync_batchnorm(self.networks[name])
        elif dist.enabled:
            notes.append(f"DDP on CPU ({dist.world_size} processes, gloo): SyncBatchNorm needs GPUs, so each rank's "
                         f"BatchNorm normalises its own {train.batch_size // dist.world_size} samples; running "
                         f"statistics are rank 0's")
        # Data: every random choice is a function of (seed, epoch, index), so workers and ranks agree.
        dataset = FramesDataset.from_config(config.dataset_params, is_train=True, random_seed=train.seed,
                                            labels=self.trainable.label_params)
        notes += dataset.notes
        self.dataset = DatasetRepeater(dataset, train.num_repeats) if train.num_repeats > 1 else dataset
        self.sampler = EpochBatchSampler(len(self.dataset), train.batch_size // dist.world_size, train.seed, dist)
        if self.sampler.batches_per_epoch == 0:
            raise ConfigError(f"{config.path}: train_params.batch_size {train.batch_size} is larger than an epoch "
                              f"({len(self.dataset)} training items in {config.dataset_params.root_dir}; raise "
                              f"num_repeats or lower batch_size)")
        # Persistent workers: restarting them each epoch costs about a second, a lot for short epochs (the
        # dataset's epoch lives in shared memory, so set_epoch() still reaches them). The loader's own
        # generator keeps it from drawing on the global RNG, which a resume restores.
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=train.num_workers,
            persistent_workers=train.num_workers > 0, pin_memory=device.type == "cuda",
            worker_init_fn=_quiet_worker, generator=torch.Generator().manual_seed(train.seed % 2 ** 63))

        # Where the run starts.
        self.step, self.start_epoch, self.start_batch = 0, 0, 0
        if resume:
            self.step = int(resume["step"])
            self.start_epoch, self.start_batch = _resume_position(
                resume, train.batch_size, self.sampler.batches_per_epoch, len(self.dataset), notes)
            notes.append(f"resumed from {resume['path']} (step {self.step}): continuing at epoch "
                         f"{self.start_epoch}, batch {self.start_batch}")
        elif init:
            notes.append(f"weights initialised from {init['path']} (step {init['step']}); new optimizer, epoch 0")

        # One Adam and one schedule per optimised network, saved as FOMM names them (optimizer_<network>).
        self.optimizers = {name: torch.optim.Adam(self.networks[name].parameters(), lr=train.learning_rate(name),
                                                  betas=tuple(train.betas)) for name in self.trainable.optimized()}
        self.schedulers = {name: torch.optim.lr_scheduler.MultiStepLR(optimizer, train.epoch_milestones, gamma=0.1)
                           for name, optimizer in self.optimizers.items()}
        self.scaler = torch.amp.GradScaler(device.type, enabled=train.mixed_precision == "fp16")
        if resume:
            saved_train = config_from_dict(resume["config"], f"{resume['path']}:config").train_params
            for name, optimizer in self.optimizers.items():
                if f"optimizer_{name}" not in resume or f"scheduler_{name}" not in resume:
                    raise CheckpointError(f"{resume['path']}: no optimizer_{name} / scheduler_{name} to resume")
                optimizer.load_state_dict(resume[f"optimizer_{name}"])
                self.schedulers[name].load_state_dict(resume[f"scheduler_{name}"])
                _apply_schedule_changes(saved_train, train, name, optimizer, self.schedulers[name], notes)
            if "grad_scaler" in resume and self.scaler.is_enabled():
                self.scaler.load_state_dict(resume["grad_scaler"])
            _set_rng_state(resume["rng"], device)
        if dist.enabled:
            self.trainable.distribute(lambda module: nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None))
        self.context = step_context(device, self.autocast_dtype, self.scaler)
        self.total_steps = train.num_epochs * self.sampler.batches_per_epoch
        if options.max_steps is not None:
            self.total_steps = min(self.total_steps, options.max_steps)

        # Run folder and logs (rank 0 only).
        self.run_dir = os.path.dirname(os.path.abspath(resume["path"])) if resume else None
        if dist.is_main:
            if self.run_dir is None:
                self.run_dir = run_log.make_run_dir(options.log_dir, options.config or "run")
            stale = run_log.remove_stale_temporaries(self.run_dir)
            self.log = run_log.RunLogger(self.run_dir, purge_step=self.step + 1 if resume else None)
            run_log.write_run_info(self.run_dir, config.to_dict(), argv=options.argv, seed=train.seed,
                                   extra={"device": str(device), "world_size": dist.world_size,
                                          "resumed_from": resume["path"] if resume else None})
            notes += [f"removed {path}: a checkpoint write that never finished" for path in stale]
            for message in [f"run folder {self.run_dir}"] + notes:
                self.log.note(message)
            if resume is None and init is None and options.checkpoint_with_kp is None and \
                    config.record.needs_pretrained_detector:
                # build_model has already warned on the terminal
                self.log.note("the keypoint detector has RANDOM weights (no --checkpoint_with_kp): masks carry "
                              "no learned structure", echo=False)

    # ------------------------------------------------------------------------------------------------------

    def save(self, epoch: int, batch: int, complete: bool) -> None:
        """Checkpoint (rank 0 writes; under DDP every rank first proves it holds the same weights)."""
        if self.dist.enabled:
            sums = [torch.zeros((), dtype=torch.float64) for _ in range(self.dist.world_size)]
            trained = nn.ModuleList([self.networks[name] for name in self.trainable.optimized()])
            torch_dist.all_gather(sums, _parameter_checksum(trained))
            if self.dist.is_main:
                same = all(s.item() == sums[0].item() for s in sums)
                self.log.note(f"DDP: parameters {'identical' if same else 'DIFFER'} on {self.dist.world_size} "
                              f"ranks (checksum {sums[0].item():.10g})", echo=not same)
        if not self.dist.is_main:
            return
        # FOMM's top-level keys (kp_detector, generator, [discriminator,] optimizer_*, epoch), then ours.
        state = {name: network.state_dict() for name, network in self.networks.items()}
        state |= {f"optimizer_{name}": optimizer.state_dict() for name, optimizer in self.optimizers.items()}
        state |= {f"scheduler_{name}": scheduler.state_dict() for name, scheduler in self.schedulers.items()}
        state |= {"epoch": epoch, "epoch_complete": complete, "batch": batch, "step": self.step,
                 "global_batch": self.train.batch_size, "dataset_size": len(self.dataset),
                 "world_size": self.dist.world_size, "seed": self.train.seed, "rng": _rng_state(self.device),
                 "config": self.config.to_dict()}
        if self.scaler.is_enabled():
            state["grad_scaler"] = self.scaler.state_dict()
        path = run_log.checkpoint_path(self.run_dir, epoch, interrupted=not complete)
        try:
            run_log.save_checkpoint(path, state)
        except OSError as error:
            raise CheckpointError(f"{path}: cannot write the checkpoint ({error.strerror or error}); the "
                                  f"previous checkpoints are intact") from None
        self.log.note(f"checkpoint {path} (epoch {epoch}, step {self.step})", echo=False)

    def train_step(self, batch: dict, stop_requested: bool) -> tuple[dict[str, float], bool, Any]:
        """One optimizer step -> (all-rank mean losses, whether any rank asked to stop, the columns to show)."""
        source = batch["source"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        driving = batch["driving"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        labels = None
        if self.trainable.label_params is not None:
            labels = KeypointLabels(*(batch[key].to(self.device, non_blocking=True) for key in LABEL_KEYS))
        step = self.trainable.training_step(source, driving, self.context, labels=labels)
        terms = [step.losses[name] for name in self.trainable.loss_names]
        # One small all-reduce: mean losses for the log, and every rank sees the same NaN or stop request
        # (a rank leaving alone would hang the others in their next collective).
        values = torch.cat([torch.stack([t.detach().float() for t in terms]).double().cpu(),
                            torch.tensor([float(stop_requested)], dtype=torch.float64)])
        if self.dist.enabled:
            torch_dist.all_reduce(values)
            values[:-1] /= self.dist.world_size
        losses = dict(zip(self.trainable.loss_names, values[:-1].tolist()))
        if not all(math.isfinite(v) for v in losses.values()):
            raise TrainingDiverged(
                f"step {self.step + 1}: loss is not finite ({', '.join(f'{k} {v:.4g}' for k, v in losses.items())}"
                f"); stopped without applying this step, the last checkpoint in {self.run_dir} is intact (lower "
                f"lr_generator, or train with mixed_precision: no)")
        for optimizer in self.optimizers.values():
            # A network can sit out a step (the perturbed-masks refinement before its start epoch); fp16's
            # GradScaler refuses to step an optimizer that recorded no gradients, and Adam would skip it anyway.
            if has_gradients(optimizer):
                self.scaler.step(optimizer)
        self.scaler.update()
        return losses, values[-1].item() > 0, step.shown

    def fit(self) -> str:
        train, epochs, log = self.train, self.train.num_epochs, self.log
        limit = self.options.max_steps
        if self.start_epoch >= epochs or (limit is not None and self.step >= limit):
            if log:
                log.note(f"nothing to train: the run is at epoch {self.start_epoch}, step {self.step} "
                         f"(num_epochs {epochs}, max_steps {limit}); raise train_params.num_epochs with --config")
            return self.run_dir
        self.progress = tqdm(total=self.total_steps, initial=self.step, disable=not self.dist.is_main,
                             dynamic_ncols=True, unit="step")
        start_batch, stopping = self.start_batch, False
        with StopRequest() as stop:
            for epoch in range(self.start_epoch, epochs):
                self.sampler.set_epoch(epoch, start_batch)
                self.dataset.set_epoch(epoch)          # shared memory: reaches the (persistent) workers too
                self.context.epoch = epoch
                batch_index, start_batch = start_batch, 0
                sums, batches, started, shown = dict.fromkeys(self.trainable.loss_names, 0.0), 0, time.time(), None
                # this epoch's (schedules step after it), of the first network optimised (FOMM: the generator)
                lr = self.optimizers[self.trainable.optimized()[0]].param_groups[0]["lr"]
                self.trainable.train()
                for batch in self.loader:
                    losses, stopping, tensors = self.train_step(batch, stop.requested)
                    self.step, batch_index, batches = self.step + 1, batch_index + 1, batches + 1
                    sums = {k: sums[k] + v for k, v in losses.items()}
                    if batch_index == self.sampler.batches_per_epoch:   # the epoch's last batch, for the picture
                        shown = [t[:4].detach() for t in tensors()]
                    if log:
                        self.progress.update(1)
                        self.progress.set_description(f"epoch {epoch + 1}/{epochs}")
                        self.progress.set_postfix({_short(k): f"{v:.3f}" for k, v in losses.items() if v},
                                                  refresh=False)
                        if self.step % train.log_freq == 0:
                            log.scalars(self.step, {f"loss/{k}": v for k, v in losses.items()}
                                        | {"loss/total": sum(losses.values()), "lr": lr})
                    stopping = stopping or (limit is not None and self.step >= limit)
                    if stopping:
                        break
                complete = batch_index >= self.sampler.batches_per_epoch
                if complete:
                    for scheduler in self.schedulers.values():
                        scheduler.step()
                    if log:
                        means = {k: v / max(batches, 1) for k, v in sums.items()}
                        log.epoch(epoch, self.step, means | {"total": sum(means.values())}, lr,
                                  time.time() - started, batches * train.batch_size)
                        if shown is not None:
                            log.images(epoch, self.step, run_log.training_grid(shown), self.trainable.shown_names)
                if stopping or (complete and ((epoch + 1) % train.checkpoint_freq == 0 or epoch + 1 == epochs)):
                    self.save(epoch, batch_index, complete)
                if stopping:
                    break
        self.progress.close()                          # before the last line, so it does not land mid-bar
        if log:
            log.note(f"stopped at step {self.step} (epoch {epoch}, batch {batch_index}); resume with --checkpoint "
                     f"{self.run_dir}" if stopping else f"finished {epochs} epochs, step {self.step}")
        return self.run_dir

    def close(self, error: Optional[BaseException] = None) -> None:
        """Flush and close the bar and the logs, also after an error (which goes into log.txt too)."""
        if self.progress is not None:
            self.progress.close()
        if self.log is not None:
            if error is not None:
                self.log.note(f"error: {error}" if isinstance(error, UserError) else
                              f"stopped by {type(error).__name__}: {error}", echo=False)
            self.log.close()
