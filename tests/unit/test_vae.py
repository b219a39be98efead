"""VAE factory, pixel convention, image metrics, losses, frame data and the trainer (tiny real models)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support.latent_data import make_prepared_dataset

from echo_core.data.frames import FrameDataset, load_split_frames
from echo_core.errors import WeightsError
from echo_core.metrics.image import psnr, ssim
from echo_core.models.vae import (
    VAE_CONFIGS,
    build_vae,
    check_vae_matches,
    frames_to_input,
    load_vae,
    output_to_frames,
)
from echo_core.training.losses import PatchDiscriminator, hinge_d_loss, hinge_g_loss, kl_loss, reconstruction_loss
from echo_core.training.vae import VaeTrainConfig, batch_indices, train_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_prepared_dataset(tmp_path_factory.mktemp("vae") / "ds", num_videos=4, frames=(8, 12))


# -- model ------------------------------------------------------------------------------------------
def test_tiny_vae_maps_112px_gray_frames_to_4x14x14():
    torch.manual_seed(0)
    vae = build_vae("tiny")
    x = frames_to_input(np.zeros((2, 112, 112), np.uint8))
    z = vae.encode(x).latent_dist.mean
    assert x.shape == (2, 3, 112, 112)
    assert z.shape == (2, 4, 14, 14)
    assert vae.decode(z).sample.shape == (2, 3, 112, 112)


def test_reference_config_is_the_reference_systems_vae():
    cfg = VAE_CONFIGS["reference"]
    assert cfg["block_out_channels"] == (128, 256, 256, 512)  # ch 128, ch_mult [1, 2, 2, 4]
    assert cfg["layers_per_block"] == 2
    assert (cfg["in_channels"], cfg["out_channels"], cfg["latent_channels"], cfg["sample_size"]) == (3, 3, 4, 112)


def test_unknown_vae_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"\['reference', 'tiny'\]"):
        build_vae("huge")


@pytest.mark.parametrize(("overrides", "kwargs", "message"), [
    ({"latent_channels": 8}, {}, "latent_channels 8"),
    ({"in_channels": 1, "out_channels": 1}, {}, "channels in/out 1/1"),
    ({}, {"resolution": 96}, "96 px gives 12×12 latents"),
    ({}, {"resolution": 100}, "not divisible"),
])
def test_mismatched_vae_is_a_clear_weights_error(overrides, kwargs, message):
    vae = build_vae("tiny", **overrides)
    with pytest.raises(WeightsError, match=message) as exc:
        check_vae_matches(vae, **kwargs)
    assert exc.value.fix


def test_matching_vae_passes_the_check():
    check_vae_matches(build_vae("tiny"))  # no exception: 3 ch, 112 px → 4×14×14


def test_pixel_convention_round_trips_every_uint8_value_exactly():
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = frames_to_input(values)
    assert x.min().item() == -1.0 and x.max().item() == 1.0  # symmetric, unlike the reference's x/128 - 1
    back = output_to_frames(x)
    assert back.shape == (1, 16, 16, 3)
    assert torch.equal(back[..., 0], torch.from_numpy(values))


# -- metrics ----------------------------------------------------------------------------------------
def test_psnr_on_uint8_does_not_overflow():
    a = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    b = torch.full((1, 1, 8, 8), 255, dtype=torch.uint8)
    assert psnr(a, b, data_range=255).item() == pytest.approx(0.0)  # uint8 a - b would wrap to 1
    c = b.clone()
    c[..., 0, 0] = 0  # 1 pixel of 64 off by 255: mse = 255²/64
    assert psnr(c, b, data_range=255).item() == pytest.approx(10 * math.log10(64))
    assert torch.isinf(psnr(b, b, data_range=255)).all()


def test_ssim_matches_the_closed_form_for_flat_images():
    # For constant images only the luminance term remains: (2ab + c1) / (a² + b² + c1).
    a, b = torch.full((2, 3, 16, 16), 0.2), torch.full((2, 3, 16, 16), -0.4)
    c1 = (0.01 * 2.0) ** 2
    expected = (2 * 0.2 * -0.4 + c1) / (0.2**2 + 0.4**2 + c1)
    assert torch.allclose(ssim(a, b), torch.full((2,), expected, dtype=torch.float64))


def test_ssim_runs_over_the_spatial_axes_per_image():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    b = (a + 0.2 * torch.randn(3, 1, 32, 32, generator=g)).clamp(-1, 1)
    per_image = ssim(a, b)
    assert per_image.shape == (3,)
    assert torch.allclose(ssim(a.transpose(2, 3), b.transpose(2, 3)), per_image)  # isotropic window
    assert torch.allclose(ssim(a[1:2], b[1:2]), per_image[1:2])  # images do not mix
    assert (per_image < 1).all() and torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))


# -- losses -----------------------------------------------------------------------------------------
def test_losses_have_their_textbook_values():
    x = torch.zeros(2, 3, 8, 8)
    assert reconstruction_loss(x, x + 0.5, "l1").item() == pytest.approx(0.5)
    assert reconstruction_loss(x, x + 0.5, "l2").item() == pytest.approx(0.25)
    assert kl_loss(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)).item() == 0.0
    assert kl_loss(torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)).item() == pytest.approx(0.5 * 16)
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0  # both beyond margin
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)
    assert hinge_g_loss(torch.full((4,), 3.0)).item() == -3.0
    assert PatchDiscriminator()(torch.zeros(2, 3, 112, 112)).shape == (2, 1, 12, 12)


# -- data and trainer -------------------------------------------------------------------------------
def test_batch_indices_visit_every_frame_once_per_epoch_and_are_reproducible():
    seen = np.concatenate([batch_indices(s, 10, 4, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert np.array_equal(batch_indices(3, 10, 4, seed=3), batch_indices(3, 10, 4, seed=3))
    assert not np.array_equal(batch_indices(0, 10, 4, seed=3), batch_indices(0, 10, 4, seed=4))


def test_frame_cache_is_reused_and_holds_every_kth_train_frame(dataset, tmp_path):
    frames = load_split_frames([dataset], "TRAIN", every=2, cache_dir=tmp_path)
    assert frames.shape == (4 + 6, 112, 112)  # TRAIN videos have 8 and 12 frames
    again = load_split_frames([dataset], "TRAIN", every=2, cache_dir=tmp_path)
    assert isinstance(again, np.memmap) and np.array_equal(frames, again)
    assert len(list(tmp_path.glob("frames-train-*.npy"))) == 1
    assert FrameDataset(frames).batch([0, 3]).shape == (2, 3, 112, 112)


def _cfg(**kw) -> VaeTrainConfig:
    base = {"max_steps": 4, "batch_size": 4, "frame_every": 2, "checkpoint_every": 2, "val_every": 2,
            "val_max_frames": 4, "scaling_sample_frames": 8, "learning_rate": 1e-3, "log_every": 1}
    return VaeTrainConfig(**{**base, **kw})


def test_training_writes_a_loadable_vae_with_calibrated_scale_and_val_psnr(dataset, tmp_path):
    folder = train_vae(_cfg(disc_start=2), [dataset], tmp_path)
    vae, info = load_vae(folder)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert info.scaling_factor == pytest.approx(metrics["scaling_factor"]) and info.scaling_factor != 0.18215
    assert 0 < metrics["val_psnr"] < 100 and -1 <= metrics["val_ssim"] <= 1
    assert sorted(p.name for p in (tmp_path / "reconstructions").glob("*.png")) == [
        "step-0000002.png", "step-0000004.png"]
    (run,) = (tmp_path / "checkpoints").iterdir()
    assert [p.name for p in sorted(run.iterdir())] == ["checkpoint-2", "checkpoint-4"]


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(dataset, tmp_path):
    straight = train_vae(_cfg(), [dataset], tmp_path / "a")
    train_vae(_cfg(max_steps=2), [dataset], tmp_path / "b")
    resumed = train_vae(_cfg(), [dataset], tmp_path / "b", resume="latest")
    assert len(list((tmp_path / "b" / "checkpoints").iterdir())) == 1  # max_steps change: same trajectory
    a = load_file(straight / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_params_do_not_resume_an_old_trajectory(dataset, tmp_path):
    train_vae(_cfg(max_steps=2), [dataset], tmp_path)
    train_vae(_cfg(max_steps=2, learning_rate=5e-4), [dataset], tmp_path, resume="latest")
    runs = sorted((tmp_path / "checkpoints").iterdir())
    assert len(runs) == 2 and all((r / "checkpoint-2").is_dir() for r in runs)
