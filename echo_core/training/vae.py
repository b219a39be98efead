"""VAE training: accelerate, atomic checkpoints, exact resume, VAL PSNR/SSIM, reconstruction grids.

`train_vae` is the one entry point (the CLI and Prefect call it). Data position is a pure function of
(seed, step) — each step's batch comes from a per-epoch permutation — so `--resume latest` restores the
model, optimizers, RNG (accelerate `save_state`) and the step, and continues on exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from echo_core.config import StrictModel
from echo_core.data.frames import FrameDataset, frames_key, load_split_frames
from echo_core.metrics.image import psnr, ssim
from echo_core.models.vae import build_vae, output_to_frames
from echo_core.tracking import NullTracker, Tracker
from echo_core.training.checkpoint import checkpoint_writer, prune_checkpoints, resolve_resume
from echo_core.training.losses import (
    PatchDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    reconstruction_loss,
)
from echo_core.utils.atomic import atomic_dir, atomic_path, write_json_atomic
from echo_core.utils.hashing import config_hash

log = logging.getLogger("echoforge.vae")
STATE_FILE = "trainer_state.json"


class VaeTrainConfig(StrictModel):
    """params.yaml `vae:` section."""

    model: Literal["tiny", "reference"] = "tiny"
    resolution: int = 112
    frame_every: int = 5  # every k-th frame of each TRAIN video, as the reference VAE data
    batch_size: int = 16
    max_steps: int = 200
    learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.5, 0.9)  # ldm/taming autoencoder setting
    recon_loss: Literal["l1", "l2"] = "l1"
    kl_weight: float = 1e-6
    disc_start: int | None = None  # step at which the hinge PatchGAN joins; None = never
    disc_weight: float = 0.5
    checkpoint_every: int = 100
    checkpoints_total_limit: int = 2
    val_every: int = 100
    val_max_frames: int = 256
    scaling_sample_frames: int = 512
    grid_frames: int = 8
    log_every: int = 10
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0


# Settings that do not change the weights' trajectory; a run may be resumed with different values.
_RESUMABLE_CHANGES = {"max_steps", "checkpoint_every", "checkpoints_total_limit", "val_every", "val_max_frames",
                      "grid_frames", "log_every", "scaling_sample_frames"}


def run_key(cfg: VaeTrainConfig, data_dirs: Sequence[str | os.PathLike]) -> str:
    """Identity of a training trajectory (config + TRAIN data); checkpoints live under `checkpoints/<key>/`,
    so after a params or data change `--resume latest` starts fresh instead of resuming someone else's run."""
    train = frames_key(data_dirs, "TRAIN", cfg.frame_every, cfg.resolution)
    return config_hash({"cfg": cfg.model_dump(mode="json", exclude=_RESUMABLE_CHANGES), "train": train})


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Frame indices of training step `step` (0-based): consecutive slices of per-epoch permutations."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """k indices spread over range(n) (all of them when k >= n): a fixed, seed-free VAL/calibration subset."""
    return np.arange(n) if k >= n else np.linspace(0, n - 1, k).round().astype(int)


@torch.inference_mode()
def evaluate_reconstruction(vae, frames: FrameDataset, *, max_frames: int = 256, batch_size: int = 32,
                            device: str | torch.device = "cpu") -> tuple[dict[str, float], torch.Tensor]:
    """decode(encode(x).mean) on a fixed subset: ({val_psnr, val_ssim, val_l1}, (2, G, 3, H, W) originals/recons).

    PSNR/SSIM are computed on the [-1, 1] scale (data_range 2), per frame, then averaged.
    """
    idx = evenly_spaced(len(frames), max_frames)
    scores: dict[str, list[torch.Tensor]] = {"val_psnr": [], "val_ssim": [], "val_l1": []}
    first = None
    for start in range(0, len(idx), batch_size):
        x = frames.batch(idx[start : start + batch_size]).to(device)
        x_hat = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        scores["val_psnr"].append(psnr(x_hat, x).clamp(max=100.0))
        scores["val_ssim"].append(ssim(x_hat, x))
        scores["val_l1"].append((x_hat - x).abs().flatten(1).mean(1).double())
        first = first if first is not None else torch.stack([x.cpu(), x_hat.cpu()])
    return {k: float(torch.cat(v).mean()) for k, v in scores.items()}, first


@torch.inference_mode()
def estimate_scaling_factor(vae, frames: FrameDataset, *, max_frames: int = 512, batch_size: int = 32,
                            device: str | torch.device = "cpu") -> float:
    """1 / std of the posterior-mean latents of a fixed TRAIN subset, so scaled latents have unit variance."""
    idx = evenly_spaced(len(frames), max_frames)
    z = torch.cat([vae.encode(frames.batch(idx[s : s + batch_size]).to(device)).latent_dist.mean.float().cpu()
                   for s in range(0, len(idx), batch_size)])
    return float(1.0 / z.std())


def save_recon_grid(pairs: torch.Tensor, path: str | os.PathLike, max_frames: int = 8) -> Path:
    """pairs: (2, G, 3, H, W) in [-1, 1] → PNG, originals on top, reconstructions below."""
    from PIL import Image

    rows = [torch.cat(list(output_to_frames(row[:max_frames])), dim=1) for row in pairs]  # each (H, G·W, 3)
    with atomic_path(path) as tmp:
        Image.fromarray(torch.cat(rows, dim=0).numpy()).save(tmp, format="PNG")
    return Path(path)


class Reconstruct(torch.nn.Module):
    """encode → posterior sample → decode as one `forward`, so DDP (accelerate) wraps and syncs the whole VAE.

    x: (B, 3, H, W) → (x_hat (B, 3, H, W), posterior mean (B, C, h, w), posterior logvar (B, C, h, w)).
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.mean, posterior.logvar


