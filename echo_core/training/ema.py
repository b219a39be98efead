"""Exponential moving average of a module's trainable weights, with warm-up, saved as safetensors.

The shadow weights are float32 whatever the training precision. Warm-up matters for short runs: with a
fixed decay of 0.9999 the EMA of a 2,000-step run is still mostly the random initialisation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from echo_core.config import StrictModel
from echo_core.errors import WeightsError


class EmaConfig(StrictModel):
    """`train_lvdm.ema` in params.yaml."""

    decay: float = Field(0.9999, ge=0.0, lt=1.0)  # the ceiling reached after warm-up
    warmup: Literal["none", "inv_gamma", "linear"] = "inv_gamma"
    inv_gamma: float = Field(1.0, gt=0)  # inv_gamma warm-up: 1 − (1 + n / inv_gamma) ** −power
    power: float = Field(2 / 3, gt=0)
    warmup_steps: int = Field(1000, ge=1)  # linear warm-up: decay · min(1, n / warmup_steps)
    update_every: int = Field(1, ge=1)  # in optimizer steps


def ema_decay(cfg: EmaConfig, num_updates: int) -> float:
    """Decay used for EMA update number `num_updates` (0-based); never above `cfg.decay`."""
    if cfg.warmup == "none":
        return cfg.decay
    if cfg.warmup == "inv_gamma":
        value = 1.0 - (1.0 + num_updates / cfg.inv_gamma) ** -cfg.power
    else:
        value = cfg.decay * min(1.0, num_updates / cfg.warmup_steps)
    return min(cfg.decay, max(0.0, value))


class EMA:
    """Float32 shadow copies of `module`'s trainable parameters (by name)."""

    def __init__(self, module: nn.Module, cfg: EmaConfig):
        self.cfg = cfg
        self.num_updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in _trainable(module)}

    @torch.no_grad()
    def update(self, module: nn.Module) -> float:
        """shadow ← decay·shadow + (1 − decay)·weights; returns the decay used."""
        decay = ema_decay(self.cfg, self.num_updates)
        for name, p in _trainable(module):
            self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)
        self.num_updates += 1
        return decay

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the shadow weights into `module` (cast to each parameter's dtype)."""
        for name, p in _trainable(module):
            p.copy_(self.shadow[name].to(p.dtype))

    @contextlib.contextmanager
    def applied_to(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the EMA weights into `module`; the training weights come back bit-exact."""
        backup = {name: p.detach().clone() for name, p in _trainable(module)}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for name, p in _trainable(module):
                    p.copy_(backup[name])

    def save(self, path: str | os.PathLike) -> None:
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.shadow.items()}
        save_file(tensors, str(path), metadata={"num_updates": str(self.num_updates)})

    def load(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open

        tensors = load_file(str(path))
        if set(tensors) != set(self.shadow):
            raise WeightsError(f"EMA file {path} does not match the model (different parameter names)",
                               fix="resume with the same model/conditioning config that wrote the checkpoint")
        with safe_open(str(path), framework="pt") as handle:
            self.num_updates = int(handle.metadata()["num_updates"])
        for name, tensor in tensors.items():
            self.shadow[name] = tensor.to(self.shadow[name].device)


def _trainable(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((name, p) for name, p in module.named_parameters() if p.requires_grad)
