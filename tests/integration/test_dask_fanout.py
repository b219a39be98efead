"""Per-video fan-out of the `preprocess` flow on a real dask.distributed LocalCluster (2 worker processes),
through prefect-dask's DaskTaskRunner at the cluster's scheduler address: the prepared dataset and the
reference set are byte-identical to the plain sequential procedure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from support.servers import dask_behind_prefect

from echo_core.data.phantom.datasets import generate_dataset
from echo_core.data.prepare import prepare_dataset
from echo_core.data.reference import ReferenceConfig, build_reference
from echo_core.utils.hashing import sha256_tree
from pipelines.ops.scaleout import runner_settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FRAMES = 8


@pytest.fixture
def project(tmp_path: Path) -> Path:
    generate_dataset("dynamic", tmp_path / "raw" / "dynamic", num_videos=4, seed=5)
    params = {
        "raw_datasets": {"dynamic": {"kind": "dynamic", "validate_kind": "dynamic",
                                     "raw": str(tmp_path / "raw" / "dynamic")}},
        "cardiacnet_raw": str(tmp_path / "raw" / "cardiacnet"),
        "datasets": {"dynamic": {"validate_kind": "dynamic", "reference_frames": FRAMES}},
        "prepare": {"seed": 42}, "reference": {"fps": 32.0, "seed": 42},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_dask_fanout_matches_the_sequential_path(project: Path, monkeypatch):
    from pipelines.flows.preprocess import preprocess

    with dask_behind_prefect(monkeypatch) as dask:
        # the address a deployment passes in ECHOFORGE_DASK_ADDRESS selects the same runner
        assert runner_settings({"ECHOFORGE_DASK_ADDRESS": dask.address}) == ("dask", 2, dask.address)
        done = preprocess.with_options(task_runner=dask.runner)(params_path=str(project / "params.yaml"),
                                                                 out_root=str(project / "outputs"))
    workers = dask.workers()

    assert len(workers) == 2  # both worker processes ran per-video tasks
    _assert_equals_sequential(project, done)


def _assert_equals_sequential(project: Path, done: dict) -> None:
    """The flow's prepared set and reference clips are byte-identical to the plain sequential procedure."""
    prepared, reference = Path(done["dynamic"]["prepared"]), Path(done["dynamic"]["reference"])
    seq = project / "sequential"
    prepare_dataset("dynamic", project / "raw" / "dynamic", seq / "prepared", workers=1)
    cfg = ReferenceConfig(fps=32.0, seed=42, frames=FRAMES)
    build_reference(seq / "prepared", seq / "reference", frames=cfg.frames, fps=cfg.fps, max_videos=cfg.max_videos,
                    seed=cfg.seed, size=cfg.size, workers=1)
    for name in ("FileList.csv", "VolumeTracings.csv"):
        assert (prepared / name).read_bytes() == (seq / "prepared" / name).read_bytes()
    assert sha256_tree(prepared / "Videos") == sha256_tree(seq / "prepared" / "Videos")
    clips = sorted(p.name for p in reference.iterdir() if p.is_dir())
    assert clips and clips == sorted(p.name for p in (seq / "reference").iterdir() if p.is_dir())
    for clip in clips:
        assert sha256_tree(reference / clip) == sha256_tree(seq / "reference" / clip)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ("thread", 2, None)),
    ({"ECHOFORGE_TASK_RUNNER": "process", "ECHOFORGE_TASK_WORKERS": "3"}, ("process", 3, None)),
    ({"ECHOFORGE_TASK_RUNNER": "dask", "ECHOFORGE_DASK_ADDRESS": "tcp://10.0.0.5:8786"},
     ("dask", 2, "tcp://10.0.0.5:8786")),
])
def test_runner_settings_from_environment(env, expected):
    assert runner_settings(env) == expected


@pytest.mark.parametrize("env", [{"ECHOFORGE_TASK_RUNNER": "ray"}, {"ECHOFORGE_TASK_WORKERS": "0"},
                                 {"ECHOFORGE_TASK_RUNNER": "thread", "ECHOFORGE_DASK_ADDRESS": "tcp://x:1"}])
def test_runner_settings_reject_bad_values_naming_the_variable(env):
    from echo_core.errors import ConfigError

    with pytest.raises(ConfigError, match="ECHOFORGE_"):
        runner_settings(env)


def test_an_external_dask_cluster_by_address_matches_and_survives_a_killed_worker(project: Path, monkeypatch):
    """#15 §7: a cluster started the way a team starts one (`dask scheduler` + two `dask worker tcp://…`
    processes), the flow pointed at it by address; one worker is SIGKILLed mid-flow: Dask reruns its tasks on
    the other, and the result is still byte-identical to the sequential path (the jobs stage atomically)."""
    import threading

    from distributed import Client
    from support.servers import BIN, Processes, prefect_api, wait_for

    from pipelines.flows.preprocess import preprocess
    from pipelines.ops.processes import free_port, spawn
    from pipelines.ops.scaleout import task_runner

    procs, port, result = Processes(), free_port(), {}
    address = f"tcp://127.0.0.1:{port}"
    try:
        with prefect_api() as server:
            monkeypatch.setenv("PREFECT_API_URL", server.api_url)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs.add(spawn([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                             "--no-dashboard"], name="dask-scheduler", log_path=project / "scheduler.log", env=env),
                      grace=5)
            workers = [procs.add(spawn([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                        "--name", f"w{i}"], name=f"dask-worker-{i}",
                                       log_path=project / f"worker-{i}.log", env=env), grace=5) for i in (0, 1)]
            with Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
            flow = preprocess.with_options(task_runner=task_runner("dask", address=address))
            run = threading.Thread(target=lambda: result.update(flow(params_path=str(project / "params.yaml"),
                                                                     out_root=str(project / "outputs"))))
            run.start()
            out = project / "outputs"
            wait_for(lambda: any(out.glob("*/*.partial/.jobs/*.json")) or not run.is_alive(), 300, "the fan-out")
            killed_mid_flow = run.is_alive()
            workers[0].kill()  # a machine of the cluster dies mid-flow (nanny and worker: the whole group)
            run.join(timeout=600)
    finally:
        procs.stop_all()
    assert killed_mid_flow and not run.is_alive() and "dynamic" in result, result
    _assert_equals_sequential(project, result)