@dataclass
class _Parts:
    """Everything `save_state` checkpoints (discriminator only when configured)."""

    vae: Any  # the prepared `Reconstruct` wrapper
    opt: torch.optim.Optimizer
    disc: torch.nn.Module | None = None
    opt_d: torch.optim.Optimizer | None = None


def _build_parts(cfg: VaeTrainConfig, accelerator) -> _Parts:
    torch.manual_seed(cfg.seed)  # weight init is part of the run's seeded randomness
    vae = Reconstruct(build_vae(cfg.model, sample_size=cfg.resolution))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas)
    if cfg.disc_start is None:
        vae, opt = accelerator.prepare(vae, opt)
        return _Parts(vae, opt)
    disc = PatchDiscriminator(in_channels=vae.vae.config.out_channels)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas)
    return _Parts(*accelerator.prepare(vae, opt, disc, opt_d))


def _train_step(parts: _Parts, x: torch.Tensor, step: int, cfg: VaeTrainConfig, accelerator) -> dict[str, float]:
    """One generator (and, after `disc_start`, discriminator) update. x: (B, 3, H, W) in [-1, 1]."""
    x_hat, mean, logvar = parts.vae(x)
    rec = reconstruction_loss(x, x_hat, cfg.recon_loss)
    kl = kl_loss(mean, logvar)
    loss = rec + cfg.kl_weight * kl
    gan_on = parts.disc is not None and step >= cfg.disc_start
    if gan_on:
        g = hinge_g_loss(parts.disc(x_hat))
        loss = loss + cfg.disc_weight * g
    parts.opt.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    parts.opt.step()
    out = {"train/loss": loss.item(), "train/rec": rec.item(), "train/kl": kl.item()}
    if gan_on:
        real, fake = parts.disc(torch.cat([x, x_hat.detach()])).chunk(2)  # one forward: DDP-friendly
        d = hinge_d_loss(real, fake)
        parts.opt_d.zero_grad(set_to_none=True)
        accelerator.backward(d)
        parts.opt_d.step()
        out.update({"train/g": g.item(), "train/d": d.item()})
    return out


def _save_checkpoint(accelerator, root: Path, step: int, keep: int) -> None:
    with checkpoint_writer(root, step, is_main=accelerator.is_main_process) as tmp:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            write_json_atomic(tmp / STATE_FILE, {"step": step})
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prune_checkpoints(root, keep)


def _load_checkpoint(accelerator, folder: Path) -> int:
    accelerator.load_state(str(folder))
    return int(json.loads((folder / STATE_FILE).read_text())["step"])


