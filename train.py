"""Training: ``python run.py --config CONFIG --mode train [--checkpoint_with_kp FOMM_CKPT] [--log_dir DIR]``.

One loop for every model family (modules/config/family.py): the family says which networks are saved and which get
an Adam optimizer (LR x0.1 at ``epoch_milestones``) and computes one step's losses and backward passes; the
loop does the rest. Keypoint mask (paper sec. 2.4): the two generators train, the detector is frozen. FOMM
(stage one): generator, detector and discriminator, each with its own optimizer. What it adds to FOMM's:

- exact resume (modules/training/resume.py): a checkpoint holds weights, optimizers, schedules, RNG, the position in
  the epoch and the config; data order and augmentation are functions of (seed, epoch, index), so a resumed
  run gives the parameters an uninterrupted run gives, bit for bit on CPU;
- atomic checkpoints (modules/core/files.py), Ctrl-C / SIGTERM save and exit 0 (modules/training/stopping.py), a NaN
  loss stops with the step named and the last checkpoint intact;
- autocast (bf16, or fp16 with a gradient scaler on GPU), channels_last, and DDP through ``torchrun``
  (modules/training/distributed.py; SyncBatchNorm on GPUs, on CPU each rank normalises its own part of the batch).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

import logger as run_log
from modules.config.family import KeypointLabels, StepContext, Trainable
from modules.config.formats import checkpoint_path, load_training_checkpoint, save_checkpoint, training_checkpoint
from modules.config.loading import config_from_dict, load_config, resolve_data_paths
from modules.config.sections import Config
from modules.core.errors import CheckpointError, ConfigError, TrainingDiverged, UserError
from modules.core.precision import autocast, autocast_dtype
from modules.data.training_loader import SampleFaults, stop_workers, training_loader
from modules.families.build import build_model, build_trainable, model_from_checkpoint
from modules.training.distributed import Distributed, EpochBatchSampler, init_distributed, parameter_checksum
from modules.training.resume import apply_schedule_changes, check_same_model, resume_position, rng_state, set_rng_state
from modules.training.stopping import StopRequest, quiet_worker

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


# ----------------------------------------------------------------------------------------------------------
# Setting up: config, checkpoints, model

def _resolve_config(options: TrainOptions, resume: Optional[dict], init: Optional[dict]) -> Config:
    if options.config:
        config = load_config(options.config)
    elif resume:
        config = config_from_dict(resume["config"], f"{resume['path']}:config")
    else:
        raise UserError("--mode train needs --config (or --checkpoint to resume a run)")
    for checkpoint, flag in ((resume, "--checkpoint"), (init, "--init_checkpoint")):
        if checkpoint and options.config:
            check_same_model(checkpoint, config, flag)
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


def has_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether any parameter of ``optimizer`` received a gradient in this step."""
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


