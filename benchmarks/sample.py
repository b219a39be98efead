"""Sampling benchmark (same model throughout): cost per video, throughput, steps vs quality, serving latency.

    python benchmarks/sample.py --model models:/echo-lvdm@champion --batch 4 --frames 192 --device cuda
    python benchmarks/sample.py --tiny --frames 16 --batch 2 --videos 2    # CPU smoke run (tiny random model)

Measures, for one model:
- DDPM with 64 steps (the reference setting) and DPM-Solver++(2M) at 10, 15, 25 steps: seconds per video of
  `--frames` frames and videos/min at batch `--batch` (generation + VAE decode, after one warm-up batch);
- a quality proxy: the offline fallback FVD16 between each step count's videos and the DDPM-64 videos
  (same seeds and conditions, so 0 = identical distribution; NOT comparable to published FVD);
- serving latency p50/p95 of one 64-frame request through the pyfunc's request handler (in process,
  without HTTP overhead).
Writes JSON to benchmarks/results/sample.json (overwritten; the run's settings are recorded in it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echo_core.utils.atomic import write_json_atomic  # noqa: E402

SETTINGS = [("ddpm", 64), ("dpmpp_2m", 10), ("dpmpp_2m", 15), ("dpmpp_2m", 25)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _load(args):
    from echo_core.generation.pipeline import load_pipeline

    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))  # tests/support/: the tiny model builders
        import atexit
        import shutil

        from support.tiny_lvdm import make_bundle

        tmp = Path(tempfile.mkdtemp(dir=ROOT / "benchmarks", prefix=".tiny-bundle-"))
        atexit.register(shutil.rmtree, tmp, True)
        return load_pipeline(make_bundle(tmp), device=args.device)
    from pipelines.flows.sample import resolve_model

    folder, vae, _ = resolve_model(args.model, args.vae)
    return load_pipeline(folder, vae_folder=vae, device=args.device)


def _generate_set(pipe, sampler: str, steps: int, args, cond, out: Path) -> dict[str, float]:
    """`args.videos` videos in batches of `args.batch` as jpg trees under out; timing after a warm-up."""
    from echo_core.data.video import write_jpg_tree
    from echo_core.generation.pipeline import CondSpec, SamplerOptions

    opts = SamplerOptions(sampler=sampler, steps=steps, num_frames=args.frames, guidance_scale=args.guidance)
    specs = [CondSpec(ef_percent=float(ef)) for ef in np.linspace(20, 80, args.batch)]
    pipe.generate(cond, specs, list(range(args.batch)), opts.model_copy(update={"steps": 2}))  # warm-up: same shapes
    _sync(args.device)
    elapsed, index = 0.0, 0
    while index < args.videos:
        seeds = list(range(index, index + args.batch))
        start = time.perf_counter()
        videos, _ = pipe.generate(cond, specs, seeds, opts)
        _sync(args.device)
        elapsed += time.perf_counter() - start
        for video in videos[: args.videos - index]:
            write_jpg_tree(out / f"video_{index:04d}", video)
            index += 1
    per_video = elapsed / args.videos
    return {"seconds_per_video": per_video, "videos_per_min": 60.0 / per_video}


def _fvd_proxy(real: Path, fake: Path) -> float:
    from echo_core.metrics.api import MetricsOptions, compute_metrics

    # fixed clip offsets: with the default random offset on the "real" side, DDPM-64 vs itself is not 0
    options = MetricsOptions(allow_fewer=True, real_random_offset=False)
    result = compute_metrics(real, fake, ["fvd16_fallback"], options)
    return float(result.values["fvd16_fallback"])


def _serving_latency(pipe, args) -> dict[str, float]:
    import pandas as pd

    from echo_core.generation.default_frame import read_frame_png
    from echo_core.generation.pipeline import DEFAULT_FRAME_FILE
    from echo_core.generation.requests import ServingLimits, handle_request

    frame_file = pipe.folder / DEFAULT_FRAME_FILE if pipe.folder else None
    frame = read_frame_png(frame_file if frame_file and frame_file.is_file()
                           else ROOT / "pipelines" / "serving" / DEFAULT_FRAME_FILE)
    limits = ServingLimits(max_frames=max(64, args.frames))
    params = {"num_frames": 64, "num_inference_steps": 25, "output_format": "mp4"}
    times = []
    for i in range(args.requests + 1):
        start = time.perf_counter()
        handle_request(pipe, pd.DataFrame({"ef": [55.0]}), {**params, "seed": i}, limits, frame)
        if i:  # the first request is a warm-up
            times.append(time.perf_counter() - start)
    q = statistics.quantiles(times, n=20, method="inclusive") if len(times) > 1 else times * 19
    return {"p50_s": statistics.median(times), "p95_s": q[18], "requests": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/echo-lvdm@champion")
    parser.add_argument("--vae", default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny random bundle (CPU smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--videos", type=int, default=8, help="videos per setting (FVD proxy set size)")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    pipe = _load(args)
    from echo_core.generation.default_frame import read_frame_png

    frame = read_frame_png(ROOT / "pipelines" / "serving" / "default_frame.png")
    cond = pipe.encode_frames(frame[None]).repeat(args.batch, 1, 1, 1)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        sets = {f"{sampler}-{steps}": Path(tmp) / f"{sampler}-{steps}" for sampler, steps in SETTINGS}
        for (sampler, steps), (key, folder) in zip(SETTINGS, sets.items(), strict=True):
            results[key] = _generate_set(pipe, sampler, steps, args, cond, folder)
        for key, folder in sets.items():
            results[key]["fvd16_fallback_vs_ddpm64"] = _fvd_proxy(sets["ddpm-64"], folder)
    report = {"model": "tiny" if args.tiny else args.model, "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "frames": args.frames, "batch": args.batch, "videos_per_setting": args.videos,
              "settings": results, "serving_64_frames": _serving_latency(pipe, args),
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "load_average_1m": round(os.getloadavg()[0], 2), "guidance_scale": args.guidance,
              "serving_requests": args.requests}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sample.json"
    write_json_atomic(path, report)
    print(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
