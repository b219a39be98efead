"""Per-video fan-out of the `preprocess` flow on a real dask.distributed LocalCluster (2 worker processes),
through prefect-dask's DaskTaskRunner at the cluster's scheduler address: the prepared dataset and the
reference set are byte-identical to the plain sequential procedure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers_servers import Processes, drain_prefect_workers, start_prefect_server

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
    from distributed import LocalCluster
    from distributed.diagnostics.task_stream import TaskStreamPlugin
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.flows.common import task_runner
    from pipelines.flows.preprocess import preprocess

    procs = Processes()
    cluster = None
    try:
        server = start_prefect_server(procs, project / "prefect-home")
        # Dask worker processes inherit the environment: they report task states to the same server.
        monkeypatch.setenv("PREFECT_API_URL", server.api_url)
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        stream = TaskStreamPlugin(cluster.scheduler)
        cluster.scheduler.add_plugin(stream)
        # the address a deployment passes in ECHOFORGE_DASK_ADDRESS selects the same runner
        assert runner_settings({"ECHOFORGE_DASK_ADDRESS": cluster.scheduler_address}) == (
            "dask", 2, cluster.scheduler_address)
        flow = preprocess.with_options(task_runner=task_runner("dask", address=cluster.scheduler_address))
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            done = flow(params_path=str(project / "params.yaml"), out_root=str(project / "outputs"))
            drain_prefect_workers()
        workers = {event["worker"] for event in stream.buffer}
    finally:
        if cluster is not None:
            cluster.close(timeout=30)
        procs.stop_all()

    assert len(workers) == 2  # both worker processes ran per-video tasks
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
