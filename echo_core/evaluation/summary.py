"""Downstream evaluation of one dataset's samples and its summaries: flat values (metrics.json, MLflow, the
gate) and the tables `dvc plots` draws."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from echo_core.evaluation.config import DownstreamConfig
from echo_core.evaluation.plan import DatasetPlan


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on `n` threads inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_downstream(plan: DatasetPlan, cfg: DownstreamConfig, threads: int, tracker=None) -> dict[str, Any]:
    """EF regression (EF conditions) or classification (class conditions) → {"values", "report", "plots"}."""
    from echo_core.downstream.classification import run_classification
    from echo_core.downstream.regression import run_ef_regression

    if plan.condition is None:
        return {"values": {}, "report": None, "plots": {}}
    with torch_threads(threads):
        if plan.condition == "ef":
            report = run_ef_regression(cfg.regression, plan.samples, plan.prepared, tracker=tracker,
                                       out_dir=plan.downstream / "regression")
            return {"values": regression_values(report), "report": report.to_dict(),
                    "plots": regression_plots(report)}
        report = run_classification(cfg.classification, plan.prepared, plan.samples, tracker=tracker,
                                    out_dir=plan.downstream / "classification")
    return {"values": classification_values(report), "report": report.to_dict(),
            "plots": classification_plots(report, cfg.classification.train_on)}


def regression_values(report) -> dict[str, float]:
    """ef_<evaluation>_{r2,mae} for synthetic→real, real→real and adherence (NaN where not run)."""
    values = {}
    for evaluation in ("synthetic_to_real", "real_to_real", "adherence"):
        for key in ("r2", "mae"):
            values[f"ef_{evaluation}_{key}"] = float((getattr(report, evaluation) or {}).get(key, math.nan))
    return values


def classification_values(report) -> dict[str, float]:
    """cls_<score>: the mean over folds of every summary score."""
    return {f"cls_{name}": float(stats["mean"]) for name, stats in report.summary.items()}


def regression_plots(report) -> dict[str, Any]:
    """loss_curve: epoch × <model>_{train,val}_loss; ef_predictions: evaluation, true_ef, predicted_ef."""
    history = report.history.pivot_table(index="epoch", columns="model", values=["train_loss", "val_loss"],
                                         dropna=False)
    history.columns = [f"{model}_{loss}" for loss, model in history.columns]
    return {"loss_curve.csv": history.reset_index(),
            "ef_predictions.csv": report.predictions[["evaluation", "true_ef", "predicted_ef"]]}


def classification_plots(report, train_on: str) -> dict[str, Any]:
    """loss_curve: epoch × <train_on>_{train,val}_loss (mean over folds); confusion_matrix: actual, predicted."""
    history = report.history.groupby("epoch", as_index=False)[["train_loss", "val_loss"]].mean()
    history = history.rename(columns={"train_loss": f"{train_on}_train_loss", "val_loss": f"{train_on}_val_loss"})
    return {"loss_curve.csv": history, "confusion_matrix.csv": report.predictions[["actual", "predicted"]]}


def flat_metrics(per_dataset: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"<ds>/<metric>": value}, finite values only (JSON and MLflow have no NaN)."""
    return {f"{ds}/{name}": float(value) for ds, values in per_dataset.items() for name, value in values.items()
            if value is not None and math.isfinite(float(value))}
