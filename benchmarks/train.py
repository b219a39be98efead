"""LVDM training-step throughput: EchoForge's training step vs the reference systems' step, in one process.

Ours: the real machinery of `echo_core.training` (`build_run(LvdmTask)` → accelerate, `LvdmNet`, condition
dropout, the objective's masked loss `< padding`, AdamW + clip + LR schedule, our EMA) reading clips through
`LatentClipDataset` (memory-mapped safetensors slices: only the clip's frames are read).
Reference (seed-systems §3.1–3.2, §8.5, §8.31): the same SVD UNet config, fp16 autocast + GradScaler on CUDA,
no compile, a dataset that `torch.load`s the whole per-video `.pt` latent for every item, loss mask
`frame_idx <= padding` averaged over all elements, AdamW + clip 1.0, diffusers `EMAModel` every step.
On CPU both run in fp32: CPU fp16 autocast is not a meaningful setting (no fast fp16 kernels on CPU) and
bf16 autocast is not what the reference ran, so fp32 keeps the comparison about the procedure.

Same hardware, process, data (a temporary store of random latents written in both formats), batch size,
clip length and DataLoader workers. Per phase: warm-up steps, then timed steps; data-loading time is the
time spent fetching batches, reported separately. Peak memory: RSS sampled every 5 ms (absolute, and the
rise above the RSS at phase start; freed memory is returned to the OS between phases with malloc_trim),
plus CUDA max allocated on GPU.

    .venv/bin/python benchmarks/train.py                      # tiny (b4, 16 frames) + reference (b1, 16 frames)
    .venv/bin/python benchmarks/train.py --configs tiny --steps 10 --warmup 2
Results: benchmarks/results/train.json (one entry per "<config>_<device>", merged).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.encode import PeakMemory  # noqa: E402
from echo_core.utils.atomic import write_json_atomic  # noqa: E402

LATENT_SHAPE = (4, 14, 14)
STORE_FPS = 50.0  # EchoNet-Dynamic's frame rate; both datasets resample to TARGET_FPS
TARGET_FPS = 32.0
NOISE_OFFSET = 0.1
# (batch, clip frames, timed steps, warm-up steps) per UNet config on CPU; the reference UNet (~144 M
# parameters) is measured with batch 1 and few steps so a CPU run stays in minutes.
CPU_PLAN = {"tiny": (4, 16, 10, 2), "reference": (1, 16, 3, 1)}
GPU_PLAN = {"tiny": (16, 64, 20, 3), "reference": (16, 64, 10, 3)}


# ---------------------------------------------------------------- data: one store, two formats


def write_latent_stores(work: Path, videos: int, frames: int, seed: int = 0) -> tuple[Path, Path]:
    """Random latents (frames, 4, 14, 14) per video, written as OUR store (FileList.csv + Latents/*.safetensors)
    and as the REFERENCE's per-video `.pt` folder (same FileList). Returns (store, reference_folder)."""
    from safetensors.torch import save_file

    store, ref = work / "store", work / "reference"
    (store / "Latents").mkdir(parents=True)
    ref.mkdir()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(videos):
        name = f"video_{i:03d}"
        latents = torch.randn((frames, *LATENT_SHAPE), generator=gen)
        save_file({"latents": latents}, str(store / "Latents" / f"{name}.safetensors"))
        torch.save(latents, ref / f"{name}.pt")
        rows.append({"FileName": name, "EF": 30.0 + 40.0 * i / max(videos - 1, 1), "FPS": STORE_FPS,
                     "NumberOfFrames": frames, "Split": "TRAIN"})
    pd.DataFrame(rows).to_csv(store / "FileList.csv", index=False)
    pd.DataFrame(rows).to_csv(ref / "FileList.csv", index=False)
    return store, ref


class ReferenceLatentDataset(torch.utils.data.Dataset):
    """The reference `Latent` dataset's behaviour (seed-systems §3.1): whole-file `torch.load` per item,
    fps resampling with a random phase from the global RNG, random window, zero padding, `padding` = valid
    frames, `lvef` = EF/100 and a conditioning `image` drawn from the whole video."""

    def __init__(self, folder: Path, num_frames: int):
        self.folder, self.num_frames = folder, num_frames
        self.rows = pd.read_csv(folder / "FileList.csv")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index]
        latents = torch.load(self.folder / f"{row['FileName']}.pt")  # (T, C, h, w), the whole video
        total = latents.shape[0]
        idx = np.linspace(0, total, math.floor(TARGET_FPS / row["FPS"] * total), endpoint=False)
        idx = (idx + np.random.uniform(0, idx[1])).astype(int)
        start = np.random.randint(0, max(len(idx) - self.num_frames, 0) + 1)
        idx = idx[start:start + self.num_frames]
        idx = idx[idx < total]
        video = torch.zeros((self.num_frames, *latents.shape[1:]))
        video[: len(idx)] = latents[idx]
        return {"video": video.permute(1, 0, 2, 3), "padding": len(idx), "fps": TARGET_FPS,
                "lvef": torch.tensor(row["EF"] / 100.0, dtype=torch.float32),
                "image": latents[np.random.randint(total)]}


# ---------------------------------------------------------------- the reference training step


class ReferenceTrainer:
    """fp16 autocast (CUDA) / fp32 (CPU) step on the bare UNet with the reference's loss and EMA."""

    def __init__(self, config: str, num_frames: int, device: torch.device, lr: float = 1e-4):
        from diffusers.training_utils import EMAModel

        from echo_core.diffusion.objectives import make_scheduler
        from echo_core.models.unet import build_unet

        torch.manual_seed(0)
        self.device, self.fp16 = device, device.type == "cuda"
        self.unet = build_unet(config, cross_attention_dim=1, num_frames=num_frames, added_time_ids=False)
        self.unet.to(device).train()
        self.scheduler = make_scheduler("ddpm")
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=lr, betas=(0.9, 0.999),
                                           weight_decay=1e-2, eps=1e-8)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.fp16)
        self.ema = EMAModel(self.unet.parameters(), decay=0.9999)
        self.ema.to(device)

    def autocast(self):
        if self.fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """batch["video"]: (B, C, T, h, w); reference mask `frame_idx <= padding`, mean over all elements."""
        from echo_core.models.unet import pad_latents, unpad_latents

        x0 = batch["video"].to(self.device)
        b, c, t = x0.shape[:3]
        noise = torch.randn_like(x0) + NOISE_OFFSET * torch.randn(b, c, 1, 1, 1, device=self.device)
        steps = torch.randint(0, 1000, (b,), device=self.device)
        x_t = self.scheduler.add_noise(x0, noise, steps)
        target = self.scheduler.get_velocity(x0, noise, steps)
        frame = batch["image"].to(self.device)[:, :, None].expand(-1, -1, t, -1, -1)
        with self.autocast():
            sample = pad_latents(torch.cat([x_t, frame], dim=1))
            out = self.unet(sample, steps, encoder_hidden_states=batch["lvef"].to(self.device).reshape(b, 1, 1),
                            added_time_ids=torch.zeros(b, 3, device=self.device)).sample
        mask = torch.arange(t, device=self.device)[None] <= batch["padding"].to(self.device)[:, None]
        squared = F.mse_loss(unpad_latents(out).float(), target.float(), reduction="none")
        return (squared * mask[:, None, :, None, None]).mean()

    def step(self, batch: dict[str, Any]) -> float:
        loss = self.loss(batch)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())
        return float(loss.detach())


# ---------------------------------------------------------------- timing


class FetchTimer:
    """Wraps a batch-fetching callable and accumulates the seconds spent in it."""

    def __init__(self, fetch: Callable[[], Any]):
        self.fetch, self.seconds = fetch, 0.0

    def __call__(self) -> Any:
        start = time.perf_counter()
        try:
            return self.fetch()
        finally:
            self.seconds += time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _release_memory() -> None:
    """Free Python/torch garbage and hand freed heap back to the OS, so the next phase's RSS is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(step: Callable[[], Any], timer: FetchTimer, steps: int, warmup: int, batch: int,
            device: torch.device, start_rss_mb: float) -> dict[str, Any]:
    """Run `warmup` untimed then `steps` timed calls of `step`; memory sampled over the whole phase."""
    with PeakMemory(device) as mem:
        for _ in range(warmup):
            step()
        _sync(device)
        timer.seconds = 0.0
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        seconds = time.perf_counter() - start
    return {"steps": steps, "warmup_steps": warmup, "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / steps, 4), "clips_per_s": round(batch * steps / seconds, 3),
            "data_seconds_per_step": round(timer.seconds / steps, 4),
            "peak_rss_mb": round(mem.peak_rss_mb), "peak_rss_rise_mb": round(mem.peak_rss_mb - start_rss_mb),
            "cuda_peak_mb": None if mem.cuda_peak_mb is None else round(mem.cuda_peak_mb)}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _batches(loader: torch.utils.data.DataLoader) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader


def run_reference(config: str, ref: Path, batch: int, frames: int, steps: int, warmup: int,
                  workers: int, device: torch.device) -> dict[str, Any]:
    np.random.seed(0)
    start_rss = _rss_mb()
    trainer = ReferenceTrainer(config, frames, device)
    loader = torch.utils.data.DataLoader(ReferenceLatentDataset(ref, frames), batch_size=batch, shuffle=True,
                                         drop_last=True, num_workers=workers)
    timer = FetchTimer(_batches(loader).__next__)
    result = measure(lambda: trainer.step(timer()), timer, steps, warmup, batch, device, start_rss)
    result["parameters"] = sum(p.numel() for p in trainer.unet.parameters())
    result["procedure"] = ("bare UNet, fp16 autocast + GradScaler on CUDA / fp32 on CPU, whole-file torch.load "
                           "per item, mask <= padding, AdamW + clip 1.0, diffusers EMAModel, no compile")
    return result


def run_ours(config: str, store: Path, batch: int, frames: int, steps: int, warmup: int,
             workers: int, device: torch.device) -> dict[str, Any]:
    from echo_core.training.lvdm import LvdmTask, LvdmTrainConfig
    from echo_core.training.run import build_run
    from echo_core.training.trainer import optimizer_step

    cfg = LvdmTrainConfig.model_validate({
        "model": {"name": config}, "dataset": {"num_frames": frames, "target_fps": TARGET_FPS},
        "optim": {"batch_size": batch, "max_steps": 10**6, "mixed_precision": "bf16" if device.type == "cuda"
                  else "no"},
        "validation": {"every": None}, "num_workers": workers, "seed": 0,
    })
    start_rss = _rss_mb()
    run = build_run(LvdmTask(cfg, [store]))
    run.net.train()
    timer = FetchTimer(run.next_batch)
    run.next_batch = timer  # the real optimizer step, with its batch fetches timed
    result = measure(lambda: optimizer_step(run), timer, steps, warmup, batch, device, start_rss)
    result["parameters"] = sum(p.numel() for p in run.module.parameters())
    result["procedure"] = (f"echo_core.training optimizer step (accelerate, mixed_precision="
                           f"{cfg.optim.mixed_precision}), LatentClipDataset mmap slices, mask < padding, "
                           "condition dropout, AdamW + clip + LR schedule, EMA")
    run.accelerator.end_training()
    return result


# ---------------------------------------------------------------- driver


def machine_info(device: torch.device) -> dict[str, Any]:
    return {"cpu": platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": device.type,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_average_1m": round(os.getloadavg()[0], 2)}


def preload_modules() -> None:
    """Import everything both procedures use before any phase, so neither phase's RSS pays for imports."""
    import accelerate  # noqa: F401
    from diffusers import UNetSpatioTemporalConditionModel  # noqa: F401
    from diffusers.training_utils import EMAModel  # noqa: F401

    import echo_core.training.lvdm  # noqa: F401


def bench_config(config: str, work: Path, args, device: torch.device) -> dict[str, Any]:
    batch, frames, steps, warmup = (GPU_PLAN if device.type == "cuda" else CPU_PLAN)[config]
    batch, steps, warmup = args.batch or batch, args.steps or steps, args.warmup if args.warmup >= 0 else warmup
    store, ref = work / "store", work / "reference"
    common = (batch, frames, steps, warmup, args.workers, device)
    _release_memory()
    reference = run_reference(config, ref, *common)
    _release_memory()
    ours = run_ours(config, store, *common)
    _release_memory()
    ratio = {"clips_per_s": round(ours["clips_per_s"] / reference["clips_per_s"], 3),
             "seconds_per_step": round(ours["seconds_per_step"] / reference["seconds_per_step"], 3),
             "data_seconds_per_step": round(ours["data_seconds_per_step"]
                                            / max(reference["data_seconds_per_step"], 1e-9), 3),
             "peak_rss_rise_mb": round(ours["peak_rss_rise_mb"] / max(reference["peak_rss_rise_mb"], 1), 3)}
    if ours["cuda_peak_mb"] and reference["cuda_peak_mb"]:
        ratio["cuda_peak_mb"] = round(ours["cuda_peak_mb"] / reference["cuda_peak_mb"], 3)
    return {"benchmark": "train", **machine_info(device), "unet_config": config, "batch": batch,
            "clip_frames": frames, "dataloader_workers": args.workers,
            "data": {"videos": args.videos, "frames_per_video": args.frames, "latent": list(LATENT_SHAPE),
                     "store_fps": STORE_FPS, "target_fps": TARGET_FPS, "kind": "random latents"},
            "reference": reference, "ours": ours, "ratio_ours_over_reference": ratio,
            "gpu_note": None if device.type == "cuda" else
            "no GPU lent to this task; MFU and the 'what fits on which GPU' table not measured",
            "method": __doc__.split("\n\n", 1)[1].split("\n    .venv")[0].strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "reference"], choices=sorted(CPU_PLAN))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="override the per-config batch size")
    parser.add_argument("--steps", type=int, default=None, help="override the per-config timed steps")
    parser.add_argument("--warmup", type=int, default=-1, help="override the per-config warm-up steps")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=128, help="latent frames per stored video")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (both procedures)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preload_modules()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks", prefix=".train-bench-") as tmp:
        write_latent_stores(Path(tmp), args.videos, args.frames)
        for config in args.configs:
            entry = bench_config(config, Path(tmp), args, device)
            results[f"{config}_{device.type}"] = entry
            print(json.dumps({k: entry[k] for k in ("unet_config", "batch", "reference", "ours",
                                                    "ratio_ours_over_reference")}, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
