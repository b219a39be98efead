"""The LVDM denoiser: diffusers' SVD UNet (`UNetSpatioTemporalConditionModel`) plus echo plumbing.

The reference systems (EchoNet-Synthetic, EchoDream) condition on a heart frame by channel concatenation:
the UNet sees 8 channels = 4 noisy video-latent channels + the 4-channel latent of the conditioning frame
repeated over all T frames, and predicts 4 channels. Latents are 14×14 (112 px / 8), which a 4-level UNet
cannot halve three times, so they are replicate-padded by 1 px to 16×16 and cropped back afterwards.

Layout conventions: echo_core keeps videos as (B, C, T, h, w) (torch Conv3d order); the diffusers UNet wants
(B, T, C, H, W). `pad_latents` / `unpad_latents` are the only places that convert between the two.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from echo_core.config import StrictModel

LATENT_CHANNELS = 4
LATENT_PAD = 1  # 14 → 16: 1 px each side, replicate (as the reference `pad_reshape`)
SVD_MOTION_BUCKET = 127.0  # SVD's default motion bucket, used when none is given

_CROSS_DOWN, _DOWN = "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"
_CROSS_UP, _UP = "CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"

UNET_CONFIGS: dict[str, dict[str, Any]] = {
    # EchoNet-Synthetic / EchoDream LVDM (seed-systems §3.2).
    "reference": {
        "block_out_channels": (128, 256, 256, 512),
        "layers_per_block": 2,
        "transformer_layers_per_block": 1,
        "num_attention_heads": (8, 16, 16, 32),
        "down_block_types": (_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, _DOWN),
        "up_block_types": (_UP, _CROSS_UP, _CROSS_UP, _CROSS_UP),
        "addition_time_embed_dim": 32,
    },
    # CPU tests and the demo: ~1.3 M parameters, fwd+bwd on (2, 4, 8, 14, 14) well under a second.
    "tiny": {
        "block_out_channels": (32, 64),  # SVD blocks use GroupNorm(32): channels must be multiples of 32
        "layers_per_block": 1,
        "transformer_layers_per_block": 1,
        "num_attention_heads": (2, 4),
        "down_block_types": (_CROSS_DOWN, _DOWN),
        "up_block_types": (_UP, _CROSS_UP),
        "addition_time_embed_dim": 8,
    },
}


class UNetConfig(StrictModel):
    """`lvdm.model` in params.yaml. Frames and cross-attention width come from the dataset and
    conditioning sections, so they are not repeated here."""

    name: str = "reference"
    added_time_ids: bool = False  # reference: False (zeros)
    motion_bucket: float = SVD_MOTION_BUCKET
    # True: the scalar EF token (EF %, or the null) replaces the constant motion bucket in `added_time_ids`,
    # so EF reaches every ResNet block through the time embedding (FiLM) instead of only a one-key
    # cross-attention, whose softmax over a single token is 1: there EF is a query-independent bias
    ef_micro_condition: bool = False
    latent_size: int = Field(14, gt=0)
    overrides: dict[str, Any] = Field(default_factory=dict)  # any UNetSpatioTemporalConditionModel kwarg


def build_unet(name: str, *, cross_attention_dim: int, num_frames: int, added_time_ids: bool,
               latent_size: int = 14, **overrides: Any):
    """Build a fresh SVD UNet from a named config (8 in = noisy + frame latents, 4 out).

    `added_time_ids=False` reproduces the reference: `addition_time_embed_dim=1`, whose sinusoidal embedding
    is identically zero, so the UNet cannot depend on fps/motion. `True` keeps the config's embedding width
    so fps and motion bucket are real micro-conditions. Either way `added_time_ids` has shape (B, 3) and
    `projection_class_embeddings_input_dim = 3 * addition_time_embed_dim` (diffusers' requirement).
    """
    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown UNet config {name!r}; choose one of {sorted(UNET_CONFIGS)}")
    from diffusers import UNetSpatioTemporalConditionModel  # heavy import kept off the CLI start-up path

    cfg = {**UNET_CONFIGS[name], **overrides}
    if not added_time_ids:
        cfg["addition_time_embed_dim"] = 1
    return UNetSpatioTemporalConditionModel(
        sample_size=latent_size + 2 * LATENT_PAD,
        in_channels=2 * LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        cross_attention_dim=cross_attention_dim,
        num_frames=num_frames,
        projection_class_embeddings_input_dim=3 * cfg["addition_time_embed_dim"],
        **cfg,
    )


def pad_latents(x: torch.Tensor, pad: int = LATENT_PAD) -> torch.Tensor:
    """x: (B, C, T, h, w) → (B, T, C, h + 2·pad, w + 2·pad), replicate-padded (UNet layout)."""
    b, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    frames = F.pad(frames, (pad, pad, pad, pad), mode="replicate")
    return frames.reshape(b, t, c, h + 2 * pad, w + 2 * pad)


def unpad_latents(x: torch.Tensor, pad: int = LATENT_PAD) -> torch.Tensor:
    """x: (B, T, C, H, W) → (B, C, T, H − 2·pad, W − 2·pad); the exact inverse of `pad_latents`."""
    return x[..., pad:-pad, pad:-pad].permute(0, 2, 1, 3, 4)


def make_added_time_ids(fps: torch.Tensor | float, motion: torch.Tensor | float | None, batch: int,
                        enabled: bool, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SVD micro-conditions → (B, 3) = [fps, motion bucket, noise-augmentation strength].

    Disabled → zeros (the reference feeds zeros). The third id is 0 because we never noise-augment the
    conditioning frame. `motion=None` uses SVD's default bucket (we have no per-clip motion estimate).
    """
    if not enabled:
        return torch.zeros(batch, 3, device=device, dtype=dtype)
    motion = SVD_MOTION_BUCKET if motion is None else motion
    fps_t = torch.as_tensor(fps, device=device, dtype=dtype).reshape(-1).expand(batch)
    motion_t = torch.as_tensor(motion, device=device, dtype=dtype).reshape(-1).expand(batch)
    return torch.stack([fps_t, motion_t, torch.zeros_like(fps_t)], dim=1)


class LatentVideoDenoiser(nn.Module):
    """SVD UNet + frame concatenation + 14→16 padding, in echo_core's (B, C, T, h, w) layout.

    The training loop and the sampler call this, never the raw UNet, so both use the same plumbing.
    """

    def __init__(self, unet: nn.Module, *, added_time_ids: bool, motion_bucket: float = SVD_MOTION_BUCKET,
                 ef_micro_condition: bool = False):
        super().__init__()
        self.unet = unet
        self.added_time_ids = added_time_ids
        self.motion_bucket = motion_bucket
        self.ef_micro_condition = ef_micro_condition

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, cond_frame: torch.Tensor,
                encoder_hidden_states: torch.Tensor, fps: torch.Tensor | float) -> torch.Tensor:
        """noisy: (B, C, T, h, w); t: (B,) or scalar (model time); cond_frame: (B, C, h, w);
        encoder_hidden_states: (B, L, D); fps: (B,) or scalar → prediction (B, C, T, h, w)."""
        b, _, frames = noisy.shape[:3]
        frame_video = cond_frame.unsqueeze(2).expand(-1, -1, frames, -1, -1)
        sample = pad_latents(torch.cat([noisy, frame_video], dim=1))
        # the scalar EF token is EF/100, or NULL_EF_SCALAR (-1) when dropped: the bucket is EF % or -100
        motion = encoder_hidden_states[:, 0, 0] * 100.0 if self.ef_micro_condition else self.motion_bucket
        ids = make_added_time_ids(fps, motion, b, self.added_time_ids, device=noisy.device, dtype=noisy.dtype)
        out = self.unet(sample, t, encoder_hidden_states=encoder_hidden_states, added_time_ids=ids).sample
        return unpad_latents(out)


def build_denoiser(cfg: UNetConfig, *, cross_attention_dim: int, num_frames: int) -> LatentVideoDenoiser:
    """A fresh `LatentVideoDenoiser` from `lvdm.model` (+ the conditioning width and clip length)."""
    unet = build_unet(cfg.name, cross_attention_dim=cross_attention_dim, num_frames=num_frames,
                      added_time_ids=cfg.added_time_ids, latent_size=cfg.latent_size, **cfg.overrides)
    return LatentVideoDenoiser(unet, added_time_ids=cfg.added_time_ids, motion_bucket=cfg.motion_bucket,
                               ef_micro_condition=cfg.ef_micro_condition)
