"""Downstream EF regression for EF-conditioned models: two questions, two regressors.

1. Synthetic -> real (EchoNet-Synthetic's test): a regressor trained only on generated videos (target =
   the EF they were generated for) is tested on real TEST videos. R², MAE.
2. EF adherence: does a generated video show the EF it was asked for? The judge must not have learnt the
   generator's own mapping, so it is a regressor trained on REAL TRAIN videos (a regressor trained on the
   same synthetic videos would grade its own homework). Its predicted EF on the generated videos is compared
   with the requested EF (R², MAE). Its real TEST score is reported too: the real-data baseline that the
   synthetic -> real score is read against, and the judge's own accuracy.

Best epoch: lowest loss on real VAL (`select_epoch_on: real_val`) or simply the last (`last`). The real TEST
split is only ever predicted, never used for selection.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.downstream.data import REAL, SYNTHETIC, ClipDataset, VideoRecord, VideoStore, scan_video_folder
from echo_core.downstream.fit import FitResult, FitSettings, fit, predict
from echo_core.downstream.plots import plot_ef_scatter, plot_loss_curves, write_csv, write_metrics_json
from echo_core.downstream.scores import regression_metrics
from echo_core.errors import DataError
from echo_core.models.classifier import EFRegressor, build_video_model
from echo_core.tracking import NullTracker, Tracker


class RegressionConfig(StrictModel):
    """params.yaml `downstream.regression`."""

    frames: int = Field(16, ge=1)
    fps: float = Field(32.0, gt=0)
    size: int = Field(112, ge=8)
    width: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    epochs: int = Field(45, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 42
    select_epoch_on: Literal["real_val", "last"] = "real_val"
    adherence: bool = True  # also train the real-data judge and score EF adherence of the samples
    cache_videos: bool = True


@dataclass
class RegressionReport:
    config: dict[str, Any]
    synthetic_to_real: dict[str, float]  # r2, mae, rmse on real TEST, n, best_epoch
    real_to_real: dict[str, float] | None  # the judge on real TEST (None without adherence)
    adherence: dict[str, float] | None  # judge's EF on samples vs requested EF
    excluded: dict[str, int]  # "source/split" -> videos without an EF
    predictions: pd.DataFrame = field(repr=False)  # FileName, evaluation, true_ef, predicted_ef
    history: pd.DataFrame = field(repr=False)  # model, epoch, train_loss, val_loss

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("predictions", "history")}


@dataclass
class EFSet:
    records: list[VideoRecord]

    @property
    def ef(self) -> np.ndarray:
        return np.asarray([r.ef for r in self.records], dtype=np.float32)


def with_ef(records: list[VideoRecord]) -> tuple[EFSet, dict[str, int]]:
    """Records that carry an EF, and counts of those that do not ("source/split")."""
    excluded: dict[str, int] = {}
    for r in records:
        if r.ef is None:
            excluded[f"{r.source}/{r.split}"] = excluded.get(f"{r.source}/{r.split}", 0) + 1
    return EFSet([r for r in records if r.ef is not None]), excluded


def train_regressor(name: str, train: EFSet, val: EFSet | None, cfg: RegressionConfig, store: VideoStore,
                    tracker: Tracker) -> tuple[EFRegressor, FitResult]:
    """Fit an EF regressor (MSE in standardised EF units); `name` labels its tracker metrics."""
    torch.manual_seed(cfg.seed)
    model = build_video_model("regression", width=cfg.width, dropout=cfg.dropout)
    model.set_target_stats(float(train.ef.mean()), float(train.ef.std()))

    def loss_fn(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(m.forward_standardized(x), m.standardize(y))

    def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
        tracker.log_metrics({f"regression/{name}/train_loss": train_loss,
                             f"regression/{name}/val_loss": val_loss}, step=epoch)

    def dataset(part: EFSet, training: bool) -> ClipDataset:
        return ClipDataset(part.records, part.ef, store, frames=cfg.frames, train=training, seed=cfg.seed)

    settings = FitSettings(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.seed)
    fitted = fit(model, dataset(train, True), dataset(val, False) if val else None, loss_fn, settings, on_epoch)
    return model, fitted


def predict_ef(model: EFRegressor, part: EFSet, cfg: RegressionConfig, store: VideoStore) -> np.ndarray:
    """Predicted EF (N,) in percent, centred clip of each video."""
    dataset = ClipDataset(part.records, part.ef, store, frames=cfg.frames, train=False)
    return predict(model, dataset, cfg.batch_size)


def ef_adherence(model: EFRegressor, synthetic_root: str | os.PathLike, cfg: RegressionConfig,
                 store: VideoStore | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """A judge's EF on generated videos vs the requested EF -> ({r2, mae, rmse, n}, per-video predictions)."""
    samples, _ = with_ef(scan_video_folder(synthetic_root, source=SYNTHETIC))
    if not samples.records:
        raise DataError(f"no generated video in {synthetic_root} has a requested EF",
                        fix="the samples' FileList.csv needs EF, or CondType 'ef' with CondValue")
    store = store or VideoStore(cfg.fps, cfg.size, cfg.cache_videos)
    predicted = predict_ef(model, samples, cfg, store)
    return _scored(samples, predicted, "adherence")


def _scored(part: EFSet, predicted: np.ndarray, evaluation: str) -> tuple[dict[str, float], pd.DataFrame]:
    metrics = {**regression_metrics(part.ef, predicted), "n": len(part.records)}
    rows = pd.DataFrame({"FileName": [r.name for r in part.records], "evaluation": evaluation,
                         "true_ef": part.ef.astype(np.float64), "predicted_ef": predicted})
    return metrics, rows


