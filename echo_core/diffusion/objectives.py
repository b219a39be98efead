"""Training objectives for the LVDM: v-prediction DDPM (the reference) and rectified-flow matching.

Both objectives share one interface, so the training loop and the sampler never branch on the kind:

    noise          = objective.make_noise(x0, generator)            # with the configured noise offset
    t              = objective.sample_timesteps(B, generator)       # the objective's own time units
    x_t, target    = objective.training_target(x0, noise, t)
    pred           = denoiser(x_t, objective.model_time(t), ...)    # what the UNet receives
    loss           = objective.loss(pred, target, frame_mask(padding, T))

Videos are (B, C, T, h, w) throughout. `frame_mask` marks frames with index < padding as valid; the
reference's `frame_idx <= padding` also trained on the first padded frame (seed-systems §8.5).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

import torch
from pydantic import Discriminator, Field, Tag

from echo_core.config import StrictModel

# ---------------------------------------------------------------- shared pieces


def frame_mask(padding: torch.Tensor, num_frames: int) -> torch.Tensor:
    """padding: (B,) number of valid frames → (B, 1, T, 1, 1) bool, True where frame index < padding."""
    frames = torch.arange(num_frames, device=padding.device)
    return (frames[None, :] < padding.reshape(-1, 1)).reshape(-1, 1, num_frames, 1, 1)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the VALID elements only (padded frames give exactly zero gradient).

    pred, target: (B, C, T, h, w); mask: broadcastable to them (e.g. `frame_mask`). Computed in float32 so
    fp16 activations do not overflow the sum.
    """
    weights = mask.to(torch.float32).expand_as(pred)
    squared = (pred.float() - target.float()) ** 2
    return (squared * weights).sum() / weights.sum().clamp_min(1.0)


def to_frame_residual(video: torch.Tensor, cond_frame: torch.Tensor, scale: float) -> torch.Tensor:
    """video (B, C, T, h, w), cond_frame (B, C, h, w) → (video − frame) / scale: what a frame-residual LVDM
    diffuses. On phantom latents the motion is ~3 % of the variance, so a model that diffuses the video
    learns to copy the frame long before it learns any motion; the residual is the motion at unit scale."""
    return (video - cond_frame.unsqueeze(2)) / scale


def from_frame_residual(residual: torch.Tensor, cond_frame: torch.Tensor, scale: float) -> torch.Tensor:
    """The exact inverse of `to_frame_residual`."""
    return residual * scale + cond_frame.unsqueeze(2)


def _noise_with_offset(x0: torch.Tensor, offset: float, generator: torch.Generator | None) -> torch.Tensor:
    """randn_like(x0) + offset · randn(B, C, 1, 1, 1): the offset term shifts a whole channel of a clip,
    which lets the model learn global brightness changes (the reference uses 0.1)."""
    gen_device = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=gen_device)
    if offset:
        per_channel = (*x0.shape[:2], *([1] * (x0.ndim - 2)))
        noise = noise + offset * torch.randn(per_channel, generator=generator, device=gen_device)
    return noise.to(device=x0.device, dtype=x0.dtype)


class Objective(Protocol):
    noise_offset: float

    def make_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...
    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor: ...
    def training_target(self, x0: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def model_time(self, t: torch.Tensor) -> torch.Tensor: ...
    def predict_x0(self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...
    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


class _MaskedObjective:
    noise_offset: float = 0.0

    def make_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0: (B, C, T, h, w) → noise of the same shape (with the configured offset)."""
        return _noise_with_offset(x0, self.noise_offset, generator)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse(pred, target, mask)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values: (B,) → (B, 1, ..., 1) broadcastable against `like`."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(device=like.device, dtype=like.dtype)


# ---------------------------------------------------------------- v-prediction DDPM (the reference)


def make_scheduler(kind: str = "ddpm", *, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                   beta_end: float = 0.02, clip_sample_range: float = 4.0,
                   timestep_spacing: str = "leading"):
    """The diffusers scheduler for v-prediction DDPM; training and the sampler both build it from here
    so they cannot disagree. kind: "ddpm" (ancestral, the reference sampler) or "ddim" (deterministic)."""
    from diffusers import DDIMScheduler, DDPMScheduler  # heavy import kept off the CLI start-up path

    shared = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                  beta_schedule="linear", prediction_type="v_prediction", clip_sample=True,
                  clip_sample_range=clip_sample_range, timestep_spacing=timestep_spacing)
    if kind == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **shared)
    if kind == "ddim":
        return DDIMScheduler(**shared)
    raise ValueError(f"unknown scheduler kind {kind!r}; choose one of ['ddim', 'ddpm']")


class VPredictionDDPM(_MaskedObjective):
    """DDPM with v-prediction: x_t = √ᾱ·x0 + √(1−ᾱ)·ε, target v = √ᾱ·ε − √(1−ᾱ)·x0 (diffusers math)."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 clip_sample_range: float = 4.0, noise_offset: float = 0.1,
                 timestep_spacing: str = "leading"):
        self.noise_offset = noise_offset
        self.scheduler_config = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                     beta_end=beta_end, clip_sample_range=clip_sample_range,
                                     timestep_spacing=timestep_spacing)
        self.scheduler = make_scheduler("ddpm", **self.scheduler_config)

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """(B,) int64 in [0, num_train_timesteps)."""
        gen_device = generator.device if generator is not None else "cpu"
        n = self.scheduler_config["num_train_timesteps"]
        return torch.randint(0, n, (batch,), generator=generator, device=gen_device).to(device)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0, noise: (B, C, T, h, w); t: (B,) int → (x_t, v), both (B, C, T, h, w)."""
        return self.scheduler.add_noise(x0, noise, t), self.scheduler.get_velocity(x0, noise, t)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t  # the UNet receives the integer DDPM step, as in the reference

    def predict_x0(self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂ (used by validation previews)."""
        alpha_bar = self.scheduler.alphas_cumprod.to(x_t.device)[t.to(x_t.device)]
        a = _per_sample(alpha_bar, x_t)
        return a.sqrt() * x_t - (1 - a).sqrt() * pred


