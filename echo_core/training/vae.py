"""The VAE as a training task (`VaeTask`) of the one trainer, with an optional hinge PatchGAN, VAL PSNR/SSIM,
reconstruction grids and a calibrated `scaling_factor`.

`train_vae` is the one entry point (the CLI and Prefect call it). Data position is a pure function of
(seed, step) — each step's batch comes from a per-epoch permutation — so `--resume latest` restores the
model, optimizers, RNG (accelerate `save_state`) and the step, and continues on exactly the batches an
uninterrupted run would have seen. The trained bytes are those of the VAE's own loop before it joined the
trainer: no EMA, no LR scheduler, no accumulation, the posterior noise from torch's global RNG.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from echo_core.config import StrictModel
from echo_core.data.frames import FrameDataset, frames_key, load_split_frames
from echo_core.metrics.image import psnr, ssim
from echo_core.models.vae import build_vae, output_to_frames
from echo_core.tracking import Tracker
from echo_core.training.checkpoint import CheckpointConfig
from echo_core.training.losses import (
    PatchDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    reconstruction_loss,
)
from echo_core.training.optim import OptimConfig
from echo_core.training.task import TrainTask
from echo_core.training.trainer import train
from echo_core.utils.atomic import atomic_path, write_json_atomic
from echo_core.utils.hashing import config_hash

log = logging.getLogger("echoforge.vae")
FINAL_DIR = "vae"


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


class LoopSettings(StrictModel):
    """The trainer's view of a `VaeTrainConfig` (see `loop_settings`)."""

    optim: OptimConfig
    ema: None = None
    checkpoint: CheckpointConfig
    seed: int
    deterministic: bool = False
    num_workers: int = 0
    log_every: int


def loop_settings(cfg: VaeTrainConfig) -> LoopSettings:
    """The one trainer's settings that reproduce the VAE's own loop: AdamW(lr, betas) with torch's default
    weight decay and eps, no LR scheduler, no clipping, no accumulation, no EMA."""
    optim = OptimConfig(lr=cfg.learning_rate, betas=cfg.adam_betas, weight_decay=1e-2, eps=1e-8, schedule="none",
                        warmup_steps=0, grad_clip=None, batch_size=cfg.batch_size, max_steps=cfg.max_steps,
                        mixed_precision=cfg.mixed_precision)
    checkpoint = CheckpointConfig(every=cfg.checkpoint_every, total_limit=cfg.checkpoints_total_limit)
    return LoopSettings(optim=optim, checkpoint=checkpoint, seed=cfg.seed, log_every=cfg.log_every)


class FrameBatches:
    """The VAE's data order: step k's batch is `batch_indices(k, ...)`, sliced per rank. Its position is
    the step itself, so it has no state of its own (checkpoints hold only the step)."""

    def __init__(self, frames: FrameDataset, batch_size: int, *, seed: int, rank: int, world_size: int):
        self.frames, self.batch_size, self.seed = frames, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def next_batch(self, step: int) -> dict[str, Any]:
        """{"x": (B, 3, H, W) in [-1, 1], "step": step} (the PatchGAN joins at a step)."""
        self.epoch = step * self.batch_size // len(self.frames)
        idx = batch_indices(step, len(self.frames), self.batch_size, self.seed)[self.rank::self.world_size]
        return {"x": self.frames.batch(idx), "step": step}

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        pass


