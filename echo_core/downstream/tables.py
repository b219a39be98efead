"""The seed systems' downstream tables, with confidence intervals and the negative control each row must beat.

- `ef_regression_table` (EchoNet-Synthetic): one EF regressor config and seed, trained on real TRAIN and on
  the synthetic set alone, both tested on real TEST (R², MAE, RMSE). Control: the real TRAIN mean EF
  predicted for every TEST video (R² <= 0 by construction, up to the TRAIN/TEST mean shift).
- `classification_table` (EchoDream): the patient-grouped k-fold classifier of `classification.py` trained
  on real / synthetic / real+synthetic, tested on real TEST. A row's TEST probabilities are the mean over
  its fold models (one prediction per video, so the bootstrap sees each video once). Accuracy and macro
  AUC from probabilities. Control: the real TRAIN+VAL class prior as every video's probabilities
  (majority-class accuracy, AUC exactly 0.5).

Every metric carries a 95% percentile interval from one set of seeded bootstrap draws over TEST patients
(whole patients with replacement; within each class for classification, so every draw holds every class
and its AUC is defined). Because all rows are scored on the same draws, a row's improvement over the
control is a paired difference with its own interval; `beats_control[metric]` is true only when that
interval lies above 0. Rows are keyed by name, so `dvc metrics show` flattens the JSON. (A percentile
interval need not contain its point: the R² of TEST's own mean is 0 and every draw's is below it; the
control predicts the TRAIN mean, which sits inside its interval unless TRAIN and TEST means coincide.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.downstream.classification import ClassificationConfig, classify_records
from echo_core.downstream.data import LabelMap, VideoRecord, VideoStore
from echo_core.downstream.plots import _save as save_figure
from echo_core.downstream.plots import write_csv, write_metrics_json
from echo_core.downstream.regression import EFSet, RegressionConfig, predict_ef, train_regressor, with_ef
from echo_core.errors import DataError
from echo_core.metrics.bootstrap import Estimate, mae, percentile_interval, r2
from echo_core.tracking import NullTracker, Tracker

LOWER_IS_BETTER = {"mae", "rmse"}
REGRESSION_METRICS = ("r2", "mae", "rmse")
CLASSIFICATION_METRICS = ("accuracy", "auc")
TRAIN_ON = ("real", "synthetic", "mixed")

Progress = Callable[[str], None]
TrackerFor = Callable[[str], Tracker]  # row name -> the tracker its training logs to


class BootstrapSettings(StrictModel):
    """params.yaml `synth_evaluate.bootstrap`."""

    resamples: int = Field(1000, ge=1)
    level: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0


@dataclass
class RowPredictions:
    """One table row before scoring: its TEST predictions ((N,) EF or (N, K) probabilities) and counts."""

    name: str
    control: bool
    predictions: np.ndarray
    n: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. per-fold results


@dataclass
class DownstreamTable:
    table: str  # "ef_regression" | "classification"
    metrics: tuple[str, ...]
    control: str  # the control row's name
    rows: dict[str, dict[str, Any]]
    config: dict[str, Any]
    warnings: list[str]
    predictions: pd.DataFrame = field(repr=False)  # FileName, patient_id, row, truth, prediction(s)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "predictions"}


# ------------------------------------------------------------------------------------------ bootstrap


def group_draws(groups: np.ndarray, strata: np.ndarray | None, resamples: int, seed: int) -> list[np.ndarray]:
    """Row indices of `resamples` seeded draws of whole groups (patients) with replacement.

    groups, strata: (N,) per row; a group's stratum is its first row's. Each stratum keeps its group count.
    """
    names, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == g) for g in range(len(names))]
    stratum = np.asarray(strata)[first] if strata is not None else np.zeros(len(names))
    members = [np.flatnonzero(stratum == s) for s in np.unique(stratum)]
    rng = np.random.default_rng(seed)
    return [np.concatenate([rows_of[g] for m in members for g in rng.choice(m, size=len(m))])
            for _ in range(resamples)]


def _interval(value: float, draws: np.ndarray, n: int, boot: BootstrapSettings) -> dict[str, Any]:
    lo, hi = percentile_interval(draws, boot.level)
    return Estimate(value, lo, hi, n, boot.level, boot.resamples).to_dict()


def score_rows(rows: list[RowPredictions], metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
               metrics: tuple[str, ...], truth: np.ndarray, groups: np.ndarray, strata: np.ndarray | None,
               boot: BootstrapSettings) -> dict[str, dict[str, Any]]:
    """Each row's metrics with CIs, and each trained row's paired improvement over the control row."""
    draws = group_draws(groups, strata, boot.resamples, boot.seed)
    n_groups = len(np.unique(groups))
    # with one unit in a stratum every draw holds the same set: the interval collapses to the point and cannot
    # show a gain (the demo's CardiacNet TEST: 1 video per class), so no row is said to beat the control
    resolvable = _min_units_per_stratum(groups, strata) >= 2
    everything = np.arange(len(truth))

    def evaluate(pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
        values = metric_fn(truth[idx], pred[idx])
        return np.array([values[m] for m in metrics])

    points = {r.name: evaluate(r.predictions, everything) for r in rows}
    sampled = {r.name: np.stack([evaluate(r.predictions, idx) for idx in draws]) for r in rows}
    control = next(r.name for r in rows if r.control)
    sign = np.array([-1.0 if m in LOWER_IS_BETTER else 1.0 for m in metrics])  # improvement > 0 is better
    scored = {}
    for row in rows:
        entry = {"control": row.control, "n": row.n, **row.detail,
                 "metrics": {m: _interval(points[row.name][i], sampled[row.name][:, i], n_groups, boot)
                             for i, m in enumerate(metrics)}}
        if not row.control:
            gain, gains = sign * (points[row.name] - points[control]), sign * (sampled[row.name] - sampled[control])
            entry["improvement"] = {m: _interval(gain[i], gains[:, i], n_groups, boot) for i, m in enumerate(metrics)}
            entry["beats_control"] = {m: resolvable and _above_zero(entry["improvement"][m]["ci_low"])
                                      for m in metrics}
        scored[row.name] = entry
    return scored


def _min_units_per_stratum(groups: np.ndarray, strata: np.ndarray | None) -> int:
    if strata is None:
        return len(np.unique(groups))
    return min(len(np.unique(groups[strata == s])) for s in np.unique(strata))


def _above_zero(ci_low: float | None) -> bool:
    return ci_low is not None and ci_low > 0.0


def regression_scores(true_ef: np.ndarray, predicted_ef: np.ndarray) -> dict[str, float]:
    """R², MAE, RMSE in EF percent (numpy only: the bootstrap calls this thousands of times)."""
    err = np.asarray(predicted_ef, np.float64) - np.asarray(true_ef, np.float64)
    return {"r2": r2(predicted_ef, true_ef), "mae": mae(predicted_ef, true_ef), "rmse": float(np.sqrt(np.mean(err**2)))}


def classification_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy of the argmax and macro one-vs-rest AUC from the probabilities. probs: (N, K)."""
    return {"accuracy": float(np.mean(probs.argmax(axis=1) == labels)), "auc": rank_auc(labels, probs)}