# ---------------------------------------------------------------- rectified flow


def flow_timesteps(num_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sampling grid for rectified flow: (num_steps + 1,) from t=1 (pure noise) down to t=0 (data)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(1.0, 0.0, num_steps + 1, device=device)


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float | torch.Tensor,
               t_next: float | torch.Tensor) -> torch.Tensor:
    """One Euler step of dx/dt = v from t to t_next (t_next < t when sampling): x + (t_next − t)·v."""
    return x + (t_next - t) * v


class RectifiedFlow(_MaskedObjective):
    """Rectified-flow matching with ONE convention shared by training and sampling (the reference's flow
    mode mixed time units and velocity signs, seed-systems §3.3 / §8.7):

    - t ∈ [0, 1]; x_t = (1 − t)·x0 + t·noise (t=0 data, t=1 noise);
    - target velocity v = dx_t/dt = noise − x0;
    - the UNet receives t·time_scale (float, same range as DDPM steps, so the sinusoidal time embedding
      is used the same way);
    - sampling integrates dx/dt = v from t=1 to t=0 over `flow_timesteps` with `euler_step`.
    """

    def __init__(self, noise_offset: float = 0.0, time_scale: float = 1000.0):
        self.noise_offset = noise_offset
        self.time_scale = time_scale

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """(B,) float in [0, 1), uniform."""
        gen_device = generator.device if generator is not None else "cpu"
        return torch.rand(batch, generator=generator, device=gen_device).to(device)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0, noise: (B, C, T, h, w); t: (B,) in [0, 1] → (x_t, v = noise − x0)."""
        tt = _per_sample(t, x0)
        return (1 - tt) * x0 + tt * noise, noise - x0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * self.time_scale

    def predict_x0(self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂0 = x_t − t·v̂ (the straight line back to t=0)."""
        return x_t - _per_sample(t, x_t) * pred


# ---------------------------------------------------------------- config + factory


class DDPMObjectiveConfig(StrictModel):
    kind: Literal["v_ddpm"] = "v_ddpm"
    num_train_timesteps: int = Field(1000, gt=0)
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0, lt=1)
    clip_sample_range: float = Field(4.0, gt=0)
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"
    noise_offset: float = Field(0.1, ge=0)


class FlowObjectiveConfig(StrictModel):
    kind: Literal["rectified_flow"] = "rectified_flow"
    noise_offset: float = Field(0.0, ge=0)
    time_scale: float = Field(1000.0, gt=0)


def _objective_kind(value: Any) -> str | None:
    return value.get("kind", "v_ddpm") if isinstance(value, dict) else getattr(value, "kind", None)


# `lvdm.objective` in params.yaml: `kind` (default v_ddpm) picks the model, so each kind accepts only its
# own keys (a DDPM key under rectified_flow is an error, not silently ignored).
ObjectiveConfig = Annotated[
    Annotated[DDPMObjectiveConfig, Tag("v_ddpm")] | Annotated[FlowObjectiveConfig, Tag("rectified_flow")],
    Discriminator(_objective_kind),
]


def build_objective(cfg: DDPMObjectiveConfig | FlowObjectiveConfig) -> Objective:
    """The objective named by `cfg.kind`, configured by the rest of `cfg`."""
    params = cfg.model_dump(exclude={"kind"})
    if isinstance(cfg, DDPMObjectiveConfig):
        return VPredictionDDPM(**params)
    return RectifiedFlow(**params)
