"""v-prediction DDPM and rectified flow: targets, time conventions, loss mask, noise offset."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel

from echo_core.config import StrictModel, validate_config
from echo_core.diffusion.objectives import (
    ObjectiveConfig,
    RectifiedFlow,
    VPredictionDDPM,
    build_objective,
    euler_step,
    flow_timesteps,
    frame_mask,
    make_scheduler,
    masked_mse,
)
from echo_core.errors import ConfigError


class _Section(StrictModel):
    objective: ObjectiveConfig


def _objective(**cfg) -> BaseModel:
    return validate_config(_Section, {"objective": cfg}).objective


def test_frame_mask_counts_valid_frames_without_the_reference_off_by_one():
    mask = frame_mask(torch.tensor([3, 5, 0]), num_frames=5)
    assert mask.shape == (3, 1, 5, 1, 1)
    assert mask[:, 0, :, 0, 0].int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]


def test_padded_frames_contribute_exactly_zero_gradient():
    torch.manual_seed(0)
    pred = torch.randn(2, 4, 6, 3, 3, requires_grad=True)
    target = torch.randn(2, 4, 6, 3, 3)
    padding = torch.tensor([4, 6])
    loss = masked_mse(pred, target, frame_mask(padding, 6))
    loss.backward()
    assert torch.equal(pred.grad[0, :, 4:], torch.zeros_like(pred.grad[0, :, 4:]))  # index == padding excluded
    assert (pred.grad[0, :, :4] != 0).all() and (pred.grad[1] != 0).all()
    # mean over VALID elements only
    valid = torch.cat([(pred[0, :, :4] - target[0, :, :4]).flatten(), (pred[1] - target[1]).flatten()])
    torch.testing.assert_close(loss, valid.square().mean())


def test_ddpm_matches_the_reference_scheduler():
    ddpm = VPredictionDDPM()
    cfg = ddpm.scheduler.config
    assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type) == (1000, "linear", "v_prediction")
    assert (cfg.clip_sample, cfg.clip_sample_range, cfg.timestep_spacing) == (True, 4.0, "leading")
    torch.testing.assert_close(ddpm.scheduler.betas[[0, -1]], torch.tensor([1e-4, 0.02]))
    assert ddpm.noise_offset == 0.1
    assert make_scheduler("ddim").config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="ddim"):
        make_scheduler("euler")


def test_ddpm_v_target_identity_recovers_x0_and_noise():
    torch.manual_seed(1)
    ddpm = VPredictionDDPM()
    x0, noise = torch.randn(3, 4, 5, 6, 6), torch.randn(3, 4, 5, 6, 6)
    t = torch.tensor([0, 500, 999])
    x_t, v = ddpm.training_target(x0, noise, t)
    torch.testing.assert_close(ddpm.predict_x0(x_t, v, t), x0, atol=1e-4, rtol=1e-4)
    a = ddpm.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * x0)  # v = √ᾱ ε − √(1−ᾱ) x0
    torch.testing.assert_close(a.sqrt() * v + (1 - a).sqrt() * x_t, noise, atol=1e-4, rtol=1e-4)
    assert torch.equal(ddpm.model_time(t), t)


def test_timesteps_are_seeded_and_in_range():
    ddpm, flow = VPredictionDDPM(), RectifiedFlow()
    t1 = ddpm.sample_timesteps(64, torch.Generator().manual_seed(7))
    t2 = ddpm.sample_timesteps(64, torch.Generator().manual_seed(7))
    assert torch.equal(t1, t2) and t1.dtype == torch.int64 and t1.min() >= 0 and t1.max() < 1000
    s = flow.sample_timesteps(64, torch.Generator().manual_seed(7))
    assert s.dtype == torch.float32 and s.min() >= 0 and s.max() < 1


def test_flow_convention_train_and_sample_agree_for_a_point_mass():
    """With the exact velocity field of a point mass (what a perfect model learns from `training_target`),
    Euler integration over `flow_timesteps` lands on x0: train and sample share one convention."""
    flow = RectifiedFlow()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 4, 2, 3, 3, generator=gen)
    noise = torch.randn(1, 4, 2, 3, 3, generator=gen)
    x, grid = noise.clone(), flow_timesteps(8)
    assert grid[0] == 1.0 and grid[-1] == 0.0
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        x_t, v_target = flow.training_target(x0, noise, t.reshape(1))
        torch.testing.assert_close(x_t, x, atol=1e-5, rtol=1e-5)  # sampler is on the training path
        exact_v = (x - x0) / t  # velocity field of the point mass at (x, t)
        torch.testing.assert_close(v_target, exact_v, atol=1e-4, rtol=1e-4)
        x = euler_step(x, exact_v, t, t_next)
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flow.model_time(torch.tensor([0.25])), torch.tensor([250.0]))


def test_flow_predict_x0_inverts_training_target():
    flow = RectifiedFlow()
    x0, noise, t = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2), torch.tensor([0.3, 0.9])
    x_t, v = flow.training_target(x0, noise, t)
    torch.testing.assert_close(flow.predict_x0(x_t, v, t), x0)


def test_noise_offset_statistics():
    """noise = ε + 0.1·randn(B, C, 1, 1, 1): per-(clip, channel) means have variance 0.01 + 1/N."""
    ddpm = VPredictionDDPM(noise_offset=0.1)
    x0 = torch.zeros(256, 4, 8, 16, 16)
    noise = ddpm.make_noise(x0, torch.Generator().manual_seed(0))
    n = 8 * 16 * 16
    channel_means = noise.mean(dim=(2, 3, 4))
    assert abs(channel_means.var().item() - (0.01 + 1 / n)) < 0.003
    within = noise - noise.mean(dim=(2, 3, 4), keepdim=True)
    assert abs(within.std().item() - 1.0) < 0.01
    plain = VPredictionDDPM(noise_offset=0.0).make_noise(x0, torch.Generator().manual_seed(0))
    assert plain.mean(dim=(2, 3, 4)).var().item() < 2 / n


def test_build_objective_from_strict_config():
    assert isinstance(build_objective(_objective()), VPredictionDDPM)
    flow = build_objective(_objective(kind="rectified_flow", noise_offset=0.05))
    assert isinstance(flow, RectifiedFlow) and flow.noise_offset == 0.05
    with pytest.raises(ConfigError, match="beta_start"):
        _objective(kind="rectified_flow", beta_start=0.1)  # a DDPM key on flow is a mistake, not ignored
    with pytest.raises(ConfigError, match="noise_ofset"):
        _objective(noise_ofset=0.1)


def test_frame_residual_round_trip_and_zero_at_the_frame():
    from echo_core.diffusion.objectives import from_frame_residual, to_frame_residual

    video, frame = torch.randn(2, 4, 5, 14, 14), torch.randn(2, 4, 14, 14)
    video[:, :, 3] = frame  # the conditioning frame is frame 3 of the clip
    residual = to_frame_residual(video, frame, 0.25)
    assert torch.equal(residual[:, :, 3], torch.zeros_like(frame))
    assert torch.allclose(from_frame_residual(residual, frame, 0.25), video, atol=1e-6)
