"""Encode throughput: EchoForge's batched encoder vs the reference systems' procedure, in one process.

Reference procedure (seed-systems §2.3): one video at a time, decoded synchronously, x/128 − 1, fp32,
32-frame chunks through `vae.encode(x).latent_dist.sample()` under `torch.no_grad`, one `.pt` per video.
Ours: `echo_core.latents.encode.encode_dataset` (background decode, frames of several videos per batch,
inference_mode; bf16 + channels_last on CUDA). Same VAE (random weights: throughput does not depend on
their values), same phantom dataset, both measured here, alternating, best of `--repeats`. Also VAE
decode throughput, and the peak memory of each phase (RSS sampled every 5 ms; CUDA max allocated on GPU).

    .venv/bin/python benchmarks/encode.py --vae tiny --videos 8 --frames 64
    .venv/bin/python benchmarks/encode.py --vae reference --videos 2 --frames 32 --repeats 1
Results are merged into benchmarks/results/encode.json under "<vae>_vae_<device>".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echo_core.data.filelist import read_filelist, resolve_video  # noqa: E402
from echo_core.data.video import read_video  # noqa: E402
from echo_core.latents.encode import EncodeConfig, encode_dataset  # noqa: E402
from echo_core.models.vae import build_vae, load_vae  # noqa: E402
from echo_core.utils.atomic import write_json_atomic  # noqa: E402

REFERENCE_CHUNK = 32


class PeakMemory:
    """Peak RSS (MB) of this process while the block runs, plus CUDA max-allocated when on GPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak_rss_mb, self.cuda_peak_mb = device, 0.0, None

    def __enter__(self):
        self._stop = threading.Event()
        self._proc = psutil.Process()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_rss_mb = max(self.peak_rss_mb, self._proc.memory_info().rss / 2**20)
            self._stop.wait(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.device.type == "cuda":
            self.cuda_peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20


def make_dataset(work: Path, videos: int, frames: int) -> Path:
    """Phantom EchoNet-Dynamic → prepared dataset (the real data path: phantom + `data prepare`)."""
    from echo_core.data.phantom.datasets import generate_dataset
    from echo_core.data.prepare import prepare_dataset

    raw = generate_dataset("dynamic", work / "raw", num_videos=videos, seed=0, num_frames=frames, fps=50.0)
    prepared = work / "prepared"
    if not (prepared / "FileList.csv").is_file():
        prepare_dataset("dynamic", raw, prepared)
    return prepared


def reference_encode(vae, dataset: Path, out: Path, device: torch.device) -> int:
    """The reference procedure, faithfully slow: returns frames encoded."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    with torch.no_grad():
        for name in read_filelist(dataset / "FileList.csv")["FileName"].astype(str):
            frames, _ = read_video(resolve_video(dataset, name), gray=True)
            x = torch.from_numpy(frames).float().div(128.0).sub(1.0).unsqueeze(1).repeat(1, 3, 1, 1)
            chunks = [vae.encode(x[i : i + REFERENCE_CHUNK].to(device)).latent_dist.sample()
                      for i in range(0, len(x), REFERENCE_CHUNK)]
            torch.save((torch.cat(chunks) * vae.config.scaling_factor).cpu(), out / f"{name}.pt")
            total += len(x)
    return total


def video_decode_only(dataset: Path, device: torch.device) -> dict:
    """PyAV decode of every video, no VAE: the share of the work the background thread can hide."""
    def run() -> int:
        names = read_filelist(dataset / "FileList.csv")["FileName"].astype(str)
        return sum(len(read_video(resolve_video(dataset, n), gray=True)[0]) for n in names)

    seconds, frames, _ = timed(run, device)
    return {"frames": frames, "seconds": round(seconds, 3), "frames_per_s": round(frames / seconds, 2)}


def timed(fn, device: torch.device) -> tuple[float, int, PeakMemory]:
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        frames = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, frames, mem


def decode_throughput(vae, latents: torch.Tensor, device: torch.device, batch: int = 32) -> dict:
    """VAE decode of (N, C, h, w) latents in batches, as sampling does when writing videos."""
    cuda = device.type == "cuda"

    def run() -> int:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            for i in range(0, len(latents), batch):
                vae.decode(latents[i : i + batch].to(device) / vae.config.scaling_factor).sample.float().cpu()
        return len(latents)

    seconds, frames, mem = timed(run, device)
    return {"frames": frames, "seconds": round(seconds, 3), "frames_per_s": round(frames / seconds, 2),
            "batch": batch, "peak_rss_mb": round(mem.peak_rss_mb), "cuda_peak_mb": mem.cuda_peak_mb}


def best_of(results: list[tuple[float, int, PeakMemory]]) -> dict:
    seconds, frames, mem = min(results, key=lambda r: r[0])
    return {"frames": frames, "seconds": round(seconds, 3), "frames_per_s": round(frames / seconds, 2),
            "all_seconds": [round(r[0], 3) for r in results], "peak_rss_mb": round(mem.peak_rss_mb),
            "cuda_peak_mb": mem.cuda_peak_mb}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    work = Path(args.work) / f"{args.videos}x{args.frames}"
    dataset = make_dataset(work, args.videos, args.frames)
    torch.manual_seed(0)
    build_vae(args.vae).save_pretrained(work / "vae")
    vae, info = load_vae(work / "vae")
    vae = vae.to(device)
    batch = args.batch_frames or (256 if device.type == "cuda" else 32)
    cfg = EncodeConfig(batch_frames=batch)
    ref_runs, our_runs = [], []
    for _ in range(args.repeats):  # alternate, so load changes on a shared machine hit both alike
        shutil.rmtree(work / "ref", ignore_errors=True)
        shutil.rmtree(work / "ours", ignore_errors=True)
        ref_runs.append(timed(lambda: reference_encode(vae, dataset, work / "ref", device), device))
        our_runs.append(timed(lambda: encode_dataset(vae, dataset, work / "ours", info, cfg,
                                                     device=device).frames_encoded, device))
    latents = torch.cat([torch.load(p, weights_only=True) for p in sorted((work / "ref").glob("*.pt"))])
    ref, ours = best_of(ref_runs), best_of(our_runs)
    return {
        "benchmark": "encode", "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type ==
        "cuda" else None, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": args.threads, "load_average_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
        "vae": {"config": args.vae, "parameters": sum(p.numel() for p in vae.parameters())},
        "data": {"kind": "phantom dynamic, prepared", "videos": args.videos, "frames_per_video": args.frames,
                 "size": "112x112"},
        "reference": {**ref, "procedure": "per-video decode, fp32, 32-frame chunks, latent_dist.sample()"},
        "ours": {**ours, "procedure": f"background decode, {batch}-frame cross-video batches, "
                 "inference_mode, posterior mean" + (", bf16 + channels_last" if device.type == "cuda" else "")},
        "speedup": round(ours["frames_per_s"] / ref["frames_per_s"], 3),
        "video_decode_only": video_decode_only(dataset, device),
        "vae_decode": decode_throughput(vae, latents, device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default="tiny", choices=["tiny", "reference"])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batch-frames", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "bench-encode"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "encode.json"))
    args = parser.parse_args()
    result = run(args)
    out = Path(args.out)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged[f"{args.vae}_vae_{result['device']}"] = result  # one entry per VAE config and device
    write_json_atomic(out, merged)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
