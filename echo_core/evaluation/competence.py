"""Judge competence: how well a regressor (an EF judge) or a classifier (a class judge) scores on held-out
real data, with bootstrap CIs.

A judge's verdict on generated videos is only worth what the judge scores on real ones, so its R² and MAE
(a classifier's: accuracy and macro one-vs-rest AUC) are reported with N and a 95 % seeded percentile
bootstrap over videos (resampling whole videos, the unit that is independent).
R² = 1 - SS_res / SS_tot about the mean of the true values (sklearn's r2_score).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from echo_core.errors import DataError
from echo_core.metrics.bootstrap import mae, paired_statistic, r2

CI_LEVEL = 0.95


# More videos than this fraction in which a judge finds no heart: its numbers say nothing (a judge that cannot
# find the LV is not competent on real videos, and samples it cannot read are not adherent).
MAX_UNMEASURED_FRACTION = 0.1


def _as_pairs(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if p.ndim != 1 or p.shape != t.shape:
        raise DataError(f"pred / true: need two (N,) arrays of the same length, got {p.shape} and {t.shape}")
    for name, a in (("pred", p), ("true", t)):
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise DataError(
                f"{name}: {bad.size} non-finite value(s), first at index {int(bad[0])}",
                fix="count unmeasurable videos as failures separately; score the finite ones",
            )
    if p.size < 2 or np.ptp(t) == 0:
        raise DataError(
            f"true: R² needs >= 2 videos with differing true values, got {t.size}",
            fix="score on a held-out set spanning the EF range",
        )
    return p, t


def regression_competence(pred: Any, true: Any, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """pred, true: (N,) -> {r2, r2_ci_low, r2_ci_high, mae, mae_ci_low, mae_ci_high, n}.

    CIs: 95 % percentile bootstrap over videos, `n_boot` resamples from `np.random.default_rng(seed)`
    (the same inputs and seed give the same CI). Resamples whose true values are all equal have no R² and
    are left out of the R² interval. Raises DataError for mismatched, non-finite or too few values.
    """
    p, t = _as_pairs(pred, true)
    if n_boot < 1:
        raise DataError(f"n_boot: must be >= 1, got {n_boot}", fix="use the default 1000")
    kw = {"resamples": n_boot, "seed": seed, "level": CI_LEVEL}
    # the same resampled videos for both scores: one seed, one draw of indices
    r2_est, mae_est = paired_statistic(r2, p, t, **kw), paired_statistic(mae, p, t, **kw)
    return {"r2": r2_est.value, "r2_ci_low": r2_est.ci_low, "r2_ci_high": r2_est.ci_high, "mae": mae_est.value,
            "mae_ci_low": mae_est.ci_low, "mae_ci_high": mae_est.ci_high, "n": int(p.size)}


def accuracy(predicted: Any, truth: Any) -> float:
    """Share of videos whose predicted class is the true (or requested) one; an unmeasured video (-1) is wrong."""
    return float(np.mean(np.asarray(predicted) == np.asarray(truth)))


def macro_auc(proba: Any, truth: Any, class_ids: Any) -> float:
    """Mean one-vs-rest ROC AUC (Mann-Whitney, ties halved) over the classes with both positive and negative
    videos; NaN when no class has both (a bootstrap draw of a single class)."""
    from scipy.stats import rankdata

    p, t = np.asarray(proba, np.float64), np.asarray(truth)
    aucs = []
    for k, cid in enumerate(class_ids):
        positive = t == cid
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos and n_neg:
            ranks = rankdata(p[:, k])
            aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_competence(predicted: Any, proba: Any, truth: Any, class_ids: Any, *, n_boot: int = 1000,
                              seed: int = 0) -> dict[str, float]:
    """predicted (N,), proba (N, K), truth (N,) -> {accuracy, auc (macro one-vs-rest), their CIs, n}.

    CIs as `regression_competence`: a 95 % percentile bootstrap over videos with one seeded draw of indices.
    """
    pred, p, t = np.asarray(predicted), np.asarray(proba, np.float64), np.asarray(truth)
    if pred.shape != t.shape or p.shape != (len(t), len(class_ids)) or len(t) < 2:
        raise DataError(f"predicted / proba / truth: need (N,), (N, {len(class_ids)}), (N,) with N >= 2, got "
                        f"{pred.shape}, {p.shape}, {t.shape}", fix="score the judge on >= 2 held-out videos")
    kw = {"resamples": n_boot, "seed": seed, "level": CI_LEVEL}
    acc = paired_statistic(accuracy, pred, t, **kw)
    auc = paired_statistic(lambda q, y: macro_auc(q, y, class_ids), p, t, **kw)
    return {"accuracy": acc.value, "accuracy_ci_low": acc.ci_low, "accuracy_ci_high": acc.ci_high,
            "auc": auc.value, "auc_ci_low": auc.ci_low, "auc_ci_high": auc.ci_high, "n": int(len(t))}
