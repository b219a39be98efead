"""Artefacts for `dvc plots` and humans: confusion matrix (CSV + PNG), loss curves (CSV + PNG), EF scatter.

CSV files are in the shapes DVC's templates read directly:
    confusion_matrix.csv  actual,predicted       one row per prediction (template `confusion`)
    loss_curve.csv        fold,epoch,train_loss,val_loss    (regression: model instead of fold)
Figures are drawn on a bare Agg `Figure` (no pyplot global state, safe in worker threads) and written
atomically without a Software/date stamp, so identical results give identical files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from echo_core.utils.atomic import atomic_path, write_json_atomic


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return Path(path)


def json_safe(value: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN; DVC and strict JSON readers reject the bare token)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_metrics_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Atomic, key-sorted JSON with NaN written as null (`dvc metrics show` reads it)."""
    write_json_atomic(path, json_safe(data))
    return Path(path)


def write_confusion_csv(actual: Sequence[str], predicted: Sequence[str], path: str | os.PathLike) -> Path:
    """One `actual,predicted` row per prediction (class names), the input of DVC's confusion template."""
    return write_csv(pd.DataFrame({"actual": list(actual), "predicted": list(predicted)}), path)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    return Path(path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "Confusion matrix") -> Path:
    """matrix: (K, K) counts, rows = actual, columns = predicted."""
    matrix = np.asarray(matrix)
    fig = Figure(figsize=(1.2 * len(class_names) + 2.5, 1.2 * len(class_names) + 2))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names)
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss_curves(history: pd.DataFrame, path: str | os.PathLike, title: str = "Loss",
                     group: str = "fold") -> Path:
    """history: columns `group`, epoch, train_loss, val_loss; a solid (train) and a dashed (val) line per group."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for key, rows in history.groupby(group, sort=True):
        line = ax.plot(rows["epoch"], rows["train_loss"], label=f"{group} {key} train")[0]
        if rows["val_loss"].notna().any():
            ax.plot(rows["epoch"], rows["val_loss"], "--", color=line.get_color(), label=f"{group} {key} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_ef_scatter(series: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
                    title: str = "EF: predicted vs true") -> Path:
    """series: label -> (true EF (N,), predicted EF (N,)), in percent; the identity line is drawn."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for label, (true, pred) in series.items():
        ax.scatter(true, pred, s=14, alpha=0.7, label=label)
    ax.plot([0, 100], [0, 100], color="grey", linewidth=1)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("true / requested EF (%)")
    ax.set_ylabel("predicted EF (%)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)
