"""The re-identification net as a training task of the one trainer: `train_reid(cfg, data_roots, out_dir, ...)`
is the entry point (`echoforge privacy train` calls it).

Relative to the reference trainer (seed-systems §5.2): pairs are drawn from seeded per-item generators (a
resume reads the same pairs), the identity may be the patient (`identity: patient`), and the held-out pair AUC
(VAL + TEST videos, fixed-seed pairs, bootstrap CI) is computed at the end (the ES script crashed there) and
recorded in the model folder and the tracker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from echo_core.downstream.scores import roc_auc
from echo_core.metrics.bootstrap import paired_statistic
from echo_core.models.reid import ReidNet, build_reid_net
from echo_core.privacy.frames import PairDataset, video_rows
from echo_core.tracking import Tracker
from echo_core.training.ema import EmaConfig
from echo_core.training.lidm import stores_vae
from echo_core.training.task import LoopSettings, TrainResult, TrainTask
from echo_core.training.trainer import train

FINAL_DIR = "reid"
HELDOUT_SPLITS = ("VAL", "TEST")


class ReidTrainConfig(LoopSettings):
    """`train_reid:` in params.yaml (unknown keys are errors)."""

    variant: Literal["small", "reference"] = "small"
    p_positive: float = Field(0.5, gt=0, lt=1)
    identity: Literal["video", "patient"] = "video"  # patient: FileList `patient_id` where present
    pairs_per_epoch: int = Field(4096, ge=1)
    eval_pairs: int = Field(1000, ge=2)  # held-out pairs for the AUC
    eval_resamples: int = Field(1000, ge=1)  # bootstrap resamples of its CI
    ema: EmaConfig | None = None  # a classifier needs no EMA; BatchNorm statistics stay those trained


class ReidTask(TrainTask):
    """Same-identity logit of frame pairs, BCE with logits."""

    name = "reid"
    export_dir = FINAL_DIR
    items_name = "pairs"
    config: ReidTrainConfig

    def __init__(self, cfg: ReidTrainConfig, data_roots: Sequence[str | os.PathLike]):
        super().__init__(cfg)
        self.data_roots = list(data_roots)
        self.vae_sha256 = stores_vae(self.data_roots).get("sha256") or ""
        # built now so a store without held-out videos fails before training, not after it
        self.heldout_pairs = PairDataset(video_rows(self.data_roots, HELDOUT_SPLITS, cfg.identity), cfg.eval_pairs,
                                         p_positive=cfg.p_positive, seed=cfg.seed + 1)
        self.heldout: dict[str, Any] | None = None

    def build_model(self) -> ReidNet:
        return build_reid_net(self.config.variant)

    def train_dataset(self) -> PairDataset:
        cfg = self.config
        return PairDataset(video_rows(self.data_roots, ["TRAIN"], cfg.identity), cfg.pairs_per_epoch,
                           p_positive=cfg.p_positive, seed=cfg.seed)

    def loss(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
        """batch: a, b (B, C, h, w), label (B,) 1 = same identity."""
        return nn.functional.binary_cross_entropy_with_logits(model(batch["a"], batch["b"]), batch["label"])

    def finish(self, model: nn.Module, out_dir: Path, step: int, tracker: Tracker) -> None:
        labels, probs = pair_probabilities(model, self.heldout_pairs)
        est = paired_statistic(pair_auc, labels, probs, resamples=self.config.eval_resamples, seed=self.config.seed)
        self.heldout = {**est.to_dict(), "pairs": len(labels), "videos": len(self.heldout_pairs.rows),
                        "splits": list(HELDOUT_SPLITS)}
        tracker.log_metrics({"heldout/pair_auc": est.value, "heldout/pair_auc_ci_low": est.ci_low,
                             "heldout/pair_auc_ci_high": est.ci_high}, step=step)

    def export(self, model: ReidNet, folder: Path, dtype: torch.dtype, step: int) -> Path:
        return model.save_pretrained(folder, step=step, vae_sha256=self.vae_sha256,
                                     train=self.config.model_dump(mode="json"), heldout=self.heldout)

    def params(self) -> dict[str, Any]:
        return {"train_reid": self.config.model_dump(mode="json"), "data": [str(d) for d in self.data_roots]}


def pair_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC of same-identity probabilities (N,) against labels (N,) in {0, 1}."""
    return roc_auc(labels.astype(int), np.stack([1 - probs, probs], axis=1))


@torch.no_grad()
def pair_probabilities(model: nn.Module, pairs: PairDataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), same-identity probabilities (N,)) of every pair, the model in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    labels, probs = [], []
    for batch in DataLoader(pairs, batch_size=batch_size):
        probs.append(torch.sigmoid(model(batch["a"].to(device), batch["b"].to(device))).cpu())
        labels.append(batch["label"])
    model.train(was_training)
    return torch.cat(labels).numpy(), torch.cat(probs).double().numpy()


def train_reid(cfg: ReidTrainConfig, data_roots: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
               tracker: Any = None, resume: str | None = None) -> TrainResult:
    """Train (or resume) the re-identification net on TRAIN pairs of the latent stores; writes under `out_dir`
    checkpoints/, reid/ (the model folder, with the held-out AUC), train_summary.json and ranks/."""
    return train(ReidTask(cfg, data_roots), out_dir, tracker=tracker, resume=resume)
