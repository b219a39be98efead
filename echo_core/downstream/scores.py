"""Downstream metrics as pure functions of arrays (testable without a model).

AUC is always computed from predicted probabilities. The reference computed it from argmax labels, which
turns the ROC curve into a single point and understates (or misstates) ranking quality (seed §8 item 12).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, mean_absolute_error, r2_score, roc_auc_score


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """AUC from probabilities. y_true: (N,) labels in [0, K); probs: (N, K) rows summing to 1.

    K = 2: the ROC AUC of P(class 1). K > 2: macro one-vs-rest AUC. NaN when a class is absent from
    y_true (the AUC is undefined then, and reporting 0.5 or dropping the class would hide that).
    """
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    if len(np.unique(y_true)) < num_classes:
        return math.nan
    if num_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=np.arange(num_classes)))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, macro-F1 (over all K classes) and probability AUC. probs: (N, K)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    y_pred = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "auc": roc_auc(y_true, probs),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int counts; row = actual label, column = predicted label."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """R², MAE and RMSE (EF in percent). R² is NaN with fewer than 2 samples."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return {
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) >= 2 else math.nan,
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
    }


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and population std over folds, ignoring NaN folds (their count is reported as `n`)."""
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}
