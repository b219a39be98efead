"""The frame VAE: a diffusers `AutoencoderKL` that maps 112×112 echo frames to 4×14×14 latents.

One factory (`build_vae`) picks a named config from `VAE_CONFIGS`; `load_vae` reads a diffusers folder
(`config.json` + `diffusion_pytorch_model.safetensors`) and fingerprints it; `check_vae_matches` turns an
architecture mismatch into one clear `WeightsError` before any work starts.

Pixel convention (used everywhere in EchoForge): uint8 x ↦ x / 127.5 − 1, exactly [−1, 1]. The
reference systems use x / 128 − 1, whose range [−1, 0.992] is slightly off-centre (and their decode
script inverts it differently); we pick the symmetric map and its exact inverse (x + 1) · 127.5.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from echo_core.errors import WeightsError
from echo_core.models.loading import load_pretrained
from echo_core.utils.hashing import config_hash, sha256_file

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

PIXEL_SCALE = 127.5  # x / PIXEL_SCALE - 1 maps uint8 [0, 255] onto exactly [-1, 1]
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

_ENCODER_BLOCK, _DECODER_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"


def _kl_config(block_out_channels: tuple[int, ...], layers_per_block: int, norm_num_groups: int) -> dict:
    levels = len(block_out_channels)
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 112,
        "down_block_types": (_ENCODER_BLOCK,) * levels, "up_block_types": (_DECODER_BLOCK,) * levels,
        "block_out_channels": block_out_channels, "layers_per_block": layers_per_block,
        "norm_num_groups": norm_num_groups,
    }


VAE_CONFIGS: dict[str, dict[str, Any]] = {
    # The reference systems' VAE (CompVis ldm ch=128, ch_mult=[1,2,2,4], 2 res blocks): 112 px → 4×14×14.
    "reference": _kl_config((128, 256, 256, 512), layers_per_block=2, norm_num_groups=32),
    # Same /8 geometry at ~0.26 M parameters: CPU tests and the demo (16×112² fwd+bwd ≈ 0.3 s on 2 cores).
    "tiny": _kl_config((16, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
}


def build_vae(name: str = "tiny", **overrides: Any) -> AutoencoderKL:
    """A freshly initialised `AutoencoderKL` from the named config (plus diffusers-config overrides)."""
    from diffusers import AutoencoderKL

    if name not in VAE_CONFIGS:
        raise ValueError(f"unknown VAE config {name!r}; choose one of {sorted(VAE_CONFIGS)}")
    return AutoencoderKL(**{**VAE_CONFIGS[name], **overrides})


def downsample_factor(vae: AutoencoderKL) -> int:
    """Spatial reduction of the encoder (each level but the last halves H and W)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_vae_matches(vae: AutoencoderKL, *, in_channels: int = 3, resolution: int = 112,
                      latent_channels: int = 4, latent_size: int | None = 14, where: str = "VAE") -> None:
    """Raise `WeightsError` naming every mismatch between the VAE and the data / downstream model."""
    cfg = vae.config
    got_latent = resolution // downsample_factor(vae)
    problems = []
    if cfg.in_channels != in_channels or cfg.out_channels != in_channels:
        problems.append(f"channels in/out {cfg.in_channels}/{cfg.out_channels}, data needs {in_channels}")
    if resolution % downsample_factor(vae):
        problems.append(f"resolution {resolution} is not divisible by the VAE's /{downsample_factor(vae)}")
    if cfg.latent_channels != latent_channels:
        problems.append(f"latent_channels {cfg.latent_channels}, expected {latent_channels}")
    if latent_size is not None and got_latent != latent_size:
        problems.append(f"{resolution} px gives {got_latent}×{got_latent} latents, expected "
                        f"{latent_size}×{latent_size}")
    if problems:
        raise WeightsError(
            f"{where} does not match the data: " + "; ".join(problems),
            fix="use a VAE built for 3-channel 112×112 frames with 4 latent channels at /8 "
                "(e.g. `echoforge vae train --config reference`), or re-prepare the data at the VAE's resolution",
        )


@dataclass(frozen=True)
class VaeInfo:
    """What a latent manifest records about the VAE that made it."""

    folder: str
    weights_sha256: str
    config_hash: str
    scaling_factor: float
    uri: str | None = None
    version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri or self.folder, "version": self.version, "sha256": self.weights_sha256,
                "config_hash": self.config_hash, "scaling_factor": self.scaling_factor}


def verify_vae_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Check a diffusers VAE folder has a readable AutoencoderKL config and weights; return the config."""
    folder = Path(folder)
    fix = "pass a folder written by `AutoencoderKL.save_pretrained` (config.json + " f"{WEIGHTS_NAME})"
    if not folder.is_dir():
        raise WeightsError(f"VAE folder not found: {folder}", fix=fix)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        raise WeightsError(f"VAE folder {folder} lacks {', '.join(missing)}", fix=fix)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{folder / CONFIG_NAME} is not valid JSON: {exc}", fix=fix) from None
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise WeightsError(f"{folder / CONFIG_NAME} describes a {config['_class_name']}, not an AutoencoderKL",
                           fix=fix)
    if "scaling_factor" not in config:
        raise WeightsError(f"{folder / CONFIG_NAME} has no scaling_factor",
                           fix="add the latent scaling factor (1/std of latents) to config.json")
    return config


def load_vae(folder: str | os.PathLike, *, uri: str | None = None,
             version: str | None = None) -> tuple[AutoencoderKL, VaeInfo]:
    """Load a verified diffusers VAE folder (eval mode, CPU) and its fingerprint."""
    from diffusers import AutoencoderKL

    config = verify_vae_folder(folder)
    try:
        vae = load_pretrained(AutoencoderKL, folder)
    except Exception as exc:  # a state-dict / config mismatch inside diffusers: name the folder
        raise WeightsError(f"cannot load the VAE in {folder}: {exc}",
                           fix="check config.json matches the weights file") from None
    info = VaeInfo(folder=str(Path(folder).resolve()), weights_sha256=sha256_file(Path(folder) / WEIGHTS_NAME),
                   config_hash=config_hash({k: v for k, v in config.items() if not k.startswith("_")}),
                   scaling_factor=float(config["scaling_factor"]), uri=uri, version=version)
    return vae.eval().requires_grad_(False), info


def fingerprint_vae(vae: AutoencoderKL, *, uri: str | None = None) -> VaeInfo:
    """VaeInfo of an in-memory VAE (hash of its state dict), for VAEs that were never saved to a folder."""
    h = hashlib.sha256()
    for key, tensor in sorted(vae.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    return VaeInfo(folder="(in memory)", weights_sha256=h.hexdigest(), config_hash=config_hash(config),
                   scaling_factor=float(vae.config.scaling_factor), uri=uri)


def frames_to_input(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames → VAE input in [-1, 1]. frames: (N, H, W) gray or (N, H, W, 3) RGB → (N, 3, H, W).

    Gray frames are replicated to 3 channels, as the reference systems' `--gray_scale` mode does.
    """
    x = torch.as_tensor(frames)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float() / PIXEL_SCALE - 1.0


def output_to_frames(x: torch.Tensor) -> torch.Tensor:
    """VAE output (N, 3, H, W) in [-1, 1] → uint8 (N, H, W, 3); the exact inverse of `frames_to_input`."""
    return ((x.float() + 1.0) * PIXEL_SCALE).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
