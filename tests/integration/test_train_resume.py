"""kill -9 mid-run, `--resume latest`: the final UNet and EMA equal those of an uninterrupted run (CPU,
deterministic mode), through the real CLI in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from support.lvdm_data import tiny_train_section, write_latent_store

from echo_core.training.checkpoint import list_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MAX_STEPS = 10


def _command(store: Path, params: Path, out: Path, *extra: str) -> list[str]:
    return [str(Path(sys.executable).with_name("echoforge")), "train", "lvdm", "--data", str(store), "--out",
            str(out), "--params", str(params), "--no-tracking", *extra]


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    folder = out / "unet_ema"
    return {**load_file(str(folder / "diffusion_pytorch_model.safetensors")),
            **{f"cond.{k}": v for k, v in load_file(str(folder / "conditioning.safetensors")).items()}}


def test_sigkill_then_resume_latest_matches_an_uninterrupted_run(tmp_path, repo_root):
    store = write_latent_store(tmp_path / "store")
    params = tmp_path / "params.yaml"
    section = tiny_train_section(
        conditioning={"types": ["ef"], "ef_mode": "embedding", "dim": 8, "p_cond": 0.3, "p_frame": 0.1},
        optim={"lr": 2e-3, "warmup_steps": 3, "batch_size": 2, "max_steps": MAX_STEPS},
        checkpoint={"every": 2, "total_limit": 2})
    params.write_text(yaml.safe_dump({"train_lvdm": section}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a_out, b_out = tmp_path / "a", tmp_path / "b"
    uninterrupted = subprocess.Popen(_command(store, params, a_out), cwd=repo_root, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_command(store, params, b_out), cwd=repo_root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(b_out / "checkpoints") and time.monotonic() < deadline:
            assert victim.poll() is None, "the run to be killed ended early"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    killed_at = list_checkpoints(b_out / "checkpoints")[-1][0]
    assert 0 < killed_at < MAX_STEPS and not (b_out / "unet_ema").exists()

    resumed = subprocess.run(_command(store, params, b_out, "--resume", "latest"), cwd=repo_root, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {b_out / 'checkpoints'}" in resumed.stderr
    _, a_err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, a_err[-3000:]

    final_a, final_b = _final_weights(a_out), _final_weights(b_out)
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    ema_a = load_file(str(a_out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "ema.safetensors"))
    ema_b = load_file(str(b_out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "ema.safetensors"))
    model_a = load_file(str(a_out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "model.safetensors"))
    model_b = load_file(str(b_out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "model.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)  # EMA state
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)  # raw (non-EMA) weights