def rank_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """`scores.roc_auc` (macro one-vs-rest AUC, NaN when a class is absent) by the Mann-Whitney rank sum.

    Same value (tested against it); sklearn's input checks cost 2-40 ms a call, and the bootstrap makes
    thousands. For K = 2 the mean of both one-vs-rest AUCs is the AUC of P(class 1).
    """
    from scipy.stats import rankdata

    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    aucs = []
    for k in range(probs.shape[1]):
        positive = labels == k
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            return math.nan
        ranks = rankdata(probs[:, k])  # ties get their mean rank: a tie counts one half
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))


# ------------------------------------------------------------------------------------- EF regression


def ef_regression_table(cfg: RegressionConfig, real: list[VideoRecord], synthetic: list[VideoRecord],
                        boot: BootstrapSettings, *, progress: Progress | None = None,
                        tracker: Tracker | None = None) -> DownstreamTable:
    """EchoNet-Synthetic's table: real-trained vs synthetic-trained EF regressor vs the TRAIN-mean control."""
    progress, tracker = progress or (lambda _: None), tracker or NullTracker()
    splits, samples = _ef_sets(cfg, real, synthetic)
    test, store = splits["TEST"], VideoStore(cfg.fps, cfg.size, cfg.cache_videos)
    val = splits["VAL"] if cfg.select_epoch_on == "real_val" else None
    n_val = len(val.records) if val else 0
    rows = []
    for name, train in (("real", splits["TRAIN"]), ("synthetic", samples)):
        progress(f"EF regressor on {name}: {len(train.records)} videos, {cfg.epochs} epochs")
        model, fitted = train_regressor(name, train, val, cfg, store, tracker)
        predicted = predict_ef(model, test, cfg, store)
        progress(f"EF regressor on {name}: real TEST R² {r2(predicted, test.ef):.3f} (best epoch {fitted.best_epoch})")
        n_train = len(train.records)
        counts = {"test": len(test.records), "val_real": n_val, "train_real": n_train if name == "real" else 0,
                  "train_synthetic": n_train if name == "synthetic" else 0}
        rows.append(RowPredictions(name, False, predicted, counts, {"best_epoch": fitted.best_epoch}))
    mean_ef = float(splits["TRAIN"].ef.mean())
    rows.append(RowPredictions("mean_ef", True, np.full(len(test.records), mean_ef),
                               {"test": len(test.records), "val_real": 0, "train_real": len(splits["TRAIN"].records),
                                "train_synthetic": 0}, {"predicts": mean_ef}))
    groups = np.asarray([r.patient_id for r in test.records])
    scored = score_rows(rows, regression_scores, REGRESSION_METRICS, test.ef.astype(np.float64), groups, None, boot)
    predictions = pd.concat([pd.DataFrame({"FileName": [r.name for r in test.records], "patient_id": groups,
                                           "row": row.name, "true_ef": test.ef.astype(np.float64),
                                           "predicted_ef": row.predictions}) for row in rows], ignore_index=True)
    return DownstreamTable("ef_regression", REGRESSION_METRICS, "mean_ef", scored,
                           {"regression": cfg.model_dump(), "bootstrap": boot.model_dump()},
                           _size_warnings(len(np.unique(groups)), "TEST patients"), predictions)


