"""`compute_metrics(real_dir, fake_dir, metrics)`: the whole evaluation, with its protocol recorded.

Metric names come in two families that can never mix:
- exact (StyleGAN-V protocol, verified weights only): fid, fvd16, fvd128, is, kid, fid_inf;
- fallback (offline, weight-free extractors): fd_fallback, fvd16_fallback, fvd128_fallback,
  is_fallback, kid_fallback, fd_inf_fallback.
`result_name` is the single place that turns a metric into a reported key, from the extractor's
`exact` flag, so a fallback extractor cannot produce an exact name. Asking for an exact name without
verified weights raises WeightsError (no silent fallback).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

import echo_core.metrics.protocol as P
from echo_core.config import StrictModel
from echo_core.errors import UsageError
from echo_core.metrics.extractors import FeatureExtractor, Role, build_extractor
from echo_core.metrics.frechet import frechet_distance_with_info
from echo_core.metrics.scores import bootstrap_frechet, fid_infinity, inception_score, kid
from echo_core.metrics.shards import (
    ExtractionJob,
    ExtractorSpec,
    FeatureMap,
    Item,
    extract_batches,
    shard_batches,
)
from echo_core.metrics.stats import FeatureStore, StreamingMoments
from echo_core.utils.shards import contiguous_shards

Kind = Literal["frechet_frames", "frechet_clips", "is", "kid", "fid_inf"]


@dataclass(frozen=True)
class MetricDef:
    base: str
    role: Role
    kind: Kind
    n_frames: int = 1
    stride: int = 1


METRICS: dict[str, MetricDef] = {
    "fid": MetricDef("fid", "frame_features", "frechet_frames"),
    "kid": MetricDef("kid", "frame_features", "kid"),
    "fid_inf": MetricDef("fid_inf", "frame_features", "fid_inf"),
    "is": MetricDef("is", "frame_probs", "is"),
    "fvd16": MetricDef("fvd16", "clip_features", "frechet_clips", n_frames=16),
    "fvd128": MetricDef("fvd128", "clip_features", "frechet_clips", n_frames=128),
}
# base -> (name reported with an exact extractor, name reported with a fallback extractor)
RESULT_NAMES: dict[str, tuple[str, str]] = {
    "fid": ("fid", "fd_fallback"),
    "kid": ("kid", "kid_fallback"),
    "fid_inf": ("fid_inf", "fd_inf_fallback"),
    "is": ("is", "is_fallback"),
    "fvd16": ("fvd16", "fvd16_fallback"),
    "fvd128": ("fvd128", "fvd128_fallback"),
}
_BY_NAME = {name: (base, i == 0) for base, names in RESULT_NAMES.items() for i, name in enumerate(names)}
EXACT_METRIC_NAMES = frozenset(n for n, (_, exact) in _BY_NAME.items() if exact)
FALLBACK_METRIC_NAMES = frozenset(n for n, (_, exact) in _BY_NAME.items() if not exact)


def result_name(base: str, extractor: FeatureExtractor) -> str:
    """The key a metric is reported under: exact name only for an exact (verified-weights) extractor."""
    exact_name, fallback_name = RESULT_NAMES[base]
    return exact_name if extractor.exact is True else fallback_name


def parse_metrics(names: Sequence[str]) -> list[tuple[MetricDef, bool]]:
    """User metric names -> (definition, exact requested); unknown names are a UsageError."""
    parsed = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        if name not in _BY_NAME:
            raise UsageError(f"unknown metric '{name}'",
                             fix=f"choose from {', '.join(sorted(_BY_NAME))}")
        base, exact = _BY_NAME[name]
        parsed.append((METRICS[base], exact))
    if not parsed:
        raise UsageError("no metrics requested", fix="pass --metrics, e.g. fd_fallback,fvd16_fallback")
    return parsed


class MetricsOptions(StrictModel):
    """How metrics are computed (everything but the metric list and the folders)."""

    seed: int = 0
    device: str = "cpu"
    resolution: int | None = 112
    allow_fewer: bool = False
    real_random_offset: bool = True
    batch_frames: int = Field(64, ge=1)
    batch_clips: int = Field(8, ge=1)
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    fid_inf_points: int = Field(15, ge=2)
    fid_inf_min_n: int = Field(5000, ge=2)
    bootstrap: int = Field(0, ge=0, description="bootstrap resamples for Fréchet CIs (0 = off)")
    decode_threads: int = Field(2, ge=1)


class MetricsConfig(MetricsOptions):
    """params.yaml `evaluate.metrics`: the options plus the metric list."""

    metrics: list[str] = ["fd_fallback", "fvd16_fallback", "is_fallback", "kid_fallback"]


@dataclass
class MetricsResult:
    values: dict[str, float]
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.values, "protocol": self.protocol}


@dataclass
class _Side:
    """Features of one side (real or fake) for one extractor."""

    moments: StreamingMoments
    store: FeatureStore | None
    n: int
    selection_sha256: str


def library_versions() -> dict[str, str]:
    out = {}
    for pkg in ("echoforge", "numpy", "scipy", "torch", "pillow"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ----------------------------------------------------------------------------------------- scores


def _frechet(real: _Side, fake: _Side, name: str, opts: MetricsOptions) -> tuple[dict[str, float], dict]:
    fd, info = frechet_distance_with_info(real.moments.mean, real.moments.cov(), fake.moments.mean,
                                          fake.moments.cov())
    values = {name: fd}
    if opts.bootstrap and real.store is not None and fake.store is not None:
        lo, hi = bootstrap_frechet(real.store.array, fake.store.array, num_resamples=opts.bootstrap,
                                   seed=opts.seed)
        values.update({f"{name}_ci95_low": lo, f"{name}_ci95_high": hi})
    return values, {"frechet": {"method": info.method, "min_eig_product": info.min_eig_product,
                                "n_clipped": info.n_clipped, "ddof": 0,
                                "n_le_dim": min(real.n, fake.n) <= real.moments.dim}}


def _score(mdef: MetricDef, name: str, real: _Side | None, fake: _Side,
           opts: MetricsOptions) -> tuple[dict[str, float], dict]:
    """Values and metric-specific protocol fields for one metric from extracted features."""
    if mdef.kind in ("frechet_frames", "frechet_clips"):
        return _frechet(real, fake, name, opts)
    if mdef.kind == "is":
        bounds = P.is_split_bounds(fake.n)
        mean, std = inception_score(fake.store.array, bounds)
        return {name: mean, f"{name}_std": std}, {"splits": bounds, "std_ddof": 0}
    if mdef.kind == "kid":
        mean, std = kid(real.store.array, fake.store.array, opts.kid_subsets, opts.kid_subset_size, opts.seed)
        m = min(real.n, fake.n, opts.kid_subset_size)
        return {name: mean, f"{name}_std": std}, {"subsets": opts.kid_subsets, "subset_size": m,
                                                  "kernel": "(x.y/d + 1)^3", "scale": 1}
    value, sizes, fds = fid_infinity(real.moments.mean, real.moments.cov(), fake.store.array,
                                     min_n=opts.fid_inf_min_n, num_points=opts.fid_inf_points, seed=opts.seed)
    return {name: value}, {"subset_sizes": sizes, "fds": fds}


def _protocol(mdef: MetricDef, ext: FeatureExtractor, real: _Side | None, fake: _Side, need: dict[str, int],
              selection: str, opts: MetricsOptions) -> dict[str, Any]:
    counts_met = all(n == 0 or (side is not None and side.n >= n) for side, n in
                     ((real, need.get("real", 0)), (fake, need["fake"])))
    return {
        "n_real": real.n if real is not None else 0, "n_fake": fake.n, "n_required": need,
        "frames_per_clip": mdef.n_frames, "stride": mdef.stride, "resolution": opts.resolution,
        "extractor": {"name": ext.name, "sha256": ext.sha256, "exact": ext.exact, "dim": ext.dim},
        "selection": selection,
        "selection_sha256": {"real": real.selection_sha256 if real else None, "fake": fake.selection_sha256},
        "counts_met": counts_met, "exact": bool(ext.exact and counts_met),
    }


FRAME_SELECTION = ("frames: all image files, string-sorted relative paths; real = all frames, fake = the "
                   "first 50,000 (StyleGAN-V fid50k_full / is50k / kid50k_full)")


def _clip_selection(mdef: MetricDef, opts: MetricsOptions) -> str:
    offset = f"seeded random offset (numpy PCG64 seed {opts.seed})" if opts.real_random_offset else "offset 0"
    return (f"clips of {mdef.n_frames} frames, stride {mdef.stride}: real = first {P.FVD_CLIPS} sorted "
            f"videos with >= {mdef.n_frames * mdef.stride} frames, {offset}; fake = first {P.FVD_CLIPS} "
            "sorted videos, offset 0 (StyleGAN-V fvd2048)")


# ------------------------------------------------------------------------------------ orchestration


@dataclass
class _Run:
    """Shared state of one `compute_metrics` call."""

    real_dir: Path
    fake_dir: Path
    opts: MetricsOptions
    pool: ThreadPoolExecutor
    stack: contextlib.ExitStack
    specs: dict[FeatureExtractor, ExtractorSpec]  # how a shard rebuilds each extractor elsewhere
    scratch: Path | None = None
    feature_map: FeatureMap | None = None
    shards: int = 1
    values: dict[str, float] = field(default_factory=dict)
    per_metric: dict[str, dict] = field(default_factory=dict)
    _shard_dir: Path | None = None
    _extractions: int = 0

    def extract(self, ext: FeatureExtractor, root: Path, items: list[Item], selection: list[str] | list[P.Clip],
                batch_size: int, keep: bool, desc: str) -> _Side:
        """Stream `items` through `ext` in batches: float64 moments always, raw features if `keep`."""
        moments = StreamingMoments(ext.dim)
        store = self.stack.enter_context(FeatureStore(len(items), ext.dim, self.scratch)) if keep else None
        for feats in self.feature_batches(ext, root, items, batch_size, desc):
            moments.update(feats)
            if store is not None:
                store.append(feats)
        return _Side(moments, store, len(items), P.plan_hash(selection))

    def feature_batches(self, ext: FeatureExtractor, root: Path, items: list[Item], batch_size: int,
                        desc: str) -> Iterator[np.ndarray]:
        """(B, dim) features per batch, in order: computed here, or read back from `feature_map`'s shards."""
        if self.feature_map is None:
            yield from extract_batches(ext, root, items, self.opts.resolution, batch_size, self.pool, desc)
            return
        jobs = self.shard_jobs(ext, root, items, batch_size, desc)
        results = list(self.feature_map(jobs))
        if len(results) != len(jobs):
            raise ValueError(f"feature_map returned {len(results)} results for {len(jobs)} jobs")
        for job, result in zip(jobs, results, strict=True):
            yield from shard_batches(result, job, ext.dim)
            Path(job.out).unlink(missing_ok=True)  # consumed; the store holds what is still needed

    def shard_jobs(self, ext: FeatureExtractor, root: Path, items: list[Item], batch_size: int,
                   desc: str) -> list[ExtractionJob]:
        """Contiguous shards on batch boundaries: every batch is the one the in-process path would cut."""
        if self._shard_dir is None:
            self._shard_dir = Path(tempfile.mkdtemp(prefix=".metric-shards-", dir=self.scratch))
            self.stack.callback(shutil.rmtree, self._shard_dir, ignore_errors=True)
        self._extractions += 1
        ranges = contiguous_shards(len(items), self.shards, align=batch_size)
        return [ExtractionJob(self.specs[ext], str(root.absolute()), tuple(items[r.start:r.stop]), self.opts.resolution,
                              batch_size, str(self._shard_dir / f"{self._extractions:03d}-{i:04d}.npy"),
                              self.opts.decode_threads, f"{desc} {i + 1}/{len(ranges)}")
                for i, r in enumerate(ranges)]

    def record(self, mdef: MetricDef, ext: FeatureExtractor, real: _Side | None, fake: _Side,
               need: dict[str, int], selection: str) -> None:
        name = result_name(mdef.base, ext)
        values, extra = _score(mdef, name, real, fake, self.opts)
        self.values.update(values)
        self.per_metric[name] = {**_protocol(mdef, ext, real, fake, need, selection, self.opts), **extra}


