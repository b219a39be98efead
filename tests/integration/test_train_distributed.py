"""Two real DDP processes on CPU (gloo) through the project's accelerate profile `cpu-2proc`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.lvdm_data import tiny_train_section, write_latent_store

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_params(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({"train_lvdm": tiny_train_section(**changes)}))
    return path


def test_two_processes_learn_with_identical_weights_and_unscaled_warmup(tmp_path, repo_root):
    store = write_latent_store(tmp_path / "store", n_train=8)
    params = write_params(tmp_path / "params.yaml",
                          optim={"lr": 2e-3, "warmup_steps": 4, "batch_size": 2, "max_steps": 16},
                          checkpoint={"every": 8, "total_limit": 1})
    out = tmp_path / "out"
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--config_file", str(repo_root / "infra/accelerate/cpu-2proc.yaml"),
           "--main_process_port", str(free_port()), "-m", "pipelines.cli", "train", "lvdm", "--data", str(store),
           "--out", str(out), "--params", str(params), "--no-tracking"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [16, 16]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # DDP kept the replicas identical
    assert ranks[0]["ema_sha256"] == ranks[1]["ema_sha256"]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    # Warm-up counted in optimizer steps, NOT × num_processes (the reference reached full LR at step 8 here).
    assert summary["history"]["first_lr"][:5] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3])
    losses = summary["history"]["first_loss"]
    assert len(losses) == 16 and np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])


def test_prefect_train_flow_launches_accelerate_and_returns_the_run_id(tmp_path, repo_root):
    from mlflow.tracking import MlflowClient

    from pipelines.flows.train import train
    from pipelines.ops.launch import build_command
    from pipelines.tracking import tracking_uri

    store = write_latent_store(tmp_path / "store")
    params = write_params(tmp_path / "params.yaml")
    extra = ["--max-steps", "2", "--no-register"]
    cmd = build_command([str(store)], str(tmp_path / "out"), params=str(params), profile="cpu-1proc",
                        extra_args=extra)
    assert cmd[1:4] == ["launch", "--config_file", str(repo_root / "infra/accelerate/cpu-1proc.yaml")]
    run_id = train.fn([str(store)], str(tmp_path / "out"), params_path=str(params), profile="cpu-1proc",
                      extra_args=extra)
    history = MlflowClient(tracking_uri()).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2]
    assert (tmp_path / "out" / "unet_ema" / "lvdm_config.json").is_file()


def _launch_two_nodes(repo_root: Path, store: Path, out: Path, params: Path, *extra: str) -> list[str]:
    """The multi-node profile as a team runs it, on loopback: the same `accelerate launch` on two "machines"
    (machine_rank 0 and 1, static rendezvous at 127.0.0.1, gloo, one process per node) sharing `out`."""
    launcher = Path(sys.executable).with_name("accelerate")
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(
        [str(launcher), "launch", "--config_file", str(repo_root / "infra/accelerate/multi-node.yaml"),
         "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
         "--main_process_port", port, "-m", "pipelines.cli", "train", "lvdm", "--data", str(store), "--out",
         str(out), "--params", str(params), "--no-tracking", *extra],
        cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        logs = [node.communicate(timeout=400)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n---\n".join(log[-3000:] for log in logs)
    return logs


def test_two_nodes_on_loopback_end_identical_and_resume_across_both(tmp_path, repo_root):
    """#15 §7: `--num_machines 2` for real (not only rendered): both ranks end with identical weights, and a
    resume of the pair from the shared checkpoint continues the same trajectory on both."""
    store = write_latent_store(tmp_path / "store", n_train=8)
    section = {"optim": {"lr": 2e-3, "warmup_steps": 2, "batch_size": 2, "max_steps": 6},
               "checkpoint": {"every": 3, "total_limit": 2}}
    out = tmp_path / "out"
    _launch_two_nodes(repo_root, store, out, write_params(tmp_path / "params.yaml", **section))
    first = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in first] == [2, 2] and [r["step"] for r in first] == [6, 6]
    assert first[0]["weights_sha256"] == first[1]["weights_sha256"]
    logs = _launch_two_nodes(repo_root, store, out, write_params(tmp_path / "params.yaml", **section),
                             "--max-steps", "9", "--resume", "latest")
    assert all("resumed from" in log and "(step 6)" in log for log in logs)  # both nodes, the shared checkpoint
    resumed = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in resumed] == [9, 9] and resumed[0]["weights_sha256"] == resumed[1]["weights_sha256"]
    assert resumed[0]["weights_sha256"] != first[0]["weights_sha256"]  # it trained on, from step 6