def _ef_sets(cfg: RegressionConfig, real: list[VideoRecord], synthetic: list[VideoRecord]
             ) -> tuple[dict[str, EFSet], EFSet]:
    """Real TRAIN/VAL/TEST and the synthetic videos, each with an EF; each needed set must be non-empty."""
    real_set, _ = with_ef(real)
    samples, _ = with_ef(synthetic)
    splits = {s: EFSet([r for r in real_set.records if r.split == s]) for s in ("TRAIN", "VAL", "TEST")}
    needed = {"synthetic videos with an EF": samples, "real TRAIN videos with an EF": splits["TRAIN"],
              "real TEST videos with an EF": splits["TEST"]}
    if cfg.select_epoch_on == "real_val":
        needed["real VAL videos with an EF (select_epoch_on: real_val)"] = splits["VAL"]
    for what, part in needed.items():
        if not part.records:
            raise DataError(f"no {what}", fix="check the EF and Split columns of the FileLists, or set "
                            "synth_evaluate.regression.select_epoch_on: last")
    return splits, samples


def _size_warnings(n_units: int, what: str) -> list[str]:
    if n_units >= 10:
        return []
    return [f"only {n_units} {what}: the percentile bootstrap under-covers at this size (with 1 it has no "
            "spread to resample and the interval collapses to the point)"]


# ------------------------------------------------------------------------------------ classification


def classification_table(cfg: ClassificationConfig, real: list[VideoRecord], synthetic: list[VideoRecord],
                         boot: BootstrapSettings, *, progress: Progress | None = None,
                         tracker_for: TrackerFor | None = None, out_dir: str | os.PathLike | None = None
                         ) -> DownstreamTable:
    """EchoDream's table: the k-fold classifier trained on real / synthetic / mixed vs the class-prior control.

    `tracker_for(row)` gets each row's own tracker (each row logs the same config keys with its own
    `train_on`); `out_dir/rows/<row>/` receives each row's confusion matrix, loss curves and fold predictions.
    """
    progress, tracker_for = progress or (lambda _: None), tracker_for or (lambda _: NullTracker())
    label_map = LabelMap(tuple(cfg.class_ids))
    names = label_map.names
    rows, truth, order = [], None, None
    for train_on in TRAIN_ON:
        progress(f"classifier on {train_on}: {cfg.folds} patient-grouped folds x {cfg.epochs} epochs")
        row_out = Path(out_dir) / "rows" / train_on if out_dir is not None else None
        report = classify_records(cfg.model_copy(update={"train_on": train_on}), real, synthetic,
                                  tracker=tracker_for(train_on), out_dir=row_out)
        mean = report.predictions.groupby("FileName", sort=False)[[f"p_{c}" for c in names]].mean()
        order = mean.index.to_list() if order is None else order
        truth = report.predictions.drop_duplicates("FileName").set_index("FileName").loc[order, "actual"]
        probs = mean.loc[order].to_numpy()
        folds = [asdict(f) for f in report.folds]
        counts = {"test": report.n_test, "folds": len(folds),
                  "train_real": folds[0]["n_train_real"] + folds[0]["n_val"] if train_on != "synthetic" else 0,
                  "train_synthetic": folds[0]["n_train_synthetic"]}
        rows.append(RowPredictions(train_on, False, probs, counts, {"folds": folds, "fold_summary": report.summary}))
        progress(f"classifier on {train_on}: real TEST accuracy "
                 f"{classification_scores(_encode(truth, names), probs)['accuracy']:.3f} (fold ensemble)")
    labels = _encode(truth, names)
    rows.append(_prior_row(label_map, real, len(order)))
    patients = {r.name: r.patient_id for r in real}
    groups = np.asarray([patients[name] for name in order])
    scored = score_rows(rows, classification_scores, CLASSIFICATION_METRICS, labels, groups, labels, boot)
    predictions = pd.concat([pd.DataFrame({"FileName": order, "patient_id": groups, "row": row.name,
                                           "actual": [names[i] for i in labels],
                                           **{f"p_{c}": row.predictions[:, k] for k, c in enumerate(names)}})
                             for row in rows], ignore_index=True)
    per_class = np.bincount(labels, minlength=len(names))
    return DownstreamTable("classification", CLASSIFICATION_METRICS, "class_prior", scored,
                           {"classification": cfg.model_dump(), "bootstrap": boot.model_dump(), "class_names": names},
                           _size_warnings(int(per_class.min()), "TEST videos in the smallest class"), predictions)


