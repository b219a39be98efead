"""A real `mlflow server` is stopped mid-training and restarted on the same port: training continues,
every metric point arrives, artifacts are logged and the EMA UNet is registered as echo-lvdm@candidate."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.lvdm_data import tiny_train_section, write_latent_store
from support.servers import Processes, start_mlflow_server

from echo_core.training.checkpoint import list_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MAX_STEPS = 12


def test_training_survives_a_tracking_server_restart(tmp_path, repo_root):
    store = write_latent_store(tmp_path / "store")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train_lvdm": tiny_train_section(
        optim={"lr": 2e-3, "warmup_steps": 2, "batch_size": 2, "max_steps": MAX_STEPS},
        checkpoint={"every": 3, "total_limit": 1}, validation={"every": 6, "num_samples": 1, "steps": 2})}))
    procs = Processes()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("echoforge")), "train", "lvdm", "--data", str(store),
           "--out", str(out), "--params", str(params)]
    training = None
    try:
        server, uri = start_mlflow_server(procs, tmp_path)
        env["MLFLOW_TRACKING_URI"] = uri
        training = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        deadline = time.monotonic() + 240
        while not list_checkpoints(out / "checkpoints") and time.monotonic() < deadline:
            assert training.poll() is None, training.communicate()[1][-3000:]
            time.sleep(0.1)
        server.stop(grace=5)  # mid-run: metrics, an EMA export and a validation video are logged while it is down
        down_at = list_checkpoints(out / "checkpoints")[-1][0]
        # Training goes on without the server: a newer checkpoint appears (or, if it had already reached the
        # end, it waits alive for its queued calls to be delivered).
        while down_at < MAX_STEPS and list_checkpoints(out / "checkpoints")[-1][0] == down_at:
            assert training.poll() is None, training.communicate()[1][-3000:]
            time.sleep(0.1)
        assert training.poll() is None, training.communicate()[1][-3000:]
        time.sleep(3)
        start_mlflow_server(procs, tmp_path, port=int(uri.rsplit(":", 1)[1]))
        stdout, stderr = training.communicate(timeout=300)
        assert training.returncode == 0, stderr[-3000:]
        _check_run(uri, stdout, stderr)  # read back from the restarted server
    finally:
        if training is not None and training.poll() is None:
            training.kill()
        procs.stop_all()


def _check_run(uri: str, stdout: str, stderr: str) -> None:
    from mlflow.tracking import MlflowClient

    assert "MLflow unreachable" in stderr  # the outage really happened during the run
    run_id = next(line.split("=", 1)[1] for line in stdout.splitlines() if line.startswith("MLFLOW_RUN_ID="))
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/clips_per_s"):
        assert sorted({m.step for m in client.get_metric_history(run_id, key)}) == list(range(1, MAX_STEPS + 1))
    tags = run.data.tags
    assert {"git_commit", "config_hash", "data_dvc_hash", "objective", "conditioning"} <= set(tags)
    assert tags["objective"] == "rectified_flow" and tags["conditioning"] == "ef"
    assert run.data.params["train_lvdm.optim.max_steps"] == str(MAX_STEPS)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"validation", "ema", "config"} <= artifacts
    ema = {a.path for a in client.list_artifacts(run_id, "ema")}
    assert ema == {f"ema/step-{s:07d}" for s in range(3, MAX_STEPS + 1, 3)}  # including the one during the outage
    version = client.get_model_version_by_alias("echo-lvdm", "candidate")
    assert version.run_id == run_id and version.tags["objective"] == "rectified_flow"
