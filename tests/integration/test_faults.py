"""Faults of the orchestrator, for real on loopback: a Prefect worker is SIGKILLed in the middle of the
preprocess flow; the Prefect server restarts while a run is scheduled; a stop reaches processes that left
the group.

(MLflow server restarts and a full disk: tests/integration/test_faults_tracking.py; during training:
tests/integration/test_train_tracking_restart.py.)
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

import pytest
from support.servers import (
    BIN,
    Processes,
    prefect_client,
    restart_prefect_server,
    run_cli,
    setup_and_deploy,
    start_prefect_server,
    start_worker,
    wait_for,
    write_project,
)

from echo_core.data.prepare import prepare_dataset
from echo_core.data.reference import build_reference
from echo_core.utils.hashing import sha256_tree
from pipelines.ops.processes import spawn

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ZOMBIE_AFTER_S = 45  # > the 30 s heartbeat; production default 90


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    procs = Processes()
    try:
        server = start_prefect_server(procs, root / "prefect-home")
        setup = setup_and_deploy(server.env(), ["--gpus", "0", "--zombie-after", str(ZOMBIE_AFTER_S)],
                                 ["preprocess/phantom"])
        assert "automation" in setup, setup
        params = write_project(root / "project", num_videos=8, seed=11)
        yield {"root": root, "procs": procs, "server": server, "params": params}
    finally:
        procs.stop_all()


def _state(server, run_id: uuid.UUID):
    with prefect_client(server) as client:
        return client.read_flow_run(run_id).state


def _create_run(server, params: Path, out: Path, *extra: str) -> uuid.UUID:
    import json

    body = json.dumps({"params_path": str(params), "out_root": str(out), "datasets": ["dynamic"]})
    created = run_cli([str(BIN / "prefect"), "deployment", "run", "preprocess/phantom", "--params", body, *extra],
                      server.env(), timeout=120)
    assert created.returncode == 0, created.stdout
    return uuid.UUID(re.search(r"UUID: ([0-9a-f-]{36})", created.stdout).group(1))


def _clean_reference_run(raw: Path, dst: Path) -> Path:
    prepare_dataset("dynamic", raw, dst / "prepared", workers=1)
    build_reference(dst / "prepared", dst / "reference", frames=8, fps=32.0, seed=42, workers=1)
    return dst


def _leftovers(folder: Path) -> list[str]:
    """Staging folders, swap leftovers and temp files that a crash could leave behind."""
    return [str(p) for p in folder.rglob("*") if p.name.endswith((".partial", ".old")) or ".tmp" in p.name]


def test_worker_killed_mid_flow_is_retried_without_half_written_outputs(prefect_stack):
    stack = prefect_stack
    server, out = stack["server"], stack["root"] / "killed" / "outputs"
    worker = start_worker(stack["procs"], server, stack["root"] / "worker-1.log")
    run_id = _create_run(server, stack["params"], out)
    wait_for(lambda: any(out.glob("*/*.partial/.jobs/*.json")), 300, "the fan-out to start")
    worker.kill()  # the machine dies: worker AND the flow-run process it started, SIGKILL
    assert not (out / "reference" / "dynamic").exists()  # really mid-flow
    assert _state(server, run_id).is_running()  # orphaned: nobody will report on it any more
    # Prefect's zombie detection (the automation `prefect-setup` made) notices the missing heartbeats
    wait_for(lambda: _state(server, run_id).is_crashed(), ZOMBIE_AFTER_S + 90, "the zombie automation")
    assert "no heartbeat" in (_state(server, run_id).message or "")
    start_worker(stack["procs"], server, stack["root"] / "worker-2.log")
    retried = run_cli([str(BIN / "prefect"), "flow-run", "retry", str(run_id)], server.env(), timeout=120)
    assert retried.returncode == 0, retried.stdout
    wait_for(lambda: _state(server, run_id).is_final(), 300, "the retried run")
    assert _state(server, run_id).is_completed()

    clean = _clean_reference_run(Path(stack["params"]).parent / "raw" / "dynamic", stack["root"] / "clean")
    for name in ("FileList.csv", "VolumeTracings.csv"):
        assert (out / "prepared" / "dynamic" / name).read_bytes() == (clean / "prepared" / name).read_bytes()
    assert sha256_tree(out / "prepared" / "dynamic" / "Videos") == sha256_tree(clean / "prepared" / "Videos")
    clips = sorted(p.name for p in (clean / "reference").iterdir() if p.is_dir())
    assert clips == sorted(p.name for p in (out / "reference" / "dynamic").iterdir() if p.is_dir())
    for clip in clips:
        assert sha256_tree(out / "reference" / "dynamic" / clip) == sha256_tree(clean / "reference" / clip)
    assert _leftovers(out) == []


def test_scheduled_run_survives_a_prefect_server_restart(prefect_stack):
    stack = prefect_stack
    server, out = stack["server"], stack["root"] / "scheduled" / "outputs"
    if not any(p.alive() and p.name == "prefect-worker" for p, _ in stack["procs"].started):
        start_worker(stack["procs"], server, stack["root"] / "worker-3.log")
    run_id = _create_run(server, stack["params"], out, "--start-in", "10 seconds")
    assert _state(server, run_id).is_scheduled()
    stack["server"] = server = restart_prefect_server(stack["procs"], server, down_s=2)
    wait_for(lambda: _state(server, run_id).is_final(), 300, "the scheduled run")
    assert _state(server, run_id).is_completed()
    assert (out / "prepared" / "dynamic" / "FileList.csv").is_file()
    assert _leftovers(out) == []


def test_stop_reaches_processes_that_left_the_group(tmp_path):
    """`ManagedProcess.stop` also ends descendants in their own session (as a worker's flow runs are)."""
    import psutil

    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
              " start_new_session=True); time.sleep(600)")
    proc = spawn([str(BIN / "python"), "-c", script], name="parent")
    try:
        child = wait_for(lambda: proc.descendants(), 30, "the child")[0]
        assert os.getpgid(child.pid) != os.getpgid(proc.pid)
    finally:
        proc.stop(grace=2)
    assert not proc.alive()
    with contextlib.suppress(psutil.NoSuchProcess):  # gone, or a zombie waiting for init to reap it
        assert child.status() == psutil.STATUS_ZOMBIE