def _encode(actual: pd.Series, names: list[str]) -> np.ndarray:
    return np.asarray([names.index(a) for a in actual], dtype=np.int64)


def _prior_row(label_map: LabelMap, real: list[VideoRecord], n_test: int) -> RowPredictions:
    """The control: real TRAIN+VAL class frequencies as every TEST video's probabilities."""
    _, labels, _ = label_map.encode([r for r in real if r.split in ("TRAIN", "VAL")])
    prior = np.bincount(labels, minlength=len(label_map.class_ids)) / len(labels)
    return RowPredictions("class_prior", True, np.tile(prior, (n_test, 1)),
                          {"test": n_test, "folds": 0, "train_real": len(labels), "train_synthetic": 0},
                          {"predicts": dict(zip(label_map.names, prior.tolist(), strict=True))})


# ---------------------------------------------------------------------------------------------- files


def table_frame(table: DownstreamTable) -> pd.DataFrame:
    """One line per row and metric: value, CI, counts, improvement over the control and its CI, verdict."""
    lines = []
    for name, row in table.rows.items():
        for metric in table.metrics:
            est, gain = row["metrics"][metric], (row.get("improvement") or {}).get(metric, {})
            lines.append({"row": name, "control": row["control"], "metric": metric, "value": est["value"],
                          "ci_low": est["ci_low"], "ci_high": est["ci_high"], "n_test": row["n"]["test"],
                          "n_train_real": row["n"]["train_real"], "n_train_synthetic": row["n"]["train_synthetic"],
                          "improvement": gain.get("value"), "improvement_ci_low": gain.get("ci_low"),
                          "improvement_ci_high": gain.get("ci_high"),
                          "beats_control": row.get("beats_control", {}).get(metric)})
    return pd.DataFrame(lines)


def plot_table(table: DownstreamTable, path: str | os.PathLike, title: str) -> Path:
    """One panel per metric: a bar per row (the control hatched) with its CI as a whisker."""
    fig = Figure(figsize=(3.2 * len(table.metrics) + 0.8, 3.6))
    names = list(table.rows)
    for i, metric in enumerate(table.metrics):
        ax = fig.add_subplot(1, len(table.metrics), i + 1)
        est = [table.rows[n]["metrics"][metric] for n in names]
        values = np.array([_nan(e["value"]) for e in est])
        whiskers = np.abs(np.array([[_nan(e["ci_low"]), _nan(e["ci_high"])] for e in est]).T - values)
        bars = ax.bar(names, values, yerr=whiskers, capsize=4, color="tab:blue")
        for bar, name in zip(bars, names, strict=True):
            if table.rows[name]["control"]:
                bar.set(color="lightgrey", hatch="//", edgecolor="grey")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)", fontsize="medium")
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def write_table(table: DownstreamTable, out_dir: str | os.PathLike, extra: dict[str, Any], title: str) -> list[Path]:
    """downstream_table.{json,csv,png} and downstream_predictions.csv in `out_dir` (atomic)."""
    out = Path(out_dir)
    return [write_metrics_json(out / "downstream_table.json", {**extra, **table.to_dict()}),
            write_csv(table_frame(table), out / "downstream_table.csv"),
            plot_table(table, out / "downstream_table.png", title),
            write_csv(table.predictions, out / "downstream_predictions.csv")]
