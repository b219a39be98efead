"""Streaming feature statistics in float64 (bounded memory) and an on-disk store for raw features.

`StreamingMoments` merges per-batch means and centred scatter matrices (Chan et al.'s pairwise
update), so memory is O(d²) whatever the number of frames, and the result equals the one-shot
two-pass covariance to round-off. StyleGAN-V's FeatureStats uses raw moments (Σx, ΣxxᵀN⁻¹ − μμᵀ)
with ddof 0; the centred update is the same statistic with less cancellation. `ddof` defaults to 0
to match StyleGAN-V and is recorded in every result.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


class StreamingMoments:
    """Mean and covariance of a stream of (N, d) feature batches, float64, mergeable."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self._mean = np.zeros(dim, np.float64)
        self._scatter = np.zeros((dim, dim), np.float64)  # Σ (x - mean)(x - mean)ᵀ

    def update(self, x: np.ndarray) -> StreamingMoments:
        """Add a batch. x: (N, d); cast to float64 (StyleGAN-V casts float32 features the same way)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {x.shape}")
        if x.shape[0] == 0:
            return self
        batch = StreamingMoments(self.dim)
        batch.n = x.shape[0]
        batch._mean = x.mean(axis=0)
        centred = x - batch._mean
        batch._scatter = centred.T @ centred
        return self.merge(batch)

    def merge(self, other: StreamingMoments) -> StreamingMoments:
        """Fold `other` into self (in place) and return self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dim {other.dim} into dim {self.dim}")
        if other.n == 0:
            return self
        n = self.n + other.n
        delta = other._mean - self._mean
        self._scatter += other._scatter  # in place: d x d temporaries are 32 MiB each at d = 2048
        self._scatter += np.multiply.outer(delta * (self.n * other.n / n), delta)
        self._mean += delta * (other.n / n)
        self.n = n
        return self

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    def cov(self, ddof: int = 0) -> np.ndarray:
        """Covariance (d, d); ddof 0 is StyleGAN-V's population covariance."""
        if self.n - ddof <= 0:
            raise ValueError(f"need more than {ddof} samples for a covariance, have {self.n}")
        return self._scatter / (self.n - ddof)


class FeatureStore:
    """Fixed-size (N, d) float32 feature array on disk (np.memmap), for KID, IS, FID∞ and bootstrap.

    50k x 2048 float32 is 391 MiB: kept in a temp file so RAM stays bounded. Use as a context manager;
    the file is deleted on exit.
    """

    def __init__(self, n: int, dim: int, folder: str | os.PathLike | None = None):
        self._dir = tempfile.TemporaryDirectory(prefix="echoforge-features-", dir=folder)
        path = Path(self._dir.name) / "features.npy"
        self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
        self.filled = 0

    def append(self, x: np.ndarray) -> None:
        """x: (B, d); written after the rows already stored."""
        end = self.filled + x.shape[0]
        if end > self.array.shape[0]:
            raise ValueError(f"store holds {self.array.shape[0]} rows, got {end}")
        self.array[self.filled:end] = x
        self.filled = end

    def close(self) -> None:
        del self.array
        self._dir.cleanup()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
