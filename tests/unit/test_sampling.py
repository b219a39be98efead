"""Sampler math: the registry, windows, merging, guidance, seeds, schedulers — with an exact oracle, a tiny
real SVD denoiser (video) and a tiny real diffusers UNet2DModel (image)."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from echo_core.diffusion.guidance import Guidance
from echo_core.diffusion.objectives import DDPMObjectiveConfig, FlowObjectiveConfig, make_scheduler
from echo_core.diffusion.samplers import (
    OBJECTIVE_SAMPLERS,
    SAMPLERS,
    initial_noise,
    make_sampling_scheduler,
    sample_image,
    sample_video,
)
from echo_core.diffusion.windows import merge_windows, window_starts
from echo_core.errors import UsageError
from echo_core.generation.pipeline import SamplerOptions
from echo_core.models.conditioning import ConditionEncoder, ConditioningConfig
from echo_core.models.unet import UNetConfig, build_denoiser

torch.set_num_threads(2)
DDPM = DDPMObjectiveConfig()
FLOW = FlowObjectiveConfig()
OBJECTIVE = {name: FLOW if name in OBJECTIVE_SAMPLERS["rectified_flow"] else DDPM for name in SAMPLERS}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    denoiser = build_denoiser(UNetConfig(name="tiny"), cross_attention_dim=1, num_frames=4).eval()
    encoder = ConditionEncoder(ConditioningConfig(types=["ef"], dim=1))
    return denoiser, encoder


def _run(model, seeds, *, sampler="ddim", objective=DDPM, num_frames=4, window=4, stride=2, scale=1.0,
         frame_scale=None, blend=False, steps=2):
    denoiser, encoder = model
    b = len(seeds)
    frame = torch.linspace(-1, 1, 4 * 14 * 14).reshape(1, 4, 14, 14).repeat(b, 1, 1, 1)
    tokens = encoder({"ef": torch.full((b,), 0.55), "has_ef": torch.ones(b, dtype=torch.bool)})
    return sample_video(denoiser, sampler, objective=objective, cond_frame=frame, cond_tokens=tokens,
                        null_tokens=encoder.null_condition(b), num_frames=num_frames, window=window, stride=stride,
                        seeds=seeds, steps=steps, guidance_scale=scale, frame_guidance_scale=frame_scale,
                        fps=25.0, blend=blend)


def test_window_starts_cover_any_length_and_end_exactly():
    assert window_starts(192, 64, 32) == [0, 32, 64, 96, 128]  # the reference's 5 windows
    assert window_starts(100, 64, 32) == [0, 32, 36]  # last window shifted back, never padded with noise
    assert window_starts(10, 64, 32) == [0]
    assert window_starts(128, 64, 64) == [0, 64]
    with pytest.raises(UsageError, match="stride"):
        window_starts(100, 64, 65)


def test_merge_keep_takes_each_frame_from_its_first_window_and_blend_averages():
    starts = [0, 2, 4]
    preds = [torch.full((1, 1, 4, 1, 1), float(i)) for i in range(3)]
    kept = merge_windows(preds, starts, 8, blend=False).flatten().tolist()
    assert kept == [0, 0, 0, 0, 1, 1, 2, 2]  # window r adds only its second half (reference rule)
    blended = merge_windows(preds, starts, 8, blend=True).flatten().tolist()
    assert blended == [0, 0, 0.5, 0.5, 1.5, 1.5, 2, 2]


def test_guidance_combination_formulas():
    f = torch.zeros(1, 4, 2, 2)
    full, frame_only, uncond = torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.0)
    cfg = Guidance(f, f, guidance_scale=4.0, cond_frame=f)
    assert len(cfg.branches()) == 2 and float(cfg.combine([full, frame_only])) == 2.0 + 4.0 * 1.0
    both = Guidance(f, f, guidance_scale=4.0, cond_frame=f, frame_guidance_scale=3.0)
    # v0 + s_f (vf - v0) + s_c (vc - vf) = 1 + 3·1 + 4·1
    assert len(both.branches()) == 3 and float(both.combine([full, frame_only, uncond])) == 8.0
    assert torch.equal(both.branches()[2][0], torch.zeros_like(f))  # the trained "no frame" is zeros
    assert len(Guidance(f, f, cond_frame=f).branches()) == 1  # scale 1: a single conditional pass
    assert [fr for fr, _ in Guidance(f, f, guidance_scale=2.0).branches()] == [None, None]  # image model: no frame


def test_dpm_solver_uses_the_training_betas():
    dpm = make_sampling_scheduler("dpmpp_2m", DDPM)
    assert torch.allclose(dpm.betas, make_scheduler("ddpm").betas)
    assert dpm.config.prediction_type == "v_prediction" and dpm.config.algorithm_type == "dpmsolver++"
    assert dpm.config.solver_order == 2


def test_same_seed_same_video_different_seed_different(model):
    a = _run(model, [7, 8], sampler="ddpm")
    b = _run(model, [7, 8], sampler="ddpm")
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])
    alone = _run(model, [8], sampler="ddpm")  # a sample does not depend on its batch mates
    assert torch.allclose(alone[0], a[1], atol=1e-4)


def test_stride_equal_window_reproduces_single_window(model):
    single = _run(model, [3], window=4, stride=4)
    overlapping = _run(model, [3], window=4, stride=2, blend=True)
    assert torch.equal(single, overlapping)  # num_frames == window: one window whatever the stride


def test_long_video_and_guidance_paths(model):
    long = _run(model, [1], num_frames=7, window=4, stride=2, scale=3.0, frame_scale=2.0, sampler="dpmpp_2m")
    assert long.shape == (1, 4, 7, 14, 14) and torch.isfinite(long).all()
    assert not torch.allclose(_run(model, [1], scale=1.0), _run(model, [1], scale=3.0))


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_flow_samplers_run_and_objective_mismatch_is_refused(model, sampler):
    out = _run(model, [2], sampler=sampler, objective=FlowObjectiveConfig())
    assert out.shape == (1, 4, 4, 14, 14) and torch.isfinite(out).all()
    with pytest.raises(UsageError, match="does not fit"):
        _run(model, [2], sampler=sampler)
    with pytest.raises(UsageError, match="unknown sampler"):
        _run(model, [2], sampler="plms")


# ---------------------------------------------------------------- one registry, one signature


def test_registry_names_fit_the_objectives_and_the_sampler_options():
    assert list(SAMPLERS) == ["ddpm", "ddim", "dpmpp_2m", "euler", "heun"]
    assert sorted(sum(OBJECTIVE_SAMPLERS.values(), ())) == sorted(SAMPLERS)
    assert get_args(SamplerOptions.model_fields["sampler"].annotation) == tuple(SAMPLERS)


def _exact_model(x0: torch.Tensor, objective):
    """The ideal predictor for data that is the single point x0 (v-prediction or flow velocity)."""
    alphas = make_scheduler("ddpm").alphas_cumprod

    def predict(x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        assert t_model.shape == (x_t.shape[0],)
        if isinstance(objective, FlowObjectiveConfig):
            t = (t_model / objective.time_scale).reshape(-1, *[1] * (x_t.ndim - 1))
            return (x_t - x0) / t
        a = alphas[t_model.long()].reshape(-1, *[1] * (x_t.ndim - 1))
        noise = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    return predict


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 4, 5, 6)], ids=["image", "video"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_reaches_the_data_with_an_exact_model_for_any_shape(name, shape):
    objective = OBJECTIVE[name]
    x0 = torch.linspace(-1, 1, torch.Size(shape).numel()).reshape(shape)
    seen = []
    out = SAMPLERS[name](_exact_model(x0, objective), initial_noise([1, 2], shape[1:], "cpu"),
                         objective=objective, steps=4, seeds=[1, 2], callback=seen.append)
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)
    assert [info["i"] for info in seen] == [0, 1, 2, 3] and {info["total"] for info in seen} == {4}
    assert set(seen[0]) == {"i", "total", "t", "x", "denoised"}
    torch.testing.assert_close(seen[0]["denoised"], x0, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------- image models (tiny diffusers UNet2DModel)


@pytest.fixture(scope="module")
def image_model():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=3).eval()
    return lambda x, t, class_labels: unet(x, t, class_labels=class_labels).sample


def _image(denoiser, name, seeds, scale=2.0, classes=(0, 1)):
    cond = torch.tensor(classes[:len(seeds)])
    return sample_image(denoiser, name, objective=OBJECTIVE[name], cond_tokens=cond,
                        null_tokens=torch.full_like(cond, 2), seeds=seeds, shape=(4, 8, 8), steps=2,
                        guidance_scale=scale)  # class 2 is the null class


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sample_image_with_a_tiny_unet2d_for_every_sampler(image_model, name):
    out = _image(image_model, name, [3, 4])
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    assert torch.equal(out, _image(image_model, name, [3, 4]))
    torch.testing.assert_close(_image(image_model, name, [4], classes=(1,))[0], out[1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, _image(image_model, name, [3, 4], scale=1.0))  # guidance acts
    wrong = "euler" if name in OBJECTIVE_SAMPLERS["v_ddpm"] else "ddim"
    with pytest.raises(UsageError, match="does not fit"):
        sample_image(image_model, wrong, objective=OBJECTIVE[name], cond_tokens=torch.tensor([0]),
                     null_tokens=torch.tensor([2]), seeds=[0], shape=(4, 8, 8), steps=1)


def test_a_frame_residual_model_gets_its_frame_added_back(model):
    denoiser, encoder = model
    b, frame = 2, torch.randn(2, 4, 14, 14)
    tokens = encoder({"ef": torch.full((b,), 0.55), "has_ef": torch.ones(b, dtype=torch.bool)})
    kw = dict(objective=DDPM, cond_frame=frame, cond_tokens=tokens, null_tokens=encoder.null_condition(b),
              num_frames=6, window=4, stride=2, seeds=[0, 1], steps=2)
    plain = sample_video(denoiser, "ddim", **kw)
    residual = sample_video(denoiser, "ddim", frame_residual=0.25, **kw)
    assert torch.allclose(residual, plain * 0.25 + frame.unsqueeze(2), atol=1e-6)
    with pytest.raises(UsageError, match="frame guidance"):
        sample_video(denoiser, "ddim", frame_residual=0.25, frame_guidance_scale=2.0, **kw)


def test_frame_residual_and_frame_dropout_exclude_each_other():
    with pytest.raises(ValueError, match="p_frame 0"):
        ConditioningConfig(types=["ef"], dim=1, frame_residual=0.25, p_frame=0.1)
