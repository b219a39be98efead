"""The resumable data order and the loss history: the parts of a run's position that are not weights."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Sampler

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
