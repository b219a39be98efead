"""LVDM training previews: sample the fixed validation clips with the batch-generation sampler, write a GIF.

The preview calls `echo_core.diffusion.samplers.sample_video` with the same guidance as `echoforge sample`
(null tokens from the condition encoder), so what a run's previews show is what its registered model
generates (DDIM for v-DDPM, Euler for rectified flow, one window of the clip length).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import default_collate

from echo_core.config import StrictModel
from echo_core.diffusion.objectives import FlowObjectiveConfig
from echo_core.diffusion.samplers import sample_video
from echo_core.errors import DataError
from echo_core.latents.clips import LatentClipDataset
from echo_core.models.lvdm import LvdmNet
from echo_core.training.run import to_device

log = logging.getLogger("echoforge.train")


class ValidationConfig(StrictModel):
    every: int | None = Field(1500, ge=1)  # optimizer steps; None disables validation videos
    num_samples: int = Field(4, ge=1)
    steps: int = Field(25, ge=1)  # sampler steps (DDIM for v-DDPM, Euler for flow)
    guidance_scale: float = Field(1.0, ge=0.0)  # classifier-free guidance on the conditions; 1 = none


def validation_batch(cfg: Any, data_roots: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The first `num_samples` VAL clips (epoch 0: the same clips, frames and conditions every time);
    TRAIN clips when the stores have no usable VAL split. `cfg`: an LvdmTrainConfig."""
    kwargs = dict(conditions=cfg.conditioning.types, seed=cfg.seed)
    try:
        dataset = LatentClipDataset.from_config(data_roots, "VAL", cfg.dataset, **kwargs)
    except DataError as exc:
        log.warning("validation uses TRAIN clips: %s", str(exc).splitlines()[0])
        dataset = LatentClipDataset.from_config(data_roots, "TRAIN", cfg.dataset, **kwargs)
    return default_collate([dataset[i] for i in range(min(cfg.validation.num_samples, len(dataset)))])


@torch.no_grad()
def sample_validation(net: LvdmNet, batch: Mapping[str, Any], cfg: ValidationConfig, seed: int) -> torch.Tensor:
    """Clips for the batch's conditioning frames and conditions → latents (B, C, T, h, w); sample i is
    seeded `seed + i`. With guidance_scale ≠ 1: classifier-free guidance against the null tokens."""
    spec = net.spec
    batch = to_device(batch, next(net.parameters()).device)
    n, frames = batch["video"].shape[0], batch["video"].shape[2]
    sampler = "euler" if isinstance(spec.objective, FlowObjectiveConfig) else "ddim"
    return sample_video(net.denoiser, sampler, objective=spec.objective, cond_frame=batch["cond_frame"],
                        cond_tokens=net.conditioner(batch), null_tokens=net.conditioner.null_condition(n),
                        num_frames=frames, window=frames, stride=frames, seeds=[seed + i for i in range(n)],
                        steps=cfg.steps, guidance_scale=cfg.guidance_scale, fps=spec.dataset.target_fps,
                        frame_residual=spec.conditioning.frame_residual)


@torch.no_grad()
def latents_to_frames(latents: torch.Tensor, vae: Any = None, upscale: int = 4) -> np.ndarray:
    """latents: (C, T, h, w) → uint8 frames. With a VAE: decoded (T, H, W, 3). Without: latent channel 0
    mapped from [−3, 3] to gray and upscaled `upscale`× (T, h·upscale, w·upscale)."""
    if vae is None:
        gray = ((latents[0].float().clamp(-3, 3) + 3) / 6 * 255).round().to(torch.uint8).cpu().numpy()
        return gray.repeat(upscale, axis=1).repeat(upscale, axis=2)
    from echo_core.models.vae import output_to_frames

    z = latents.permute(1, 0, 2, 3) / vae.config.scaling_factor
    decoded = vae.decode(z.to(vae.device, vae.dtype)).sample
    return output_to_frames(decoded).cpu().numpy()


def validation_grid(batch: Mapping[str, Any], generated: torch.Tensor, vae: Any = None) -> np.ndarray:
    """One row per sample: [conditioning frame | real clip | generated clip]; frames (T, rows·H, 3·W[, 3])."""
    rows = []
    for i in range(generated.shape[0]):
        real = latents_to_frames(batch["video"][i], vae)
        cond = latents_to_frames(batch["cond_frame"][i][:, None], vae).repeat(len(real), axis=0)
        rows.append(np.concatenate([cond, real, latents_to_frames(generated[i].cpu(), vae)], axis=2))
    return np.concatenate(rows, axis=1)


def write_validation_video(net: LvdmNet, batch: Mapping[str, Any], cfg: ValidationConfig, *, seed: int,
                           path: Path, vae: Any = None) -> Path:
    """Sample the batch with `net` (EMA weights, eval mode) and write the grid as a GIF at `path`."""
    from echo_core.data.video import write_video

    if vae is not None:
        vae.to(next(net.parameters()).device)
    frames = validation_grid(batch, sample_validation(net, batch, cfg, seed), vae)
    return write_video(path, frames, net.spec.dataset.target_fps)
