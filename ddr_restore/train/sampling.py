"""Resumable, reproducible training-data order.

Design (what makes ``--auto_resume`` continue exactly like an uninterrupted run):

* The order of epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)`` -- the same on every
  rank -- over the dataset repeated ``dataset_enlarge_ratio`` times, padded to a multiple of the world size and
  split between ranks (rank r takes positions r, r+W, ...).
* Each sample carries its own seed, derived from ``(seed, epoch, global position)``. :class:`SeededDataset`
  reseeds python ``random``, numpy and torch with it around the wrapped dataset's ``__getitem__`` (and restores
  the caller's RNG states afterwards), so random crops/flips depend neither on the number of workers, nor on the
  rank count, nor on where a run was resumed.
* The trainer stores ``(epoch, batches consumed in this epoch)`` in each training state; on resume the sampler
  starts at that epoch and skips the consumed positions.
"""
from __future__ import annotations

import random
import signal
from typing import Any, Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ddr_restore.errors import InputError

__all__ = ["ResumableSampler", "SeededDataset", "sample_seed", "ignore_sigint_in_worker"]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A well-mixed 32-bit seed for one sample (numpy SeedSequence over the three integers)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, position]).generate_state(1)[0])


class ResumableSampler(Sampler):
    """Yields ``(index, sample_seed)`` pairs for one rank; the order depends only on (seed, epoch).

    Args:
        dataset_len: number of items in the dataset.
        seed: the run's seed.
        rank, world_size: this process's share (positions rank, rank+world_size, ...).
        enlarge_ratio: repeat the dataset this many times per epoch (BasicSR's ``dataset_enlarge_ratio``).
        shuffle: random order (True) or dataset order.
    """

    def __init__(self, dataset_len: int, seed: int, rank: int = 0, world_size: int = 1, enlarge_ratio: int = 1,
                 shuffle: bool = True) -> None:
        if dataset_len <= 0:
            raise InputError("datasets.train: the training dataset is empty")
        self.dataset_len = dataset_len
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.enlarge_ratio = max(1, int(enlarge_ratio))
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0  # positions of this rank's share to skip (resume inside an epoch)
        total = dataset_len * self.enlarge_ratio
        self.num_samples = -(-total // world_size)  # ceil: every rank gets the same count

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch to iterate, skipping the first ``start`` samples of this rank's share."""
        self.epoch = int(epoch)
        self.start = int(start)

    def __len__(self) -> int:
        return self.num_samples - self.start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        total = self.dataset_len * self.enlarge_ratio
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(total, generator=g).tolist()
        else:
            order = list(range(total))
        order += order[: self.num_samples * self.world_size - total]  # pad so every rank has num_samples
        for pos in range(self.rank + self.start * self.world_size, len(order), self.world_size):
            yield order[pos] % self.dataset_len, sample_seed(self.seed, self.epoch, pos)


class SeededDataset(Dataset):
    """Wraps a map-style dataset so that ``ds[(index, seed)]`` runs ``inner[index]`` under a fixed RNG seed."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, (tuple, list)):
            return self.inner[key]
        index, seed = key
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)  # CPU generator only: CUDA RNG stays untouched
            return self.inner[index]
        finally:
            # In the main process (num_workers=0) the training RNG must not be disturbed by data loading.
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


def ignore_sigint_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore Ctrl-C (SIGINT reaches the whole foreground process group).

    The main process stops at the end of the current iteration and saves a checkpoint; a worker that died on the
    same Ctrl-C would make that iteration fail instead. The workers are shut down by the loader afterwards.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
