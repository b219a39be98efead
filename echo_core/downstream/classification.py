"""Downstream classification: can a classifier trained on real, synthetic or mixed videos tell classes apart
on REAL test videos?

Protocol (fixes seed §8 item 12):
- Labels come from the fixed CardiacNet map restricted to `class_ids` (in that order), identical for every
  split and source; videos of other classes are excluded and counted in the report.
- k-fold cross-validation over real TRAIN+VAL, grouped by patient (no patient is in the training and the
  validation part of one fold) and stratified by class where the groups allow it.
- Each fold trains on the fold's real training part, the synthetic videos, or both (`train_on`); synthetic
  videos are never validated or tested on. The best epoch by fold-validation loss is tested on the fixed
  real TEST split. Accuracy, macro-F1 and AUC (from softmax probabilities) are reported per fold and as
  mean ± std; the TEST confusion matrix is summed over folds.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from echo_core.config import StrictModel
from echo_core.downstream.data import (
    REAL,
    SYNTHETIC,
    ClipDataset,
    LabelMap,
    VideoRecord,
    VideoStore,
    scan_video_folder,
)
from echo_core.downstream.fit import FitResult, FitSettings, fit, predict
from echo_core.downstream.plots import (
    plot_confusion_matrix,
    plot_loss_curves,
    write_confusion_csv,
    write_csv,
    write_metrics_json,
)
from echo_core.downstream.scores import classification_metrics, confusion, mean_std
from echo_core.errors import DataError, UsageError
from echo_core.models.classifier import build_video_model
from echo_core.tracking import NullTracker, Tracker

METRICS = ("accuracy", "macro_f1", "auc")


class ClassificationConfig(StrictModel):
    """params.yaml `downstream.classification`."""

    class_ids: list[int] = Field(default_factory=lambda: [0, 1])  # fixed-map ids; order = label order
    frames: int = Field(16, ge=1)  # clip length after resampling to `fps`
    fps: float = Field(32.0, gt=0)
    size: int = Field(112, ge=8)  # clips are size x size
    width: int = Field(64, ge=1)  # R3D base width: 64 = R3D-18, 8 = CPU demo
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    epochs: int = Field(45, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    folds: int = Field(5, ge=2)
    seed: int = 42
    train_on: Literal["real", "synthetic", "mixed"] = "real"
    synthetic_fraction: float = Field(1.0, gt=0.0, le=1.0)  # share of the synthetic videos used (per class)
    cache_videos: bool = True  # keep decoded clips in RAM (see VideoStore)

    @field_validator("class_ids")
    @classmethod
    def _known_ids(cls, value: list[int]) -> list[int]:
        LabelMap(tuple(value))  # raises with the fix
        return value


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    n_train_real: int
    n_train_synthetic: int
    n_val: int
    accuracy: float
    macro_f1: float
    auc: float


@dataclass
class ClassificationReport:
    config: dict[str, Any]
    class_ids: list[int]
    class_names: list[str]
    n_test: int
    folds: list[FoldResult]
    summary: dict[str, dict[str, float]]  # metric -> {mean, std, n}
    confusion: list[list[int]]  # summed over folds on TEST; rows actual, columns predicted
    excluded: dict[str, int]  # "source/split/class_id" -> videos left out
    predictions: pd.DataFrame = field(repr=False)  # FileName, fold, actual, predicted, p_<class>
    history: pd.DataFrame = field(repr=False)  # fold, epoch, train_loss, val_loss

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("predictions", "history")}


# ---------------------------------------------------------------------------------------------- folds


def patient_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, val_idx) per fold; every index is validated exactly once and a group never straddles.

    StratifiedGroupKFold keeps class balance as far as whole patients allow.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    num_groups = len(np.unique(groups))
    if num_groups < k:
        raise DataError(f"{k}-fold cross-validation needs at least {k} patients in TRAIN+VAL, found {num_groups}",
                        fix="lower `folds` in params.yaml downstream.classification, or add data")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def subsample_per_class(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded `fraction` of each class (at least one video per present class)."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep.append(rng.choice(members, size=max(1, round(fraction * len(members))), replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """w_c = N / (K * n_c) for classes present in `labels`, 0 for absent ones. (K,) float32."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ run


