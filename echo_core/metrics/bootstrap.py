"""Bootstrap confidence intervals whose resampling unit is the VIDEO, and adherence statistics (plain numpy).

Frames or clips of one video are strongly correlated: resampling rows treats 16 near-copies of one heart as 16
independent observations and underestimates the spread. Every draw here resamples whole videos with
replacement (independently within each set) and weights each video's rows by how often it was drawn, which
is the same as pooling the drawn videos' rows (a video drawn twice counts twice).

Two exact ways to get FD of a weighted row set, chosen per pair by cost:

* moments (rows > d): per-video raw moments (Σx, Σxxᵀ, count) are computed once; a draw's mean and
  covariance are weighted sums of them, then `frechet_distance` (O(d³) per draw).
* cross-Gram (rows < d, the demo scale: 20 videos x 16 rows at d = 2048): with Yx = diag(√p)(X - μx) the
  covariances are Sx = YxᵀYx, Sy = YyᵀYy, and the non-zero eigenvalues of Sx Sy are those of
  (Yx Yyᵀ)(Yx Yyᵀ)ᵀ, so tr sqrt(Sx Sy) = ‖Yx Yyᵀ‖_* (the nuclear norm of an Nx x Ny matrix built from the
  cross-Gram X Yᵀ computed once). One FD at d = 2048, N = 320 is ~3 s through `frechet_distance` and ~5 ms
  this way; the result is the same to round-off (tested against `frechet_distance` on re-pooled rows).

Rows are shifted by the reference set's pooled mean first (FD is translation invariant) so the raw moments
and the Gram terms do not lose digits to a large common mean. Covariances use ddof 0 like StyleGAN-V.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from echo_core.errors import DataError
from echo_core.metrics.frechet import frechet_distance

OUTER_BYTES_LIMIT = 2**30  # per set: per-video Σxxᵀ kept up to this size; above it, from the rows per draw


@dataclass(frozen=True)
class Estimate:
    """A point value with its bootstrap percentile interval; n = number of videos (the resampling unit)."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    level: float
    resamples: int

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe: non-finite floats become None (JSON has no NaN)."""
        def safe(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"value": safe(self.value), "ci_low": safe(self.ci_low), "ci_high": safe(self.ci_high),
                "n": int(self.n), "level": float(self.level), "resamples": int(self.resamples)}


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")


def percentile_interval(draws, level: float = 0.95) -> tuple[float, float]:
    """(lo, hi) percentiles of the finite draws covering `level`. draws: (R,).

    A draw is non-finite when its resample is degenerate (e.g. a real-vs-real baseline of 0); dropping a few
    is harmless, but when fewer than half are finite the interval would describe a biased subset.
    """
    _check_level(level)
    draws = np.asarray(draws, np.float64).ravel()
    finite = draws[np.isfinite(draws)]
    if finite.size == 0 or 2 * finite.size < draws.size:
        raise DataError(f"only {finite.size} of {draws.size} bootstrap draws are finite: no interval",
                        fix="check the inputs for constant or degenerate sets, or use more videos")
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def _as_videos(videos: Sequence, name: str, dim: int | None = None) -> list[np.ndarray]:
    """Validated float64 (n_i, d) arrays, at least 2 videos (one video has no between-video spread)."""
    arrays = [np.asarray(v, np.float64) for v in videos]
    if len(arrays) < 2:
        raise DataError(f"{name}: {len(arrays)} video(s); a video-level bootstrap needs at least 2",
                        fix=f"add videos to the {name} set")
    dim = arrays[0].shape[-1] if dim is None else dim
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != dim:
            raise DataError(f"{name} video {i}: features of shape {a.shape}, expected (n_i >= 1, {dim})")
        if not np.isfinite(a).all():
            raise DataError(f"{name} video {i}: features contain NaN or Inf", fix="re-extract its features")
    return arrays


class _VideoSet:
    """One set of videos: its rows (N, d) shifted by a common vector, and which video each row came from."""

    def __init__(self, arrays: list[np.ndarray], shift: np.ndarray):
        self.rows = np.concatenate(arrays) - shift
        self.counts = np.array([len(a) for a in arrays])
        self.video = np.repeat(np.arange(len(arrays)), self.counts)  # (N,) video index of each row
        self.sqnorm = np.einsum("ij,ij->i", self.rows, self.rows)
        self._outer: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.counts)

    def row_weights(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows of drawn videos, their weights summing to 1). w: (n,) times each video was drawn."""
        per_row = np.asarray(w, np.float64)[self.video]
        keep = np.flatnonzero(per_row > 0)
        return keep, per_row[keep] / per_row[keep].sum()

    def moments(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (d,) and ddof-0 covariance (d, d) of the pooled rows of the drawn videos, from raw moments."""
        w = np.asarray(w, np.float64)
        total = w @ self.counts
        mean = (w[self.video] @ self.rows) / total
        dim = self.rows.shape[1]
        if self.n * dim * dim * 8 <= OUTER_BYTES_LIMIT:
            if self._outer is None:  # Σxxᵀ per video, once: a draw is then n·d² flops instead of N·d²
                videos = np.split(self.rows, np.cumsum(self.counts)[:-1])
                self._outer = np.stack([v.T @ v for v in videos])
            second = np.tensordot(w, self._outer, axes=1)
        else:  # n·d² float64 would not fit: same sum from the rows
            second = (self.rows * w[self.video][:, None]).T @ self.rows
        return mean, second / total - np.outer(mean, mean)


def _fd_gram(x: _VideoSet, y: _VideoSet, gram: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> float:
    """FD of two weighted row sets through their cross-Gram (module docstring). gram: (Nx, Ny) = X Yᵀ."""
    kx, p = x.row_weights(wx)
    ky, q = y.row_weights(wy)
    mx, my = p @ x.rows[kx], q @ y.rows[ky]
    g = gram[np.ix_(kx, ky)]
    gq, pg = g @ q, p @ g  # x_r·μy and μx·y_s
    centred = g - gq[:, None] - pg[None, :] + p @ gq  # (x_r - μx)·(y_s - μy)
    nuclear = np.linalg.svd(np.sqrt(p)[:, None] * centred * np.sqrt(q)[None, :], compute_uv=False).sum()
    trace = p @ x.sqnorm[kx] - mx @ mx + q @ y.sqnorm[ky] - my @ my
    diff = mx - my
    return float(diff @ diff + trace - 2.0 * nuclear)


def _pair_fd(x: _VideoSet, y: _VideoSet, method: str | None = None) -> Callable[[np.ndarray, np.ndarray], float]:
    """fd(wx, wy): FD between the weighted sets. method "gram" | "moments" | None (cheaper one)."""
    nx, ny, dim = len(x.rows), len(y.rows), x.rows.shape[1]
    if method is None:  # SVD of the Nx x Ny matrix ~ Nx·Ny·min(Nx, Ny); frechet_distance ~ d³
        method = "gram" if nx * ny * min(nx, ny) <= dim ** 3 else "moments"
    if method == "gram":
        gram = x.rows @ y.rows.T
        return lambda wx, wy: _fd_gram(x, y, gram, wx, wy)
    if method == "moments":
        return lambda wx, wy: frechet_distance(*x.moments(wx), *y.moments(wy))
    raise ValueError(f"unknown FD method {method!r}; expected 'gram' or 'moments'")


def _video_weights(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """(resamples, n) times each video is drawn in n draws with replacement (offset bincount: no n² array)."""
    picks = rng.integers(0, n, (resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(picks.ravel(), minlength=resamples * n).reshape(resamples, n)


def _video_bootstrap(sets: list[_VideoSet], statistic: Callable[..., float], *, resamples: int, seed: int,
                     level: float) -> Estimate:
    """statistic(*weights) on the full sets (value) and on `resamples` seeded video resamples (interval)."""
    _check_level(level)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    weights = [_video_weights(rng, s.n, resamples) for s in sets]  # drawn in argument order: reproducible
    # one BLAS thread: the draws are many small SVDs, ~9x slower with 2 threads on 2 shared cores
    with threadpool_limits(limits=1, user_api="blas"):
        value = statistic(*(np.ones(s.n) for s in sets))
        draws = np.array([statistic(*(w[r] for w in weights)) for r in range(resamples)])
    lo, hi = percentile_interval(draws, level)
    return Estimate(float(value), lo, hi, sets[0].n, level, resamples)


def _ratio(value: float, baseline: float) -> float:
    """value / baseline; NaN when the baseline is not a positive finite number (no scale to compare to)."""
    return value / baseline if baseline > 0 and math.isfinite(baseline) else math.nan


def _sets(named: dict[str, Sequence], reference: str) -> list[_VideoSet]:
    """_VideoSets in `named` order, all shifted by the pooled mean of the `reference` set."""
    arrays = {name: _as_videos(v, name) for name, v in named.items()}
    dims = {name: a[0].shape[1] for name, a in arrays.items()}
    if len(set(dims.values())) > 1:
        raise DataError(f"feature dimensions differ between sets: {dims}", fix="use one extractor for all sets")
    shift = np.concatenate(arrays[reference]).mean(axis=0)
    return [_VideoSet(a, shift) for a in arrays.values()]


def frechet_ratio(fake: Sequence, real_a: Sequence, real_b: Sequence, *, resamples: int, seed: int,
                  level: float = 0.95) -> Estimate:
    """FD(fake, A) / FD(B, A) with a video-level bootstrap interval. Each argument: per-video (n_i, d) arrays.

    value: on the full sets (pooled rows). Each draw resamples videos with replacement independently within
    fake, A and B (the same A draw in numerator and denominator) and recomputes the ratio. n = len(fake).
    Known limit: FD(B, A) is mostly k/N bias, and a resample holds ~63% distinct videos, so for a fake far from
    the reference the draws sit below the value and the interval is too narrow (simulated coverage well below
    `level`); near ratio 1 the two biases cancel and the interval covers.
    """
    fake_set, a, b = _sets({"fake": fake, "real_a": real_a, "real_b": real_b}, reference="real_a")
    numerator, baseline = _pair_fd(fake_set, a), _pair_fd(b, a)
    return _video_bootstrap([fake_set, a, b], lambda wf, wa, wb: _ratio(numerator(wf, wa), baseline(wb, wa)),
                            resamples=resamples, seed=seed, level=level)


def frechet_distance_ci(fake: Sequence, real: Sequence, *, resamples: int, seed: int,
                        level: float = 0.95) -> Estimate:
    """FD(fake, real) with a video-level bootstrap interval (as `frechet_ratio`, without the baseline).

    Resampling duplicates videos, which lowers the effective N and raises FD's small-sample bias, so the
    draws sit above the point value when the true distance is small; prefer the ratio for gating.
    """
    fake_set, real_set = _sets({"fake": fake, "real": real}, reference="real")
    return _video_bootstrap([fake_set, real_set], _pair_fd(fake_set, real_set),
                            resamples=resamples, seed=seed, level=level)


def equal_n_split(n_reference: int, n_fake: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, seeded, sorted video indices (idx_a, idx_b) into the reference set for the real-vs-real baseline.

    B gets min(n_fake, n_reference // 2) videos and A the rest. Why the same N as the samples: FD of finite
    sets carries a positive bias of order d/N (the sample covariances' noise adds to the trace terms), and at
    demo scale (6-20 videos) that bias is larger than the effects being judged. FD(fake, A) and FD(B, A) share
    A, so their A-bias is common; only if B has as many videos as the fake set does a perfect generator give
    a ratio near 1. A half split with a larger B would make the baseline too small and the ratio pessimistic;
    when the reference is short (n_reference < 2 n_fake) B is smaller than the fake set and the ratio leans
    optimistic; subsample the fake set to len(idx_b) videos to remove that too.
    """
    if n_reference < 2 or n_fake < 1:
        raise DataError(f"real-vs-real split needs >= 2 reference videos and >= 1 sample, have {n_reference} "
                        f"and {n_fake}", fix="add reference videos or samples")
    n_b = min(n_fake, n_reference // 2)
    order = np.random.default_rng(seed).permutation(n_reference)
    return np.sort(order[n_b:]), np.sort(order[:n_b])


def paired_statistic(fn: Callable[..., float], *arrays, resamples: int, seed: int,
                     level: float = 0.95) -> Estimate:
    """fn(*arrays) with a bootstrap interval resampling the shared first axis (one row per video).

    arrays: each (n, ...) with the same n; a draw takes the same row indices from every array (pairs stay
    paired, e.g. a video's predicted and requested EF).
    """
    _check_level(level)
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0]) if arrays else 0
    if n < 2 or any(len(a) != n for a in arrays):
        raise DataError(f"paired arrays need one shared length >= 2, have {[len(a) for a in arrays]}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    picks = np.random.default_rng(seed).integers(0, n, (resamples, n))
    draws = np.array([fn(*(a[idx] for a in arrays)) for idx in picks])
    lo, hi = percentile_interval(draws, level)
    return Estimate(float(fn(*arrays)), lo, hi, n, level, resamples)


def mae(pred, requested) -> float:
    """Mean absolute error; NaN when any input is NaN (a missing prediction is not an error of 0)."""
    pred, requested = np.asarray(pred, np.float64), np.asarray(requested, np.float64)
    return float(np.mean(np.abs(pred - requested)))


def r2(pred, requested) -> float:
    """Coefficient of determination of `pred` against `requested`; NaN when `requested` is constant."""
    pred, requested = np.asarray(pred, np.float64), np.asarray(requested, np.float64)
    total = np.sum((requested - requested.mean()) ** 2)
    if not total > 0:  # constant target (or NaN): R² is undefined, not -inf
        return math.nan
    return float(1.0 - np.sum((pred - requested) ** 2) / total)


def pearson(pred, requested) -> float:
    """Pearson correlation; NaN when either input is constant (no warning, unlike np.corrcoef)."""
    pred, requested = np.asarray(pred, np.float64), np.asarray(requested, np.float64)
    dp, dr = pred - pred.mean(), requested - requested.mean()
    denom = math.sqrt(float(dp @ dp) * float(dr @ dr))
    if not denom > 0:
        return math.nan
    return float(np.clip((dp @ dr) / denom, -1.0, 1.0))
