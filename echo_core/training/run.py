"""One training run's state, built once from a task: accelerator, model, EMA, optimizer, data, generator.

`build_run` + `trainer.optimizer_step` are public so benchmarks can time the real training step.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from echo_core.training.data_order import DataOrder, History
from echo_core.training.ema import EMA
from echo_core.training.optim import build_optimizer, build_scheduler
from echo_core.training.task import LoopConfig, TrainTask


@dataclass
class TrainingRun:
    """Everything one training run holds; built once by `build_run`."""

    task: TrainTask
    accelerator: Any
    net: nn.Module  # prepared (DDP-wrapped when distributed)
    ema: EMA | None  # None when the task's config has `ema: None`
    optimizer: Any
    scheduler: torch.optim.lr_scheduler.LambdaLR | None  # None for `optim.schedule: none`
    data: DataOrder
    generator: torch.Generator | None  # all of the task's training randomness (per rank); None: global RNG
    history: History = field(default_factory=History)
    step: int = 0

    @property
    def cfg(self) -> LoopConfig:
        return self.task.config

    @property
    def module(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.net)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def lr(self) -> float:
        """The LR of the coming optimizer step."""
        return self.scheduler.get_last_lr()[0] if self.scheduler else self.optimizer.param_groups[0]["lr"]

    def next_batch(self) -> Mapping[str, Any]:
        return self.data.next_batch(self.step)

    @contextlib.contextmanager
    def inference_weights(self) -> Iterator[nn.Module]:
        """The unwrapped model with the EMA weights swapped in (and back bit-exactly), or as trained."""
        swap = self.ema.applied_to(self.module) if self.ema is not None else contextlib.nullcontext(self.module)
        with swap as net:
            yield net

    def export(self, folder: Path, dtype: torch.dtype) -> Path:
        """The task's inference folder of the inference weights."""
        with self.inference_weights() as net:
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
    data = task.data_order(task.train_dataset(), rank=rank, world_size=world)
    torch.manual_seed(cfg.seed)  # the run's seed, not the rank's: every rank starts from the same weights
    model = task.build_model().to(accelerator.device)
    ema = EMA(model, cfg.ema) if cfg.ema is not None else None
    optimizer = build_optimizer((p for p in model.parameters() if p.requires_grad), cfg.optim)
    net, optimizer = accelerator.prepare(model, optimizer)
    task.prepare_extras(model, accelerator)
    scheduler = build_scheduler(optimizer, cfg.optim)  # NOT prepared: stepped once per optimizer step
    generator = None if task.uses_global_rng else _seed_rank(cfg.seed, rank)
    return TrainingRun(task, accelerator, net, ema, optimizer, scheduler, data, generator)
