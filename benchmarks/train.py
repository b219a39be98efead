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
clip length and DataLoader workers. Each arm is built and warmed up in turn (peak memory: RSS sampled every
5 ms over build + warm-up, absolute and the rise above the RSS at its start, freed memory returned to the
OS between arms with malloc_trim; plus CUDA max allocated on GPU), then the arms are timed interleaved:
ABBA rounds of a few steps per arm, every step timed alone (synchronised), >= 10 timed steps per arm;
median/min/max per step. Data-loading time is the time spent fetching batches, reported separately.
FLOPs per step: torch.utils.flop_counter over one step (forward + backward) of the first, uncompiled arm;
achieved FLOP/s = FLOPs / median step; MFU against the device's dense bf16 peak (PEAK_TFLOPS, or
--peak-tflops; none on CPU without it). `--switches`: ours with each `optim` speed switch off vs on, a
fresh interleaved pair per switch, then all listed switches together.

    .venv/bin/python benchmarks/train.py                      # tiny (b4, 16 frames) + reference (b1, 16 frames)
    .venv/bin/python benchmarks/train.py --configs tiny --switches
Results: benchmarks/results/train.json (one entry per "<config>_<device>" and "switches_<config>_<device>", merged).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.encode import PeakMemory  # noqa: E402
from echo_core.errors import UsageError  # noqa: E402
from echo_core.utils.atomic import write_json_atomic  # noqa: E402

LATENT_SHAPE = (4, 14, 14)
STORE_FPS = 50.0  # EchoNet-Dynamic's frame rate; both datasets resample to TARGET_FPS
TARGET_FPS = 32.0
NOISE_OFFSET = 0.1
# (batch, clip frames, timed steps, warm-up steps) per UNet config on CPU; the reference UNet (~144 M
# parameters) is measured with batch 1 and few steps so a CPU run stays in minutes.
CPU_PLAN = {"tiny": (4, 16, 10, 2), "reference": (1, 16, 10, 1)}
GPU_PLAN = {"tiny": (16, 64, 20, 3), "reference": (16, 64, 10, 3)}
# The speed switches of `optim`: each is measured on (these settings) against off (its keys at SWITCH_OFF,
# today's defaults), on top of the device's base precision (see `switch_pair`).
SWITCH_OFF: dict[str, Any] = {"mixed_precision": "no", "adamw_impl": "default", "channels_last": False,
                              "attention_backend": "default", "compile": "none"}
SWITCHES: dict[str, dict[str, Any]] = {
    "bf16": {"mixed_precision": "bf16"},
    "adamw_foreach": {"adamw_impl": "foreach"},
    "adamw_fused": {"adamw_impl": "fused"},
    "channels_last": {"channels_last": True},
    "sdpa_math": {"attention_backend": "math"},
    "sdpa_flash": {"attention_backend": "flash"},
    "sdpa_efficient": {"attention_backend": "efficient"},
    "compile_regional": {"compile": "regional"},
    "compile_model": {"compile": "model"},
}
SWITCH_KEYS = {k for on in SWITCHES.values() for k in on}
SKIPPED_ON_CPU = {  # measured reasons, so the CPU default plan stays within minutes on 2 cores
    "compile_regional": "the inductor took 540 s for the first 2 steps of the tiny LVDM on 2 shared cores",
    "compile_model": "whole-model compile starts slower still than regional on CPU",
    "sdpa_efficient": "torch has no memory-efficient attention kernel on CPU (a UsageError at build)",
    "bf16": "bf16 autocast ran 17.8 s/step against 1.65 s in fp32 (tiny, batch 1) on the AMD EPYC of the "
            "2-core box (no bf16 matrix units): 10x slower, and it would take most of the plan's minutes",
}
# dense bf16 peak TFLOP/s (H100/H200 SXM; A100), matched in torch.cuda.get_device_name
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


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


@dataclass
class Arm:
    """One procedure under test: its step, its batch-fetch timer, and what it is."""

    name: str
    step: Callable[[], Any]
    timer: FetchTimer
    parameters: int
    procedure: str
    close: Callable[[], None] = lambda: None
    compiled: bool = False
    memory: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)  # one per timed step
    data_seconds: float = 0.0


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


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def warm_up(arm: Arm, warmup: int, device: torch.device, start_rss_mb: float) -> None:
    """The untimed first steps (compilation, allocator growth); peak memory is sampled over build + these."""
    with PeakMemory(device) as mem:
        for _ in range(warmup):
            arm.step()
        _sync(device)
    arm.memory = {"peak_rss_mb": round(mem.peak_rss_mb), "peak_rss_rise_mb": round(mem.peak_rss_mb - start_rss_mb),
                  "cuda_peak_mb": None if mem.cuda_peak_mb is None else round(mem.cuda_peak_mb)}