def clip_frames(plan: list[P.Clip], videos: list[P.Video]) -> list[tuple[str, ...]]:
    """The frame paths (relative to the root) of every planned clip, in time order."""
    frames = {v.name: v.frames for v in videos}
    return [tuple(frames[clip.video][i] for i in clip.indices) for clip in plan]


def _run_frames(run: _Run, metrics: list[tuple[MetricDef, FeatureExtractor]]) -> None:
    """FID / KID / FID∞ / IS: one extraction per (extractor, side), shared by the metrics using it."""
    opts = run.opts
    fake_all = P.list_frames(run.fake_dir)
    P.check_count(len(fake_all), P.FID_FAKE_FRAMES, f"generated frames in {run.fake_dir}", opts.allow_fewer)
    fake_paths = P.select_frames(fake_all, P.FID_FAKE_FRAMES)
    real_paths = P.list_frames(run.real_dir) if any(m.kind != "is" for m, _ in metrics) else []
    for ext in dict.fromkeys(e for _, e in metrics):  # unique, in request order
        mdefs = [m for m, e in metrics if e is ext]
        boot = opts.bootstrap > 0 and any(m.kind == "frechet_frames" for m in mdefs)
        real = None
        if any(m.kind != "is" for m in mdefs):
            real = run.extract(ext, run.real_dir, real_paths, real_paths, opts.batch_frames,
                               keep=boot or any(m.kind == "kid" for m in mdefs), desc=f"{ext.name} real")
        fake = run.extract(ext, run.fake_dir, fake_paths, fake_paths, opts.batch_frames,
                           keep=boot or any(m.kind in ("kid", "fid_inf", "is") for m in mdefs),
                           desc=f"{ext.name} fake")
        for mdef in mdefs:
            need = {"fake": P.FID_FAKE_FRAMES, **({} if mdef.kind == "is" else {"real": 0})}
            run.record(mdef, ext, real, fake, need, FRAME_SELECTION)