# ------------------------------------------------------------------------------------------------ run


def run_ef_regression(cfg: RegressionConfig, synthetic_root: str | os.PathLike, real_root: str | os.PathLike,
                      tracker: Tracker | None = None, out_dir: str | os.PathLike | None = None) -> RegressionReport:
    """Scan both folders and run `regress_records` (see the module docstring)."""
    real = scan_video_folder(real_root, source=REAL)
    synthetic = scan_video_folder(synthetic_root, source=SYNTHETIC)
    return regress_records(cfg, real, synthetic, tracker=tracker, out_dir=out_dir)


def regress_records(cfg: RegressionConfig, real: list[VideoRecord], synthetic: list[VideoRecord], *,
                    tracker: Tracker | None = None, out_dir: str | os.PathLike | None = None) -> RegressionReport:
    """Synthetic -> real regression, plus the real-trained judge and EF adherence when `cfg.adherence`."""
    tracker = tracker or NullTracker()
    samples, splits, excluded = _ef_sets(cfg, real, synthetic)
    tracker.log_params({f"downstream.regression.{k}": v for k, v in cfg.model_dump().items()})
    store = VideoStore(cfg.fps, cfg.size, cfg.cache_videos)
    val = splits["VAL"] if cfg.select_epoch_on == "real_val" else None
    model, fitted = train_regressor("synthetic", samples, val, cfg, store, tracker)
    synthetic_to_real, rows = _scored(splits["TEST"], predict_ef(model, splits["TEST"], cfg, store),
                                      "synthetic_to_real")
    synthetic_to_real["best_epoch"] = fitted.best_epoch
    histories, tables = [pd.DataFrame(fitted.history).assign(model="synthetic")], [rows]
    real_to_real = adherence = None
    if cfg.adherence:
        judge, judged = train_regressor("real", splits["TRAIN"], val, cfg, store, tracker)
        real_to_real, rows = _scored(splits["TEST"], predict_ef(judge, splits["TEST"], cfg, store), "real_to_real")
        real_to_real["best_epoch"] = judged.best_epoch
        adherence, adherence_rows = _scored(samples, predict_ef(judge, samples, cfg, store), "adherence")
        histories.append(pd.DataFrame(judged.history).assign(model="real"))
        tables += [rows, adherence_rows]
    history = pd.concat(histories, ignore_index=True)[["model", "epoch", "train_loss", "val_loss"]]
    report = RegressionReport(config=cfg.model_dump(), synthetic_to_real=synthetic_to_real,
                              real_to_real=real_to_real, adherence=adherence, excluded=dict(sorted(excluded.items())),
                              predictions=pd.concat(tables, ignore_index=True), history=history)
    tracker.log_metrics(_final_metrics(report))
    if out_dir is not None:
        for path in write_regression_outputs(report, out_dir):
            tracker.log_artifact(path, "downstream")
    return report


def _ef_sets(cfg: RegressionConfig, real: list[VideoRecord], synthetic: list[VideoRecord]
             ) -> tuple[EFSet, dict[str, EFSet], dict[str, int]]:
    """(samples with EF, real TRAIN/VAL/TEST with EF, excluded counts); each needed set must be non-empty."""
    real_set, excluded = with_ef(real)
    samples, synthetic_excluded = with_ef(synthetic)
    excluded.update(synthetic_excluded)
    splits = {s: EFSet([r for r in real_set.records if r.split == s]) for s in ("TRAIN", "VAL", "TEST")}
    needed = {"generated videos with an EF": samples, "real TEST videos with an EF": splits["TEST"]}
    if cfg.select_epoch_on == "real_val":
        needed["real VAL videos with an EF (select_epoch_on: real_val)"] = splits["VAL"]
    if cfg.adherence:
        needed["real TRAIN videos with an EF (the adherence judge)"] = splits["TRAIN"]
    for what, part in needed.items():
        if not part.records:
            raise DataError(f"no {what}", fix="check the EF / CondType+CondValue and Split columns of the "
                            "FileLists, or change select_epoch_on / adherence in downstream.regression")
    return samples, splits, excluded


def _final_metrics(report: RegressionReport) -> dict[str, float]:
    metrics = {}
    for name in ("synthetic_to_real", "real_to_real", "adherence"):
        for key, value in (getattr(report, name) or {}).items():
            if key in ("r2", "mae", "rmse") and not np.isnan(value):
                metrics[f"regression/{name}/{key}"] = value
    return metrics


def write_regression_outputs(report: RegressionReport, out_dir: str | os.PathLike) -> list[Path]:
    """regression.json, ef_scatter.png, loss_curve.{csv,png}, predictions.csv (atomic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series = {
        f"{evaluation} (R² {_r2_label(getattr(report, evaluation))})": (rows["true_ef"].to_numpy(),
                                                                       rows["predicted_ef"].to_numpy())
        for evaluation, rows in report.predictions.groupby("evaluation", sort=False)
    }
    return [
        write_metrics_json(out / "regression.json", report.to_dict()),
        plot_ef_scatter(series, out / "ef_scatter.png"),
        write_csv(report.history, out / "loss_curve.csv"),
        plot_loss_curves(report.history, out / "loss_curve.png", title="EF regressor loss", group="model"),
        write_csv(report.predictions, out / "predictions.csv"),
    ]


def _r2_label(metrics: dict[str, float] | None) -> str:
    r2 = (metrics or {}).get("r2", float("nan"))
    return "n/a" if np.isnan(r2) else f"{r2:.2f}"
