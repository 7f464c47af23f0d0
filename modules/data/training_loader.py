"""The training DataLoader: a sample that cannot be read is skipped and named once, and its workers always stop.

Bad samples. A truncated PNG/JPG in a frame folder or a corrupt .mp4 shows only when its frames are decoded
(frame folders are only listed when the dataset is scanned). Such a sample is SKIPPED, not fatal: another item,
drawn from (seed, epoch, index, attempt), takes its place, so batches stay full and a resumed run still draws
what an uninterrupted one draws. The main process (not the workers, which each see a part of the data) warns
once per bad file, naming it, and STOPS with one line when the data look broken rather than damaged: when one
item and its ``MAX_ATTEMPTS - 1`` substitutes all fail (a batch cannot be filled), or when more than
``MAX_FAILED_FRACTION`` of the draws failed once ``MIN_DRAWS`` were made. Why skip: one bad frame among
thousands costs one sample, while stopping would cost a run of hours; why a limit: a dataset that is mostly
unreadable would otherwise train on its few readable videos without a word.

Workers. A worker ignores SIGINT and SIGTERM (the main process decides when to stop), so Python's exit-time
``terminate()`` cannot end one: after an error the main process would wait on it for ever. ``stop_workers``
shuts them down explicitly (and kills one that does not leave), whatever ended training.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from modules.core.errors import UserError
from modules.data.dataset import DatasetWarning
from modules.data.video_io import VideoError

MAX_ATTEMPTS = 8              # draws of one item (the first and its substitutes) before its batch is unfillable
MAX_FAILED_FRACTION = 0.5     # more failed draws than this, of all draws so far, stops training ...
MIN_DRAWS = 64                # ... once this many were made (a few unlucky draws early on say little)
WORKER_EXIT_S = 5.0           # how long a worker may take to leave before it is killed

SKIPPED = "skipped"           # item and batch key: [(path, problem)] of the draws that failed
UNFILLED = "unfilled"         # item and batch key: no draw of an item succeeded


class SkippingDataset(Dataset):
    """A training dataset (``sample(index, rng)``, ``epoch``) whose items never raise a VideoError: a failed draw
    is replaced by a substitute and reported in the item's ``SKIPPED`` list."""

    def __init__(self, dataset: Any, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        failures: list[tuple[str, str]] = []
        for attempt in range(MAX_ATTEMPTS):
            try:
                item = self.dataset[index] if attempt == 0 else self._substitute(index, attempt)
            except VideoError as error:
                failures.append((error.path, error.problem))
                continue
            item[SKIPPED] = failures
            return item
        return {SKIPPED: failures, UNFILLED: True}

    def _substitute(self, index: int, attempt: int) -> dict:
        # A seed of four entries: never the generator of a regular item (three entries), and the same in every
        # worker and resumed run.
        rng = np.random.default_rng([self.seed % 2 ** 64, self.dataset.epoch, int(index), attempt])
        return self.dataset.sample(int(rng.integers(len(self.dataset))), rng)


def collate_skipping(items: list[dict]) -> dict:
    """default_collate of the items, with the failed draws of all of them as one ``SKIPPED`` list (and only that
    and ``UNFILLED`` when an item could not be filled)."""
    skipped = [failure for item in items for failure in item.pop(SKIPPED)]
    if any(item.get(UNFILLED) for item in items):
        return {SKIPPED: skipped, UNFILLED: True}
    batch = default_collate(items)
    batch[SKIPPED] = skipped
    return batch


def training_loader(dataset: Any, batch_sampler: Any, *, seed: int, num_workers: int, pin_memory: bool,
                    worker_init_fn: Optional[Callable[[int], None]] = None) -> DataLoader:
    """The training DataLoader over ``SkippingDataset(dataset)``; pop each batch's report with
    ``SampleFaults.check``.

    Persistent workers: restarting them each epoch costs about a second, a lot for short epochs (the
    dataset's epoch lives in shared memory, so set_epoch() still reaches them). The loader's own generator
    keeps it from drawing on the global RNG, which a resume restores."""
    return DataLoader(SkippingDataset(dataset, seed), batch_sampler=batch_sampler, num_workers=num_workers,
                      persistent_workers=num_workers > 0, pin_memory=pin_memory, worker_init_fn=worker_init_fn,
                      collate_fn=collate_skipping, generator=torch.Generator().manual_seed(seed % 2 ** 63))


class SampleFaults:
    """The main process's account of failed draws: one DatasetWarning per bad file, a UserError when the data
    look broken (see the module docstring)."""

    def __init__(self, folder: str):
        self.folder = folder                  # named in the errors: where to look
        self.drawn = 0
        self.failed = 0
        self.named: dict[str, str] = {}       # bad file -> its first problem

    def check(self, batch: dict) -> list[str]:
        """Pop ``batch``'s report; warn for each file not named before and return those warnings (for the run's
        log); raise a UserError if the batch is unfilled or too many draws failed."""
        failures: Sequence[tuple[str, str]] = batch.pop(SKIPPED, [])
        if batch.get(UNFILLED):
            path, problem = failures[-1]
            raise UserError(f"{path}: {problem}; {MAX_ATTEMPTS} draws in a row of one training sample failed, a "
                            f"batch cannot be filled: the training data in {self.folder} look broken, stopped")
        self.failed += len(failures)
        self.drawn += len(failures) + len(batch["source"])
        new = []
        for path, problem in failures:
            if path not in self.named:
                self.named[path] = problem
                new.append(self._warn(path, problem))
        if self.drawn >= MIN_DRAWS and self.failed > MAX_FAILED_FRACTION * self.drawn:
            first, problem = next(iter(self.named.items()))
            raise UserError(f"{first}: {problem}; {self.failed} of {self.drawn} training samples could not be "
                            f"read ({len(self.named)} bad files, this is the first): the training data in "
                            f"{self.folder} look broken, stopped")
        return new

    @staticmethod
    def _warn(path: str, problem: str) -> str:
        message = f"{path}: {problem}; training sample skipped, another drawn in its place (this file is not " \
                  f"named again)"
        with tqdm.external_write_mode(file=sys.stderr):     # on a line of its own, not after a progress bar
            warnings.warn(message, DatasetWarning, stacklevel=3)
        return message


def stop_workers(loader: DataLoader) -> None:
    """End the worker processes of ``loader`` now (a no-op without workers, or when they are gone already)."""
    iterator = getattr(loader, "_iterator", None)           # persistent workers live in the loader's iterator
    workers = list(getattr(iterator, "_workers", ()))
    shut_down = getattr(iterator, "_shutdown_workers", None)
    if shut_down is not None:
        shut_down()              # tells each worker to leave and waits a moment; its terminate() is ignored
    for worker in workers:
        worker.join(WORKER_EXIT_S if worker.is_alive() else 0)
        if worker.is_alive():    # stuck in a decode: the only signal it does not ignore
            worker.kill()
            worker.join(WORKER_EXIT_S)
    loader._iterator = None
