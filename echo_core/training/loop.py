"""LVDM training: accelerate (1 or N processes), EMA, gradient accumulation, atomic checkpoints, exact resume.

`train_lvdm(cfg, data_roots, out_dir, tracker=...)` is the one entry point (`echoforge train lvdm` calls it,
also under `accelerate launch`). What it fixes relative to the reference trainers (seed-systems §3, §8):

- conditioning dropout is applied for real (CFG trains; nulls are the dedicated null tokens, §8.1–8.4);
- the loss masks exactly the padded frames (§8.5, in `objectives.frame_mask`);
- the LR warm-up is counted in optimizer steps, whatever the number of processes (§8.31, `optim.py`);
- validation runs at optimizer-step boundaries only, never at step 0 or repeatedly under accumulation (§8.31);
- randomness comes from seeded per-rank generators and a resumable sampler, all saved in each checkpoint,
  so `--resume latest` after a kill -9 ends on bit-identical weights (CPU, `deterministic: true`).

Checkpoint folder `checkpoint-<step>/` (atomic, see `checkpoint.py`): accelerate `save_state` (model,
optimizer, RNG), `ema.safetensors`, `rng-rank<r>.safetensors` (the per-rank training generator),
`trainer_state.json` (step, data position, LR scheduler, loss history) and, every `ema_every` steps,
`ema_export/` (the slim fp16 inference folder that is also logged to the tracker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import DataLoader, Sampler, default_collate

from echo_core.config import StrictModel
from echo_core.diffusion import basic_sampler
from echo_core.diffusion.objectives import (
    DDPMObjectiveConfig,
    Objective,
    ObjectiveConfig,
    build_objective,
    frame_mask,
)
from echo_core.errors import DataError
from echo_core.latents.clips import LatentClipDataset, LatentDatasetConfig
from echo_core.models.conditioning import (
    ConditionEncoder,
    ConditioningConfig,
    FrozenTextEncoder,
    apply_frame_dropout,
    sample_dropout_masks,
)
from echo_core.models.loading import load_pretrained
from echo_core.models.unet import LatentVideoDenoiser, UNetConfig, build_denoiser
from echo_core.tracking import NullTracker, Tracker
from echo_core.training.checkpoint import checkpoint_writer, prune_checkpoints, resolve_resume
from echo_core.training.ema import EMA, EmaConfig
from echo_core.training.optim import OptimConfig, build_optimizer, build_scheduler
from echo_core.utils.atomic import atomic_dir, write_json_atomic
from echo_core.utils.hashing import config_hash
from echo_core.utils.progress import progress

log = logging.getLogger("echoforge.lvdm")

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
EXPORT_DIR = "ema_export"
FINAL_DIR = "unet_ema"
CONDITIONING_FILE = "conditioning.safetensors"
LVDM_CONFIG_FILE = "lvdm_config.json"
SUMMARY_FILE = "train_summary.json"
HISTORY_WINDOW = 20  # losses/LRs kept from the first and the most recent steps (summary + resume)


# ---------------------------------------------------------------- config


class CheckpointConfig(StrictModel):
    every: int = Field(1000, ge=1)  # optimizer steps; the last step is always checkpointed
    total_limit: int = Field(3, ge=1)
    ema_every: int | None = Field(None, ge=1)  # log the slim EMA export every N steps; None = every checkpoint

    @model_validator(mode="after")
    def _ema_on_checkpoints(self) -> CheckpointConfig:
        if self.ema_every is not None and self.ema_every % self.every:
            raise ValueError(f"ema_every ({self.ema_every}) must be a multiple of every ({self.every}): "
                             "the EMA export is written into a checkpoint")
        return self


class ValidationConfig(StrictModel):
    every: int | None = Field(1500, ge=1)  # optimizer steps; None disables validation videos
    num_samples: int = Field(4, ge=1)
    steps: int = Field(25, ge=1)  # sampler steps (DDIM for v-DDPM, Euler for flow)
    guidance_scale: float = Field(1.0, ge=0.0)  # classifier-free guidance on the conditions; 1 = none


class LvdmTrainConfig(StrictModel):
    """`train_lvdm:` in params.yaml (unknown keys are errors)."""

    model: UNetConfig = Field(default_factory=UNetConfig)
    conditioning: ConditioningConfig = Field(default_factory=ConditioningConfig)
    objective: ObjectiveConfig = Field(default_factory=DDPMObjectiveConfig)
    dataset: LatentDatasetConfig = Field(default_factory=LatentDatasetConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    ema: EmaConfig = Field(default_factory=EmaConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms + no DataLoader workers
    num_workers: int = Field(2, ge=0)
    log_every: int = Field(1, ge=1)


# ---------------------------------------------------------------- the trained module


class LvdmNet(nn.Module):
    """Denoiser + condition encoder: the one module that is optimised, EMA'd, DDP-wrapped and saved."""

    def __init__(self, denoiser: LatentVideoDenoiser, conditioner: ConditionEncoder):
        super().__init__()
        self.denoiser, self.conditioner = denoiser, conditioner

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond_frame: torch.Tensor,
                conditions: Mapping[str, Any], drop: torch.Tensor | None, fps: torch.Tensor | float) -> torch.Tensor:
        """x_t: (B, C, T, h, w); t: (B,) model time; cond_frame: (B, C, h, w); drop: (B,) bool → (B, C, T, h, w)."""
        tokens = self.conditioner(conditions, drop).to(x_t.dtype)
        return self.denoiser(x_t, t, cond_frame, tokens, fps)