@dataclass
class LabelledVideos:
    """Records with their contiguous labels (LabelMap indices)."""

    records: list[VideoRecord]
    labels: np.ndarray

    def take(self, indices: np.ndarray) -> LabelledVideos:
        return LabelledVideos([self.records[i] for i in indices], self.labels[indices])

    def __add__(self, other: LabelledVideos) -> LabelledVideos:
        return LabelledVideos(self.records + other.records, np.concatenate([self.labels, other.labels]))


def run_classification(cfg: ClassificationConfig, real_root: str | os.PathLike,
                       synthetic_root: str | os.PathLike | None = None, tracker: Tracker | None = None,
                       out_dir: str | os.PathLike | None = None) -> ClassificationReport:
    """Scan the folders and run `classify_records` (see the module docstring for the protocol)."""
    if cfg.train_on != "real" and synthetic_root is None:
        raise UsageError(f"train_on={cfg.train_on!r} needs a synthetic sample folder",
                         fix="pass the generated samples folder, or set train_on: real")
    real = scan_video_folder(real_root, source=REAL)
    synthetic = scan_video_folder(synthetic_root, source=SYNTHETIC) if cfg.train_on != "real" else []
    return classify_records(cfg, real, synthetic, tracker=tracker, out_dir=out_dir)


def classify_records(cfg: ClassificationConfig, real: list[VideoRecord], synthetic: list[VideoRecord], *,
                     tracker: Tracker | None = None, out_dir: str | os.PathLike | None = None
                     ) -> ClassificationReport:
    """Patient-grouped k-fold training, each fold tested on real TEST; writes artefacts to `out_dir`."""
    tracker = tracker or NullTracker()
    label_map = LabelMap(tuple(cfg.class_ids))
    pool, test, synth, excluded = _labelled_sets(label_map, real, synthetic, cfg)
    tracker.log_params({f"downstream.classification.{k}": v for k, v in cfg.model_dump().items()})
    store = VideoStore(cfg.fps, cfg.size, cfg.cache_videos)
    groups = np.asarray([r.patient_id for r in pool.records])
    folds, probs, rows = [], [], []
    for fold, (train_idx, val_idx) in enumerate(patient_folds(pool.labels, groups, cfg.folds, cfg.seed)):
        train = {"real": pool.take(train_idx), "synthetic": synth, "mixed": pool.take(train_idx) + synth}
        fitted, fold_probs, metrics = _run_fold(fold, train[cfg.train_on], pool.take(val_idx), test, cfg,
                                                store, tracker)
        folds.append(FoldResult(
            fold=fold, best_epoch=fitted.best_epoch, n_val=len(val_idx),
            n_train_real=0 if cfg.train_on == "synthetic" else len(train_idx),
            n_train_synthetic=0 if cfg.train_on == "real" else len(synth.records), **metrics))
        probs.append(fold_probs)
        rows += [{"fold": fold, **row} for row in fitted.history]
    report = _report(cfg, label_map, test, folds, probs, pd.DataFrame(rows), excluded)
    tracker.log_metrics(_final_metrics(report))
    if out_dir is not None:
        for path in write_classification_outputs(report, out_dir):
            tracker.log_artifact(path, "downstream")
    return report


def _labelled_sets(label_map: LabelMap, real: list[VideoRecord], synthetic: list[VideoRecord],
                   cfg: ClassificationConfig) -> tuple[LabelledVideos, LabelledVideos, LabelledVideos, dict]:
    """(real TRAIN+VAL, real TEST, synthetic subset, excluded counts), all labelled with the same map."""
    real_kept, real_labels, excluded = label_map.encode(real)
    synth_kept, synth_labels, synth_excluded = label_map.encode(synthetic)
    excluded.update(synth_excluded)
    real_set = LabelledVideos(real_kept, real_labels)
    split = np.asarray([r.split for r in real_kept])
    pool, test = real_set.take(np.flatnonzero(np.isin(split, ["TRAIN", "VAL"]))), real_set.take(
        np.flatnonzero(split == "TEST"))
    synth = LabelledVideos(synth_kept, synth_labels)
    synth = synth.take(subsample_per_class(synth.labels, cfg.synthetic_fraction, cfg.seed))
    for name, subset in (("real TRAIN+VAL", pool), ("real TEST", test)):
        if not subset.records:
            raise DataError(f"no {name} videos of classes {label_map.names} (ids {list(label_map.class_ids)})",
                            fix="check the Split and class_id columns of the real FileList.csv")
    if cfg.train_on != "real" and not synth.records:
        raise DataError(f"no synthetic videos of classes {label_map.names}",
                        fix="check class_id / CondType+CondValue in the samples' FileList.csv")
    return pool, test, synth, excluded


