"""Feature extraction cut into shards: picklable jobs, and the pure function that runs one anywhere.

A job names its extractor by how to build it (role, exact, weights, device), never by the built object,
so it can travel to another process or machine (a Dask worker). Each process builds an extractor once
and keeps it (`cached_extractor`). A job's items are contiguous and its batches are the ones the
sequential path cuts (shards aligned to the batch size), so feeding the shards' features back in order
gives bitwise the same moments and stores as the single-process path.

Features are written as (n, dim) .npy files: float32 for exact extractors (their float64 output holds
float32 values, so nothing is lost), float64 for fallback extractors (they compute in float64; rounding
would change the metric).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import echo_core.metrics.protocol as P
from echo_core.metrics.extractors import FeatureExtractor, Role, build_extractor
from echo_core.utils.atomic import atomic_path
from echo_core.utils.progress import progress

Item = str | tuple[str, ...]  # a frame path relative to the root, or the frame paths of one clip in time order


@dataclass(frozen=True)
class ExtractorSpec:
    """How to build an extractor (build_extractor's arguments); hashable, the per-process cache key."""

    role: Role
    exact: bool
    weights_dir: str | None = None
    manifest: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class ExtractionJob:
    """One shard: `items` under `root` through the extractor, in batches of `batch_size` -> `out` (.npy)."""

    extractor: ExtractorSpec
    root: str
    items: tuple[Item, ...]
    resolution: int | None
    batch_size: int
    out: str
    decode_threads: int = 1
    label: str = ""  # for progress lines and logs, e.g. "fallback-pixstats-v1 real 2/3"


FeatureMap = Callable[[list[ExtractionJob]], Sequence["str | os.PathLike | np.ndarray"]]
"""Runs jobs wherever it likes; returns, in job order, each job's features or the path they were written to."""

_EXTRACTORS: dict[ExtractorSpec, FeatureExtractor] = {}
_EXTRACTORS_LOCK = threading.Lock()


def cached_extractor(spec: ExtractorSpec) -> FeatureExtractor:
    """The extractor for `spec`, built once per process (threads of one worker share it)."""
    with _EXTRACTORS_LOCK:  # held while building: a second thread waits instead of loading the weights again
        if spec not in _EXTRACTORS:
            _EXTRACTORS[spec] = build_extractor(spec.role, spec.exact, weights_dir=spec.weights_dir,
                                                manifest=spec.manifest, device=spec.device)
        return _EXTRACTORS[spec]


def load_item(root: Path, item: Item, resolution: int | None) -> np.ndarray:
    """A frame -> uint8 (3, H, W); a clip -> uint8 (T, 3, H, W)."""
    if isinstance(item, str):
        return P.read_frame(root / item, resolution)
    return np.stack([P.read_frame(root / frame, resolution) for frame in item])


def extract_batches(extractor: FeatureExtractor, root: Path, items: Sequence[Item], resolution: int | None,
                    batch_size: int, pool: ThreadPoolExecutor, desc: str) -> Iterator[np.ndarray]:
    """Features (B, dim) of consecutive batches of `items`: the one place frames meet an extractor."""
    starts = range(0, len(items), batch_size)
    for start in progress(starts, total=len(starts), desc=desc):
        batch = np.stack(list(pool.map(lambda item: load_item(root, item, resolution),
                                       items[start:start + batch_size])))
        yield extractor(batch)


def run_extraction_job(job: ExtractionJob) -> str:
    """Extract one shard's features into `job.out`, an (n, dim) .npy written atomically; returns `job.out`."""
    extractor = cached_extractor(job.extractor)
    dtype = np.float32 if job.extractor.exact else np.float64
    with atomic_path(job.out) as tmp, ThreadPoolExecutor(job.decode_threads) as pool:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(job.items), extractor.dim))
        filled = 0
        for feats in extract_batches(extractor, Path(job.root), job.items, job.resolution, job.batch_size,
                                     pool, job.label):
            out[filled:filled + len(feats)] = feats
            if dtype == np.float32 and not np.array_equal(out[filled:filled + len(feats)], feats):
                raise RuntimeError(f"{extractor.name} returned values that are not float32; "
                                   "store them as float64")  # a new extractor broke the exact-is-float32 rule
            filled += len(feats)
        out.flush()
        del out  # close the memmap before the rename
    return job.out


def run_jobs_in_process(jobs: list[ExtractionJob]) -> list[str]:
    """The simplest FeatureMap: every job, in order, in this process."""
    return [run_extraction_job(job) for job in jobs]


def shard_batches(result: str | os.PathLike | np.ndarray, job: ExtractionJob, dim: int) -> Iterator[np.ndarray]:
    """A finished shard's features as float64 (B, dim) batches, cut where the sequential path cuts them."""
    feats = result if isinstance(result, np.ndarray) else np.load(result, mmap_mode="r")
    if feats.shape != (len(job.items), dim):
        raise ValueError(f"shard {job.label or job.out} returned features of shape {feats.shape}, "
                         f"expected {(len(job.items), dim)}")
    for start in range(0, len(job.items), job.batch_size):
        # a fresh float64 copy: the same array the in-process extractor would have returned
        yield np.array(feats[start:start + job.batch_size], dtype=np.float64)
