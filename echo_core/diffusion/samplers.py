"""LVDM samplers: pure functions with a progress callback (k-diffusion's shape).

`sample_video` turns per-sample seeds, a conditioning frame and condition tokens into clean latents
(B, C, T, h, w), for any video length: the T frames are covered by overlapping windows of the model's
clip length, every window is denoised at every step, and their predictions are merged into ONE prediction
for the whole sequence before the step is taken (joint denoising, as the reference; seed-systems §4.2).
The reference hard-coded a 64/32 split and rounded T up to a multiple of 32; here window and stride are
free, the last window is shifted back to end exactly at T, and `blend=True` averages overlaps instead of
keeping only the frames a window adds.

Samplers (`SAMPLERS`):
- v-prediction DDPM objective: "ddpm" (ancestral, the reference setting), "ddim" (deterministic),
  "dpmpp_2m" (DPM-Solver++(2M), deterministic, good at 10-25 steps). All three are built from the SAME
  beta schedule as training (`echo_core.diffusion.objectives.make_scheduler` config).
- rectified-flow objective: "euler", "heun" (integrate dx/dt = v from t=1 to t=0).

Classifier-free guidance uses the model's real null condition (`ConditionEncoder.null_condition`) and, for
the optional frame guidance, the all-zero null frame that frame dropout trained on (fixes §8.3/§8.4/§8.6):
    no frame guidance:  v = v(f, ∅) + s_c·(v(f, c) − v(f, ∅))
    frame guidance:     v = v(∅, ∅) + s_f·(v(f, ∅) − v(∅, ∅)) + s_c·(v(f, c) − v(f, ∅))
Randomness comes only from per-sample CPU generators seeded by `seeds`, so a sample is the same video
whatever the batch it is in and whatever the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from echo_core.diffusion.objectives import (
    DDPMObjectiveConfig,
    FlowObjectiveConfig,
    euler_step,
    flow_timesteps,
    make_scheduler,
)
from echo_core.errors import UsageError
from echo_core.models.conditioning import null_frame

DIFFUSION_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
FLOW_SAMPLERS = ("euler", "heun")
SAMPLERS = DIFFUSION_SAMPLERS + FLOW_SAMPLERS

Callback = Callable[[dict[str, Any]], None]
Denoiser = Callable[..., torch.Tensor]  # (x, t, cond_frame, encoder_hidden_states, fps) -> prediction


# ---------------------------------------------------------------- schedules


def check_sampler(sampler: str, objective: DDPMObjectiveConfig | FlowObjectiveConfig) -> None:
    """Raise UsageError unless `sampler` exists and fits the objective the model was trained with."""
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}", fix=f"use one of {list(SAMPLERS)}")
    allowed = FLOW_SAMPLERS if isinstance(objective, FlowObjectiveConfig) else DIFFUSION_SAMPLERS
    if sampler not in allowed:
        raise UsageError(f"sampler {sampler!r} does not fit a model trained with objective {objective.kind!r}",
                         fix=f"use one of {list(allowed)}")


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
    raise ValueError(f"{sampler!r} is not a diffusion sampler; choose one of {list(DIFFUSION_SAMPLERS)}")


# ---------------------------------------------------------------- windows


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """First frame of each window covering [0, num_frames); the last window ends exactly at num_frames.

    A video no longer than the window is one window of `num_frames` frames.
    """
    if num_frames < 1 or window < 1 or not 1 <= stride <= window:
        raise UsageError(f"invalid windows: num_frames={num_frames}, window={window}, stride={stride}",
                         fix="use num_frames >= 1, window >= 1 and 1 <= stride <= window")
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def merge_windows(preds: Sequence[torch.Tensor], starts: Sequence[int], num_frames: int,
                  blend: bool) -> torch.Tensor:
    """Per-window predictions (B, C, w, h, w') → one (B, C, T, h, w') prediction.

    blend=False (reference): each frame comes from the first window that covers it, so a later window
    contributes only the frames it adds. blend=True: overlapping predictions are averaged.
    """
    b, c, _, h, w = preds[0].shape
    out = preds[0].new_zeros(b, c, num_frames, h, w)
    if blend:
        count = preds[0].new_zeros(1, 1, num_frames, 1, 1)
        for start, pred in zip(starts, preds, strict=True):
            out[:, :, start:start + pred.shape[2]] += pred
            count[:, :, start:start + pred.shape[2]] += 1
        return out / count
    covered = 0
    for start, pred in zip(starts, preds, strict=True):
        end = start + pred.shape[2]
        if end > covered:
            out[:, :, covered:end] = pred[:, :, covered - start:]
            covered = end
    return out


# ---------------------------------------------------------------- guided, windowed prediction


@dataclass(frozen=True)
class Guidance:
    """Conditioning of one batch. cond_frame: (B, C, h, w); cond_tokens, null_tokens: (B, L, D)."""

    cond_frame: torch.Tensor
    cond_tokens: torch.Tensor
    null_tokens: torch.Tensor
    guidance_scale: float = 1.0
    frame_guidance_scale: float | None = None
    fps: float = 32.0

    def branches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(frame, tokens) of each model pass: full, [frame-only], [unconditional]."""
        full = (self.cond_frame, self.cond_tokens)
        frame_only = (self.cond_frame, self.null_tokens)
        if self.frame_guidance_scale is not None:
            return [full, frame_only, (null_frame(self.cond_frame), self.null_tokens)]
        return [full, frame_only] if self.guidance_scale != 1.0 else [full]

    def combine(self, outs: list[torch.Tensor]) -> torch.Tensor:
        if len(outs) == 1:
            return outs[0]
        full, frame_only = outs[0], outs[1]
        guided = frame_only + self.guidance_scale * (full - frame_only)
        if len(outs) == 3:
            guided = guided + (self.frame_guidance_scale - 1.0) * (frame_only - outs[2])
        return guided