def _run_clips(run: _Run, mdef: MetricDef, ext: FeatureExtractor, real_videos: list[P.Video],
               fake_videos: list[P.Video]) -> None:
    """One FVD metric: StyleGAN-V clip plans for both sides, then streamed I3D (or fallback) features."""
    opts = run.opts
    need = mdef.n_frames * mdef.stride
    real_plan = P.plan_real_clips([(v.name, len(v.frames)) for v in real_videos], mdef.n_frames, mdef.stride,
                                  P.FVD_CLIPS, opts.seed, opts.real_random_offset)
    P.check_count(len(real_plan), P.FVD_CLIPS, f"real videos with >= {need} frames in {run.real_dir}",
                  opts.allow_fewer)
    P.check_count(len(fake_videos), P.FVD_CLIPS, f"generated videos in {run.fake_dir}", opts.allow_fewer)
    fake_plan = P.plan_fake_clips([(v.name, len(v.frames)) for v in fake_videos], mdef.n_frames, mdef.stride,
                                  P.FVD_CLIPS)
    keep = opts.bootstrap > 0
    real = run.extract(ext, run.real_dir, clip_frames(real_plan, real_videos), real_plan, opts.batch_clips,
                       keep, f"{ext.name} real {mdef.n_frames}f")
    fake = run.extract(ext, run.fake_dir, clip_frames(fake_plan, fake_videos), fake_plan, opts.batch_clips,
                       keep, f"{ext.name} fake {mdef.n_frames}f")
    run.record(mdef, ext, real, fake, {"real": P.FVD_CLIPS, "fake": P.FVD_CLIPS}, _clip_selection(mdef, opts))


