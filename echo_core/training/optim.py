"""AdamW + an LR schedule counted in OPTIMIZER steps, independent of the number of processes.

The reference trainers pass their LR scheduler through `accelerator.prepare`, which steps it once per
process per optimizer step, and compensate by multiplying the warm-up by `num_processes` (seed-systems
§8.31): the warm-up length then depends on how many GPUs ran it. Here the scheduler is NOT prepared; the
loop steps it exactly once per optimizer step, so `lr_multiplier(k)` is the same function of the global
step on 1 or N processes (and with gradient accumulation, where one step spans several micro-batches).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from echo_core.config import StrictModel
from echo_core.errors import UsageError

# The speed switches change how fast a step runs, not what it computes (up to float rounding). At these
# values (the behaviour from before they existed) they stay out of the config's dump, so the trajectory
# hash (`--resume latest` of existing checkpoints), the logged params and every model folder's recorded
# training config are what they were; a switch that is on is recorded.
SPEED_DEFAULTS: dict[str, object] = {"compile": "none", "adamw_impl": "default", "channels_last": False,
                                     "attention_backend": "default"}


class OptimConfig(StrictModel):
    """`train_lvdm.optim` in params.yaml. Steps are optimizer steps; batch_size is per process."""

    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(1e-2, ge=0)
    eps: float = Field(1e-8, gt=0)
    # after warm-up; cosine decays to 0 at max_steps; none: no scheduler, so `lr` throughout and no
    # `initial_lr` in the optimizer's state (the VAE's optimizer state predates the scheduler)
    schedule: Literal["constant", "cosine", "none"] = "constant"
    warmup_steps: int = Field(500, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)  # None: no clipping (the norm is still logged)
    grad_accum: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    max_steps: int = Field(500_000, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    # model: torch.compile the whole model; regional: each UNet down/mid/up block (the repeated modules,
    # compiled once per block type instead of one large graph: a shorter start-up)
    compile: Literal["none", "model", "regional"] = "none"
    adamw_impl: Literal["default", "foreach", "fused"] = "default"  # default: torch's choice per device
    # Conv2d weights channels-last (see run.apply_channels_last for what it does to the video UNet)
    channels_last: bool = False
    attention_backend: Literal["default", "math", "flash", "efficient"] = "default"  # SDPA kernel choice

    @model_serializer(mode="wrap")
    def _omit_speed_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        return {k: v for k, v in handler(self).items() if k not in SPEED_DEFAULTS or SPEED_DEFAULTS[k] != v}

    @model_validator(mode="after")
    def _warmup_fits(self) -> OptimConfig:
        if self.schedule == "cosine" and self.warmup_steps >= self.max_steps:
            raise ValueError("cosine schedule needs warmup_steps < max_steps")
        if self.schedule == "none" and self.warmup_steps:
            raise ValueError("a warm-up needs a schedule: set schedule to constant or cosine, or warmup_steps 0")
        return self


def lr_multiplier(step: int, cfg: OptimConfig) -> float:
    """Factor on `cfg.lr` for optimizer step `step` (0-based): linear warm-up reaching 1 at step
    warmup_steps − 1 (so the first step already learns), then constant or cosine to zero."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule != "cosine" or step < cfg.warmup_steps:
        return warm
    progress = (step + 1 - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only (callers pass no frozen weights), on their device already:
    `adamw_impl` foreach (one kernel per op over all tensors) or fused (one kernel per step) is checked
    against the parameters' device here, not at the first step."""
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[cfg.adamw_impl]
    params = list(params)
    if cfg.adamw_impl == "fused":
        _check_fused(params)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps,
                             **impl)


def _check_fused(params: list[torch.nn.Parameter]) -> None:
    """torch's own rule for fused AdamW (floating-point parameters on a device with the kernel), which torch
    applies only at the first step, after the model is built and maybe compiled."""
    from torch.optim.optimizer import _device_dtype_check_for_fused

    for p in params:
        try:
            _device_dtype_check_for_fused(p)
        except RuntimeError as exc:
            raise UsageError(f"optim.adamw_impl fused is not supported by torch {torch.__version__} for a "
                             f"{p.dtype} parameter on {p.device.type}: {exc}",
                             fix="set optim.adamw_impl to foreach or default") from exc


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR | None:
    """LambdaLR over `lr_multiplier` (None for schedule none); step it once per optimizer step and never
    `prepare` it."""
    if cfg.schedule == "none":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
