"""The LVDM as a training task: `train_lvdm(cfg, data_roots, out_dir, tracker=...)` is the one entry point
(`echoforge train lvdm` calls it, also under `accelerate launch`); the loop is the shared `trainer.train`.

What this task fixes relative to the reference trainers (seed-systems §3, §8):

- conditioning dropout is applied for real (CFG trains; nulls are the dedicated null tokens, §8.1–8.4);
- the loss masks exactly the padded frames (§8.5, in `objectives.frame_mask`);
- validation videos are sampled like batch generation (`preview.py`), at optimizer-step boundaries only.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from echo_core.diffusion.objectives import build_objective, frame_mask, to_frame_residual
from echo_core.latents.clips import LatentClipDataset
from echo_core.models.conditioning import FrozenTextEncoder, apply_frame_dropout, sample_dropout_masks
from echo_core.models.lvdm import LvdmNet, LvdmSpec, build_lvdm_net
from echo_core.tracking import Tracker
from echo_core.training.ema import EmaConfig
from echo_core.training.preview import ValidationConfig, validation_batch, write_validation_video
from echo_core.training.task import LoopSettings, TrainResult, TrainTask
from echo_core.training.trainer import train

log = logging.getLogger("echoforge.lvdm")

FINAL_DIR = "unet_ema"


class LvdmTrainConfig(LvdmSpec, LoopSettings):
    """`train_lvdm:` in params.yaml (unknown keys are errors): the model's spec, then how to train it."""

    ema: EmaConfig = Field(default_factory=EmaConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    log_every: int = Field(1, ge=1)


class LvdmTask(TrainTask):
    """Denoise latent clips (B, C, T, h, w) given a conditioning frame and clinical conditions."""

    name = "lvdm"
    export_dir = FINAL_DIR
    items_name = "clips"
    config: LvdmTrainConfig

    def __init__(self, cfg: LvdmTrainConfig, data_roots: Sequence[str | os.PathLike], *,
                 text_encoder: FrozenTextEncoder | None = None, vae: Any = None):
        super().__init__(cfg)
        self.data_roots, self.text_encoder, self.vae = list(data_roots), text_encoder, vae
        self.objective = build_objective(cfg.objective)
        self.preview_every = cfg.validation.every

    def build_model(self) -> LvdmNet:
        net = build_lvdm_net(self.config, self.text_encoder)
        if self.config.optim.gradient_checkpointing:
            net.denoiser.unet.enable_gradient_checkpointing()
        return net

    def train_dataset(self) -> LatentClipDataset:
        cfg = self.config
        return LatentClipDataset.from_config(self.data_roots, "TRAIN", cfg.dataset,
                                             conditions=cfg.conditioning.types, seed=cfg.seed)

    def loss(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
        """Masked denoising loss, with condition and frame dropout. batch["video"]: (B, C, T, h, w)."""
        p = self.config.conditioning
        x0 = batch["video"]
        if p.frame_residual is not None:
            x0 = to_frame_residual(x0, batch["cond_frame"], p.frame_residual)
        b, frames = x0.shape[0], x0.shape[2]
        cond_drop, frame_drop = sample_dropout_masks(b, p.p_cond, p.p_frame, generator)
        noise = self.objective.make_noise(x0, generator)
        t = self.objective.sample_timesteps(b, generator, device=x0.device)
        x_t, target = self.objective.training_target(x0, noise, t)
        cond_frame = apply_frame_dropout(batch["cond_frame"], frame_drop)
        pred = model(x_t, self.objective.model_time(t), cond_frame, batch, cond_drop.to(x0.device), batch["fps"])
        return self.objective.loss(pred, target, frame_mask(batch["padding"], frames))

    @functools.cached_property
    def _validation_clips(self) -> dict[str, Any]:
        """Loaded at the first preview, by the main process only."""
        return validation_batch(self.config, self.data_roots)

    def preview(self, model: LvdmNet, step: int, out_dir: Path, tracker: Tracker) -> None:
        path = write_validation_video(model, self._validation_clips, self.config.validation,
                                      seed=self.config.seed + step, vae=self.vae,
                                      path=out_dir / "validation" / f"step-{step:07d}.gif")
        tracker.log_artifact(path, "validation")
        log.info("validation video %s", path)

    def export(self, model: LvdmNet, folder: Path, dtype: torch.dtype, step: int) -> Path:
        return model.save_pretrained(folder, dtype=dtype, step=step)

    def params(self) -> dict[str, Any]:
        return {"train_lvdm": self.config.model_dump(mode="json"), "data": [str(d) for d in self.data_roots]}


def train_lvdm(cfg: LvdmTrainConfig, data_roots: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
               tracker: Tracker | None = None, resume: str | None = None, vae: Any = None,
               text_encoder: FrozenTextEncoder | None = None) -> TrainResult:
    """Train (or resume, `resume="latest"` or a checkpoint folder) the LVDM on the TRAIN clips of the latent
    stores `data_roots`. Writes under `out_dir`: checkpoints/, validation/, unet_ema/ (final EMA inference
    folder), train_summary.json and ranks/rank-<r>.json (weight digests of every process). `vae` decodes
    the validation videos (else latent previews)."""
    task = LvdmTask(cfg, data_roots, text_encoder=text_encoder, vae=vae)
    return train(task, out_dir, tracker=tracker, resume=resume)
