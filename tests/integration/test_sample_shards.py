"""Sharded sampling: the `sample` flow with shards=2 writes byte-identical files to the sequential path
(`run_sampling`, what `echoforge sample` runs) on Prefect's thread runner and on a real dask.distributed
LocalCluster (2 worker processes, real `prefect server`), and a folder left by a killed shard is completed
by a re-run that generates only the missing samples.

The tiny model is registered once per module in a private MLflow sqlite store (`models:/echo-lvdm@candidate`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from support.servers import dask_behind_prefect
from support.threads import one_torch_thread
from support.tiny_lvdm import WINDOW, make_lvdm_folder, make_vae_folder, tiny_config

pytestmark = [pytest.mark.integration]
MODEL_URI = "models:/echo-lvdm@candidate"
# 4 samples in batches of 2: two shards of one batch each (batch composition = the sequential run's).
# avi, not mp4: libx264 output was measured to vary between writes of identical frames (about 1 in 10, both
# in one process; a data/video.py matter, not sharding's): mp4 bytes cannot be compared run against run.
SAMPLE = {"num_samples": 4, "batch_size": 2, "seed": 3, "sampler": "ddim", "steps": 2, "num_frames": WINDOW,
          "formats": ["avi", "jpg", "safetensors"], "device": "cpu", "conditions": {"ef_range": [20, 80]}}


def file_digest(path: Path) -> str:
    """sha256 of the bytes (safetensors are written with a canonical header: same sample, same bytes)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path → digest of every file under `folder` (samples, FileList.csv, generation_params.json)."""
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    """(root, params.yaml, digest of the sequential run's folder), with cwd and MLflow store set to root."""

    from echo_core.config import load_section
    from echo_core.generation.generate import SampleConfig
    from pipelines.flows.sample import run_sampling
    from pipelines.serving.register import register_serving_model

    root = tmp_path_factory.mktemp("sample-shards")
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        # CPU results depend on torch's intra-op thread count (measured: 1 vs 2 threads give other bits), and
        # Dask's nanny starts workers with OMP_NUM_THREADS=1: the sequential reference uses one thread too.
        mp.setenv("OMP_NUM_THREADS", "1")
        (root / "mlruns").mkdir()
        register_serving_model(make_lvdm_folder(root / "lvdm"), make_vae_folder(root / "vae"), alias="candidate",
                               tags={"data_dvc_hash": "md5:test"})
        params = root / "params.yaml"
        params.write_text(yaml.safe_dump({"sample": SAMPLE}))
        sequential = root / "sequential"
        report = run_sampling(MODEL_URI, sequential, load_section(SampleConfig, "sample", params), track=False)
        assert (report.generated, report.skipped) == (4, 0)
        yield root, params, tree_digest(sequential)


@pytest.fixture(scope="module")
def harness(project):
    from support.servers import prefect_api

    with prefect_api():
        yield


def run_flow(flow, out: Path, params: Path, **kwargs) -> tuple[dict, list[str]]:
    """(the flow's result, names of its task runs) for one run of `flow`."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    state = flow(MODEL_URI, str(out), str(params), return_state=True, **kwargs)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return state.result(), sorted(run.name.rsplit("-", 1)[0] for run in runs)


@pytest.mark.slow
def test_dask_cluster_shards_match_the_sequential_path(project, monkeypatch):
    from pipelines.flows.sample import sample

    root, params, sequential = project
    out = root / "dask"
    with dask_behind_prefect(monkeypatch) as dask:
        result = sample.with_options(task_runner=dask.runner)(MODEL_URI, str(out), str(params), track=False,
                                                              shards=2)
    # only the shard tasks go through the runner (start and finish run in the flow's own process)
    workers = dask.workers()

    assert len(workers) == 2  # each worker process ran a shard
    assert (result["generated"], result["skipped"]) == (4, 0)
    assert tree_digest(out) == sequential


@pytest.mark.slow
def test_two_shards_on_threads_match_the_sequential_path_and_track_once(project, harness):
    import mlflow

    from pipelines.flows.sample import sample

    root, params, sequential = project
    out = root / "threads"
    result, tasks = run_flow(sample, out, params, shards=2)

    assert tasks == ["finish-samples", "sample-shard", "sample-shard", "start-samples"]
    assert (result["generated"], result["skipped"]) == (4, 0)
    assert tree_digest(out) == sequential  # every sample file, FileList.csv and generation_params.json
    runs = mlflow.search_runs(experiment_names=["echo-sample"], output_format="list")
    assert len(runs) == 1 and runs[0].data.metrics["generated"] == 4  # tracked once, by the finish step
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "samples")} == {
        "samples/FileList.csv", "samples/generation_params.json", "samples/sample_grid.mp4"}


@pytest.mark.slow
def test_rerun_after_a_killed_shard_generates_only_the_missing_samples(project, harness):
    from echo_core.generation.generate import SampleConfig, generate_shard, plan_generation, start_generation
    from pipelines.flows.sample import load_sampler, resolve_model, sample

    root, params, sequential = project
    out = root / "resumed"
    # what a run killed after its first shard leaves: that shard's samples, a "running" record, no FileList,
    # and the second shard's in-flight temp file
    folder, vae_folder, info = resolve_model(MODEL_URI, None)
    cfg = SampleConfig.model_validate(SAMPLE)
    pipe, frame = load_sampler(folder, vae_folder, cfg.device, None)
    job = plan_generation(pipe.config, cfg, out, model=info)
    assert start_generation(job) == [0, 1, 2, 3]
    assert generate_shard(pipe, job, range(0, 2), default_frame=frame) == 2
    (out / "avi" / ".sample_000002.killed.tmp.avi").write_bytes(b"partial")
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("sample_00000[01]*")}
    assert len(kept) == 2 * len(SAMPLE["formats"])

    result, tasks = run_flow(sample, out, params, track=False, shards=2)

    assert tasks == ["finish-samples", "sample-shard", "start-samples"]  # only the missing range had a shard
    assert (result["generated"], result["skipped"]) == (2, 2)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the first shard's samples were not rewritten
    assert tree_digest(out) == sequential  # stale temp gone, missing samples identical, record complete


def test_shard_ranges_keep_the_sequential_batches_and_once_only_steps_guard_the_shards(tmp_path):
    """Pure planning (config only, no weights): ranges over a resumed folder's missing samples."""
    from echo_core.errors import DataError, UsageError
    from echo_core.generation.generate import (
        SampleConfig,
        finish_generation,
        generate_shard,
        plan_generation,
        shard_ranges,
    )

    cfg = SampleConfig.model_validate({**SAMPLE, "num_samples": 9, "formats": ["jpg"]})
    job = plan_generation(tiny_config(), cfg, tmp_path / "out")
    # the sequential run batches the missing samples as [1, 2], [5, 6], [7, 8]: no batch is split
    assert shard_ranges(job, [1, 2, 5, 6, 7, 8], 2) == [range(1, 3), range(5, 9)]
    assert shard_ranges(job, [1, 2, 5, 6, 7, 8], 5) == [range(1, 3), range(5, 7), range(7, 9)]
    assert shard_ranges(job, list(range(9)), 1) == [range(0, 9)]
    assert shard_ranges(job, [], 2) == []
    with pytest.raises(UsageError, match="does not record this plan"):
        generate_shard(None, job, range(0, 2))  # before the start step: nothing is generated
    with pytest.raises(DataError, match="9 sample\\(s\\)"):
        finish_generation(job, 0)