def _validate(parts: _Parts, val: FrameDataset, step: int, cfg: VaeTrainConfig, out_dir: Path,
              tracker: Tracker, device) -> dict[str, float]:
    parts.vae.eval()
    metrics, pairs = evaluate_reconstruction(_unwrap(parts.vae), val, max_frames=cfg.val_max_frames, device=device)
    parts.vae.train()
    tracker.log_metrics(metrics, step=step)
    grid = save_recon_grid(pairs, out_dir / "reconstructions" / f"step-{step:07d}.png", cfg.grid_frames)
    tracker.log_artifact(grid, "reconstructions")
    log.info("step %d: val_psnr %.2f dB, val_ssim %.4f", step, metrics["val_psnr"], metrics["val_ssim"])
    return metrics


def _unwrap(model):
    """The bare AutoencoderKL inside the (possibly DDP-wrapped) `Reconstruct`."""
    return getattr(model, "module", model).vae


def _finalize(parts: _Parts, train: FrameDataset, metrics: dict[str, float], cfg: VaeTrainConfig,
              out_dir: Path, tracker: Tracker, device) -> Path:
    """Calibrate `scaling_factor`, write `out_dir/vae` (diffusers folder) and `out_dir/metrics.json`."""
    vae = _unwrap(parts.vae).eval()
    scale = estimate_scaling_factor(vae, train, max_frames=cfg.scaling_sample_frames, device=device)
    vae.register_to_config(scaling_factor=scale)
    with atomic_dir(out_dir / "vae") as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    summary = {**metrics, "scaling_factor": scale, "steps": cfg.max_steps}
    write_json_atomic(out_dir / "metrics.json", summary)
    tracker.log_metrics({"scaling_factor": scale}, step=cfg.max_steps)
    return out_dir / "vae"


def train_vae(cfg: VaeTrainConfig, data_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              tracker: Tracker | None = None, resume: str | None = None) -> Path:
    """Train (or resume) a VAE on the TRAIN frames of `data_dirs`; return the saved diffusers folder."""
    from accelerate import Accelerator

    tracker = tracker or NullTracker()
    out_dir = Path(out_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    train = FrameDataset(load_split_frames(data_dirs, "TRAIN", every=cfg.frame_every, resolution=cfg.resolution,
                                           cache_dir=out_dir / "cache"))
    val = FrameDataset(load_split_frames(data_dirs, "VAL", every=cfg.frame_every, resolution=cfg.resolution,
                                         cache_dir=out_dir / "cache"))
    parts = _build_parts(cfg, accelerator)
    ckpt_root = out_dir / "checkpoints" / run_key(cfg, data_dirs)
    ckpt = resolve_resume(ckpt_root, resume)
    step = _load_checkpoint(accelerator, ckpt) if ckpt else 0
    log.info("VAE training %s at step %d (checkpoints: %s)", "resumes" if ckpt else "starts", step, ckpt_root)
    if accelerator.is_main_process and step == 0:
        tracker.log_params({"vae": cfg.model_dump(mode="json"), "train_frames": len(train),
                            "val_frames": len(val)})
    elif accelerator.is_main_process:  # params may not change within a run (e.g. a longer max_steps)
        tracker.set_tags({"resumed_from_step": str(step), "resumed_max_steps": str(cfg.max_steps)})
    rank, world = accelerator.process_index, accelerator.num_processes
    metrics: dict[str, float] = {}
    parts.vae.train()
    while step < cfg.max_steps:
        idx = batch_indices(step, len(train), cfg.batch_size, cfg.seed)[rank::world]
        losses = _train_step(parts, train.batch(idx).to(accelerator.device), step, cfg, accelerator)
        step += 1
        if accelerator.is_main_process and (step % cfg.log_every == 0 or step == cfg.max_steps):
            tracker.log_metrics(losses, step=step)
        if accelerator.is_main_process and step % cfg.val_every == 0:
            metrics = _validate(parts, val, step, cfg, out_dir, tracker, accelerator.device)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            _save_checkpoint(accelerator, ckpt_root, step, cfg.checkpoints_total_limit)
    if not accelerator.is_main_process:
        return out_dir / "vae"
    if not metrics or cfg.max_steps % cfg.val_every:
        metrics = _validate(parts, val, step, cfg, out_dir, tracker, accelerator.device)
    return _finalize(parts, train, metrics, cfg, out_dir, tracker, accelerator.device)
