"""`bootstrap_frechet` (the metrics API's FD interval, rows resampled) through the video bootstrap's exact
cross-Gram / moments paths: the same interval as re-pooling every draw's rows and calling `frechet_distance`."""

from __future__ import annotations

import numpy as np
import pytest

from echo_core.metrics.bootstrap import _video_weights, percentile_interval
from echo_core.metrics.frechet import frechet_distance
from echo_core.metrics.scores import bootstrap_frechet


def _brute_force(real: np.ndarray, fake: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    wf, wr = _video_weights(rng, len(fake), resamples), _video_weights(rng, len(real), resamples)  # fake first

    def moments(x: np.ndarray, w: np.ndarray):
        pooled = np.repeat(x, w, axis=0)
        return pooled.mean(axis=0), np.cov(pooled, rowvar=False, ddof=0)

    draws = [frechet_distance(*moments(fake, wf[r]), *moments(real, wr[r])) for r in range(resamples)]
    return percentile_interval(np.asarray(draws), 0.95)


@pytest.mark.parametrize("dim", [64, 6])  # rows < d: the cross-Gram path; rows > d: the moments path
def test_the_interval_equals_re_pooled_rows(dim):
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(30, dim)), rng.normal(size=(24, dim)) + 0.5
    fast = bootstrap_frechet(real, fake, num_resamples=40, seed=3)
    np.testing.assert_allclose(fast, _brute_force(real, fake, 40, 3), rtol=1e-6)
    assert fast[0] < fast[1]
