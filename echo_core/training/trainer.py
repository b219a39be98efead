"""The one trainer: accelerate (1 or N processes), EMA, gradient accumulation, atomic checkpoints, exact resume.

`train(task, out_dir, ...)` trains any `TrainTask` (the LVDM is `lvdm.LvdmTask`). What it fixes relative to
the reference trainers (seed-systems §3, §8):

- the LR warm-up is counted in optimizer steps, whatever the number of processes (§8.31, `optim.py`);
- previews run at optimizer-step boundaries only, never at step 0 or repeatedly under accumulation (§8.31);
- randomness comes from seeded per-rank generators and a resumable sampler, all saved in each checkpoint,
  so `--resume latest` after a kill -9 ends on bit-identical weights (CPU, `deterministic: true`).

Checkpoint folder `checkpoint-<step>/` (atomic, see `checkpoint.py`): accelerate `save_state` (model,
optimizer, RNG), `ema.safetensors`, `rng-rank<r>.safetensors` (the per-rank training generator),
`trainer_state.json` (step, data position, LR scheduler, loss history) and, every `ema_every` steps,
`ema_export/` (the slim fp16 inference folder that is also logged to the tracker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from echo_core.tracking import NullTracker, Tracker
from echo_core.training.checkpoint import (
    EMA_FILE,
    EXPORT_DIR,
    STATE_FILE,
    checkpoint_writer,
    compatible_checkpoint,
    prune_checkpoints,
    resolve_resume,
)
from echo_core.training.data_order import History
from echo_core.training.run import TrainingRun, build_run, to_device
from echo_core.training.task import TrainResult, TrainTask
from echo_core.utils.atomic import atomic_dir, write_json_atomic
from echo_core.utils.progress import progress

log = logging.getLogger("echoforge.train")

SUMMARY_FILE = "train_summary.json"


def optimizer_step(run: TrainingRun) -> dict[str, Any]:
    """grad_accum micro-batches → clip → AdamW → LR schedule → EMA → the task's extras. Returns this step's
    metrics, the loss and gradient norm as device tensors: reading them is a host sync, left to `StepLog`."""
    acc, optim = run.accelerator, run.cfg.optim
    losses = []
    with run.attention():
        for micro in range(optim.grad_accum):
            batch = to_device(run.next_batch(), acc.device)
            last = micro == optim.grad_accum - 1
            with contextlib.nullcontext() if last else acc.no_sync(run.net):  # all-reduce once per step
                loss = run.task.loss(run.net, batch, run.generator)
                acc.backward(loss / optim.grad_accum)
            losses.append(loss.detach().float())
    params = [p for p in run.net.parameters() if p.requires_grad]
    grad_norm = acc.clip_grad_norm_(params, optim.grad_clip or math.inf)
    lr = run.lr
    run.optimizer.step()
    if run.scheduler is not None:
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None and (run.step + 1) % run.cfg.ema.update_every == 0:
        run.ema.update(run.module)
    extra = run.task.extra_step(run.step)
    mean_loss = acc.reduce(torch.stack(losses).mean(), reduction="mean")
    return {"train/loss": mean_loss, "train/lr": float(lr), "train/grad_norm": grad_norm, **extra}


class StepLog:
    """The steps since the last flush, their losses still on the device: a step never waits for the GPU to
    finish, and `flush` (at log and checkpoint steps) reads them all with one host sync."""

    def __init__(self, run: TrainingRun):
        self.run, self.losses, self.lrs, self.last = run, [], [], {}
        self.start: float | None = None

    def step(self) -> None:
        """One optimizer step; the throughput clock runs from the first step after a flush."""
        if self.start is None:
            self.start = time.perf_counter()
        self.last = optimizer_step(self.run)
        self.losses.append(self.last["train/loss"])
        self.lrs.append(self.last["train/lr"])

    def flush(self) -> dict[str, float]:
        """Add the pending steps to the run's history; return the last step's metrics as floats and the
        throughput over the flushed steps."""
        if not self.losses:
            return {}
        for loss, lr in zip(torch.stack(self.losses).tolist(), self.lrs, strict=True):
            self.run.history.add(loss, lr)
        optim, acc = self.run.cfg.optim, self.run.accelerator
        items = optim.batch_size * optim.grad_accum * acc.num_processes * len(self.losses)
        metrics = {k: float(v) for k, v in self.last.items()}
        metrics[f"train/{self.run.task.items_name}_per_s"] = items / max(time.perf_counter() - self.start, 1e-9)
        self.losses, self.lrs, self.start = [], [], None
        return metrics


# ---------------------------------------------------------------- checkpoints


def _trainer_state(run: TrainingRun) -> dict[str, Any]:
    state = {"trajectory_hash": run.task.trajectory_hash(), "step": run.step,
             "world_size": run.accelerator.num_processes, "sampler": run.data.state_dict(),
             "history": run.history.__dict__}
    if run.scheduler is not None:
        state["scheduler"] = run.scheduler.state_dict()
    return state


def save_checkpoint(run: TrainingRun, root: Path, tracker: Tracker) -> Path:
    """Write `root/checkpoint-<step>` atomically (all ranks), prune old ones, log the EMA export."""
    from safetensors.torch import save_file

    acc, ckpt = run.accelerator, run.cfg.checkpoint
    export = run.ema is not None and (run.step % (ckpt.ema_every or ckpt.every) == 0
                                      or run.step == run.cfg.optim.max_steps)
    with checkpoint_writer(root, run.step, is_main=run.is_main) as tmp:
        acc.wait_for_everyone()  # the main rank has created `tmp`
        acc.save_state(str(tmp))  # with the global RNGs, which a `uses_global_rng` task draws from
        if run.generator is not None:
            save_file({"state": run.generator.get_state()}, str(tmp / f"rng-rank{acc.process_index}.safetensors"))
        if run.is_main:
            if run.ema is not None:
                run.ema.save(tmp / EMA_FILE)
            if export:
                run.export(tmp / EXPORT_DIR, torch.float16)
            write_json_atomic(tmp / STATE_FILE, _trainer_state(run))
        acc.wait_for_everyone()  # every rank has written before the main rank renames
    final = root / f"checkpoint-{run.step}"
    if run.is_main:
        prune_checkpoints(root, ckpt.total_limit)
        if export:
            tracker.log_artifact(final / EXPORT_DIR, f"ema/step-{run.step:07d}")
        log.info("checkpoint %s", final)
    return final


def load_checkpoint(run: TrainingRun, folder: Path) -> None:
    """Restore model, optimizer, RNG (accelerate), EMA, generator, data position, scheduler and history.
    Keys a run without them does not write (VAE checkpoints of before the one trainer: only `step`) may
    be missing."""
    from safetensors.torch import load_file

    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    world = state.get("world_size", run.accelerator.num_processes)
    if world != run.accelerator.num_processes:
        log.warning("checkpoint %s was written by %d processes, resuming with %d: the data order changes",
                    folder, world, run.accelerator.num_processes)
    run.accelerator.load_state(str(folder))
    if run.ema is not None:
        run.ema.load(folder / EMA_FILE)
    rng_file = folder / f"rng-rank{run.accelerator.process_index}.safetensors"
    if run.generator is not None and rng_file.is_file():
        run.generator.set_state(load_file(str(rng_file))["state"])
    run.data.load_state_dict(state.get("sampler", {}))
    if run.scheduler is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    run.history = History(**state.get("history", {}))
    run.step = int(state["step"])


def weights_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names and exact bytes (rank-consistency and resume checks)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- the loop


def train(task: TrainTask, out_dir: str | Path, *, tracker: Tracker | None = None,
          resume: str | None = None) -> TrainResult:
    """Train (or resume, `resume="latest"` or a checkpoint folder) `task`. Writes under `out_dir`:
    checkpoints/, the task's previews, `<task.export_dir>/` (final EMA inference folder), train_summary.json
    and ranks/rank-<r>.json (weight digests of every process)."""
    tracker = tracker or NullTracker()
    out_dir = Path(out_dir)
    run = build_run(task)
    checkpoint = resolve_resume(task.checkpoint_dir(out_dir), resume)
    if task.trajectory_hash() is not None:
        checkpoint = compatible_checkpoint(checkpoint, task.config, latest=resume == "latest")
    if checkpoint is not None:
        load_checkpoint(run, checkpoint)
        log.info("resumed from %s (step %d)", checkpoint, run.step)
    if run.is_main:
        task.log_start(tracker, run.step, run.accelerator.num_processes)
    _loop(run, out_dir, tracker)
    return _finish(run, out_dir, tracker)


def _loop(run: TrainingRun, out_dir: Path, tracker: Tracker) -> None:
    cfg, every = run.cfg, run.task.preview_every
    max_steps = cfg.optim.max_steps
    steps = range(run.step, max_steps)
    pending = StepLog(run)
    run.net.train()
    for _ in progress(steps, desc=f"train {run.task.name}") if run.is_main else steps:
        pending.step()
        run.step += 1
        if run.step % cfg.log_every == 0 or run.step == max_steps:
            metrics = pending.flush()  # every rank: the history is the same on all of them
            if run.is_main:
                tracker.log_metrics(metrics, step=run.step)
        if run.is_main and every and run.step % every == 0:
            _preview(run, out_dir, tracker)
        if run.step % cfg.checkpoint.every == 0 or run.step == max_steps:
            pending.flush()  # the checkpoint's history is complete
            save_checkpoint(run, run.task.checkpoint_dir(out_dir), tracker)


def _preview(run: TrainingRun, out_dir: Path, tracker: Tracker) -> None:
    """The task's preview with the EMA weights in eval mode (the training weights come back bit-exactly)."""
    run.module.eval()
    with run.inference_weights() as net:
        run.task.preview(net, run.step, out_dir, tracker)
    run.module.train()


