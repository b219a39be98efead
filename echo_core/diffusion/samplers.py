"""Samplers: ONE registry of pure functions with ONE signature (k-diffusion's shape), for video latents
(B, C, T, h, w) and image latents (B, C, h, w) alike:

    x0 = SAMPLERS[name](predict, x, objective=..., steps=..., seeds=..., callback=None)

`predict(x_t, t_model) -> prediction` is the model with its conditioning and guidance already bound
(t_model: (B,) in the model's time units); `x` is the initial noise (`initial_noise`); `callback` receives
{"i", "total", "t", "x", "denoised"} after every step (x: the new sample, denoised: the current x̂0).

- v-prediction DDPM objective: "ddpm" (ancestral, the reference setting), "ddim" (deterministic),
  "dpmpp_2m" (DPM-Solver++(2M), deterministic, good at 10-25 steps). All three are built from the SAME
  beta schedule as training (`echo_core.diffusion.objectives.make_scheduler` config).
- rectified-flow objective: "euler", "heun" (integrate dx/dt = v from t=1 to t=0).

`sample_video` (long videos: `windows`, guidance: `guidance`) and `sample_image` bind a denoiser into
`predict` and run a registered sampler. Randomness comes only from per-sample CPU generators seeded by
`seeds`, so a sample is the same whatever the batch it is in and whatever the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from echo_core.diffusion.guidance import Guidance, guided_image_prediction
from echo_core.diffusion.objectives import (
    DDPMObjectiveConfig,
    FlowObjectiveConfig,
    euler_step,
    flow_timesteps,
    from_frame_residual,
    make_scheduler,
)
from echo_core.diffusion.windows import VideoDenoiser, guided_prediction, window_starts
from echo_core.errors import UsageError

Callback = Callable[[dict[str, Any]], None]
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, ...), t_model (B,)) -> prediction
ObjectiveCfg = DDPMObjectiveConfig | FlowObjectiveConfig
ImageDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t, tokens) -> pred


# ---------------------------------------------------------------- v-prediction DDPM samplers


def make_sampling_scheduler(sampler: str, objective: DDPMObjectiveConfig):
    """A fresh diffusers scheduler for a v-prediction model, on the training betas (stateful: one per call)."""
    shared = dict(num_train_timesteps=objective.num_train_timesteps, beta_start=objective.beta_start,
                  beta_end=objective.beta_end)
    if sampler in ("ddpm", "ddim"):
        return make_scheduler(sampler, **shared, clip_sample_range=objective.clip_sample_range,
                              timestep_spacing=objective.timestep_spacing)
    if sampler == "dpmpp_2m":
        from diffusers import DPMSolverMultistepScheduler

        # linspace spacing starts at t = T−1 (pure noise), which matters at 10–25 steps
        return DPMSolverMultistepScheduler(**shared, beta_schedule="linear", prediction_type="v_prediction",
                                           algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing="linspace")
    raise ValueError(f"{sampler!r} is not a diffusion sampler; choose one of {list(OBJECTIVE_SAMPLERS['v_ddpm'])}")


def _denoise(predict: Predict, x: torch.Tensor, sampler: str, objective: DDPMObjectiveConfig, steps: int,
             generators: list[torch.Generator] | None, callback: Callback | None) -> torch.Tensor:
    """The diffusers scheduler loop shared by the three v-prediction samplers (generators: ancestral noise)."""
    scheduler = make_sampling_scheduler(sampler, objective)
    scheduler.set_timesteps(steps)
    kwargs = {"generator": generators} if generators is not None else {}
    x = x * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        v = predict(scheduler.scale_model_input(x, t), t.to(x.device).expand(x.shape[0]))
        x_next = scheduler.step(v, t, x, **kwargs).prev_sample
        if callback is not None:
            alpha_bar = scheduler.alphas_cumprod[t].to(x.device, x.dtype)  # x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂
            callback({"i": i, "total": len(timesteps), "t": float(t), "x": x_next,
                      "denoised": alpha_bar.sqrt() * x - (1 - alpha_bar).sqrt() * v})
        x = x_next
    return x


def sample_ddpm(predict: Predict, x: torch.Tensor, *, objective: DDPMObjectiveConfig, steps: int,
                seeds: Sequence[int], callback: Callback | None = None) -> torch.Tensor:
    """Ancestral DDPM (the reference sampler); its noise per sample comes from a stream independent of the
    initial noise (seed offset by 2**31)."""
    generators = [torch.Generator("cpu").manual_seed(int(s) + 2**31) for s in seeds]
    return _denoise(predict, x, "ddpm", objective, steps, generators, callback)


def sample_ddim(predict: Predict, x: torch.Tensor, *, objective: DDPMObjectiveConfig, steps: int,
                seeds: Sequence[int], callback: Callback | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta 0); `seeds` is unused (the one signature)."""
    return _denoise(predict, x, "ddim", objective, steps, None, callback)


