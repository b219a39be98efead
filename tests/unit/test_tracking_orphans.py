"""A SIGKILLed stage leaves its MLflow run RUNNING; the next run of that stage ends it as KILLED, and only it."""

from __future__ import annotations

import socket
import subprocess
import sys

import mlflow
import pytest

from pipelines.tracking import OWNER_TAG, close_orphaned_runs, ensure_experiment, process_owner, start_run


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return ensure_experiment("orphans")


def _dead_owner() -> str:
    """The owner string of a process that has exited (its pid no longer names it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_owner(child.pid)
    child.wait()
    return owner


def _running(exp_id: str, name: str, owner: str) -> str:
    client = mlflow.MlflowClient()
    return client.create_run(exp_id, run_name=name, tags={OWNER_TAG: owner}).info.run_id


def _status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


def test_a_dead_owners_run_is_closed_and_live_or_foreign_ones_are_not(store):
    dead = _running(store, "encode-dynamic", _dead_owner())
    live = _running(store, "encode-dynamic", process_owner())
    foreign = _running(store, "encode-dynamic", f"not-{socket.gethostname()}:1:0.00")
    other_stage = _running(store, "train-tiny", _dead_owner())

    assert close_orphaned_runs(store, "encode-dynamic") == [dead]
    assert _status(dead) == "KILLED"
    assert mlflow.MlflowClient().get_run(dead).data.tags["echoforge.orphaned"]
    assert [_status(r) for r in (live, foreign, other_stage)] == ["RUNNING"] * 3


def test_opening_a_stage_run_ends_its_orphan_and_tags_the_new_owner(store):
    orphan = _running(store, "sample-dynamic", _dead_owner())
    with start_run("orphans", run_name="sample-dynamic") as tracker:
        assert _status(orphan) == "KILLED"
        assert mlflow.MlflowClient().get_run(tracker.run_id).data.tags[OWNER_TAG] == process_owner()
    assert _status(tracker.run_id) == "FINISHED"


def test_a_resumed_run_is_not_closed_as_its_own_orphan(store):
    resumed = _running(store, "train-tiny", _dead_owner())
    with start_run("orphans", run_name="train-tiny", run_id=resumed):
        assert _status(resumed) == "RUNNING"
    assert _status(resumed) == "FINISHED"


def test_the_sweep_after_repro_ends_orphans_of_every_stage_and_removes_stale_staging(store, tmp_path):
    import yaml

    from pipelines.ops.repro_sweep import stale_staging
    from pipelines.tracking import close_orphaned_runs_everywhere

    dead = _running(store, "reid-dynamic", _dead_owner())  # restored from DVC's run cache: never re-opened
    live = _running(store, "encode-dynamic", process_owner())
    assert close_orphaned_runs_everywhere() == [f"{dead} (reid-dynamic)"]
    assert (_status(dead), _status(live)) == ("KILLED", "RUNNING")

    lock = {"schema": "2.0", "stages": {"export_jpg": {"cmd": "x", "outs": [{"path": "out/jpg", "md5": "1"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "out" / "jpg.partial").mkdir(parents=True)
    assert stale_staging(tmp_path) == []  # the output is not there: the staging folder may be resumed
    (tmp_path / "out" / "jpg").mkdir()
    assert stale_staging(tmp_path) == [tmp_path / "out" / "jpg.partial"]
