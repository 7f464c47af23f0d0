"""The process group and the data order of distributed training (DDP through ``torchrun``).

The loop (train.py) asks three things of it: which rank this process is, which indices its batches hold (the
same global batches whatever the number of processes), and whether every rank holds the same weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn


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


def parameter_checksum(module: nn.Module) -> torch.Tensor:
    """One float64 number per module: equal on two ranks when their parameters are (for the DDP check)."""
    return torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().cpu()