def interleave(arms: list[Arm], reps: int, steps_per_rep: int, device: torch.device) -> None:
    """`reps` rounds; in each, every arm runs `steps_per_rep` steps, each timed alone (synchronised), in
    ABBA order (reversed every other round) so slow drifts of the machine's load hit all arms alike."""
    for rep in range(reps):
        for arm in arms if rep % 2 == 0 else arms[::-1]:
            fetched = arm.timer.seconds
            for _ in range(steps_per_rep):
                start = time.perf_counter()
                arm.step()
                _sync(device)
                arm.seconds.append(time.perf_counter() - start)
            arm.data_seconds += arm.timer.seconds - fetched


def summary(arm: Arm, batch: int, warmup: int) -> dict[str, Any]:
    sec = np.asarray(arm.seconds)
    return {"timed_steps": len(sec), "warmup_steps": warmup,
            "seconds_per_step": {"median": round(float(np.median(sec)), 4), "min": round(float(sec.min()), 4),
                                 "max": round(float(sec.max()), 4)},
            "clips_per_s": round(batch / float(np.median(sec)), 3),
            "data_seconds_per_step": round(arm.data_seconds / len(sec), 4), **arm.memory,
            "parameters": arm.parameters, "procedure": arm.procedure}


def _batches(loader: torch.utils.data.DataLoader) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader


# ---------------------------------------------------------------- the two procedures


def reference_arm(config: str, ref: Path, batch: int, frames: int, workers: int, device: torch.device) -> Arm:
    np.random.seed(0)
    trainer = ReferenceTrainer(config, frames, device)
    loader = torch.utils.data.DataLoader(ReferenceLatentDataset(ref, frames), batch_size=batch, shuffle=True,
                                         drop_last=True, num_workers=workers)
    timer = FetchTimer(_batches(loader).__next__)
    return Arm("reference", lambda: trainer.step(timer()), timer, sum(p.numel() for p in trainer.unet.parameters()),
               "bare UNet, fp16 autocast + GradScaler on CUDA / fp32 on CPU, whole-file torch.load per item, "
               "mask <= padding, AdamW + clip 1.0, diffusers EMAModel, no compile")


def ours_arm(name: str, config: str, store: Path, batch: int, frames: int, workers: int, device: torch.device,
             optim: dict[str, Any]) -> Arm:
    """The real `optimizer_step` of `build_run(LvdmTask)` with `optim` settings, its batch fetches timed."""
    from echo_core.training.lvdm import LvdmTask, LvdmTrainConfig
    from echo_core.training.run import build_run
    from echo_core.training.trainer import optimizer_step

    cfg = LvdmTrainConfig.model_validate({
        "model": {"name": config}, "dataset": {"num_frames": frames, "target_fps": TARGET_FPS},
        "optim": {"batch_size": batch, "max_steps": 10**6, **optim},
        "validation": {"every": None}, "num_workers": workers, "seed": 0,
    })
    run = build_run(LvdmTask(cfg, [store]))
    run.net.train()
    timer = FetchTimer(run.next_batch)
    run.next_batch = timer  # the real optimizer step, with its batch fetches timed
    switches = {k: v for k, v in cfg.optim.model_dump(mode="json").items() if k in SWITCH_KEYS}
    return Arm(name, lambda: optimizer_step(run), timer, sum(p.numel() for p in run.module.parameters()),
               f"echo_core.training optimizer step ({switches}), LatentClipDataset mmap slices, mask < padding, "
               "condition dropout, AdamW + clip + LR schedule, EMA", close=run.accelerator.end_training,
               compiled=cfg.optim.compile != "none")


def flops_per_step(arm: Arm) -> int:
    """FLOPs of one step (forward + backward, as torch.utils.flop_counter counts them: matmuls, convolutions,
    attention) on an uncompiled arm."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        arm.step()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------- throughput per FLOP


def device_peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, where it comes from) of the device; None on an unknown device."""
    if given:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak known for a CPU: pass --peak-tflops to get an MFU"
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return peak, f"{name}: table {PEAK_TFLOPS}" if peak else f"{name} is not in the peak table {PEAK_TFLOPS}"