def _absolute(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).absolute())


def _shard_weights_dir(ext: FeatureExtractor, weights_dir: str | os.PathLike | None) -> str | None:
    """The folder holding the weights this process verified, so a shard elsewhere loads the same file."""
    weights = getattr(ext, "weights", None)  # exact extractors only
    if weights is not None and weights.path.name == weights.entry.filename:
        return str(weights.path.parent.absolute())
    return _absolute(weights_dir)


def compute_metrics(real_dir: str | os.PathLike, fake_dir: str | os.PathLike, metrics: Sequence[str],
                    options: MetricsOptions | None = None, *, weights_dir: str | os.PathLike | None = None,
                    manifest: str | os.PathLike | None = None, scratch: str | os.PathLike | None = None,
                    feature_map: FeatureMap | None = None, shards: int = 1) -> MetricsResult:
    """Evaluate `metrics` (e.g. ["fid", "fvd16"] or ["fd_fallback"]) between two jpg trees.

    Exact names need verified weights (WeightsError otherwise, before any work is done). Temporary
    feature files go under `scratch` (the system temp folder when None). With `feature_map`, every
    extraction is cut into `shards` jobs that `feature_map` runs (e.g. as tasks on other workers; then
    `scratch` must be a folder they share); the values are bitwise those of the in-process path.
    """
    opts = options or MetricsOptions()
    parsed = parse_metrics(metrics)
    if shards < 1 or (shards > 1 and feature_map is None):
        raise UsageError(f"shards={shards} needs shards >= 1 and, above 1, a feature_map to run them",
                         fix="pass shards=1, or a feature_map (e.g. echo_core.metrics.shards.run_jobs_in_process)")
    extractors = {(m.role, exact): None for m, exact in parsed}
    for role, exact in extractors:  # all weights are checked up front: fail fast, not after an hour
        extractors[(role, exact)] = build_extractor(role, exact, weights_dir=weights_dir, manifest=manifest,
                                                    device=opts.device)
    # absolute paths: a shard may run in a process with another working folder and environment
    specs = {ext: ExtractorSpec(role, exact, _shard_weights_dir(ext, weights_dir), _absolute(manifest), opts.device)
             for (role, exact), ext in extractors.items()}
    if scratch is not None:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(opts.decode_threads) as pool:
        run = _Run(Path(real_dir), Path(fake_dir), opts, pool, stack, specs,
                   None if scratch is None else Path(scratch), feature_map, shards)
        frame_metrics = [(m, extractors[(m.role, ex)]) for m, ex in parsed if m.kind != "frechet_clips"]
        if frame_metrics:
            _run_frames(run, frame_metrics)
        clip_metrics = [(m, extractors[(m.role, ex)]) for m, ex in parsed if m.kind == "frechet_clips"]
        if clip_metrics:
            real_videos, fake_videos = P.list_videos(run.real_dir), P.list_videos(run.fake_dir)
            for mdef, ext in clip_metrics:
                _run_clips(run, mdef, ext, real_videos, fake_videos)
    protocol = {
        "name": "stylegan-v", "exact": all(p["exact"] for p in run.per_metric.values()),
        "metrics": run.per_metric, "seed": opts.seed, "options": opts.model_dump(mode="json"),
        "real_dir": str(real_dir), "fake_dir": str(fake_dir), "tf32": False, "covariance_ddof": 0,
        "versions": library_versions(),
    }
    return MetricsResult(values=run.values, protocol=protocol)