def _finish(run: TrainingRun, out_dir: Path, tracker: Tracker) -> TrainResult:
    """The task's finish + final EMA folder + summary (main), per-rank weight digests (all ranks)."""
    acc = run.accelerator
    folder = out_dir / run.task.export_dir
    if run.is_main:
        with run.inference_weights() as net, atomic_dir(folder) as tmp:
            run.task.finish(net, out_dir, run.step, tracker)
            run.task.export(net, tmp, torch.float32, run.step)
        first, last = run.history.first_loss, run.history.last_loss
        write_json_atomic(out_dir / SUMMARY_FILE, {
            "step": run.step, "world_size": acc.num_processes, "epoch": run.data.epoch,
            "loss_first_mean": float(np.mean(first)) if first else None,
            "loss_last_mean": float(np.mean(last)) if last else None, "history": run.history.__dict__,
        })
    write_json_atomic(out_dir / "ranks" / f"rank-{acc.process_index}.json", {
        "rank": acc.process_index, "world_size": acc.num_processes, "step": run.step,
        "weights_sha256": weights_digest(run.module.state_dict()),
        "ema_sha256": weights_digest(run.ema.shadow) if run.ema is not None else None,
    })
    acc.wait_for_everyone()
    acc.end_training()
    return TrainResult(folder, run.step, acc.num_processes, run.is_main)