class Trainer:
    """One training run: set up from options (new, resumed or fine-tuned), then ``fit()``."""

    def __init__(self, options: TrainOptions, dist: Distributed, device: torch.device):
        self.options, self.dist, self.device = options, dist, device
        self.log: Optional[run_log.RunLogger] = None
        self.progress: Optional[tqdm] = None
        self.notes: list[str] = []             # what log.txt says about this start, once the run folder exists
        resume = load_training_checkpoint(options.checkpoint) if options.checkpoint else None
        init = load_training_checkpoint(options.init_checkpoint) if options.init_checkpoint else None
        self.config = _resolve_config(options, resume, init)
        self.train = self.config.train_params
        self.autocast_dtype = autocast_dtype(self.train.mixed_precision, device)
        self._check_options(resume, init)
        # Networks and loss first: a wrong checkpoint or VGG path fails before a dataset is scanned.
        self._setup_model(resume or init)
        self._setup_data()
        self._setup_position(resume, init)
        self._setup_optimizers(resume)
        self._distribute()
        self.context = step_context(device, self.autocast_dtype, self.scaler)
        self.total_steps = self.train.num_epochs * self.sampler.batches_per_epoch
        if options.max_steps is not None:
            self.total_steps = min(self.total_steps, options.max_steps)
        self.run_dir = os.path.dirname(os.path.abspath(resume["path"])) if resume else None
        if dist.is_main:
            self._open_run_folder(resume, init)

    def _check_options(self, resume: Optional[dict], init: Optional[dict]) -> None:
        """Refuse a batch that does not divide among the processes; note the flags a checkpoint overrides."""
        options, train = self.options, self.train
        if train.batch_size % self.dist.world_size:
            raise ConfigError(f"{self.config.path}: train_params.batch_size {train.batch_size} is the global batch "
                              f"and must divide among {self.dist.world_size} processes")
        ignored = [(resume, options.seed is not None and options.seed != train.seed, "--seed",
                    "a resumed run keeps its seed"),
                   (resume, options.checkpoint_with_kp, "--checkpoint_with_kp", "the checkpoint holds its detector"),
                   (init, options.checkpoint_with_kp, "--checkpoint_with_kp", "the checkpoint holds its detector")]
        self.notes += [f"{flag} ignored: {why}" for checkpoint, given, flag, why in ignored if checkpoint and given]

    def _setup_model(self, weights: Optional[dict]) -> None:
        """The family's networks (new, or with a checkpoint's weights) and its trainable (losses, steps)."""
        options, train = self.options, self.train
        torch.manual_seed(train.seed)
        share = dict(device=self.device, batch=max(1, train.batch_size // self.dist.world_size))  # memory check
        self.model = build_model(self.config, checkpoint_with_kp=options.checkpoint_with_kp, **share) \
            if weights is None else model_from_checkpoint(self.config, weights, weights["path"], training=True, **share)
        self.trainable: Trainable = build_trainable(
            self.config, self.model, vgg_weights=options.vgg_weights,
            vgg_source="--vgg_weights" if options.vgg_weights else "train_params.vgg_weights")
        self.networks = self.trainable.networks()
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        self.trainable.to(self.device, memory_format=self.memory_format)
        if self.dist.enabled and self.device.type == "cuda":
            for name in self.trainable.optimized():      # converted in place (a network is never a BN itself)
                nn.SyncBatchNorm.convert_sync_batchnorm(self.networks[name])
        elif self.dist.enabled:
            self.notes.append(f"DDP on CPU ({self.dist.world_size} processes, gloo): SyncBatchNorm needs GPUs, so "
                              f"each rank's BatchNorm normalises its own {train.batch_size // self.dist.world_size} "
                              f"samples; running statistics are rank 0's")

    def _setup_data(self) -> None:
        """Dataset, sampler and loader: every random choice is a function of (seed, epoch, index), so workers
        and ranks agree and a resume draws what an uninterrupted run draws; an unreadable sample is skipped."""
        from modules.data.dataset import DatasetRepeater, FramesDataset

        config, train = self.config, self.train
        dataset = FramesDataset.from_config(config.dataset_params, is_train=True, random_seed=train.seed,
                                            labels=self.trainable.label_params)
        self.notes += dataset.notes
        self.dataset = DatasetRepeater(dataset, train.num_repeats) if train.num_repeats > 1 else dataset
        self.sampler = EpochBatchSampler(len(self.dataset), train.batch_size // self.dist.world_size, train.seed,
                                         self.dist)
        if self.sampler.batches_per_epoch == 0:
            raise ConfigError(f"{config.path}: train_params.batch_size {train.batch_size} is larger than an epoch "
                              f"({len(self.dataset)} training items in {config.dataset_params.root_dir}; raise "
                              f"num_repeats or lower batch_size)")
        self.loader = training_loader(self.dataset, self.sampler, seed=train.seed, num_workers=train.num_workers,
                                      pin_memory=self.device.type == "cuda", worker_init_fn=quiet_worker)
        self.faults = SampleFaults(dataset.folder)

    def _setup_position(self, resume: Optional[dict], init: Optional[dict]) -> None:
        """Where the run starts: step 0, or the resumed checkpoint's step, epoch and batch."""
        self.step, self.start_epoch, self.start_batch = 0, 0, 0
        if resume:
            self.step = int(resume["step"])
            self.start_epoch, self.start_batch = resume_position(
                resume, self.train.batch_size, self.sampler.batches_per_epoch, len(self.dataset), self.notes)
            self.notes.append(f"resumed from {resume['path']} (step {self.step}): continuing at epoch "
                              f"{self.start_epoch}, batch {self.start_batch}")
        elif init:
            self.notes.append(f"weights initialised from {init['path']} (step {init['step']}); new optimizer, "
                              f"epoch 0")

    def _setup_optimizers(self, resume: Optional[dict]) -> None:
        """One Adam and one schedule per optimised network, saved as FOMM names them (optimizer_<network>);
        a resume restores them, the grad scaler and the RNG."""
        train = self.train
        self.optimizers = {name: torch.optim.Adam(self.networks[name].parameters(), lr=train.learning_rate(name),
                                                  betas=tuple(train.betas)) for name in self.trainable.optimized()}
        self.schedulers = {name: torch.optim.lr_scheduler.MultiStepLR(optimizer, train.epoch_milestones, gamma=0.1)
                           for name, optimizer in self.optimizers.items()}
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train.mixed_precision == "fp16")
        if not resume:
            return
        saved_train = config_from_dict(resume["config"], f"{resume['path']}:config").train_params
        for name, optimizer in self.optimizers.items():
            if f"optimizer_{name}" not in resume or f"scheduler_{name}" not in resume:
                raise CheckpointError(f"{resume['path']}: no optimizer_{name} / scheduler_{name} to resume")
            optimizer.load_state_dict(resume[f"optimizer_{name}"])
            self.schedulers[name].load_state_dict(resume[f"scheduler_{name}"])
            apply_schedule_changes(saved_train, train, name, optimizer, self.schedulers[name], self.notes)
        if "grad_scaler" in resume and self.scaler.is_enabled():
            self.scaler.load_state_dict(resume["grad_scaler"])
        set_rng_state(resume["rng"], self.device)

    def _distribute(self) -> None:
        """Wrap the family's optimised part in DDP (one process: nothing to do)."""
        if self.dist.enabled:
            device = self.device
            self.trainable.distribute(lambda module: nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None))

    def _open_run_folder(self, resume: Optional[dict], init: Optional[dict]) -> None:
        """Rank 0: the run folder (new, or the resumed one), its log, run.json and the notes so far."""
        options, config = self.options, self.config
        if self.run_dir is None:
            self.run_dir = run_log.make_run_dir(options.log_dir, options.config or "run")
        stale = run_log.remove_stale_temporaries(self.run_dir)
        self.log = run_log.RunLogger(self.run_dir, purge_step=self.step + 1 if resume else None)
        run_log.write_run_info(self.run_dir, config.to_dict(), argv=options.argv, seed=self.train.seed,
                               extra={"device": str(self.device), "world_size": self.dist.world_size,
                                      "resumed_from": resume["path"] if resume else None})
        self.notes += [f"removed {path}: a checkpoint write that never finished" for path in stale]
        for message in [f"run folder {self.run_dir}"] + self.notes:
            self.log.note(message)
        if resume is None and init is None and options.checkpoint_with_kp is None and \
                config.record.needs_pretrained_detector:
            self.log.note("the keypoint detector has RANDOM weights (no --checkpoint_with_kp): masks carry "
                          "no learned structure", echo=False)          # build_model warned on the terminal

    # ------------------------------------------------------------------------------------------------------

    def save(self, epoch: int, batch: int, complete: bool) -> None:
        """Checkpoint (rank 0 writes; under DDP every rank first proves it holds the same weights)."""
        if self.dist.enabled:
            sums = [torch.zeros((), dtype=torch.float64) for _ in range(self.dist.world_size)]
            trained = nn.ModuleList([self.networks[name] for name in self.trainable.optimized()])
            torch_dist.all_gather(sums, parameter_checksum(trained))
            if self.dist.is_main:
                same = all(s.item() == sums[0].item() for s in sums)
                self.log.note(f"DDP: parameters {'identical' if same else 'DIFFER'} on {self.dist.world_size} "
                              f"ranks (checksum {sums[0].item():.10g})", echo=not same)
        if not self.dist.is_main:
            return
        state = training_checkpoint(
            self.networks, self.optimizers, self.schedulers, self.scaler if self.scaler.is_enabled() else None,
            epoch=epoch, epoch_complete=complete, batch=batch, step=self.step, global_batch=self.train.batch_size,
            dataset_size=len(self.dataset), world_size=self.dist.world_size, seed=self.train.seed,
            rng=rng_state(self.device), config=self.config.to_dict())
        path = checkpoint_path(self.run_dir, epoch, interrupted=not complete)
        with run_log.writing(path):            # a full disk: one line; the previous checkpoints are intact
            save_checkpoint(path, state)
        self.log.note(f"checkpoint {path} (epoch {epoch}, step {self.step})", echo=False)

    def train_step(self, batch: dict, stop_requested: bool) -> tuple[dict[str, float], bool, Any]:
        """One optimizer step -> (all-rank mean losses, whether any rank asked to stop, the columns to show)."""
        source = batch["source"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        driving = batch["driving"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        labels = None if self.trainable.label_params is None else KeypointLabels.from_batch(batch, self.device)
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
        """Train from the start position to num_epochs (or max_steps, or a stop request); returns the run folder."""
        epochs, limit = self.train.num_epochs, self.options.max_steps
        if self.start_epoch >= epochs or (limit is not None and self.step >= limit):
            if self.log:
                self.log.note(f"nothing to train: the run is at epoch {self.start_epoch}, step {self.step} "
                              f"(num_epochs {epochs}, max_steps {limit}); raise train_params.num_epochs with --config")
            return self.run_dir
        self.progress = tqdm(total=self.total_steps, initial=self.step, disable=not self.dist.is_main,
                             dynamic_ncols=True, unit="step")
        start_batch = self.start_batch
        with StopRequest() as stop:
            for epoch in range(self.start_epoch, epochs):
                batch_index, stopping = self.train_epoch(epoch, start_batch, stop)
                start_batch = 0
                complete = batch_index >= self.sampler.batches_per_epoch
                if stopping or (complete and ((epoch + 1) % self.train.checkpoint_freq == 0 or epoch + 1 == epochs)):
                    self.save(epoch, batch_index, complete)
                if stopping:
                    break
        self.progress.close()                          # before the last line, so it does not land mid-bar
        if self.log:
            self.log.note(f"stopped at step {self.step} (epoch {epoch}, batch {batch_index}); resume with "
                          f"--checkpoint {self.run_dir}" if stopping else f"finished {epochs} epochs, step {self.step}")
        return self.run_dir

    def train_epoch(self, epoch: int, batch_index: int, stop: StopRequest) -> tuple[int, bool]:
        """Epoch ``epoch`` from batch ``batch_index`` on -> (the batch it ended at, whether to stop); a complete
        epoch steps the schedules and logs its means and picture."""
        self.sampler.set_epoch(epoch, batch_index)
        self.dataset.set_epoch(epoch)          # shared memory: reaches the (persistent) workers too
        self.context.epoch = epoch
        sums, batches, started, shown = dict.fromkeys(self.trainable.loss_names, 0.0), 0, time.time(), None
        # this epoch's (schedules step after it), of the first network optimised (FOMM: the generator)
        lr = self.optimizers[self.trainable.optimized()[0]].param_groups[0]["lr"]
        limit, stopping, log = self.options.max_steps, False, self.log
        self.trainable.train()
        for batch in self.loader:
            for warning in self.faults.check(batch):     # warned on the terminal; log.txt keeps them too
                if log:
                    log.note(warning, echo=False)
            losses, stopping, tensors = self.train_step(batch, stop.requested)
            self.step, batch_index, batches = self.step + 1, batch_index + 1, batches + 1
            sums = {k: sums[k] + v for k, v in losses.items()}
            if batch_index == self.sampler.batches_per_epoch:   # the epoch's last batch, for the picture
                shown = tensors()
            if log:
                self.progress.update(1)
                # counted from 0, as log.txt and the checkpoint names count it (FOMM's convention)
                self.progress.set_description(f"epoch {epoch} [0..{self.train.num_epochs - 1}]")
                self.progress.set_postfix({run_log.short_loss_name(k): f"{v:.3f}" for k, v in losses.items() if v},
                                          refresh=False)
                if self.step % self.train.log_freq == 0:
                    log.scalars(self.step, {f"loss/{k}": v for k, v in losses.items()}
                                | {"loss/total": sum(losses.values()), "lr": lr})
            stopping = stopping or (limit is not None and self.step >= limit)
            if stopping:
                break
        if batch_index >= self.sampler.batches_per_epoch:
            for scheduler in self.schedulers.values():
                scheduler.step()
            if log:
                means = {k: v / max(batches, 1) for k, v in sums.items()}
                log.epoch(epoch, self.step, means | {"total": sum(means.values())}, lr, time.time() - started,
                          batches * self.train.batch_size)
                if shown is not None:
                    log.images(epoch, self.step, shown)
        return batch_index, stopping

    def close(self, error: Optional[BaseException] = None) -> None:
        """Stop the data workers, close the bar and the logs, also after an error (which log.txt notes)."""
        stop_workers(self.loader)                # they ignore signals: left running, they hang the exit
        if self.progress is not None:
            self.progress.close()
        if self.log is not None:
            self.log.close(error)