def _run_fold(fold: int, train: LabelledVideos, val: LabelledVideos, test: LabelledVideos,
              cfg: ClassificationConfig, store: VideoStore, tracker: Tracker
              ) -> tuple[FitResult, np.ndarray, dict[str, float]]:
    """Train one fold, keep its best validation epoch -> (fit, TEST probabilities (N, K), TEST metrics)."""
    seed = cfg.seed + fold
    num_classes = len(cfg.class_ids)

    def dataset(part: LabelledVideos, training: bool) -> ClipDataset:
        return ClipDataset(part.records, part.labels, store, frames=cfg.frames, train=training, seed=seed)

    torch.manual_seed(seed)
    model = build_video_model("classification", width=cfg.width, num_classes=num_classes, dropout=cfg.dropout)
    weights = inverse_frequency_weights(train.labels, num_classes)

    def loss_fn(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(m(x), y, weight=weights)

    def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
        tracker.log_metrics({f"classification/fold_{fold}/train_loss": train_loss,
                             f"classification/fold_{fold}/val_loss": val_loss}, step=epoch)

    settings = FitSettings(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, seed)
    fitted = fit(model, dataset(train, True), dataset(val, False), loss_fn, settings, on_epoch)
    logits = predict(model, dataset(test, False), cfg.batch_size)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return fitted, probs, classification_metrics(test.labels, probs)


def _report(cfg: ClassificationConfig, label_map: LabelMap, test: LabelledVideos, folds: list[FoldResult],
            probs: list[np.ndarray], history: pd.DataFrame, excluded: dict[str, int]) -> ClassificationReport:
    num_classes = len(label_map.class_ids)
    matrix = sum(confusion(test.labels, p.argmax(axis=1), num_classes) for p in probs)
    names = label_map.names
    predictions = pd.concat([
        pd.DataFrame({
            "FileName": [r.name for r in test.records], "fold": fold,
            "actual": [names[i] for i in test.labels], "predicted": [names[i] for i in p.argmax(axis=1)],
            **{f"p_{name}": p[:, k] for k, name in enumerate(names)},
        })
        for fold, p in enumerate(probs)
    ], ignore_index=True)
    return ClassificationReport(
        config=cfg.model_dump(), class_ids=list(label_map.class_ids), class_names=names,
        n_test=len(test.records), folds=folds,
        summary={m: mean_std([getattr(f, m) for f in folds]) for m in METRICS},
        confusion=np.asarray(matrix).tolist(), excluded=dict(sorted(excluded.items())),
        predictions=predictions, history=history,
    )


def _final_metrics(report: ClassificationReport) -> dict[str, float]:
    metrics = {}
    for name, stats in report.summary.items():
        metrics[f"classification/{name}_mean"] = stats["mean"]
        metrics[f"classification/{name}_std"] = stats["std"]
    for fold in report.folds:
        metrics.update({f"classification/fold_{fold.fold}/{m}": getattr(fold, m) for m in METRICS})
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def write_classification_outputs(report: ClassificationReport, out_dir: str | os.PathLike) -> list[Path]:
    """classification.json, confusion_matrix.{csv,png}, loss_curve.{csv,png}, predictions.csv (atomic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics_json(out / "classification.json", report.to_dict())
    return [
        out / "classification.json",
        write_confusion_csv(report.predictions["actual"], report.predictions["predicted"],
                            out / "confusion_matrix.csv"),
        plot_confusion_matrix(np.asarray(report.confusion), report.class_names, out / "confusion_matrix.png",
                              title=f"TEST, summed over {len(report.folds)} folds"),
        write_csv(report.history, out / "loss_curve.csv"),
        plot_loss_curves(report.history, out / "loss_curve.png", title="Classifier loss"),
        write_csv(report.predictions, out / "predictions.csv"),
    ]
