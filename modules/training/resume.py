"""What a resumed run takes over from its checkpoint: the same networks, its RNG state, the position in
its epoch, and its optimizers' schedules (adjusted where ``--config`` changed train_params)."""
from __future__ import annotations

import bisect
from typing import Any, Optional

import torch

from modules.config.loading import config_from_dict
from modules.config.sections import Config
from modules.core.errors import ConfigError


def first_difference(a: Any, b: Any, prefix: str) -> Optional[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(key), b.get(key), f"{prefix}.{key}")
            if found:
                return found
        return None
    return None if a == b else f"{prefix} is {a!r} in the checkpoint, {b!r} in the config"


def check_same_model(checkpoint: dict, config: Config, flag: str) -> None:
    # Both sides resolved by the same schema: defaults the older file did not write compare equal.
    saved = config_from_dict(checkpoint["config"], f"{checkpoint['path']}:config").to_dict()
    difference = first_difference(saved["model_params"], config.to_dict()["model_params"], "model_params")
    if difference:
        raise ConfigError(f"{config.path}: {difference}: model_params differ from {flag} {checkpoint['path']} "
                          f"(the networks must be the same; only train_params may change)")


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_position(checkpoint: dict, global_batch: int, batches_per_epoch: int, dataset_size: int,
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


def apply_schedule_changes(before: Any, train: Any, name: str, optimizer: torch.optim.Optimizer,
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
