"""Judge competence: how well a regressor (an EF judge) scores on held-out real data, with bootstrap CIs.

A judge's verdict on generated videos is only worth what the judge scores on real ones, so its R² and MAE
are reported with N and a 95 % seeded percentile bootstrap over videos (resampling whole videos, the unit
that is independent). R² = 1 - SS_res / SS_tot about the mean of the true values (sklearn's r2_score).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from echo_core.errors import DataError

CI_LEVEL = 0.95


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


def _r2_mae(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pred, true: (..., N) -> R² (...,) (NaN where the true values are constant) and MAE (...,)."""
    ss_res = np.square(true - pred).sum(axis=-1)
    ss_tot = np.square(true - true.mean(axis=-1, keepdims=True)).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)
    return r2, np.abs(true - pred).mean(axis=-1)


def regression_competence(pred: Any, true: Any, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """pred, true: (N,) -> {r2, r2_ci_low, r2_ci_high, mae, mae_ci_low, mae_ci_high, n}.

    CIs: 95 % percentile bootstrap over videos, `n_boot` resamples from `np.random.default_rng(seed)`
    (the same inputs and seed give the same CI). Resamples whose true values are all equal have no R² and
    are left out of the R² interval. Raises DataError for mismatched, non-finite or too few values.
    """
    p, t = _as_pairs(pred, true)
    if n_boot < 1:
        raise DataError(f"n_boot: must be >= 1, got {n_boot}", fix="use the default 1000")
    r2, mae = _r2_mae(p, t)
    idx = np.random.default_rng(seed).integers(0, p.size, size=(n_boot, p.size))
    boot_r2, boot_mae = _r2_mae(p[idx], t[idx])
    q = 100 * np.array([(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2])
    r2_lo, r2_hi = np.nanpercentile(boot_r2, q) if np.isfinite(boot_r2).any() else (np.nan, np.nan)
    mae_lo, mae_hi = np.percentile(boot_mae, q)
    return {
        "r2": float(r2),
        "r2_ci_low": float(r2_lo),
        "r2_ci_high": float(r2_hi),
        "mae": float(mae),
        "mae_ci_low": float(mae_lo),
        "mae_ci_high": float(mae_hi),
        "n": int(p.size),
    }