def build_net(cfg: LvdmTrainConfig, text_encoder: FrozenTextEncoder | None = None) -> LvdmNet:
    """A fresh, seeded LvdmNet (identical on every rank: the seed is the run's, not the rank's)."""
    torch.manual_seed(cfg.seed)
    conditioner = ConditionEncoder(cfg.conditioning, text_encoder)
    denoiser = build_denoiser(cfg.model, cross_attention_dim=conditioner.dim, num_frames=cfg.dataset.num_frames)
    if cfg.optim.gradient_checkpointing:
        denoiser.unet.enable_gradient_checkpointing()
    return LvdmNet(denoiser, conditioner)


# ---------------------------------------------------------------- data position


class ResumableSampler(Sampler[int]):
    """Per-epoch permutation seeded by (seed, epoch), sharded over ranks, resumable mid-epoch.

    Every rank consumes the same number of batches per epoch (the tail that does not fill a global batch
    is dropped), so the state (epoch, batches consumed) is the same on all ranks. The training loop calls
    `advance()` per consumed batch; prefetching workers never move the recorded position.
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = size // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise DataError(f"{size} training clips cannot fill one global batch of {batch_size} × "
                            f"{world_size} processes", fix="lower train_lvdm.optim.batch_size or add data")
        self.epoch, self.batch = 0, 0

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's clip indices for `epoch`, in consumption order."""
        used = self.batches_per_epoch * self.batch_size * self.world_size
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)[:used]
        return order[self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch)[self.batch * self.batch_size:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.batch) * self.batch_size

    def advance(self) -> None:
        self.batch += 1

    def next_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


@dataclass
class History:
    """Losses/LRs of the first and the latest steps (for the run summary and the loss-went-down check)."""

    first_loss: list[float] = field(default_factory=list)
    first_lr: list[float] = field(default_factory=list)
    last_loss: list[float] = field(default_factory=list)

    def add(self, loss: float, lr: float) -> None:
        if len(self.first_loss) < HISTORY_WINDOW:
            self.first_loss.append(loss)
            self.first_lr.append(lr)
        self.last_loss = [*self.last_loss, loss][-HISTORY_WINDOW:]


# ---------------------------------------------------------------- the run


@dataclass
class TrainingRun:
    """Everything one training run holds; built once by `build_run`."""

    cfg: LvdmTrainConfig
    accelerator: Any
    net: nn.Module  # prepared (DDP-wrapped when distributed)
    ema: EMA
    optimizer: Any
    scheduler: torch.optim.lr_scheduler.LambdaLR
    objective: Objective
    dataset: LatentClipDataset
    sampler: ResumableSampler
    loader: DataLoader
    generator: torch.Generator  # noise, timesteps, condition dropout (per rank)
    history: History = field(default_factory=History)
    step: int = 0
    _batches: Iterator | None = None

    @property
    def module(self) -> LvdmNet:
        return self.accelerator.unwrap_model(self.net)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def next_batch(self) -> dict[str, Any]:
        """The next micro-batch, moving to the next epoch (and its per-item randomness) when one ends."""
        while True:
            if self._batches is None:
                self.dataset.set_epoch(self.sampler.epoch)
                self._batches = iter(self.loader)
            try:
                batch = next(self._batches)
            except StopIteration:
                self.sampler.next_epoch()
                self._batches = None
                continue
            self.sampler.advance()
            return batch