def utilisation(flops: int, seconds: float, peak: tuple[float | None, str]) -> dict[str, Any]:
    achieved = flops / seconds
    tflops, source = peak
    return {"flops_per_step": flops, "achieved_tflops": round(achieved / 1e12, 4),
            "mfu": None if tflops is None else round(achieved / (tflops * 1e12), 4), "peak_tflops": tflops,
            "peak_source": source}


# ---------------------------------------------------------------- machine


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    import accelerate
    import diffusers

    return {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": device.type, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "accelerate": accelerate.__version__, "diffusers": diffusers.__version__},
            "load_average_before": [round(x, 2) for x in os.getloadavg()]}


def preload_modules() -> None:
    """Import everything both procedures use before any phase, so neither phase's RSS pays for imports."""
    import accelerate  # noqa: F401
    from diffusers import UNetSpatioTemporalConditionModel  # noqa: F401
    from diffusers.training_utils import EMAModel  # noqa: F401

    import echo_core.training.lvdm  # noqa: F401


# ---------------------------------------------------------------- driver


def plan(config: str, args, device: torch.device) -> tuple[int, int, int, int]:
    """(batch, clip frames, timed steps, warm-up steps), the device's plan with the CLI's overrides."""
    batch, frames, steps, warmup = (GPU_PLAN if device.type == "cuda" else CPU_PLAN)[config]
    return (args.batch or batch, frames, args.steps or steps, args.warmup if args.warmup >= 0 else warmup)


def run_arms(build: list[Callable[[], Arm]], args, batch: int, steps: int, warmup: int,
             device: torch.device) -> list[dict[str, Any]]:
    """Build and warm up each arm in turn, then time them interleaved; FLOPs are counted on each uncompiled
    arm after its timed steps (a compiled arm gets the first arm's count: the same model and batch)."""
    arms = []
    for make in build:
        _release_memory()
        start_rss = _rss_mb()
        arms.append(make())
        warm_up(arms[-1], warmup, device, start_rss)
    reps = max(2, math.ceil(steps / args.steps_per_rep))
    interleave(arms, reps, args.steps_per_rep, device)
    peak = device_peak_tflops(device, args.peak_tflops)
    results, first = [], None
    for arm in arms:
        flops = first if arm.compiled else flops_per_step(arm)
        first = first or flops
        results.append({**summary(arm, batch, warmup), **utilisation(flops, float(np.median(arm.seconds)), peak)})
        arm.close()
    del arms
    _release_memory()
    return results


def bench_config(config: str, work: Path, args, device: torch.device) -> dict[str, Any]:
    batch, frames, steps, warmup = plan(config, args, device)
    base = {"mixed_precision": "bf16" if device.type == "cuda" else "no"}
    common = (batch, frames, args.workers, device)
    ours, reference = run_arms([lambda: ours_arm("ours", config, work / "store", *common, base),
                                lambda: reference_arm(config, work / "reference", *common)],
                               args, batch, steps, warmup, device)
    ratio = {"clips_per_s": round(ours["clips_per_s"] / reference["clips_per_s"], 3),
             "data_seconds_per_step": round(ours["data_seconds_per_step"]
                                            / max(reference["data_seconds_per_step"], 1e-9), 3),
             "peak_rss_rise_mb": round(ours["peak_rss_rise_mb"] / max(reference["peak_rss_rise_mb"], 1), 3)}
    if ours["cuda_peak_mb"] and reference["cuda_peak_mb"]:
        ratio["cuda_peak_mb"] = round(ours["cuda_peak_mb"] / reference["cuda_peak_mb"], 3)
    return {"benchmark": "train", "unet_config": config, "batch": batch, "clip_frames": frames,
            "dataloader_workers": args.workers, "interleaved": f"ABBA rounds of {args.steps_per_rep} steps",
            "reference": reference, "ours": ours, "ratio_ours_over_reference": ratio}


