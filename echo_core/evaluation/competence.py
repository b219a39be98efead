"""Judge competence: how well a regressor (an EF judge) scores on held-out real data, with bootstrap CIs.

A judge's verdict on generated videos is only worth what the judge scores on real ones, so its R² and MAE
are reported with N and a 95 % seeded percentile bootstrap over videos (resampling whole videos, the unit
that is independent). R² = 1 - SS_res / SS_tot about the mean of the true values (sklearn's r2_score).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from echo_core.errors import DataError
from echo_core.metrics.bootstrap import mae, paired_statistic, r2

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