def _seed_rank(seed: int, rank: int) -> torch.Generator:
    """Seed python/numpy/torch global RNGs per rank and return the rank's training generator."""
    rank_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(rank_seed)
    np.random.seed(rank_seed)
    torch.manual_seed(rank_seed)
    return torch.Generator().manual_seed(rank_seed)


def _make_accelerator(cfg: LvdmTrainConfig):
    from accelerate import Accelerator

    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.optim.mixed_precision)


def build_run(cfg: LvdmTrainConfig, data_roots: Sequence[str | os.PathLike],
              text_encoder: FrozenTextEncoder | None) -> TrainingRun:
    """Accelerator, data, model, EMA, optimizer and schedule of one run (also used by benchmarks/train.py)."""
    accelerator = _make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    dataset = LatentClipDataset.from_config(data_roots, "TRAIN", cfg.dataset, conditions=cfg.conditioning.types,
                                            seed=cfg.seed)
    sampler = ResumableSampler(len(dataset), cfg.optim.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    workers = 0 if cfg.deterministic else cfg.num_workers
    loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                        num_workers=workers, generator=torch.Generator().manual_seed(cfg.seed))
    net = build_net(cfg, text_encoder).to(accelerator.device)
    ema = EMA(net, cfg.ema)
    optimizer = build_optimizer((p for p in net.parameters() if p.requires_grad), cfg.optim)
    net, optimizer = accelerator.prepare(net, optimizer)
    scheduler = build_scheduler(optimizer, cfg.optim)  # NOT prepared: stepped once per optimizer step
    return TrainingRun(cfg, accelerator, net, ema, optimizer, scheduler, build_objective(cfg.objective), dataset,
                sampler, loader, _seed_rank(cfg.seed, rank))


# ---------------------------------------------------------------- one optimizer step


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _micro_batch_loss(run: TrainingRun, batch: Mapping[str, Any]) -> torch.Tensor:
    """Masked denoising loss of one micro-batch, with condition and frame dropout drawn from the rank's
    generator. batch["video"]: (B, C, T, h, w)."""
    x0 = batch["video"]
    b, frames = x0.shape[0], x0.shape[2]
    p = run.cfg.conditioning
    cond_drop, frame_drop = sample_dropout_masks(b, p.p_cond, p.p_frame, run.generator)
    noise = run.objective.make_noise(x0, run.generator)
    t = run.objective.sample_timesteps(b, run.generator, device=x0.device)
    x_t, target = run.objective.training_target(x0, noise, t)
    cond_frame = apply_frame_dropout(batch["cond_frame"], frame_drop)
    pred = run.net(x_t, run.objective.model_time(t), cond_frame, batch, cond_drop.to(x0.device), batch["fps"])
    return run.objective.loss(pred, target, frame_mask(batch["padding"], frames))


def optimizer_step(run: TrainingRun) -> dict[str, float]:
    """grad_accum micro-batches → clip → AdamW → LR schedule → EMA. Returns this step's metrics."""
    acc, optim = run.accelerator, run.cfg.optim
    start = time.perf_counter()
    losses = []
    for micro in range(optim.grad_accum):
        batch = _to_device(run.next_batch(), acc.device)
        last = micro == optim.grad_accum - 1
        with contextlib.nullcontext() if last else acc.no_sync(run.net):  # all-reduce once per step
            loss = _micro_batch_loss(run, batch)
            acc.backward(loss / optim.grad_accum)
        losses.append(loss.detach().float())
    params = [p for p in run.net.parameters() if p.requires_grad]
    grad_norm = acc.clip_grad_norm_(params, optim.grad_clip or math.inf)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if (run.step + 1) % run.cfg.ema.update_every == 0:
        run.ema.update(run.module)
    mean_loss = acc.reduce(torch.stack(losses).mean(), reduction="mean")
    clips = optim.batch_size * optim.grad_accum * acc.num_processes
    return {"train/loss": float(mean_loss), "train/lr": float(lr), "train/grad_norm": float(grad_norm),
            "train/clips_per_s": clips / max(time.perf_counter() - start, 1e-9)}


# ---------------------------------------------------------------- checkpoints