def guided_prediction(denoiser: Denoiser, x: torch.Tensor, t_model: torch.Tensor, guidance: Guidance,
                      starts: Sequence[int], window: int, blend: bool) -> torch.Tensor:
    """x: (B, C, T, h, w) → merged guided prediction (B, C, T, h, w) in ONE model call.

    All windows × all guidance branches are stacked on the batch axis (window-major, then branch).
    """
    num_frames = x.shape[2]
    length = min(window, num_frames)
    windows = torch.cat([x[:, :, s:s + length] for s in starts])  # (W·B, C, w, h, w')
    branches = guidance.branches()
    n_win, b = len(starts), x.shape[0]
    frames = torch.cat([f.repeat(n_win, 1, 1, 1) for f, _ in branches])
    tokens = torch.cat([tok.repeat(n_win, 1, 1) for _, tok in branches])
    inputs = windows.repeat(len(branches), 1, 1, 1, 1)
    t = t_model.reshape(-1)[:1].expand(inputs.shape[0]).to(x.device)
    out = denoiser(inputs, t, frames, tokens, guidance.fps)
    per_branch = out.chunk(len(branches))
    merged = guidance.combine(list(per_branch))  # (W·B, C, w, h, w')
    return merge_windows(list(merged.split(b)), starts, num_frames, blend)


# ---------------------------------------------------------------- the samplers


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(seeds), *shape) standard normal noise; sample i depends only on seeds[i] (CPU generators)."""
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


def sample_video(denoiser: Denoiser, sampler: str, *, objective: DDPMObjectiveConfig | FlowObjectiveConfig,
                 cond_frame: torch.Tensor, cond_tokens: torch.Tensor, null_tokens: torch.Tensor,
                 num_frames: int, window: int, stride: int, seeds: Sequence[int], steps: int,
                 guidance_scale: float = 1.0, frame_guidance_scale: float | None = None, fps: float = 32.0,
                 blend: bool = False, callback: Callback | None = None) -> torch.Tensor:
    """Clean latents (B, C, num_frames, h, w) for B = len(seeds) samples (still × the VAE scaling factor).

    cond_frame: (B, C, h, w); cond_tokens / null_tokens: (B, L, D). `callback` receives
    {"i", "total", "t", "x"} after every step.
    """
    check_sampler(sampler, objective)
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}", fix="pass a positive number of steps")
    if len(seeds) != cond_frame.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {cond_frame.shape[0]} conditioning frames")
    starts = window_starts(num_frames, window, stride)
    guidance = Guidance(cond_frame, cond_tokens, null_tokens, guidance_scale, frame_guidance_scale, fps)
    x = initial_noise(seeds, (cond_frame.shape[1], num_frames, *cond_frame.shape[2:]), cond_frame.device,
                      cond_frame.dtype)

    def predict(x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        return guided_prediction(denoiser, x_t, t_model, guidance, starts, window, blend)

    with torch.no_grad():
        if sampler in FLOW_SAMPLERS:
            return _integrate_flow(predict, x, sampler, steps, objective.time_scale, callback)
        return _denoise_diffusion(predict, x, sampler, steps, objective, seeds, callback)


def _denoise_diffusion(predict, x: torch.Tensor, sampler: str, steps: int, objective: DDPMObjectiveConfig,
                       seeds: Sequence[int], callback: Callback | None) -> torch.Tensor:
    scheduler = make_sampling_scheduler(sampler, objective)
    scheduler.set_timesteps(steps)
    # ancestral noise per sample, from a stream independent of the initial noise (seed offset by 2**31)
    generators = [torch.Generator("cpu").manual_seed(int(s) + 2**31) for s in seeds]
    x = x * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        pred = predict(scheduler.scale_model_input(x, t), t.to(x.device))
        kwargs = {"generator": generators} if sampler == "ddpm" else {}
        x = scheduler.step(pred, t, x, **kwargs).prev_sample
        if callback is not None:
            callback({"i": i, "total": len(timesteps), "t": float(t), "x": x})
    return x


def _integrate_flow(predict, x: torch.Tensor, sampler: str, steps: int, time_scale: float,
                    callback: Callback | None) -> torch.Tensor:
    """Euler or Heun (2nd order; its last step to t=0 is Euler) from t=1 to t=0."""
    grid = flow_timesteps(steps, device="cpu").tolist()
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        v = predict(x, torch.tensor([t * time_scale], device=x.device))
        x_next = euler_step(x, v, t, t_next)
        if sampler == "heun" and t_next > 0:
            v_next = predict(x_next, torch.tensor([t_next * time_scale], device=x.device))
            x_next = euler_step(x, 0.5 * (v + v_next), t, t_next)
        x = x_next
        if callback is not None:
            callback({"i": i, "total": steps, "t": t, "x": x})
    return x
