"""Encode throughput: EchoForge's batched encoder vs the reference systems' procedure, in one process.

Reference procedure (seed-systems §2.3): a DataLoader (batch 1, `--reference-workers` worker processes: 8 in
the seed systems) reads whole videos; each is x/128 − 1, fp32, 32-frame chunks through
`vae.encode(x).latent_dist.sample()` under `torch.no_grad`, one `.pt` per video.
Ours: `echo_core.latents.encode.encode_dataset` (background decode, frames of several videos per batch,
inference_mode; bf16 + channels_last on CUDA). Same VAE (random weights: throughput does not depend on
their values), same phantom dataset, both measured here, alternating, `--repeats` times (median, min, max). The dataset
has a realistic length mix: each clip's length is drawn from `--frames LOW HIGH` (EchoNet-Dynamic's clips run
from 28 to ~1000 frames, median ~170), so most videos end in a partial chunk and packing frames of several
videos into one batch matters. Also VAE decode throughput, and the peak memory of each phase (RSS sampled
every 5 ms; CUDA max allocated on GPU).

    .venv/bin/python benchmarks/encode.py --vae tiny                        # 12 videos of 28-300 frames
    .venv/bin/python benchmarks/encode.py --vae reference --videos 4 --frames 28 120
Results are merged into benchmarks/results/encode.json under "<vae>_vae_<device>".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.setup_times import cpu_model  # noqa: E402
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


def make_dataset(work: Path, videos: int, frames: tuple[int, int]) -> Path:
    """Phantom EchoNet-Dynamic, lengths drawn from `frames` → prepared dataset (phantom + `data prepare`)."""
    from echo_core.data.phantom.config import PhantomConfig
    from echo_core.data.phantom.datasets import generate_dataset
    from echo_core.data.prepare import prepare_dataset

    config = PhantomConfig().dynamic.model_copy(update={"num_videos": videos, "num_frames": frames})
    raw = generate_dataset("dynamic", work / "raw", num_videos=videos, seed=0, config=config, workers=2)
    prepared = work / "prepared"
    if not (prepared / "FileList.csv").is_file():
        prepare_dataset("dynamic", raw, prepared)
    return prepared


class WholeVideos(torch.utils.data.Dataset):
    """The reference's dataset: one whole video per item, (name, (T, H, W) uint8)."""

    def __init__(self, dataset: Path):
        self.root = dataset
        self.names = read_filelist(dataset / "FileList.csv")["FileName"].astype(str).tolist()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        return self.names[i], torch.from_numpy(read_video(resolve_video(self.root, self.names[i]), gray=True)[0])


def _only_item(batch: list):
    return batch[0]


def reference_encode(vae, dataset: Path, out: Path, device: torch.device, workers: int) -> int:
    """The reference procedure, faithfully slow: returns frames encoded."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    loader = torch.utils.data.DataLoader(WholeVideos(dataset), batch_size=1, num_workers=workers,
                                         collate_fn=_only_item)
    with torch.no_grad():
        for name, frames in loader:
            x = frames.float().div(128.0).sub(1.0).unsqueeze(1).repeat(1, 3, 1, 1)
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


def median_of(results: list[tuple[float, int, PeakMemory]]) -> dict:
    seconds = [r[0] for r in results]
    median = statistics.median(seconds)
    frames = results[0][1]
    return {"frames": frames, "seconds": round(median, 3), "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3), "frames_per_s": round(frames / median, 2),
            "all_seconds": [round(s, 3) for s in seconds], "peak_rss_mb": round(max(r[2].peak_rss_mb for r in results)),
            "cuda_peak_mb": max((r[2].cuda_peak_mb or 0) for r in results) or None}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    work = Path(args.work) / f"{args.videos}x{args.frames[0]}-{args.frames[1]}"
    dataset = make_dataset(work, args.videos, tuple(args.frames))
    lengths = read_filelist(dataset / "FileList.csv")["NumberOfFrames"].astype(int).tolist()
    load_before = [round(x, 2) for x in os.getloadavg()]
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
        ref_runs.append(timed(lambda: reference_encode(vae, dataset, work / "ref", device,
                                                       args.reference_workers), device))
        our_runs.append(timed(lambda: encode_dataset(vae, dataset, work / "ours", info, cfg,
                                                     device=device).frames_encoded, device))
    latents = torch.cat([torch.load(p, weights_only=True) for p in sorted((work / "ref").glob("*.pt"))])
    ref, ours = median_of(ref_runs), median_of(our_runs)
    return {
        "benchmark": "encode", "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type ==
        "cuda" else None, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(), "torch_threads": args.threads, "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
        "repeats": args.repeats, "interleaving": "reference, ours, reference, ours, ... (fresh output each run)",
        "vae": {"config": args.vae, "parameters": sum(p.numel() for p in vae.parameters())},
        "data": {"kind": "phantom dynamic, prepared", "videos": args.videos, "frames_drawn_from": args.frames,
                 "lengths": lengths, "partial_chunks": sum(n % REFERENCE_CHUNK != 0 for n in lengths),
                 "size": "112x112"},
        "reference": {**ref, "procedure": f"DataLoader(batch 1, {args.reference_workers} workers) of whole "
                      "videos, fp32, 32-frame chunks per video, latent_dist.sample()"},
        "ours": {**ours, "procedure": f"background decode, {batch}-frame cross-video batches, "
                 "inference_mode, posterior mean" + (", bf16 + channels_last" if device.type == "cuda" else "")},
        "speedup": round(ours["frames_per_s"] / ref["frames_per_s"], 3),
        "video_decode_only": video_decode_only(dataset, device),
        "vae_decode": decode_throughput(vae, latents, device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default="tiny", choices=["tiny", "reference"])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--frames", type=int, nargs=2, default=(28, 300), metavar=("LOW", "HIGH"),
                        help="each clip's length is drawn from LOW..HIGH (inclusive)")
    parser.add_argument("--reference-workers", type=int, default=8,
                        help="the reference DataLoader's worker processes (8 in the seed systems)")
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