def trajectory_hash(cfg: LvdmTrainConfig) -> str:
    """Hash of everything that shapes the weights' trajectory (not max_steps: raising it continues a run)."""
    data = cfg.model_dump(mode="json")
    data["optim"].pop("max_steps", None)
    return config_hash(data)


def _trainer_state(run: TrainingRun) -> dict[str, Any]:
    return {"trajectory_hash": trajectory_hash(run.cfg), "step": run.step,
            "world_size": run.accelerator.num_processes, "sampler": run.sampler.state_dict(),
            "scheduler": run.scheduler.state_dict(), "history": run.history.__dict__}


def save_checkpoint(run: TrainingRun, root: Path, tracker: Tracker) -> Path:
    """Write `root/checkpoint-<step>` atomically (all ranks), prune old ones, log the EMA export."""
    from safetensors.torch import save_file

    acc, ckpt = run.accelerator, run.cfg.checkpoint
    export = run.step % (ckpt.ema_every or ckpt.every) == 0 or run.step == run.cfg.optim.max_steps
    with checkpoint_writer(root, run.step, is_main=run.is_main) as tmp:
        acc.wait_for_everyone()  # the main rank has created `tmp`
        acc.save_state(str(tmp))
        save_file({"state": run.generator.get_state()}, str(tmp / f"rng-rank{acc.process_index}.safetensors"))
        if run.is_main:
            run.ema.save(tmp / EMA_FILE)
            if export:
                export_ema(run, tmp / EXPORT_DIR, torch.float16)
            write_json_atomic(tmp / STATE_FILE, _trainer_state(run))
        acc.wait_for_everyone()  # every rank has written before the main rank renames
    final = root / f"checkpoint-{run.step}"
    if run.is_main:
        prune_checkpoints(root, ckpt.total_limit)
        if export:
            tracker.log_artifact(final / EXPORT_DIR, f"ema/step-{run.step:07d}")
        log.info("checkpoint %s", final)
    return final


def _compatible(checkpoint: Path | None, cfg: LvdmTrainConfig, *, latest: bool) -> Path | None:
    """`--resume latest` never continues a trajectory made with other hyper-parameters (e.g. `dvc repro`
    after a params change, with persisted checkpoints): those checkpoints are moved aside, kept, and the
    run starts fresh. An explicitly named checkpoint is honoured (fine-tuning) with a warning."""
    if checkpoint is None:
        return None
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:  # another rank already moved it aside as stale
        return None
    old = state.get("trajectory_hash")
    if old == trajectory_hash(cfg):
        return checkpoint
    if not latest:
        log.warning("resuming %s, written with other hyper-parameters (%s)", checkpoint, old)
        return checkpoint
    if int(os.environ.get("RANK", "0")) == 0:
        stale = checkpoint.parent / f"stale-{old or 'unknown'}"
        stale.mkdir(exist_ok=True)
        for folder in sorted(checkpoint.parent.glob("checkpoint-*")):
            os.replace(folder, stale / folder.name)
        log.warning("checkpoints in %s were made with other hyper-parameters: moved to %s, starting fresh",
                    checkpoint.parent, stale)
    return None


