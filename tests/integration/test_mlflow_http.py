"""The platform over HTTP: `echoforge ops mlflow-server` (sqlite under mlruns/, proxied artifacts, 127.0.0.1),
then a tiny training run with MLFLOW_TRACKING_URI=http://… that logs and registers echo-lvdm@candidate."""

from __future__ import annotations

import os
import subprocess

import psutil
import pytest
import yaml
from support.lvdm_data import tiny_train_section, write_latent_store
from support.servers import BIN, Processes, run_cli

from pipelines.ops.processes import free_port, spawn, wait_http_ok

pytestmark = [pytest.mark.slow, pytest.mark.integration]
STEPS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real launcher (it execs `mlflow server`, so the PID is the server's), run in a fresh project."""
    root = tmp_path_factory.mktemp("mlflow-http")
    port = free_port()
    procs = Processes()
    try:
        proc = procs.add(spawn([str(BIN / "echoforge"), "ops", "mlflow-server", "--port", str(port), "--workers", "1"],
                               name="mlflow-server", log_path=root / "server.log", cwd=root), grace=5)
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", proc, timeout=180)
        yield {"root": root, "url": url, "proc": proc}
    finally:
        procs.stop_all()


def test_launcher_binds_loopback_with_sqlite_under_mlruns(server):
    root = server["root"]
    assert (root / "mlruns" / "mlflow.db").is_file()
    family = [psutil.Process(server["proc"].pid), *server["proc"].descendants()]
    listening = {c.laddr.ip for p in family for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}


def test_training_and_registration_over_http(server, tmp_path):
    from mlflow.tracking import MlflowClient

    store = write_latent_store(tmp_path / "store")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train_lvdm": tiny_train_section(
        optim={"lr": 2e-3, "warmup_steps": 1, "batch_size": 2, "max_steps": STEPS},
        checkpoint={"every": 2, "total_limit": 1})}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": server["url"], "OMP_NUM_THREADS": "1"}
    # The client sees only the URL: no shared folder, artifacts go through the server.
    proc = run_cli([str(BIN / "echoforge"), "train", "lvdm", "--data", str(store), "--out", str(tmp_path / "out"),
                    "--params", str(params)], env, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    run_id = next(line.split("=", 1)[1] for line in proc.stdout.splitlines() if line.startswith("MLFLOW_RUN_ID="))

    client = MlflowClient(server["url"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train/loss")})
    assert steps == list(range(1, STEPS + 1))
    assert {"ema", "config"} <= {a.path for a in client.list_artifacts(run_id)}
    version = client.get_model_version_by_alias("echo-lvdm", "candidate")
    assert version.run_id == run_id
    # proxied artifacts: the bytes live in the server's mlruns/artifacts, not in the client's folder
    stored = list((server["root"] / "mlruns" / "artifacts").rglob("*"))
    assert any(p.name == "MLmodel" for p in stored)
    assert not (tmp_path / "mlruns" / "artifacts").exists()
    # and the same runs are in the sqlite store the embedded mode uses (sqlite:///mlruns/mlflow.db)
    embedded = MlflowClient(f"sqlite:///{server['root'] / 'mlruns' / 'mlflow.db'}")
    assert embedded.get_run(run_id).info.status == "FINISHED"


def test_registered_model_resolves_over_http(server, tmp_path, monkeypatch):
    """`models:/echo-lvdm@candidate` downloads through the server (what sampling and serving do)."""
    from pipelines.registry import resolve_model_folder

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    folder = resolve_model_folder("models:/echo-lvdm@candidate", cache_dir=tmp_path / "cache")
    assert any(folder.rglob("*.safetensors"))


def test_launcher_refuses_a_missing_env_file(tmp_path):
    proc = subprocess.run([str(BIN / "echoforge"), "ops", "mlflow-server", "--env-file", str(tmp_path / "nope.env")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "env file not found" in proc.stderr and "Traceback" not in proc.stderr
