"""The LVDM inference pipeline: a bundle folder → (conditions, frame, seeds) → uint8 videos.

Bundle layout = the LVDM folder the trainer writes (`echo_core.models.lvdm.LvdmNet.save_pretrained`: the EMA UNet
as a diffusers folder at the root, `conditioning.safetensors`, `lvdm_config.json`) plus what generation and
serving need:

    vae/                 diffusers AutoencoderKL folder (config.json has `scaling_factor`)
    default_frame.png    privacy-safe default conditioning frame (phantom), see `default_frame.py`
    serving.json         serving caps and defaults (`requests.ServingLimits`), serving bundles only
    model_card.json/.md  the model card, serving bundles only

One pipeline serves the CLI, the Prefect flow, the MLflow pyfunc and the benchmark, so they cannot drift.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.diffusion.samplers import Callback, check_sampler, sample_video
from echo_core.errors import DataError, WeightsError
from echo_core.models.conditioning import MISSING_CLASS_ID, ConditionEncoder, ConditioningConfig, render_prompt
from echo_core.models.lvdm import CONDITIONING_FILE, LVDM_CONFIG_FILE, LvdmNet, LvdmSpec
from echo_core.models.unet import LatentVideoDenoiser
from echo_core.utils.atomic import atomic_dir

VAE_DIR = "vae"
DEFAULT_FRAME_FILE = "default_frame.png"
SERVING_FILE = "serving.json"


class SamplerOptions(StrictModel):
    """How to sample (the sampler part of `sample:` in params.yaml, and the serving params)."""

    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun"] = "ddpm"
    steps: int = Field(64, ge=1)
    guidance_scale: float = Field(1.0, ge=0.0)
    frame_guidance_scale: float | None = Field(None, ge=0.0)
    num_frames: int = Field(192, ge=1)
    window: int | None = Field(None, ge=1)  # None → the model's clip length
    stride: int | None = Field(None, ge=1)  # None → half the window (the reference overlap)
    blend: bool = False
    fps: float | None = Field(None, gt=0)  # None → the model's training fps
    decode_chunk: int = Field(64, ge=1)  # frames per VAE decode call
    gray: bool = True  # echo is grayscale: store the rounded channel mean, as the reference sets do


@dataclass(frozen=True)
class CondSpec:
    """One sample's clinical condition; None = not given (that condition's null)."""

    ef_percent: float | None = None
    class_id: int | None = None
    text: str | None = None

    def kind_value(self) -> tuple[str, str]:
        """(CondType, CondValue) for FileList.csv."""
        if self.text:
            return "text", self.text
        if self.class_id is not None:
            return "class_id", str(self.class_id)
        if self.ef_percent is not None:
            return "ef", f"{self.ef_percent:g}"
        return "none", ""


def check_spec(spec: CondSpec, cfg: ConditioningConfig, where: str = "condition") -> None:
    """Raise DataError for a condition the model cannot take (value range, unknown class, empty text)."""
    if spec.ef_percent is not None and not (math.isfinite(spec.ef_percent) and 0 <= spec.ef_percent <= 100):
        raise DataError(f"{where}: EF {spec.ef_percent} is outside [0, 100]", fix="pass EF in percent, 0-100")
    if spec.class_id is not None:
        if "class_id" not in cfg.types:
            raise DataError(f"{where}: this model is not class-conditioned (types {cfg.types})",
                            fix=f"send one of {cfg.types}")
        if not 0 <= spec.class_id < (cfg.num_classes or 0):
            raise DataError(f"{where}: unknown class {spec.class_id}",
                            fix=f"use a class id in [0, {cfg.num_classes - 1}]")
    if spec.text is not None and not spec.text.strip():
        raise DataError(f"{where}: the text prompt is empty", fix="send a non-empty prompt or omit it")
    if spec.text is not None and "text" not in cfg.types:
        raise DataError(f"{where}: this model is not text-conditioned (types {cfg.types})",
                        fix=f"send one of {cfg.types}")


def conditions_batch(specs: Sequence[CondSpec], cfg: LvdmSpec) -> dict[str, Any]:
    """Specs → the collated mapping `ConditionEncoder` reads (missing values → nulls).

    A text model given only an EF gets the training prompt template for it (so `--ef 40` works for both).
    """
    ef = [s.ef_percent for s in specs]
    texts = [s.text or render_prompt(cfg.dataset.prompts, ef_percent=s.ef_percent, class_name=None)
             for s in specs]
    return {"ef": torch.tensor([e / 100.0 if e is not None else 0.0 for e in ef]),
            "has_ef": torch.tensor([e is not None for e in ef]),
            "class_id": torch.tensor([MISSING_CLASS_ID if s.class_id is None else s.class_id for s in specs]),
            "text": texts}


class LvdmPipeline:
    """EMA denoiser + condition encoder + VAE, loaded from one bundle folder."""

    def __init__(self, denoiser: LatentVideoDenoiser, encoder: ConditionEncoder, vae: Any,
                 config: LvdmSpec, folder: Path | None = None):
        self.denoiser, self.encoder, self.vae, self.config, self.folder = denoiser, encoder, vae, config, folder
        self.scaling_factor = float(vae.config.scaling_factor)

    # -- geometry ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def latent_size(self) -> int:
        return self.config.model.latent_size

    @property
    def resolution(self) -> int:
        """Frame size in pixels (latent size × the VAE's downsampling)."""
        return self.latent_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def window(self) -> int:
        return self.config.dataset.num_frames

    @property
    def fps(self) -> float:
        return self.config.dataset.target_fps

    def to(self, device: str | torch.device) -> LvdmPipeline:
        for module in (self.denoiser, self.encoder, self.vae):
            module.to(device)
        return self

    # -- the three stages ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (N, H, W) or (N, H, W, 3) at `resolution` → scaled latents (N, C, h, w).

        The posterior MEAN (the reference sampled it, seed-systems §8.10)."""
        from echo_core.models.vae import frames_to_input

        x = frames_to_input(frames).to(self.device)
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    @torch.no_grad()
    def sample_latents(self, cond_frames: torch.Tensor, specs: Sequence[CondSpec], seeds: Sequence[int],
                       opts: SamplerOptions, callback: Callback | None = None) -> torch.Tensor:
        """cond_frames: (B, C, h, w) scaled latents → clean latents (B, C, T, h, w)."""
        check_sampler(opts.sampler, self.config.objective)
        for i, spec in enumerate(specs):
            check_spec(spec, self.config.conditioning, where=f"sample {i}")
        batch = conditions_batch(specs, self.config)
        tokens = self.encoder(batch)
        null = self.encoder.null_condition(len(specs))
        window = opts.window or self.window
        return sample_video(self.denoiser, opts.sampler, objective=self.config.objective,
                            cond_frame=cond_frames.to(self.device), cond_tokens=tokens, null_tokens=null,
                            num_frames=opts.num_frames, window=window, stride=opts.stride or max(1, window // 2),
                            seeds=seeds, steps=opts.steps, guidance_scale=opts.guidance_scale,
                            frame_guidance_scale=opts.frame_guidance_scale, fps=opts.fps or self.fps,
                            blend=opts.blend, callback=callback,
                            frame_residual=self.config.conditioning.frame_residual)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, chunk: int = 64, gray: bool = True) -> np.ndarray:
        """latents (B, C, T, h, w) → uint8 (B, T, H, W) gray or (B, T, H, W, 3), decoded `chunk` frames at
        a time (a 192-frame batch never goes through the VAE at once)."""
        from echo_core.models.vae import output_to_frames

        b, c, t, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / self.scaling_factor
        parts = [output_to_frames(self.vae.decode(flat[i:i + chunk].to(self.device)).sample).cpu()
                 for i in range(0, len(flat), chunk)]
        frames = torch.cat(parts).numpy().reshape(b, t, *parts[0].shape[1:])
        if gray:
            return ((frames.astype(np.uint16).sum(axis=-1) + 1) // 3).astype(np.uint8)
        return frames

    def generate(self, cond_frames: torch.Tensor, specs: Sequence[CondSpec], seeds: Sequence[int],
                 opts: SamplerOptions, callback: Callback | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """→ (uint8 videos (B, T, H, W[, 3]), clean latents (B, C, T, h, w))."""
        latents = self.sample_latents(cond_frames, specs, seeds, opts, callback)
        return self.decode(latents, chunk=opts.decode_chunk, gray=opts.gray), latents


# ---------------------------------------------------------------- bundle IO


def check_lvdm_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not (folder / LVDM_CONFIG_FILE).is_file() or not (folder / CONDITIONING_FILE).is_file():
        raise WeightsError(f"{folder} is not an LVDM folder: {LVDM_CONFIG_FILE} or {CONDITIONING_FILE} is missing",
                           fix="pass a folder registered by `echoforge train lvdm` (or models:/echo-lvdm@<alias>)")
    return folder


def load_pipeline(folder: str | os.PathLike, *, vae_folder: str | os.PathLike | None = None,
                  device: str | torch.device = "cpu") -> LvdmPipeline:
    """Load a bundle (or an LVDM folder + a separate `vae_folder`) in eval mode on `device`."""
    from echo_core.models.vae import load_vae

    folder = check_lvdm_folder(folder)
    vae_folder = Path(vae_folder) if vae_folder is not None else folder / VAE_DIR
    if not vae_folder.is_dir():
        raise WeightsError(f"{folder} has no {VAE_DIR}/ folder and no VAE was given",
                           fix="pass --vae (a VAE folder or models:/echo-vae@<alias>), or use a serving bundle")
    net = LvdmNet.from_pretrained(folder)
    vae, _ = load_vae(vae_folder)
    pipe = LvdmPipeline(net.denoiser.requires_grad_(False), net.conditioner.requires_grad_(False), vae, net.spec,
                        folder)
    return pipe.to(device)


def build_serving_bundle(lvdm_folder: str | os.PathLike, vae_folder: str | os.PathLike,
                         out_dir: str | os.PathLike, *, default_frame: str | os.PathLike | None = None,
                         extra_files: dict[str, str] | None = None) -> Path:
    """Serving bundle = the LVDM folder + `vae/` + the default conditioning frame (+ extra text files: the
    model card, serving.json). Atomic: `out_dir` appears complete or not at all. Returns `out_dir`."""
    from echo_core.models.vae import verify_vae_folder

    lvdm, out = check_lvdm_folder(lvdm_folder), Path(out_dir)
    verify_vae_folder(vae_folder)
    with atomic_dir(out) as tmp:
        shutil.copytree(lvdm, tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / VAE_DIR, ignore_errors=True)
        shutil.copytree(vae_folder, tmp / VAE_DIR)
        if default_frame is not None:
            shutil.copyfile(default_frame, tmp / DEFAULT_FRAME_FILE)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return out