def load_checkpoint(run: TrainingRun, folder: Path) -> None:
    """Restore model, optimizer, RNG (accelerate), EMA, generator, data position, scheduler and history."""
    from safetensors.torch import load_file

    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    if state["world_size"] != run.accelerator.num_processes:
        log.warning("checkpoint %s was written by %d processes, resuming with %d: the data order changes",
                    folder, state["world_size"], run.accelerator.num_processes)
    run.accelerator.load_state(str(folder))
    run.ema.load(folder / EMA_FILE)
    rng_file = folder / f"rng-rank{run.accelerator.process_index}.safetensors"
    if rng_file.is_file():
        run.generator.set_state(load_file(str(rng_file))["state"])
    run.sampler.load_state_dict(state["sampler"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.history = History(**state["history"])
    run.step = int(state["step"])


# ---------------------------------------------------------------- inference folder


def export_ema(run: TrainingRun, folder: Path, dtype: torch.dtype) -> Path:
    """The EMA weights as an inference folder (see `save_lvdm_folder`)."""
    with run.ema.applied_to(run.module) as net:
        return save_lvdm_folder(net, run.cfg, folder, dtype=dtype, step=run.step)


def save_lvdm_folder(net: LvdmNet, cfg: LvdmTrainConfig, folder: Path, *, dtype: torch.dtype = torch.float32,
                     step: int | None = None) -> Path:
    """Write a self-describing LVDM folder: the UNet as a diffusers folder (config.json + safetensors, at the
    root), `conditioning.safetensors` (the condition encoder's trained weights) and `lvdm_config.json`
    (resolved training config, objective/scheduler settings, text-encoder source, step)."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    net.denoiser.unet.save_pretrained(folder, safe_serialization=True)
    weights = folder / "diffusion_pytorch_model.safetensors"
    if dtype != torch.float32:  # slim export: recast the written file rather than copying the model
        save_file({k: v.to(dtype) for k, v in load_file(str(weights)).items()}, str(weights),
                  metadata={"format": "pt"})
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in net.conditioner.state_dict().items()},
              str(folder / CONDITIONING_FILE))
    text = net.conditioner.tokens["text"].encoder.source if "text" in net.conditioner.tokens else None
    write_json_atomic(folder / LVDM_CONFIG_FILE, {
        "format": "echoforge-lvdm/1", "step": step, "dtype": str(dtype).removeprefix("torch."),
        "train": cfg.model_dump(mode="json"), "num_frames": cfg.dataset.num_frames,
        "cross_attention_dim": cfg.conditioning.dim, "text_encoder_source": text,
        "objective": cfg.objective.model_dump(mode="json"),
    })
    return folder


def load_lvdm_folder(folder: str | os.PathLike,
                     text_encoder: FrozenTextEncoder | None = None) -> tuple[LvdmNet, LvdmTrainConfig, Objective]:
    """(net in eval mode, its training config, its objective) from a folder written by `save_lvdm_folder`."""
    from diffusers import UNetSpatioTemporalConditionModel
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / LVDM_CONFIG_FILE).read_text(encoding="utf-8"))
    cfg = LvdmTrainConfig.model_validate(meta["train"])
    unet = load_pretrained(UNetSpatioTemporalConditionModel, folder).float()
    denoiser = LatentVideoDenoiser(unet, added_time_ids=cfg.model.added_time_ids,
                                   motion_bucket=cfg.model.motion_bucket)
    conditioner = ConditionEncoder(cfg.conditioning, text_encoder)
    conditioner.load_state_dict({k: v.float() for k, v in load_file(str(folder / CONDITIONING_FILE)).items()})
    return LvdmNet(denoiser, conditioner).eval(), cfg, build_objective(cfg.objective)


def weights_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names and exact bytes (rank-consistency and resume checks)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- validation videos


def validation_batch(cfg: LvdmTrainConfig, data_roots: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The first `num_samples` VAL clips (epoch 0: the same clips, frames and conditions every time);
    TRAIN clips when the stores have no usable VAL split."""
    kwargs = dict(conditions=cfg.conditioning.types, seed=cfg.seed)
    try:
        dataset = LatentClipDataset.from_config(data_roots, "VAL", cfg.dataset, **kwargs)
    except DataError as exc:
        log.warning("validation uses TRAIN clips: %s", str(exc).splitlines()[0])
        dataset = LatentClipDataset.from_config(data_roots, "TRAIN", cfg.dataset, **kwargs)
    return default_collate([dataset[i] for i in range(min(cfg.validation.num_samples, len(dataset)))])


@torch.no_grad()
def sample_validation(net: LvdmNet, objective: Objective, batch: Mapping[str, Any], cfg: ValidationConfig,
                      seed: int) -> torch.Tensor:
    """Generate clips for the batch's conditioning frames and conditions → latents (B, C, T, h, w).

    With guidance_scale ≠ 1, classifier-free guidance: uncond + s·(cond − uncond), the unconditional
    branch using the encoder's null tokens (what conditioning dropout trained)."""
    device = next(net.parameters()).device
    batch = _to_device(batch, device)
    noise = torch.randn(batch["video"].shape, generator=torch.Generator().manual_seed(seed)).to(device)
    drop_all = torch.ones(noise.shape[0], dtype=torch.bool, device=device)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred = net(x, t, batch["cond_frame"], batch, None, batch["fps"])
        if cfg.guidance_scale == 1.0:
            return pred
        uncond = net(x, t, batch["cond_frame"], batch, drop_all, batch["fps"])
        return uncond + cfg.guidance_scale * (pred - uncond)

    return basic_sampler.sample(model, noise, objective, cfg.steps)


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


def _validate(run: TrainingRun, batch: Mapping[str, Any], out_dir: Path, tracker: Tracker, vae: Any) -> Path:
    """Sample with the EMA weights (swapped in and back bit-exactly), write a GIF, log it."""
    from echo_core.data.video import write_video

    net = run.module
    net.eval()
    with run.ema.applied_to(net):
        generated = sample_validation(net, run.objective, batch, run.cfg.validation, seed=run.cfg.seed + run.step)
    net.train()
    frames = validation_grid(batch, generated, vae)
    path = write_video(out_dir / "validation" / f"step-{run.step:07d}.gif", frames, run.cfg.dataset.target_fps)
    tracker.log_artifact(path, "validation")
    log.info("validation video %s", path)
    return path


# ---------------------------------------------------------------- entry point


@dataclass(frozen=True)
class TrainResult:
    folder: Path  # the final EMA inference folder (written by the main process)
    step: int
    world_size: int
    is_main: bool


def train_lvdm(cfg: LvdmTrainConfig, data_roots: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
               tracker: Tracker | None = None, resume: str | None = None, vae: Any = None,
               text_encoder: FrozenTextEncoder | None = None) -> TrainResult:
    """Train (or resume, `resume="latest"` or a checkpoint folder) the LVDM on the TRAIN clips of the latent
    stores `data_roots`. Writes under `out_dir`: checkpoints/, validation/, unet_ema/ (final EMA inference
    folder), train_summary.json and ranks/rank-<r>.json (weight digests of every process)."""
    tracker = tracker or NullTracker()
    out_dir = Path(out_dir)
    run = build_run(cfg, data_roots, text_encoder)
    checkpoint = _compatible(resolve_resume(out_dir / "checkpoints", resume), cfg, latest=resume == "latest")
    if checkpoint is not None:
        load_checkpoint(run, checkpoint)
        log.info("resumed from %s (step %d)", checkpoint, run.step)
    val_batch = validation_batch(cfg, data_roots) if run.is_main and cfg.validation.every else None
    if vae is not None:
        vae.to(run.accelerator.device)
    if run.is_main:
        tracker.log_params({"train_lvdm": cfg.model_dump(mode="json"), "data": [str(d) for d in data_roots]})
        tracker.set_tags({"world_size": str(run.accelerator.num_processes), "resumed_from_step": str(run.step)})
    _train(run, out_dir, tracker, val_batch, vae)
    return _finish(run, out_dir)


def _train(run: TrainingRun, out_dir: Path, tracker: Tracker, val_batch: Mapping[str, Any] | None, vae: Any) -> None:
    cfg = run.cfg
    max_steps = cfg.optim.max_steps
    steps = range(run.step, max_steps)
    run.net.train()
    for _ in progress(steps, desc="train lvdm") if run.is_main else steps:
        metrics = optimizer_step(run)
        run.step += 1
        run.history.add(metrics["train/loss"], metrics["train/lr"])
        if run.is_main and (run.step % cfg.log_every == 0 or run.step == max_steps):
            tracker.log_metrics(metrics, step=run.step)
        if val_batch is not None and run.step % cfg.validation.every == 0:
            _validate(run, val_batch, out_dir, tracker, vae)
        if run.step % cfg.checkpoint.every == 0 or run.step == max_steps:
            save_checkpoint(run, out_dir / "checkpoints", tracker)


def _finish(run: TrainingRun, out_dir: Path) -> TrainResult:
    """Final EMA folder + summary (main), per-rank weight digests (all ranks)."""
    acc = run.accelerator
    folder = out_dir / FINAL_DIR
    if run.is_main:
        with atomic_dir(folder) as tmp:
            export_ema(run, tmp, torch.float32)
        first, last = run.history.first_loss, run.history.last_loss
        write_json_atomic(out_dir / SUMMARY_FILE, {
            "step": run.step, "world_size": acc.num_processes, "epoch": run.sampler.epoch,
            "loss_first_mean": float(np.mean(first)) if first else None,
            "loss_last_mean": float(np.mean(last)) if last else None, "history": run.history.__dict__,
        })
    write_json_atomic(out_dir / "ranks" / f"rank-{acc.process_index}.json", {
        "rank": acc.process_index, "world_size": acc.num_processes, "step": run.step,
        "weights_sha256": weights_digest(run.module.state_dict()), "ema_sha256": weights_digest(run.ema.shadow),
    })
    acc.wait_for_everyone()
    acc.end_training()
    return TrainResult(folder, run.step, acc.num_processes, run.is_main)
