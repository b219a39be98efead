"""The LIDM as a training task of the one trainer: `train_lidm(cfg, data_roots, out_dir, ...)` is the entry
point (`echoforge lidm train` calls it, also under `accelerate launch`).

Relative to the reference LIDM trainers (seed-systems §3.2–3.3):
- the training frame is the end-diastolic frame where VolumeTracings give it (`latents.frames`), not a
  random frame of the whole video; and no duration filter drops short videos (the reference inherited the
  LVDM's 2 s rule although it trains on single frames);
- a class-conditioned model drops the class to its own null class with `p_uncond`, so guidance is trained
  (EchoDream's null was class 0, a real class);
- the export records the VAE (sha256, scaling factor) whose latents it models, so the sampler, the privacy
  filter and the LVDM can refuse hearts of another VAE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from echo_core.diffusion.objectives import build_objective
from echo_core.errors import DataError
from echo_core.latents.frames import HeartFrameDataset, ed_frames
from echo_core.latents.store import read_manifest
from echo_core.models.lidm import LidmNet, LidmSpec, build_lidm_net
from echo_core.training.ema import EmaConfig
from echo_core.training.task import LoopSettings, TrainResult, TrainTask
from echo_core.training.trainer import train

FINAL_DIR = "unet_ema"
_ALL_VALID = torch.ones(1, 1, 1, 1, dtype=torch.bool)  # images have no padded frames


class LidmTrainConfig(LidmSpec, LoopSettings):
    """`train_lidm_<dataset>:` in params.yaml (unknown keys are errors): the model's spec, then how to train it."""

    ema: EmaConfig = Field(default_factory=EmaConfig)


def stores_vae(data_roots: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """{sha256, scaling_factor} of the VAE behind the stores; a DataError when they disagree."""
    vaes = {str(r): read_manifest(r).get("vae", {}) for r in data_roots}
    shas = {v.get("sha256") for v in vaes.values()}
    if len(shas) > 1:
        raise DataError(f"latent stores come from different VAEs: { {r: v.get('sha256') for r, v in vaes.items()} }",
                        fix="encode every store with the same VAE")
    first = next(iter(vaes.values()))
    return {"sha256": first.get("sha256"), "scaling_factor": first.get("scaling_factor")}


class LidmTask(TrainTask):
    """Denoise single latent frames (B, C, h, w), optionally given the class."""

    name = "lidm"
    export_dir = FINAL_DIR
    items_name = "images"
    config: LidmTrainConfig

    def __init__(self, cfg: LidmTrainConfig, data_roots: Sequence[str | os.PathLike], *,
                 tracings: Sequence[str | os.PathLike] = ()):
        super().__init__(cfg)
        self.data_roots, self.tracings = list(data_roots), list(tracings)
        self.objective = build_objective(cfg.objective)
        self.vae = stores_vae(self.data_roots)

    def build_model(self) -> LidmNet:
        return build_lidm_net(self.config)

    def train_dataset(self) -> HeartFrameDataset:
        ed = {name: frame for path in self.tracings for name, frame in ed_frames(path).items()}
        dataset = HeartFrameDataset(self.data_roots, "TRAIN", ed=ed, seed=self.config.seed)
        if self.config.conditioning.class_id:
            _check_classes(dataset, self.config.conditioning.num_classes)
        return dataset

    def loss(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
        """Denoising loss of a batch of frames; batch["latent"]: (B, C, h, w)."""
        x0 = batch["latent"]
        b = x0.shape[0]
        noise = self.objective.make_noise(x0, generator)
        t = self.objective.sample_timesteps(b, generator, device=x0.device)
        x_t, target = self.objective.training_target(x0, noise, t)
        pred = model(x_t, self.objective.model_time(t), self._dropped_classes(batch["class_id"], generator))
        return self.objective.loss(pred, target, _ALL_VALID.to(x0.device))

    def _dropped_classes(self, class_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        cond = self.config.conditioning
        if not cond.class_id:
            return None
        drop = torch.rand(class_ids.shape[0], generator=generator, device=generator.device) < cond.p_uncond
        return torch.where(drop.to(class_ids.device), torch.full_like(class_ids, cond.null_class), class_ids)

    def export(self, model: LidmNet, folder: Path, dtype: torch.dtype, step: int) -> Path:
        return model.save_pretrained(folder, dtype=dtype, step=step, vae=self.vae)

    def params(self) -> dict[str, Any]:
        return {"train_lidm": self.config.model_dump(mode="json"), "data": [str(d) for d in self.data_roots],
                "tracings": [str(t) for t in self.tracings]}


def _check_classes(dataset: HeartFrameDataset, num_classes: int) -> None:
    bad = dataset.rows[(dataset.rows["class_id"] < 0) | (dataset.rows["class_id"] >= num_classes)]
    if len(bad):
        raise DataError(f"FileName {bad['FileName'].iloc[0]!r} has class_id {int(bad['class_id'].iloc[0])}, "
                        f"outside [0, {num_classes}) ({len(bad)} such TRAIN rows)",
                        fix="a class-conditioned LIDM needs a class_id column with every TRAIN row labelled; "
                            "or set train_lidm.conditioning.num_classes")


def train_lidm(cfg: LidmTrainConfig, data_roots: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
               tracker: Any = None, resume: str | None = None,
               tracings: Sequence[str | os.PathLike] = ()) -> TrainResult:
    """Train (or resume) the LIDM on the TRAIN frames of the latent stores; writes under `out_dir`
    checkpoints/, unet_ema/ (the final EMA folder), train_summary.json and ranks/."""
    return train(LidmTask(cfg, data_roots, tracings=tracings), out_dir, tracker=tracker, resume=resume)
