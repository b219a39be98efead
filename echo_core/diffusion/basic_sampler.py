"""A minimal sampler for in-training validation videos (DDIM for v-DDPM, Euler for rectified flow).

Pure function in the k-diffusion shape: `sample(model, noise, objective, steps, callback=None)`. The model
is any callable `model(x_t, model_time) -> prediction` in the objective's units, with conditioning (and
classifier-free guidance, if wanted) already bound by the caller. The full sampler (schedulers, long
videos) lives in `echo_core.diffusion.samplers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from echo_core.diffusion.objectives import (
    Objective,
    RectifiedFlow,
    VPredictionDDPM,
    euler_step,
    flow_timesteps,
    make_scheduler,
)

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


@torch.no_grad()
def sample(model: Model, noise: torch.Tensor, objective: Objective, steps: int,
           callback: Callback | None = None) -> torch.Tensor:
    """noise: (B, C, T, h, w) at the start time → x̂0 (B, C, T, h, w) after `steps` model calls.

    callback({"i", "t", "x", "denoised"}) is called after each step (t in the objective's own units).
    """
    if isinstance(objective, RectifiedFlow):
        return _sample_flow(model, noise, objective, steps, callback)
    if isinstance(objective, VPredictionDDPM):
        return _sample_ddim(model, noise, objective, steps, callback)
    raise ValueError(f"no basic sampler for objective {type(objective).__name__}")


def _sample_flow(model: Model, x: torch.Tensor, objective: RectifiedFlow, steps: int,
                 callback: Callback | None) -> torch.Tensor:
    grid = flow_timesteps(steps, device=x.device)
    for i in range(steps):
        t = grid[i].expand(x.shape[0])
        v = model(x, objective.model_time(t))
        if callback is not None:
            callback({"i": i, "t": float(grid[i]), "x": x, "denoised": objective.predict_x0(x, v, t)})
        x = euler_step(x, v, grid[i], grid[i + 1])
    return x


def _sample_ddim(model: Model, x: torch.Tensor, objective: VPredictionDDPM, steps: int,
                 callback: Callback | None) -> torch.Tensor:
    # Deterministic DDIM (eta 0) on the training noise schedule: good previews in few steps. A fresh
    # scheduler, so set_timesteps never touches the objective's training scheduler.
    scheduler = make_scheduler("ddim", **objective.scheduler_config)
    scheduler.set_timesteps(steps, device=x.device)
    for i, t in enumerate(scheduler.timesteps):
        tt = t.expand(x.shape[0])
        pred = model(x, objective.model_time(tt))
        out = scheduler.step(pred, t, x)
        if callback is not None:
            callback({"i": i, "t": int(t), "x": x, "denoised": out.pred_original_sample})
        x = out.prev_sample
    return x
