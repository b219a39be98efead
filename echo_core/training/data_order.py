"""The data order and the loss history: the parts of a run's position that are not weights.

A task picks its data order (`TrainTask.data_order`); the default is `LoaderOrder`, a DataLoader over the
resumable sampler below. Any order gives the trainer the next micro-batch and its own resumable state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from echo_core.errors import DataError

HISTORY_WINDOW = 20  # losses/LRs kept from the first and the most recent steps (summary + resume)


class ResumableSampler(Sampler[int]):
    """Per-epoch permutation seeded by (seed, epoch), sharded over ranks, resumable mid-epoch.

    Every rank consumes the same number of batches per epoch (the tail that does not fill a global batch
    is dropped), so the state (epoch, batches consumed) is the same on all ranks. The training loop calls
    `advance()` per consumed batch; prefetching workers never move the recorded position.
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = size // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise DataError(f"{size} training items cannot fill one global batch of {batch_size} × "
                            f"{world_size} processes", fix="lower optim.batch_size (per process) or add data")
        self.epoch, self.batch = 0, 0

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's item indices for `epoch`, in consumption order."""
        used = self.batches_per_epoch * self.batch_size * self.world_size
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)[:used]
        return order[self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch)[self.batch * self.batch_size:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.batch) * self.batch_size

    def advance(self) -> None:
        self.batch += 1

    def next_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class DataOrder(Protocol):
    """Where a run's batches come from, and its resumable position (saved in each checkpoint)."""

    epoch: int

    def next_batch(self, step: int) -> Mapping[str, Any]:
        """The next micro-batch of optimizer step `step` (0-based)."""

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: Mapping[str, int]) -> None: ...


class LoaderOrder:
    """A DataLoader over this rank's `ResumableSampler` shard; moves to the next epoch (and its per-item
    randomness, via the dataset's optional `set_epoch`) when one ends."""

    def __init__(self, dataset: Dataset, cfg: Any, *, rank: int, world_size: int):
        self.dataset = dataset
        self.sampler = ResumableSampler(len(dataset), cfg.optim.batch_size, seed=cfg.seed, rank=rank,
                                        world_size=world_size)
        self.loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=self.sampler, drop_last=True,
                                 num_workers=0 if cfg.deterministic else cfg.num_workers,
                                 generator=torch.Generator().manual_seed(cfg.seed))
        self._batches: Iterator | None = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def next_batch(self, step: int) -> Mapping[str, Any]:
        while True:
            if self._batches is None:
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.sampler.epoch)
                self._batches = iter(self.loader)
            try:
                batch = next(self._batches)
            except StopIteration:
                self.sampler.next_epoch()
                self._batches = None
                continue
            self.sampler.advance()
            return batch

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.sampler.load_state_dict(state)


@dataclass
class History:
    """Losses/LRs of the first and the latest steps (for the run summary and the loss-went-down check)."""

    first_loss: list[float] = field(default_factory=list)
    first_lr: list[float] = field(default_factory=list)
    last_loss: list[float] = field(default_factory=list)

    def add(self, loss: float, lr: float) -> None:
        if len(self.first_loss) < HISTORY_WINDOW:
            self.first_loss.append(loss)
            self.first_lr.append(lr)
        self.last_loss = [*self.last_loss, loss][-HISTORY_WINDOW:]
