"""Metrics benchmark: Fréchet step vs StyleGAN-V's scipy.sqrtm formula, and extraction throughput.

    .venv/bin/python benchmarks/metrics.py [--out benchmarks/results/metrics.json] [--repeats 3] [--quick]

Fréchet: features of N samples (non-negative, correlated, like pool3 / I3D logits) give two
full-rank covariances at d = 2048 (FID) and d = 400 (FVD); each method runs `repeats` times,
interleaved, and the median wall time is reported with the relative difference of the results.
A rank-deficient case (N < d) is timed once. Throughput: fallback extractors on uint8 batches at
112x112, PIL decoding of jpg frames, and decode + features + streaming moments together (CPU).
The result records the machine, the library versions and the load average (the CPU may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echo_core.metrics.api import library_versions  # noqa: E402
from echo_core.metrics.extractors import build_extractor  # noqa: E402
from echo_core.metrics.frechet import frechet_distance_sqrtm, frechet_distance_with_info  # noqa: E402
from echo_core.metrics.protocol import read_frame  # noqa: E402
from echo_core.metrics.stats import StreamingMoments  # noqa: E402
from echo_core.utils.atomic import write_json_atomic  # noqa: E402


def features(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    w = rng.standard_normal((d, d)) / np.sqrt(d)
    return np.abs(rng.standard_normal((n, d)) @ w + shift)


def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = StreamingMoments(x.shape[1]).update(x)
    return s.mean, s.cov()


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def bench_frechet(d: int, n: int, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    args = (*moments(features(rng, n, d, 0.1)), *moments(features(rng, n, d, 0.3)))
    ours, ref = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both methods alike
        t, fd = timed(lambda: frechet_distance_with_info(*args)[0])
        ours.append(t)
        t, fd_ref = timed(lambda: frechet_distance_sqrtm(*args))
        ref.append(t)
    info = frechet_distance_with_info(*args)[1]
    return {"d": d, "n_samples": n, "repeats": repeats, "method": info.method,
            "ours_median_s": statistics.median(ours), "sqrtm_median_s": statistics.median(ref),
            "ours_all_s": ours, "sqrtm_all_s": ref,
            "speedup_sqrtm_over_ours": statistics.median(ref) / statistics.median(ours),
            "fd_ours": fd, "fd_sqrtm": fd_ref, "relative_difference": abs(fd - fd_ref) / abs(fd_ref)}


def bench_singular(d: int, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    args = (*moments(features(rng, n, d, 0.1)), *moments(features(rng, n, d, 0.3)))
    t_ours, (fd, info) = timed(lambda: frechet_distance_with_info(*args))
    t_ref, fd_ref = timed(lambda: frechet_distance_sqrtm(*args))
    return {"d": d, "n_samples": n, "method": info.method, "ours_s": t_ours, "sqrtm_s": t_ref,
            "fd_ours": fd, "fd_sqrtm": fd_ref, "relative_difference": abs(fd - fd_ref) / abs(fd_ref)}


def rate(fn: Callable[[], object], items: int, repeats: int) -> float:
    fn()  # warm-up
    times = [timed(lambda: (fn(), 0.0)[1])[0] for _ in range(repeats)]
    return items / statistics.median(times)


def bench_extraction(repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (64, 3, 112, 112), dtype=np.uint8)
    clips = rng.integers(0, 256, (8, 16, 3, 112, 112), dtype=np.uint8)
    feat, probs, clip = (build_extractor(r, exact=False) for r in ("frame_features", "frame_probs",
                                                                   "clip_features"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, frame in enumerate(frames):
            paths.append(Path(tmp) / f"{i:04d}.jpg")
            Image.fromarray(frame[0]).save(paths[-1], quality=100)
        decode = rate(lambda: [read_frame(p, 112) for p in paths], len(paths), repeats)
        stats = StreamingMoments(feat.dim)
        pipeline = rate(lambda: stats.update(feat(np.stack([read_frame(p, 112) for p in paths]))),
                        len(paths), repeats)
    return {
        "resolution": 112, "batch_frames": 64, "batch_clips": 8, "clip_frames": 16,
        "fallback_frame_features_frames_per_s": rate(lambda: feat(frames), 64, repeats),
        "fallback_frame_probs_frames_per_s": rate(lambda: probs(frames), 64, repeats),
        "fallback_clip_features_clips_per_s": rate(lambda: clip(clips), 8, repeats),
        "pil_jpg_decode_frames_per_s": decode,
        "decode_features_moments_frames_per_s": pipeline,
        "extractors": {e.name: e.sha256 for e in (feat, probs, clip)},
    }


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "blas_threads_env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
            "versions": library_versions()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "metrics.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="d=512 instead of 2048 (smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    big = 512 if args.quick else 2048
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = {
        "benchmark": "metrics", "machine": machine(), "how": __doc__.strip(),
        "frechet": [bench_frechet(big, 2 * big + 1000, args.repeats, args.seed),
                    bench_frechet(400, 2048, args.repeats * 3, args.seed)],
        "frechet_rank_deficient": bench_singular(big, big * 3 // 4, args.seed),
        "extraction": bench_extraction(args.repeats, args.seed),
    }
    result.update({"wall_s": time.perf_counter() - t0, "loadavg_before": load_before,
                   "loadavg_after": os.getloadavg()})
    write_json_atomic(args.out, result)
    for row in result["frechet"]:
        print(f"d={row['d']}: ours {row['ours_median_s']:.3f}s, sqrtm {row['sqrtm_median_s']:.3f}s, "
              f"x{row['speedup_sqrtm_over_ours']:.1f}, rel diff {row['relative_difference']:.1e}")
    print({k: v for k, v in result["extraction"].items() if k.endswith("_per_s")})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
