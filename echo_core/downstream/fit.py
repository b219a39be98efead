"""The one training loop shared by the downstream classifier and EF regressor.

Best-epoch selection is on the validation loss (lower is better; ties keep the earlier epoch): a loss is
smooth where accuracy on a few dozen validation videos moves in coarse steps and ties constantly.
Determinism: the caller seeds model initialisation; shuffling uses its own seeded generator and clip
windows are seeded per (seed, epoch, index) by `ClipDataset`, so nothing reads global RNG state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from echo_core.downstream.data import ClipDataset

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EpochCallback = Callable[[int, float, float], None]  # (epoch, train_loss, val_loss or NaN)


@dataclass
class FitResult:
    best_epoch: int  # 0-based
    history: list[dict[str, float]] = field(default_factory=list)  # {epoch, train_loss, val_loss}


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int


def fit(model: nn.Module, train: ClipDataset, val: ClipDataset | None, loss_fn: LossFn, settings: FitSettings,
        on_epoch: EpochCallback | None = None) -> FitResult:
    """Train with AdamW + cosine decay; leave `model` holding the weights of the best validation epoch.

    Without `val`, the last epoch is kept.
    """
    if len(train) == 0:
        raise ValueError("empty training set")
    loader = torch.utils.data.DataLoader(train, batch_size=settings.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(settings.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    result, best_loss, best_state = FitResult(best_epoch=settings.epochs - 1), float("inf"), None
    for epoch in range(settings.epochs):
        train.set_epoch(epoch)
        train_loss = _train_epoch(model, loader, loss_fn, optimizer)
        schedule.step()
        recalibrate_batchnorm(model, loader)
        val_loss = evaluate_loss(model, val, loss_fn, settings.batch_size) if val is not None else float("nan")
        result.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_loss)
        if val is not None and val_loss < best_loss:
            best_loss, best_state, result.best_epoch = val_loss, copy.deepcopy(model.state_dict()), epoch
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


def _train_epoch(model: nn.Module, loader, loss_fn: LossFn, optimizer: torch.optim.Optimizer) -> float:
    model.train()
    total, count = 0.0, 0
    for x, y in loader:
        loss = loss_fn(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(x), count + len(x)
    return total / count


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader) -> None:
    """Set BatchNorm running statistics to their exact average over one pass of `loader` ("precise BN").

    With a few dozen optimiser steps, the default exponential average (momentum 0.1) still remembers the
    initial statistics and the untrained weights, so eval-mode outputs drift from train-mode ones and the
    validation loss says more about BN than about the model. One forward pass (no gradients) fixes that.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    for x, _ in loader:
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


@torch.no_grad()
def evaluate_loss(model: nn.Module, dataset: ClipDataset, loss_fn: LossFn, batch_size: int) -> float:
    """Mean per-sample loss over `dataset` in eval mode (NaN for an empty dataset)."""
    if len(dataset) == 0:
        return float("nan")
    model.eval()
    total = 0.0
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        total += loss_fn(model, x, y).item() * len(x)
    return total / len(dataset)


@torch.no_grad()
def predict(model: nn.Module, dataset: ClipDataset, batch_size: int) -> np.ndarray:
    """Model outputs over `dataset` in order, eval mode: (N, ...) float64 numpy."""
    model.eval()
    outputs = [model(x) for x, _ in torch.utils.data.DataLoader(dataset, batch_size=batch_size)]
    return torch.cat(outputs).double().numpy() if outputs else np.empty((0,))