def bench_switches(config: str, work: Path, args, device: torch.device) -> dict[str, Any]:
    """Ours with each switch on against one shared off arm, all interleaved together; then the switches that
    sped the step up, all on, against a fresh off arm."""
    batch, frames, steps, warmup = plan(config, args, device)
    arm = functools.partial(ours_arm, config=config, store=work / "store", batch=batch, frames=frames,
                            workers=args.workers, device=device)
    base = {"mixed_precision": "bf16" if device.type == "cuda" else "no"}
    rows, runnable = {}, {}
    for name in args.switch_list:  # a switch this device/torch cannot run is recorded, the others still run
        try:
            arm(name, optim={**base, **SWITCHES[name]}).close()
            runnable[name] = SWITCHES[name]
        except UsageError as exc:
            rows[name] = {"on": SWITCHES[name], "error": str(exc)}
    precision = {k: v for k, v in runnable.items() if "mixed_precision" in v}  # against fp32, in a group
    others = {k: v for k, v in runnable.items() if k not in precision}  # of their own
    rows.update(_against_off(arm, others, base, args, batch, steps, warmup, device))
    if precision:
        rows.update(_against_off(arm, precision, {"mixed_precision": "no"}, args, batch, steps, warmup, device))
    helped = {k: v for name, row in rows.items() if row.get("speedup_median", 0) > 1 for k, v in row["on"].items()}
    if helped:
        rows.update(_against_off(arm, {"all_that_helped": helped}, base, args, batch, steps, warmup, device))
    return {"benchmark": "train_switches", "unet_config": config, "batch": batch, "clip_frames": frames,
            "base": base, "interleaved": f"ABBA rounds of {args.steps_per_rep} steps over the off arm and every "
            "switch's arm", "switches": rows,
            "not_measured": {k: v for k, v in SKIPPED_ON_CPU.items() if k not in args.switch_list}
            if device.type == "cpu" else {}}


def _against_off(arm: Callable[..., Arm], switches: dict[str, dict[str, Any]], base: dict[str, Any], args,
                 batch: int, steps: int, warmup: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """One interleaved group: the off arm (every switch off, at the base precision) and one arm per switch
    (off + the switch)."""
    off = {**SWITCH_OFF, **base}
    builds = [functools.partial(arm, "off", optim=off)]
    builds += [functools.partial(arm, name, optim={**off, **on}) for name, on in switches.items()]
    off_row, *on_rows = run_arms(builds, args, batch, steps, warmup, device)
    median = off_row["seconds_per_step"]["median"]
    return {name: {"on": on, "off": off, "off_row": off_row, "on_row": row,
                   "speedup_median": round(median / row["seconds_per_step"]["median"], 3)}
            for (name, on), row in zip(switches.items(), on_rows, strict=True)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "reference"], choices=sorted(CPU_PLAN))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="override the per-config batch size")
    parser.add_argument("--steps", type=int, default=None, help="override the per-config timed steps (>= 10)")
    parser.add_argument("--warmup", type=int, default=-1, help="override the per-config warm-up steps")
    parser.add_argument("--steps-per-rep", type=int, default=2, help="steps per arm per interleaved round")
    parser.add_argument("--switches", action="store_true", help="also measure each speed switch off vs on "
                        "(on the first of --configs)")
    parser.add_argument("--switch-list", nargs="+", default=None, choices=sorted(SWITCHES),
                        help="default: all on a GPU; on a CPU all but compile and efficient attention")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the MFU (dense)")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=128, help="latent frames per stored video")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (both procedures)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    args = parser.parse_args()
    if args.steps is not None and args.steps < 10:
        parser.error("--steps must be >= 10 (timed steps per arm after the warm-up)")
    cpu = args.device == "cpu"
    args.switch_list = args.switch_list or [k for k in SWITCHES if not (cpu and k in SKIPPED_ON_CPU)]
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preload_modules()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks", prefix=".train-bench-") as tmp:
        write_latent_stores(Path(tmp), args.videos, args.frames)
        entries = {f"{c}_{device.type}": lambda c=c: bench_config(c, Path(tmp), args, device) for c in args.configs}
        if args.switches:
            entries[f"switches_{args.configs[0]}_{device.type}"] = \
                lambda: bench_switches(args.configs[0], Path(tmp), args, device)
        for key, measure in entries.items():
            machine = machine_info(device)
            entry = measure()
            machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            results[key] = {**entry, "machine": machine, "data": {
                "videos": args.videos, "frames_per_video": args.frames, "latent": list(LATENT_SHAPE),
                "store_fps": STORE_FPS, "target_fps": TARGET_FPS, "kind": "random latents"},
                "method": __doc__.split("\n\n", 1)[1].split("\n    .venv")[0].strip()}
            print(json.dumps({key: entry.get("ratio_ours_over_reference") or
                              {k: v.get("speedup_median") for k, v in entry["switches"].items()}}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