def sample_dpmpp_2m(predict: Predict, x: torch.Tensor, *, objective: DDPMObjectiveConfig, steps: int,
                    seeds: Sequence[int], callback: Callback | None = None) -> torch.Tensor:
    """Deterministic DPM-Solver++(2M); `seeds` is unused (the one signature)."""
    return _denoise(predict, x, "dpmpp_2m", objective, steps, None, callback)


# ---------------------------------------------------------------- rectified-flow samplers


def _integrate_flow(predict: Predict, x: torch.Tensor, objective: FlowObjectiveConfig, steps: int, heun: bool,
                    callback: Callback | None) -> torch.Tensor:
    """Euler or Heun (2nd order; its last step to t=0 is Euler) from t=1 to t=0."""
    grid = flow_timesteps(steps, device="cpu").tolist()

    def model_time(t: float) -> torch.Tensor:
        return torch.tensor([t * objective.time_scale], device=x.device).expand(x.shape[0])

    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        v = predict(x, model_time(t))
        x_next = euler_step(x, v, t, t_next)
        if heun and t_next > 0:
            v_next = predict(x_next, model_time(t_next))
            x_next = euler_step(x, 0.5 * (v + v_next), t, t_next)
        if callback is not None:
            callback({"i": i, "total": steps, "t": t, "x": x_next, "denoised": x - t * v})  # x̂0 = x_t − t·v̂
        x = x_next
    return x


def sample_euler(predict: Predict, x: torch.Tensor, *, objective: FlowObjectiveConfig, steps: int,
                 seeds: Sequence[int], callback: Callback | None = None) -> torch.Tensor:
    """Euler integration of the rectified flow; `seeds` is unused (the one signature)."""
    return _integrate_flow(predict, x, objective, steps, False, callback)


def sample_heun(predict: Predict, x: torch.Tensor, *, objective: FlowObjectiveConfig, steps: int,
                seeds: Sequence[int], callback: Callback | None = None) -> torch.Tensor:
    """Heun integration of the rectified flow (2 model calls per step but the last); `seeds` is unused."""
    return _integrate_flow(predict, x, objective, steps, True, callback)


# ---------------------------------------------------------------- the registry

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm, "ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m,
    "euler": sample_euler, "heun": sample_heun,
}
# objective kind → the samplers that integrate it
OBJECTIVE_SAMPLERS = {"v_ddpm": ("ddpm", "ddim", "dpmpp_2m"), "rectified_flow": ("euler", "heun")}


def samplers_for(objective: ObjectiveCfg) -> tuple[str, ...]:
    """Names of the samplers that fit a model trained with `objective`."""
    return OBJECTIVE_SAMPLERS[objective.kind]


