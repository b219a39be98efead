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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.errors import UsageError
from echo_core.metrics import protocol as P
from echo_core.metrics.extractors import FeatureExtractor, Role, build_extractor
from echo_core.metrics.frechet import frechet_distance_with_info
from echo_core.metrics.scores import bootstrap_frechet, fid_infinity, inception_score, kid
from echo_core.metrics.stats import FeatureStore, StreamingMoments
from echo_core.utils.progress import progress

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


# ------------------------------------------------------------------------------------- extraction


def _extract(items: Sequence[Any], load: Callable[[Any], np.ndarray], extractor: FeatureExtractor,
             batch_size: int, keep: bool, desc: str, pool: ThreadPoolExecutor,
             stack: contextlib.ExitStack) -> _Side:
    """Stream `items` through `extractor` in batches: float64 moments always, raw features if `keep`."""
    moments = StreamingMoments(extractor.dim)
    store = stack.enter_context(FeatureStore(len(items), extractor.dim)) if keep else None
    starts = range(0, len(items), batch_size)
    for start in progress(starts, total=len(starts), desc=desc):
        batch = np.stack(list(pool.map(load, items[start:start + batch_size])))
        feats = extractor(batch)
        moments.update(feats)
        if store is not None:
            store.append(feats)
    return _Side(moments, store, len(items), P.plan_hash(items))


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
    values: dict[str, float] = field(default_factory=dict)
    per_metric: dict[str, dict] = field(default_factory=dict)

    def frame_loader(self, root: Path) -> Callable[[str], np.ndarray]:
        return lambda rel: P.read_frame(root / rel, self.opts.resolution)

    def clip_loader(self, root: Path, videos: list[P.Video]) -> Callable[[P.Clip], np.ndarray]:
        frames = {v.name: v.frames for v in videos}
        return lambda clip: np.stack([P.read_frame(root / frames[clip.video][i], self.opts.resolution)
                                      for i in clip.indices])

    def record(self, mdef: MetricDef, ext: FeatureExtractor, real: _Side | None, fake: _Side,
               need: dict[str, int], selection: str) -> None:
        name = result_name(mdef.base, ext)
        values, extra = _score(mdef, name, real, fake, self.opts)
        self.values.update(values)
        self.per_metric[name] = {**_protocol(mdef, ext, real, fake, need, selection, self.opts), **extra}


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
            real = _extract(real_paths, run.frame_loader(run.real_dir), ext, opts.batch_frames,
                            keep=boot or any(m.kind == "kid" for m in mdefs), desc=f"{ext.name} real",
                            pool=run.pool, stack=run.stack)
        fake = _extract(fake_paths, run.frame_loader(run.fake_dir), ext, opts.batch_frames,
                        keep=boot or any(m.kind in ("kid", "fid_inf", "is") for m in mdefs),
                        desc=f"{ext.name} fake", pool=run.pool, stack=run.stack)
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
    real = _extract(real_plan, run.clip_loader(run.real_dir, real_videos), ext, opts.batch_clips, keep,
                    f"{ext.name} real {mdef.n_frames}f", run.pool, run.stack)
    fake = _extract(fake_plan, run.clip_loader(run.fake_dir, fake_videos), ext, opts.batch_clips, keep,
                    f"{ext.name} fake {mdef.n_frames}f", run.pool, run.stack)
    run.record(mdef, ext, real, fake, {"real": P.FVD_CLIPS, "fake": P.FVD_CLIPS}, _clip_selection(mdef, opts))


def compute_metrics(real_dir: str | os.PathLike, fake_dir: str | os.PathLike, metrics: Sequence[str],
                    options: MetricsOptions | None = None, *, weights_dir: str | os.PathLike | None = None,
                    manifest: str | os.PathLike | None = None) -> MetricsResult:
    """Evaluate `metrics` (e.g. ["fid", "fvd16"] or ["fd_fallback"]) between two jpg trees.

    Exact names need verified weights (WeightsError otherwise, before any work is done).
    """
    opts = options or MetricsOptions()
    parsed = parse_metrics(metrics)
    extractors = {(m.role, exact): None for m, exact in parsed}
    for role, exact in extractors:  # all weights are checked up front: fail fast, not after an hour
        extractors[(role, exact)] = build_extractor(role, exact, weights_dir=weights_dir, manifest=manifest,
                                                    device=opts.device)
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(opts.decode_threads) as pool:
        run = _Run(Path(real_dir), Path(fake_dir), opts, pool, stack)
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
