"""infra/prefect/prefect.yaml on a real `prefect server` (127.0.0.1): pool + GPU limit, `prefect deploy --all`,
a process worker, and deployment runs (preprocess on a tiny phantom project, a tiny training run).

One server and one worker for the module; every process is stopped by PID in the fixture's `finally`.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from support import REPO_ROOT
from support.servers import (
    Processes,
    drain_prefect_workers,
    prefect_client,
    run_deployment,
    setup_and_deploy,
    start_prefect_server,
    start_worker,
    write_project,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DEPLOYMENTS = {"preprocess/phantom", "preprocess/dask", "encode/phantom", "encode/dask", "train/lvdm",
               "sample/champion", "synthesize/dynamic", "evaluate/candidate", "end_to_end/phantom"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    procs = Processes()
    try:
        server = start_prefect_server(procs, root / "prefect-home")
        env = server.env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", OMP_NUM_THREADS="1")
        setup = setup_and_deploy(env, ["--gpus", "1"])
        worker = start_worker(procs, server, root / "worker.log", env={"MLFLOW_TRACKING_URI": env[
            "MLFLOW_TRACKING_URI"], "OMP_NUM_THREADS": "1"})
        yield {"root": root, "server": server, "worker": worker, "setup": setup}
    finally:
        procs.stop_all()


def test_deploy_all_registers_every_deployment_with_the_pull_steps(stack):
    with prefect_client(stack["server"]) as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
        names = {f"{flows[d.flow_id]}/{d.name}" for d in deployments}
        gpu = client.read_global_concurrency_limit_by_name("gpu")
        pool = client.read_work_pool("echoforge")
    assert names == DEPLOYMENTS
    assert pool.type == "process" and gpu.limit == 1
    for d in deployments:
        steps = [next(iter(step)) for step in d.pull_steps]
        assert steps == ["prefect.deployments.steps.set_working_directory", "pipelines.ops.steps.dvc_pull"]
        # the build step recorded the project folder; nothing is cloned or copied
        assert d.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO_ROOT)
        assert d.work_pool_name == "echoforge"
    dask = next(d for d in deployments if d.name == "dask")
    assert dask.job_variables["env"]["ECHOFORGE_TASK_RUNNER"] == "dask"


def test_preprocess_deployment_run_completes(stack):
    params = write_project(stack["root"] / "project")
    out = stack["root"] / "project" / "outputs"
    run = run_deployment(stack["server"], "preprocess/phantom",
                         {"params_path": str(params), "out_root": str(out), "datasets": ["dynamic"]}, timeout=300)
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-4000:]
    filelist = (out / "prepared" / "dynamic" / "FileList.csv").read_text().splitlines()
    assert len(filelist) == 1 + 3
    assert len([p for p in (out / "reference" / "dynamic").iterdir() if p.is_dir()]) >= 1
    assert "dvc pull:" in stack["worker"].log_tail(200_000)  # the tolerant pull step ran (and said what it did)


def test_train_deployment_runs_a_tiny_training(stack):
    from support.lvdm_data import tiny_train_section, write_latent_store

    root = stack["root"] / "train"
    store = write_latent_store(root / "store")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"train_lvdm": tiny_train_section(
        optim={"lr": 2e-3, "warmup_steps": 1, "batch_size": 2, "max_steps": 3},
        checkpoint={"every": 3, "total_limit": 1})}))
    run = run_deployment(stack["server"], "train/lvdm",
                         {"data": [str(store)], "out": str(root / "out"), "params_path": str(params),
                          "profile": "cpu-1proc", "extra_args": ["--no-register"]}, timeout=400)
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-4000:]
    summary = json.loads((root / "out" / "train_summary.json").read_text())
    assert summary["world_size"] == 1 and len(summary["history"]["first_loss"]) == 3


def test_gpu_limit_keeps_two_jobs_off_the_same_card(stack):
    """Two jobs holding `gpu_slot()` under the limit `gpu` (1 slot, made by prefect-setup) never overlap."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.ops.concurrency import gpu_slot

    spans: list[tuple[float, float]] = []

    def job() -> None:
        with temporary_settings({PREFECT_API_URL: stack["server"].api_url}), gpu_slot(timeout_seconds=120):
            start = time.monotonic()
            time.sleep(1.0)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    with temporary_settings({PREFECT_API_URL: stack["server"].api_url}):
        drain_prefect_workers()  # before the module fixture stops this server
    assert len(spans) == 2
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0  # the second job started only after the first released the slot