def check_sampler(sampler: str, objective: ObjectiveCfg) -> None:
    """Raise UsageError unless `sampler` exists and fits the objective the model was trained with."""
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}", fix=f"use one of {list(SAMPLERS)}")
    allowed = samplers_for(objective)
    if sampler not in allowed:
        raise UsageError(f"sampler {sampler!r} does not fit a model trained with objective {objective.kind!r}",
                         fix=f"use one of {list(allowed)}")


def _checked_sampler(sampler: str, objective: ObjectiveCfg, steps: int, seeds: Sequence[int],
                     batch: int) -> Callable[..., torch.Tensor]:
    check_sampler(sampler, objective)
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}", fix="pass a positive number of steps")
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch} conditions")
    return SAMPLERS[sampler]


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(seeds), *shape) standard normal noise; sample i depends only on seeds[i] (CPU generators)."""
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


# ---------------------------------------------------------------- video and image models


def sample_video(denoiser: VideoDenoiser, sampler: str, *, objective: ObjectiveCfg,
                 cond_frame: torch.Tensor, cond_tokens: torch.Tensor, null_tokens: torch.Tensor,
                 num_frames: int, window: int, stride: int, seeds: Sequence[int], steps: int,
                 guidance_scale: float = 1.0, frame_guidance_scale: float | None = None, fps: float = 32.0,
                 blend: bool = False, callback: Callback | None = None,
                 frame_residual: float | None = None) -> torch.Tensor:
    """Clean latents (B, C, num_frames, h, w) for B = len(seeds) samples (still × the VAE scaling factor).

    denoiser(x, t, cond_frame, tokens, fps) works on one window; cond_frame: (B, C, h, w);
    cond_tokens / null_tokens: (B, L, D). Any num_frames: windows of `window` frames every `stride`.
    `frame_residual` (the model's `conditioning.frame_residual`): the model denoises the residual to the
    frame, which is added back at the end.
    """
    if frame_residual is not None and frame_guidance_scale is not None:
        raise UsageError("frame guidance needs a model trained with frame dropout; this model diffuses the "
                         "residual to its frame, which has no frame-free branch",
                         fix="leave frame_guidance_scale unset for this model")
    run = _checked_sampler(sampler, objective, steps, seeds, cond_frame.shape[0])
    starts = window_starts(num_frames, window, stride)
    guidance = Guidance(cond_tokens, null_tokens, guidance_scale, cond_frame, frame_guidance_scale)
    x = initial_noise(seeds, (cond_frame.shape[1], num_frames, *cond_frame.shape[2:]), cond_frame.device,
                      cond_frame.dtype)

    def predict(x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        return guided_prediction(denoiser, x_t, t_model, guidance, starts, window, blend, fps)

    with torch.no_grad():
        x = run(predict, x, objective=objective, steps=steps, seeds=seeds, callback=callback)
    return x if frame_residual is None else from_frame_residual(x, cond_frame, frame_residual)


def sample_image(denoiser: ImageDenoiser, sampler: str, *, objective: ObjectiveCfg, cond_tokens: torch.Tensor,
                 null_tokens: torch.Tensor, seeds: Sequence[int], shape: tuple[int, int, int], steps: int,
                 guidance_scale: float = 1.0, callback: Callback | None = None) -> torch.Tensor:
    """Clean latents (B, C, h, w) for B = len(seeds) samples of an image model; shape = (C, h, w).

    denoiser(x, t, tokens) → prediction; cond_tokens / null_tokens: the condition and its null batched on
    dim 0 (e.g. (B,) class ids and the null class). guidance_scale != 1 runs classifier-free guidance.
    """
    run = _checked_sampler(sampler, objective, steps, seeds, cond_tokens.shape[0])
    guidance = Guidance(cond_tokens, null_tokens, guidance_scale)
    x = initial_noise(seeds, tuple(shape), cond_tokens.device)

    def predict(x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        return guided_image_prediction(denoiser, x_t, t_model, guidance)

    with torch.no_grad():
        return run(predict, x, objective=objective, steps=steps, seeds=seeds, callback=callback)