class VaeTask(TrainTask):
    """AutoencoderKL (wrapped in `Reconstruct`) on TRAIN frames: reconstruction + KL, and after `disc_start`
    a hinge PatchGAN with its own optimizer."""

    name = "vae"
    export_dir = FINAL_DIR
    items_name = "frames"
    uses_global_rng = True  # `posterior.sample()` draws from it, as the VAE always did
    config: LoopSettings

    def __init__(self, cfg: VaeTrainConfig, data_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike):
        super().__init__(loop_settings(cfg))
        self.vae_cfg, self.data_dirs, self.out_dir = cfg, list(data_dirs), Path(out_dir)
        self.preview_every = cfg.val_every
        self.disc: torch.nn.Module | None = None
        self.val_metrics: dict[str, float] = {}  # of the latest validation
        self._step_out: dict[str, Any] = {}  # what the discriminator's step needs from the loss

    def _frames(self, split: str) -> FrameDataset:
        cfg = self.vae_cfg
        return FrameDataset(load_split_frames(self.data_dirs, split, every=cfg.frame_every,
                                              resolution=cfg.resolution, cache_dir=self.out_dir / "cache"))

    @functools.cached_property
    def train_frames(self) -> FrameDataset:
        return self._frames("TRAIN")

    @functools.cached_property
    def val_frames(self) -> FrameDataset:
        return self._frames("VAL")

    def build_model(self) -> Reconstruct:
        return Reconstruct(build_vae(self.vae_cfg.model, sample_size=self.vae_cfg.resolution))

    def train_dataset(self) -> FrameDataset:
        return self.train_frames

    def data_order(self, dataset: FrameDataset, *, rank: int, world_size: int) -> FrameBatches:
        return FrameBatches(dataset, self.vae_cfg.batch_size, seed=self.vae_cfg.seed, rank=rank,
                            world_size=world_size)

    def prepare_extras(self, model: Reconstruct, accelerator: Any) -> None:
        """The PatchGAN (when configured), initialised from the RNG right after the VAE."""
        cfg = self.vae_cfg
        if cfg.disc_start is None:
            return
        disc = PatchDiscriminator(in_channels=model.vae.config.out_channels)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas)
        self.accelerator = accelerator
        self.disc, self.opt_d = accelerator.prepare(disc, opt_d)

    def loss(self, model: torch.nn.Module, batch: Mapping[str, Any], generator: torch.Generator | None
             ) -> torch.Tensor:
        """rec + kl_weight · KL (+ disc_weight · hinge G once the GAN is on). batch["x"]: (B, 3, H, W)."""
        cfg, x = self.vae_cfg, batch["x"]
        x_hat, mean, logvar = model(x)
        rec = reconstruction_loss(x, x_hat, cfg.recon_loss)
        kl = kl_loss(mean, logvar)
        loss = rec + cfg.kl_weight * kl
        gan_on = self.disc is not None and batch["step"] >= cfg.disc_start
        metrics = {"train/rec": rec.item(), "train/kl": kl.item()}
        if gan_on:
            g = hinge_g_loss(self.disc(x_hat))
            loss = loss + cfg.disc_weight * g
            metrics["train/g"] = g.item()
        self._step_out = {"metrics": metrics, "real_fake": torch.cat([x, x_hat.detach()]) if gan_on else None}
        return loss

    def extra_step(self, step: int) -> dict[str, float]:
        """The discriminator's hinge step on this step's frames and reconstructions (once the GAN is on)."""
        metrics, real_fake = self._step_out["metrics"], self._step_out["real_fake"]
        if real_fake is None:
            return metrics
        real, fake = self.disc(real_fake).chunk(2)  # one forward: DDP-friendly
        d = hinge_d_loss(real, fake)
        self.opt_d.zero_grad(set_to_none=True)
        self.accelerator.backward(d)
        self.opt_d.step()
        return {**metrics, "train/d": d.item()}

    def checkpoint_dir(self, out_dir: Path) -> Path:
        return out_dir / "checkpoints" / run_key(self.vae_cfg, self.data_dirs)

    def trajectory_hash(self) -> None:
        return None  # `checkpoint_dir` is keyed by `run_key`

    def log_start(self, tracker: Tracker, step: int, world_size: int) -> None:
        """Params once at step 0; a resumed run only tags (params may not change within a run)."""
        log.info("VAE training %s at step %d", "resumes" if step else "starts", step)
        if step == 0:
            tracker.log_params({"vae": self.vae_cfg.model_dump(mode="json"), "train_frames": len(self.train_frames),
                                "val_frames": len(self.val_frames)})
        else:
            tracker.set_tags({"resumed_from_step": str(step), "resumed_max_steps": str(self.vae_cfg.max_steps)})

    def preview(self, model: Reconstruct, step: int, out_dir: Path, tracker: Tracker) -> None:
        """VAL PSNR/SSIM/L1 (logged, kept for metrics.json) and a reconstruction grid."""
        metrics, pairs = evaluate_reconstruction(model.vae, self.val_frames, max_frames=self.vae_cfg.val_max_frames,
                                                 device=next(model.parameters()).device)
        tracker.log_metrics(metrics, step=step)
        grid = save_recon_grid(pairs, out_dir / "reconstructions" / f"step-{step:07d}.png", self.vae_cfg.grid_frames)
        tracker.log_artifact(grid, "reconstructions")
        log.info("step %d: val_psnr %.2f dB, val_ssim %.4f", step, metrics["val_psnr"], metrics["val_ssim"])
        self.val_metrics = metrics

    def finish(self, model: Reconstruct, out_dir: Path, step: int, tracker: Tracker) -> None:
        """Validate unless the last step just did, calibrate `scaling_factor` into the VAE's config, write
        metrics.json."""
        cfg = self.vae_cfg
        model.eval()
        if not self.val_metrics or cfg.max_steps % cfg.val_every:
            self.preview(model, step, out_dir, tracker)
        scale = estimate_scaling_factor(model.vae, self.train_frames, max_frames=cfg.scaling_sample_frames,
                                        device=next(model.parameters()).device)
        model.vae.register_to_config(scaling_factor=scale)
        write_json_atomic(out_dir / "metrics.json", {**self.val_metrics, "scaling_factor": scale,
                                                     "steps": cfg.max_steps})
        tracker.log_metrics({"scaling_factor": scale}, step=cfg.max_steps)

    def export(self, model: Reconstruct, folder: Path, dtype: torch.dtype, step: int) -> Path:
        """The diffusers folder. The VAE trains in float32 and has no EMA (so no fp16 checkpoint exports):
        its weights are saved as they are."""
        model.vae.save_pretrained(folder, safe_serialization=True)
        return folder


def train_vae(cfg: VaeTrainConfig, data_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              tracker: Tracker | None = None, resume: str | None = None) -> Path:
    """Train (or resume) a VAE on the TRAIN frames of `data_dirs`; return the saved diffusers folder."""
    return train(VaeTask(cfg, data_dirs, out_dir), out_dir, tracker=tracker, resume=resume).folder
