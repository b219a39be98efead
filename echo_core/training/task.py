"""What the one trainer asks of a model: a small task object (`TrainTask`) and the settings it reads.

The trainer (`trainer.train`) owns everything generic: accelerate, mixed precision, gradient accumulation
and clipping, EMA, checkpoints and exact resume, the data order, per-rank RNG, tracking and previews. A task
says only what is particular to its model: how to build it, the training data, the loss of one micro-batch,
an optional preview, and how to export the inference folder. Nothing here assumes video, diffusion or
conditioning: an image diffusion model, a re-identification net or a regressor is one more task.

Optional hooks, with defaults that are the plain case: `data_order` (the resumable sampler),
`prepare_extras` + `extra_step` (modules with their own optimizer, e.g. a GAN's discriminator),
`checkpoint_dir` / `trajectory_hash` (where checkpoints live and what `--resume latest` must match),
`log_start` and `finish` (what rank 0 logs first, and does before the final export).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from echo_core.config import StrictModel
from echo_core.tracking import Tracker
from echo_core.training.checkpoint import CheckpointConfig, trajectory_hash
from echo_core.training.data_order import DataOrder, LoaderOrder
from echo_core.training.ema import EmaConfig
from echo_core.training.optim import OptimConfig


class LoopConfig(Protocol):
    """The settings the trainer reads from a task's (pydantic) config. Its JSON dump, less
    `optim.max_steps`, is the trajectory that `--resume latest` must match (`checkpoint.trajectory_hash`)."""

    optim: OptimConfig
    ema: EmaConfig | None  # None: no EMA; previews and exports use the training weights
    checkpoint: CheckpointConfig
    seed: int  # the initial weights, the data order and the per-rank generators derive from it
    deterministic: bool  # torch deterministic algorithms + no DataLoader workers
    num_workers: int
    log_every: int

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]: ...


class LoopSettings(StrictModel):
    """The `LoopConfig` fields with their defaults, for a task's config to inherit (LVDM, LIDM, re-id): one
    definition of how the trainer is driven; a task overrides only what differs (e.g. `ema: None`)."""

    optim: OptimConfig = Field(default_factory=OptimConfig)
    ema: EmaConfig | None = Field(default_factory=EmaConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms + no DataLoader workers
    num_workers: int = Field(2, ge=0)
    log_every: int = Field(10, ge=1)


class TrainTask(abc.ABC):
    """One trainable model. Dataset items are mappings of tensors (collated into one mapping per batch)."""

    name: str = "model"  # progress label
    export_dir: str = "model"  # the final inference folder, under the run's output folder
    items_name: str = "items"  # throughput metric: train/<items_name>_per_s
    preview_every: int | None = None  # optimizer steps between previews; None: no previews
    # True: `loss` draws from torch's global RNG as seeded for the weights (accelerate's save_state saves
    # it), gets `generator=None`, and the trainer does not reseed the global RNGs per rank.
    uses_global_rng: bool = False

    def __init__(self, config: LoopConfig):
        self.config = config

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model (the trainer seeds torch with `config.seed` first, so all ranks start equal)."""

    @abc.abstractmethod
    def train_dataset(self) -> Dataset:
        """The training items; an optional `set_epoch(epoch)` is called before each epoch."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
        """Scalar loss of one micro-batch. `model` is the prepared (possibly DDP-wrapped) model: call it, so
        gradients synchronise; draw all randomness from `generator` (this rank's, saved in checkpoints)."""

    @abc.abstractmethod
    def export(self, model: nn.Module, folder: Path, dtype: torch.dtype, step: int) -> Path:
        """Write the inference folder of `model` (the EMA weights are swapped in) with weights in `dtype`."""

    def preview(self, model: nn.Module, step: int, out_dir: Path, tracker: Tracker) -> None:  # noqa: B027
        """Rank 0, every `preview_every` steps, EMA weights in eval mode: render and log a preview."""

    def params(self) -> dict[str, Any]:
        """What rank 0 logs once as the run's parameters."""
        return {self.name: self.config.model_dump(mode="json")}

    def log_start(self, tracker: Tracker, step: int, world_size: int) -> None:
        """Rank 0, when the run starts (step 0) or resumes at `step`."""
        tracker.log_params(self.params())
        tracker.set_tags({"world_size": str(world_size), "resumed_from_step": str(step)})

    def data_order(self, dataset: Dataset, *, rank: int, world_size: int) -> DataOrder:
        """This rank's batches of `dataset` and their resumable position."""
        return LoaderOrder(dataset, self.config, rank=rank, world_size=world_size)

    def prepare_extras(self, model: nn.Module, accelerator: Any) -> None:  # noqa: B027
        """Build what trains beside `model` with its own optimizer (a GAN's discriminator) and pass it
        through `accelerator.prepare`, so `save_state` checkpoints it. Called right after `model` is built
        from the seeded RNG."""

    def extra_step(self, step: int) -> dict[str, float]:
        """After the model's optimizer step `step` (0-based): step the extras; return the task's metrics."""
        return {}

    def checkpoint_dir(self, out_dir: Path) -> Path:
        return out_dir / "checkpoints"

    def trajectory_hash(self) -> str | None:
        """Recorded in each checkpoint; `--resume latest` continues only a checkpoint with the same.
        None: the task keys `checkpoint_dir` by its trajectory instead, so no check is needed."""
        return trajectory_hash(self.config)

    def finish(self, model: nn.Module, out_dir: Path, step: int, tracker: Tracker) -> None:  # noqa: B027
        """Rank 0, after the last step, with the final weights swapped in, before the final export."""


@dataclass(frozen=True)
class TrainResult:
    folder: Path  # the final EMA inference folder (written by the main process)
    step: int
    world_size: int
    is_main: bool
