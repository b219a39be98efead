"""Faults of the tracking server and the disk, for real on loopback: the MLflow server restarts during sampling
and during evaluation (0 metrics or tags lost); a write that hits a file-size limit (a full disk) fails with a
clear error and leaves no corrupt artefact.

(The MLflow server restarting during *training* is tests/integration/test_train_tracking_restart.py; Prefect
worker and server faults are tests/integration/test_faults.py.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.servers import (
    BIN,
    Processes,
    shared_prefect_server,
    start_mlflow_server,
    wait_for,
)

from pipelines.ops.processes import spawn

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SAMPLES = 24


# ------------------------------------------------------------------------------ MLflow restart, sampling


def test_sampling_loses_no_metric_when_the_tracking_server_restarts(tmp_path):
    from mlflow.tracking import MlflowClient
    from support.tiny_lvdm import make_bundle

    bundle = make_bundle(tmp_path / "model")
    out = tmp_path / "samples"
    procs = Processes()
    try:
        server, url = start_mlflow_server(procs, tmp_path / "mlflow")
        # MLflow's own HTTP retries bridge the outage; a shorter backoff than the default (factor 2)
        # only makes the test quicker, the budget (10 retries) still covers a restart of tens of seconds.
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10"}
        cmd = [str(BIN / "echoforge"), "sample", "--model", str(bundle), "--out", str(out), "--params",
               str(tmp_path / "none.yaml"), "--num-samples", str(SAMPLES), "--batch-size", "1", "--steps", "2",
               "--frames", "8", "--formats", "safetensors", "--device", "cpu"]
        sampling = procs.add(spawn(cmd, name="sample", log_path=tmp_path / "sample.log", env=env, cwd=tmp_path),
                             grace=5)
        wait_for(lambda: any(out.glob("safetensors/sample_*.safetensors")) or not sampling.alive(), 300,
                 "the first sample")
        server.stop(grace=5)  # down while generating, and still down when the run is opened and logged
        assert sampling.alive() and not (out / "FileList.csv").exists(), sampling.log_tail()
        wait_for(lambda: (out / "FileList.csv").exists() or not sampling.alive(), 300, "the end of generation")
        server, _ = start_mlflow_server(procs, tmp_path / "mlflow", port=int(url.rsplit(":", 1)[1]))
        wait_for(lambda: not sampling.alive(), 300, "sampling to exit")
        assert sampling.popen.returncode == 0, sampling.log_tail()
    finally:
        procs.stop_all()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlruns' / 'mlflow.db'}")  # the server's own store
    runs = client.search_runs([client.get_experiment_by_name("echo-sample").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics == {"generated": SAMPLES, "skipped": 0, "fps": 25.0}
    assert runs[0].data.params["sample.num_samples"] == str(SAMPLES)
    stored = {p.name for p in (tmp_path / "mlflow" / "mlruns" / "artifacts").rglob("*") if p.is_file()}
    assert {"FileList.csv", "generation_params.json"} <= stored


# ----------------------------------------------------------------------------- MLflow restart, evaluation

EVAL_MODEL = "echo-lvdm-faults"
# the version's number and the process that ran the evaluation differ between the two; everything else must not
PER_RUN_TAGS = {"mlflow.runName", "model_version", "model_uri", "echoforge.owner"}


def _evaluate(procs: Processes, project: Path, url: str, version: str, name: str):
    """`echoforge evaluate run` of one version as its own process, into <project>/<name>/ (its own samples)."""
    env = shared_prefect_server().env(MLFLOW_TRACKING_URI=url, OMP_NUM_THREADS="1",
                                      MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", MLFLOW_HTTP_REQUEST_MAX_RETRIES="10")
    shutil.copytree(project / "outputs", project / name)  # prepared, reference and latents of the dataset
    cmd = [str(BIN / "echoforge"), "evaluate", "run", "--model", EVAL_MODEL, "--version", version, "--params",
           "params.yaml", "--out-root", name, "--metrics-dir", f"{name}-metrics"]
    return procs.add(spawn(cmd, name=name, log_path=project / f"{name}.log", env=env, cwd=project), grace=5)


def _logged(client, version: str, artifacts: Path) -> dict:
    """Everything an evaluation of `version` left in MLflow: its run's metrics (with every step), params, tags,
    status and artefact files, and the version's tags."""
    tags = client.get_model_version(EVAL_MODEL, version).tags
    run = client.get_run(tags["evaluation_run_id"])
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
               for key in run.data.metrics}
    stored = next(artifacts.rglob(run.info.run_id))
    return {"status": run.info.status, "metrics": history, "params": run.data.params,
            "tags": {k: v for k, v in run.data.tags.items() if k not in PER_RUN_TAGS},
            "artifacts": sorted(str(f.relative_to(stored)) for f in stored.rglob("*") if f.is_file()),
            "version_tags": {k: v for k, v in tags.items() if k != "evaluation_run_id"}}


