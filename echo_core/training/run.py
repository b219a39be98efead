"""One training run's state, built once from a task: accelerator, model, EMA, optimizer, data, generator.

`build_run` + `trainer.optimizer_step` are public so benchmarks can time the real training step.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from echo_core.training.data_order import History, ResumableSampler
from echo_core.training.ema import EMA
from echo_core.training.optim import build_optimizer, build_scheduler
from echo_core.training.task import LoopConfig, TrainTask


@dataclass
class TrainingRun:
    """Everything one training run holds; built once by `build_run`."""

    task: TrainTask
    accelerator: Any
    net: nn.Module  # prepared (DDP-wrapped when distributed)
    ema: EMA
    optimizer: Any
    scheduler: torch.optim.lr_scheduler.LambdaLR
    dataset: Dataset
    sampler: ResumableSampler
    loader: DataLoader
    generator: torch.Generator  # all of the task's training randomness (per rank)
    history: History = field(default_factory=History)
    step: int = 0
    _batches: Iterator | None = None

    @property
    def cfg(self) -> LoopConfig:
        return self.task.config

    @property
    def module(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.net)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def next_batch(self) -> dict[str, Any]:
        """The next micro-batch, moving to the next epoch (and its per-item randomness) when one ends."""
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

    def export_ema(self, folder: Path, dtype: torch.dtype) -> Path:
        """The task's inference folder of the EMA weights (swapped in and back bit-exactly)."""
        with self.ema.applied_to(self.module) as net:
            return self.task.export(net, folder, dtype, self.step)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _seed_rank(seed: int, rank: int) -> torch.Generator:
    """Seed python/numpy/torch global RNGs per rank and return the rank's training generator."""
    rank_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(rank_seed)
    np.random.seed(rank_seed)
    torch.manual_seed(rank_seed)
    return torch.Generator().manual_seed(rank_seed)


def _make_accelerator(cfg: LoopConfig):
    from accelerate import Accelerator

    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.optim.mixed_precision)


def build_run(task: TrainTask) -> TrainingRun:
    """Accelerator, data, model, EMA, optimizer and schedule of one run of `task`."""
    cfg = task.config
    accelerator = _make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    dataset = task.train_dataset()
    sampler = ResumableSampler(len(dataset), cfg.optim.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    workers = 0 if cfg.deterministic else cfg.num_workers
    loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                        num_workers=workers, generator=torch.Generator().manual_seed(cfg.seed))
    torch.manual_seed(cfg.seed)  # the run's seed, not the rank's: every rank starts from the same weights
    net = task.build_model().to(accelerator.device)
    ema = EMA(net, cfg.ema)
    optimizer = build_optimizer((p for p in net.parameters() if p.requires_grad), cfg.optim)
    net, optimizer = accelerator.prepare(net, optimizer)
    scheduler = build_scheduler(optimizer, cfg.optim)  # NOT prepared: stepped once per optimizer step
    return TrainingRun(task, accelerator, net, ema, optimizer, scheduler, dataset, sampler, loader,
                       _seed_rank(cfg.seed, rank))
