"""Generative metrics of one dataset's samples, with every Fréchet metric also as a real-vs-real ratio.

    <name>_ratio = FD(samples, real half A) / FD(real half B, real half A)

how far the samples are from real videos relative to how far other real videos are (≈1 = indistinguishable
at this N; scale-free, so one gate threshold works for any extractor and sample size). The halves are a
seeded split of the reference set, so the ratio is a pure function of the two folders and the seed.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echo_core.evaluation.config import FRECHET_NAMES, EvaluateConfig
from echo_core.evaluation.plan import DatasetPlan

log = logging.getLogger("echoforge.evaluation")


def video_tree(reference: Path, into: Path, videos: list[Path] | None = None) -> Path:
    """`into`/<video>/<frame> links to the reference frames: the bare depth-2 tree the metrics read (the
    reference folder also holds manifest.json, which StyleGAN-V's reader would take for a video)."""
    from echo_core.metrics.protocol import image_extensions

    exts = image_extensions()
    for video in videos if videos is not None else sorted(p for p in reference.iterdir() if p.is_dir()):
        (into / video.name).mkdir(parents=True)
        for frame in video.iterdir():
            if frame.suffix.lower() in exts:
                (into / video.name / frame.name).symlink_to(frame.resolve())
    return into


def reference_halves(reference: Path, into: Path, seed: int) -> tuple[Path, Path] | None:
    """Seeded split of the reference videos into video trees A and B; None with fewer than 4 videos."""
    import numpy as np

    videos = sorted(p for p in reference.iterdir() if p.is_dir())
    if len(videos) < 4:
        return None
    order = [videos[i] for i in np.random.default_rng(seed).permutation(len(videos))]
    half = (len(videos) + 1) // 2
    return video_tree(reference, into / "a", order[:half]), video_tree(reference, into / "b", order[half:])


def ratio(value: float, baseline: float) -> float:
    """value / baseline; NaN when the baseline is 0 or not finite (no scale to compare against)."""
    return value / baseline if baseline > 0 and math.isfinite(baseline) else math.nan


def frechet_ratios(reference: Path, fake: Path, cfg: EvaluateConfig, options, scratch: Path,
                   feature_map: Callable | None = None, shards: int = 1) -> dict[str, Any]:
    """{"values": {<name>_ratio, <name>_real_baseline}, "baseline": protocol} for the requested Fréchet metrics.
    `feature_map` / `shards`: compute_metrics' fan-out of feature extraction (same values)."""
    from echo_core.metrics.api import compute_metrics

    names = [n for n in cfg.metrics.metrics if n in FRECHET_NAMES] if cfg.ratio_metrics is None \
        else cfg.ratio_metrics
    if not names:
        return {"values": {}, "baseline": None}
    execution = {"scratch": scratch, "feature_map": feature_map, "shards": shards}
    with tempfile.TemporaryDirectory(prefix=".halves-", dir=scratch) as tmp:
        halves = reference_halves(reference, Path(tmp), cfg.ratio_seed)
        if halves is None:
            log.info("%s: fewer than 4 reference videos, no real-vs-real baseline", reference)
            return {"values": {}, "baseline": None}
        real_a, real_b = halves
        fake_a = compute_metrics(real_a, fake, names, options, **execution)
        real_ba = compute_metrics(real_a, real_b, names, options, **execution)
    values = {}
    for name in names:
        values[f"{name}_real_baseline"] = real_ba.values[name]
        values[f"{name}_ratio"] = ratio(fake_a.values[name], real_ba.values[name])
    baseline = {"definition": "ratio = FD(generated, real half A) / FD(real half B, real half A)",
                "seed": cfg.ratio_seed, "generated_vs_a": {n: fake_a.values[n] for n in names},
                "real_b_vs_a": {n: real_ba.values[n] for n in names},
                "n": {n: {"a": real_ba.protocol["metrics"][n]["n_real"], "b": real_ba.protocol["metrics"][n]["n_fake"],
                          "generated": fake_a.protocol["metrics"][n]["n_fake"]} for n in names}}
    return {"values": values, "baseline": baseline}


def measure_samples(plan: DatasetPlan, cfg: EvaluateConfig, feature_map: Callable | None = None,
                    shards: int = 1) -> dict[str, Any]:
    """{"values": flat metrics, "protocol", "baseline"} between the reference set and the samples' jpg tree;
    scratch space is made next to the samples folder (the workers of a fanned-out extraction share it)."""
    from echo_core.metrics.api import MetricsOptions, compute_metrics

    options = MetricsOptions(**cfg.metrics.model_dump(exclude={"metrics"}))
    fake, scratch = plan.samples / "jpg", plan.samples.parent
    scratch.mkdir(parents=True, exist_ok=True)
    execution = {"scratch": scratch, "feature_map": feature_map, "shards": shards}
    with tempfile.TemporaryDirectory(prefix=".reference-", dir=scratch) as tmp:
        result = compute_metrics(video_tree(plan.reference, Path(tmp) / plan.name), fake, cfg.metrics.metrics,
                                 options, **execution)
    ratios = frechet_ratios(plan.reference, fake, cfg, options, scratch, feature_map, shards)
    return {"values": {**result.values, **ratios["values"]}, "protocol": result.protocol,
            "baseline": ratios["baseline"]}
