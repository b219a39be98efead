"""SVD UNet factory, 14→16 padding, added_time_ids and the LatentVideoDenoiser wrapper (real diffusers)."""

from __future__ import annotations

import pytest
import torch

from echo_core.config import validate_config
from echo_core.errors import ConfigError
from echo_core.models.unet import (
    UNET_CONFIGS,
    LatentVideoDenoiser,
    UNetConfig,
    build_denoiser,
    build_unet,
    make_added_time_ids,
    pad_latents,
    unpad_latents,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_denoiser() -> LatentVideoDenoiser:
    torch.manual_seed(0)
    unet = build_unet("tiny", cross_attention_dim=16, num_frames=8, added_time_ids=True)
    return LatentVideoDenoiser(unet, added_time_ids=True)


def test_unknown_config_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown UNet config 'huge'.*\['reference', 'tiny'\]"):
        build_unet("huge", cross_attention_dim=1, num_frames=8, added_time_ids=False)


def test_reference_config_matches_the_reference_lvdm():
    unet = build_unet("reference", cross_attention_dim=1, num_frames=64, added_time_ids=False)
    cfg = unet.config
    assert (cfg.in_channels, cfg.out_channels, cfg.num_frames, cfg.sample_size) == (8, 4, 64, 16)
    assert tuple(cfg.block_out_channels) == (128, 256, 256, 512)
    assert tuple(cfg.num_attention_heads) == (8, 16, 16, 32)
    assert cfg.layers_per_block == 2 and cfg.cross_attention_dim == 1
    assert list(cfg.down_block_types).count("CrossAttnDownBlockSpatioTemporal") == 3
    # added ids disabled → the reference's degenerate 1-d embedding, 3 ids
    assert (cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim) == (1, 3)


def test_added_time_ids_enabled_keeps_projection_consistent():
    unet = build_unet("tiny", cross_attention_dim=4, num_frames=8, added_time_ids=True, addition_time_embed_dim=6)
    assert unet.config.projection_class_embeddings_input_dim == 3 * 6


def test_pad_is_replicate_and_unpad_is_its_inverse():
    x = torch.randn(2, 4, 3, 14, 14)
    padded = pad_latents(x)
    assert padded.shape == (2, 3, 4, 16, 16)
    torch.testing.assert_close(padded[:, :, :, 0, 1:-1], x.permute(0, 2, 1, 3, 4)[:, :, :, 0, :])  # top row copied
    torch.testing.assert_close(padded[:, :, :, 0, 0], x.permute(0, 2, 1, 3, 4)[:, :, :, 0, 0])  # corner
    assert torch.equal(unpad_latents(padded), x)


def test_added_time_ids_carry_fps_and_motion_or_zeros():
    on = make_added_time_ids(torch.tensor([32.0, 25.0]), 100.0, 2, enabled=True)
    assert on.shape == (2, 3)
    assert on.tolist() == [[32.0, 100.0, 0.0], [25.0, 100.0, 0.0]]
    off = make_added_time_ids(32.0, None, 2, enabled=False)
    assert off.shape == (2, 3) and not off.any()


def test_denoiser_forward_backward_on_tiny(tiny_denoiser):
    torch.manual_seed(1)
    noisy = torch.randn(2, 4, 8, 14, 14)
    cond = torch.randn(2, 4, 14, 14)
    states = torch.randn(2, 3, 16)
    out = tiny_denoiser(noisy, torch.tensor([10, 500]), cond, states, fps=torch.tensor([32.0, 32.0]))
    assert out.shape == noisy.shape
    out.square().mean().backward()
    grads = [p.grad for p in tiny_denoiser.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    tiny_denoiser.zero_grad(set_to_none=True)


@torch.no_grad()
def test_conditioning_frame_and_fps_reach_the_output(tiny_denoiser):
    torch.manual_seed(2)
    noisy, cond, states = torch.randn(1, 4, 8, 14, 14), torch.randn(1, 4, 14, 14), torch.randn(1, 3, 16)
    t = torch.tensor([300])
    base = tiny_denoiser(noisy, t, cond, states, fps=32.0)
    assert not torch.allclose(base, tiny_denoiser(noisy, t, torch.zeros_like(cond), states, fps=32.0))
    assert not torch.allclose(base, tiny_denoiser(noisy, t, cond, states, fps=8.0))


@torch.no_grad()
def test_fps_is_ignored_when_added_time_ids_are_disabled():
    torch.manual_seed(3)
    config = validate_config(UNetConfig, {"name": "tiny", "added_time_ids": False})
    denoiser = build_denoiser(config, cross_attention_dim=1, num_frames=4)
    noisy, cond, states = torch.randn(1, 4, 4, 14, 14), torch.randn(1, 4, 14, 14), torch.randn(1, 1, 1)
    a = denoiser(noisy, torch.tensor([5]), cond, states, fps=32.0)
    b = denoiser(noisy, torch.tensor([5]), cond, states, fps=8.0)
    assert torch.equal(a, b)


def test_unet_config_is_strict():
    with pytest.raises(ConfigError, match="nmae"):
        validate_config(UNetConfig, {"nmae": "tiny"})


def test_save_pretrained_round_trip(tmp_path, tiny_denoiser):
    from diffusers import UNetSpatioTemporalConditionModel

    tiny_denoiser.unet.save_pretrained(tmp_path / "unet")
    loaded = UNetSpatioTemporalConditionModel.from_pretrained(tmp_path / "unet")
    assert loaded.config.projection_class_embeddings_input_dim == 3 * UNET_CONFIGS["tiny"]["addition_time_embed_dim"]
    for (name, a), (_, b) in zip(tiny_denoiser.unet.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@torch.no_grad()
def test_ef_micro_condition_feeds_the_ef_token_as_the_motion_bucket():
    torch.manual_seed(4)
    config = validate_config(UNetConfig, {"name": "tiny", "added_time_ids": True, "ef_micro_condition": True})
    denoiser = build_denoiser(config, cross_attention_dim=1, num_frames=4)
    noisy, cond, t = torch.randn(2, 4, 4, 14, 14), torch.randn(2, 4, 14, 14), torch.tensor([5, 5])
    tokens = torch.tensor([0.3, -1.0]).reshape(2, 1, 1)  # EF 30 %, and the null token
    out = denoiser(noisy, t, cond, tokens, fps=32.0)
    sample = pad_latents(torch.cat([noisy, cond.unsqueeze(2).expand(-1, -1, 4, -1, -1)], dim=1))
    ids = torch.tensor([[32.0, 30.0, 0.0], [32.0, -100.0, 0.0]])
    direct = denoiser.unet(sample, t, encoder_hidden_states=tokens, added_time_ids=ids).sample
    assert torch.allclose(out, unpad_latents(direct), atol=1e-5)
    denoiser.ef_micro_condition = False  # the constant bucket instead: another output
    assert not torch.allclose(out, denoiser(noisy, t, cond, tokens, fps=32.0), atol=1e-4)


def test_ef_micro_condition_needs_added_time_ids_and_the_scalar_ef_token():
    from echo_core.models.lvdm import LvdmSpec

    with pytest.raises(ValueError, match="added_time_ids: true"):
        LvdmSpec.model_validate({"model": {"name": "tiny", "ef_micro_condition": True}})
    with pytest.raises(ValueError, match="ef_mode scalar"):
        LvdmSpec.model_validate({"model": {"name": "tiny", "added_time_ids": True, "ef_micro_condition": True},
                                 "conditioning": {"types": ["ef"], "ef_mode": "embedding", "dim": 8}})