def test_evaluation_loses_no_metric_or_tag_when_the_tracking_server_restarts(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from support.evaluate_data import write_evaluation_dataset, write_evaluation_params
    from support.tiny_lvdm import make_bundle

    from pipelines.registry import log_model_folder
    from pipelines.tracking import start_run

    write_evaluation_dataset(tmp_path / "outputs", "toy")
    write_evaluation_params(tmp_path / "params.yaml", ("toy",))
    bundle = make_bundle(tmp_path / "model")
    procs = Processes()
    try:
        server, url = start_mlflow_server(procs, tmp_path / "mlflow")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.chdir(tmp_path)  # MLflow's upload staging goes under the test folder
        with start_run("faults-models"):  # two versions of one model: one evaluated as usual, one through a restart
            versions = [log_model_folder(bundle, name="lvdm", registered_model_name=EVAL_MODEL).version
                        for _ in range(2)]
        clean = _evaluate(procs, tmp_path, url, versions[0], "clean")
        wait_for(lambda: not clean.alive(), 600, "the clean evaluation")
        assert clean.popen.returncode == 0, clean.log_tail()

        restarted = _evaluate(procs, tmp_path, url, versions[1], "restarted")
        wait_for(lambda: (tmp_path / "restarted" / "samples" / "toy" / "FileList.csv").exists()
                 or not restarted.alive(), 600, "the evaluation samples")
        server.stop(grace=5)  # down while the downstream nets train and log their epochs, and while judging
        wait_for(lambda: (tmp_path / "restarted" / "evaluation" / "toy").exists() or not restarted.alive(), 600,
                 "the downstream models")
        assert restarted.alive() and not (tmp_path / "restarted-metrics" / "evaluate.json").exists()
        server, _ = start_mlflow_server(procs, tmp_path / "mlflow", port=int(url.rsplit(":", 1)[1]))
        wait_for(lambda: not restarted.alive(), 600, "the evaluation to exit")
        assert restarted.popen.returncode == 0, restarted.log_tail()
        assert "Connection refused" in restarted.log_tail(100_000)  # the outage really met a logging call
        client = MlflowClient(url)
        artifacts = tmp_path / "mlflow" / "mlruns" / "artifacts"
        expected, got = (_logged(client, v, artifacts) for v in versions)
    finally:
        procs.stop_all()
    assert got["status"] == expected["status"] == "FINISHED"
    assert got == expected


# ------------------------------------------------------------------------------------ disk full (EFBIG)

FILE_LIMIT = 50_000  # bytes: above every small record, below one sample (8 frames of 112x112 = 100 kB)


def _limited_writes() -> None:
    """In the child: files may not grow past FILE_LIMIT, and a write past it raises EFBIG (as on a full
    disk, ENOSPC) instead of the default SIGXFSZ kill."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def test_a_full_disk_fails_clearly_and_keeps_earlier_samples_intact(tmp_path):
    import subprocess

    from safetensors.torch import load_file
    from support.tiny_lvdm import make_bundle

    bundle, out = make_bundle(tmp_path / "model"), tmp_path / "samples"
    cmd = [str(BIN / "echoforge"), "sample", "--model", str(bundle), "--out", str(out), "--params",
           str(tmp_path / "none.yaml"), "--num-samples", "4", "--batch-size", "1", "--steps", "1", "--frames", "8",
           "--formats", "safetensors", "--device", "cpu", "--no-track"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True).returncode == 0
    files = sorted((out / "safetensors").iterdir())
    clean = {f.name: f.read_bytes() for f in files}
    assert len(files) == 4 and min(len(b) for b in clean.values()) > FILE_LIMIT
    for lost in files[2:]:  # the last two samples are to be made again, on a disk that has no room for them
        lost.unlink()

    full = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, preexec_fn=_limited_writes)
    assert full.returncode == 1, full.stderr
    error = full.stderr[full.stderr.index("error: "):]
    assert "Traceback" not in full.stderr and error.count("error: ") == 1
    assert f"disk full writing {files[2]}: the file is larger than the file-size limit" in error
    assert "fix: free space" in error
    assert sorted(f.name for f in out.rglob("*") if f.is_file() and ".tmp" in f.name) == []  # no temp left
    assert sorted((out / "safetensors").iterdir()) == files[:2]  # no partial sample under its final name
    for earlier in files[:2]:
        assert earlier.read_bytes() == clean[earlier.name] and load_file(earlier)["frames"].shape[0] == 8

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)  # room again: resumes
    assert again.returncode == 0, again.stderr
    assert {f.name: f.read_bytes() for f in (out / "safetensors").iterdir()} == clean


# ---------------------------------------------------------------------------------------- Prefect faults


