"""Metric feature extraction cut into shards gives bitwise the same metrics as the single-process path:
in-process shards (no Prefect), Prefect `extract-features` tasks on the thread runner (test harness), and a
real dask.distributed LocalCluster with 2 worker processes behind a real `prefect server`.

Real jpg trees (PIL), real fallback extractors, a real TorchScript stand-in for the exact (float32) path;
values are compared with ==, never approx. Fréchet distances are taken on the 400-d clip features only: a
2048-d one costs ~10 s here; the 2048-d frame moments are compared directly instead."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from prefect import flow
from support.tiny_extractors import moving_video, write_stub_weights

from echo_core.errors import UsageError
from echo_core.evaluation.config import EvaluateConfig
from echo_core.evaluation.plan import DatasetPlan
from echo_core.metrics.api import MetricsConfig, MetricsOptions, compute_metrics
from echo_core.metrics.shards import ExtractionJob, run_extraction_job, run_jobs_in_process
from pipelines.flows.evaluate import TASKS, dataset_metrics

pytestmark = [pytest.mark.integration]
RES = 16
OPTS = MetricsOptions(resolution=RES, allow_fewer=True, kid_subsets=5, kid_subset_size=8, batch_frames=16,
                      batch_clips=2, decode_threads=1, bootstrap=3, fid_inf_min_n=10, fid_inf_points=3)
METRIC_NAMES = ["kid_fallback", "is_fallback", "fvd16_fallback"]  # frame features + probs (stores kept), clips


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """real: 5 videos x 20 frames (100 frames = 7 batches of 16); fake: 4 videos x 18 frames."""
    base = tmp_path_factory.mktemp("shard-trees")
    for v in range(5):
        moving_video(base / "real", f"v{v:03d}", 20, phase=v * 2, quality=95)
    for v in range(4):
        moving_video(base / "fake", f"v{v:03d}", 18, phase=v * 3, speed=1.5, quality=95)
    return {"real": base / "real", "fake": base / "fake"}


def _finite(values: dict[str, float]) -> dict[str, float]:
    assert values and all(math.isfinite(v) for v in values.values()), values  # NaN would make == meaningless
    return values


# -------------------------------------------------------------------------------- in-process shards


def test_in_process_shards_equal_the_plain_call_bitwise(trees, tmp_path):
    plain = compute_metrics(trees["real"], trees["fake"], METRIC_NAMES, OPTS)
    seen: list[list[ExtractionJob]] = []

    def recording_map(jobs: list[ExtractionJob]) -> list[str]:
        seen.append(jobs)
        return run_jobs_in_process(jobs)

    sharded = compute_metrics(trees["real"], trees["fake"], METRIC_NAMES, OPTS, scratch=tmp_path,
                              feature_map=recording_map, shards=3)
    assert _finite(sharded.values) == _finite(plain.values)
    assert {"kid_fallback", "is_fallback", "fvd16_fallback", "fvd16_fallback_ci95_high"} <= set(plain.values)
    assert sharded.protocol["metrics"] == plain.protocol["metrics"]  # same selections, extractors, counts

    # frame features: real 100, fake 72 frames; frame probs: fake 72; clips: real 5, fake 4 (one call each)
    assert [sum(len(j.items) for j in jobs) for jobs in seen] == [100, 72, 72, 5, 4]
    for jobs in seen:
        assert len(jobs) == min(3, -(-sum(len(j.items) for j in jobs) // jobs[0].batch_size))
        assert all(len(j.items) % j.batch_size == 0 for j in jobs[:-1])  # inner cuts on batch boundaries
        assert len({j.out for j in jobs}) == len(jobs)  # one file per shard
    assert list(tmp_path.iterdir()) == []  # shard files and feature stores were scratch, all removed


def test_shard_job_is_picklable_and_writes_its_features_atomically(trees, tmp_path):
    plain_jobs: list[ExtractionJob] = []
    compute_metrics(trees["real"], trees["fake"], ["fvd16_fallback"], OPTS, scratch=tmp_path,
                    feature_map=lambda jobs: plain_jobs.extend(jobs) or run_jobs_in_process(jobs), shards=2)
    job = pickle.loads(pickle.dumps(plain_jobs[0]))  # a Dask worker gets it this way
    assert job == plain_jobs[0] and Path(job.root).is_absolute()
    assert isinstance(job.items[0], tuple) and len(job.items[0]) == 16  # a clip is its 16 frame paths

    out = Path(run_extraction_job(job))
    feats = np.load(out)
    assert feats.shape == (len(job.items), 400) and feats.dtype == np.float64  # fallback: no rounding
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp sibling left behind


def test_shards_without_a_feature_map_are_refused(trees):
    with pytest.raises(UsageError, match="feature_map"):
        compute_metrics(trees["real"], trees["fake"], ["fd_fallback"], OPTS, shards=2)


def test_frame_moments_and_stores_are_bitwise_equal(trees, tmp_path):
    """The 2048-d frame features behind FID/KID/IS: moments and kept stores, sharded vs in-process."""
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    from echo_core.metrics.api import _Run
    from echo_core.metrics.extractors import build_extractor
    from echo_core.metrics.protocol import list_frames
    from echo_core.metrics.shards import ExtractorSpec

    ext = build_extractor("frame_features", exact=False)
    items = list_frames(trees["real"])
    sides = []
    for feature_map, shards in ((None, 1), (run_jobs_in_process, 3)):
        with contextlib.ExitStack() as stack, ThreadPoolExecutor(1) as pool:
            run = _Run(trees["real"], trees["fake"], OPTS, pool, stack, {ext: ExtractorSpec("frame_features", False)},
                       tmp_path, feature_map, shards)
            side = run.extract(ext, trees["real"], items, items, OPTS.batch_frames, keep=True, desc="real")
            sides.append((side.moments.n, side.moments.mean, side.moments.cov(), np.array(side.store.array)))
    (n, mean, cov, store), (n_sharded, mean_sharded, cov_sharded, store_sharded) = sides
    assert n == n_sharded == 100 and store.shape == (100, 2048) and np.abs(store).sum() > 0
    assert np.array_equal(mean, mean_sharded) and np.array_equal(cov, cov_sharded)
    assert np.array_equal(store, store_sharded)


def test_exact_extractor_shards_are_float32_and_bitwise_equal(trees, tmp_path, one_torch_thread):
    weights = tmp_path / "weights"
    manifest = write_stub_weights(weights, which=("i3d",))
    kw = {"weights_dir": weights, "manifest": manifest}
    dtypes, specs = [], set()

    def float32_check(jobs: list[ExtractionJob]) -> list[np.ndarray]:
        arrays = [np.load(path) for path in run_jobs_in_process(jobs)]
        dtypes.extend(a.dtype for a in arrays)
        specs.update(job.extractor for job in jobs)
        return arrays  # a feature_map may hand back arrays instead of paths

    plain = compute_metrics(trees["real"], trees["fake"], ["fvd16"], OPTS, **kw)
    sharded = compute_metrics(trees["real"], trees["fake"], ["fvd16"], OPTS, **kw, scratch=tmp_path / "scratch",
                              feature_map=float32_check, shards=2)
    assert _finite(sharded.values) == _finite(plain.values) and "fvd16_ci95_low" in plain.values
    assert len(dtypes) == 4 and set(dtypes) == {np.dtype(np.float32)}  # half the bytes, nothing lost
    (spec,) = specs  # a worker elsewhere loads the very file this process verified
    assert spec.exact and spec.weights_dir == str(weights.absolute()) and Path(spec.manifest).is_absolute()


# ----------------------------------------------------------------------------------------- Prefect path


def _evaluation_inputs(trees: dict[str, Path], root: Path, ratios: bool = True) -> tuple[DatasetPlan, EvaluateConfig]:
    """What the evaluate flow's `generative-metrics` step gets: a reference set, samples/jpg, the config."""
    samples = root / "samples" / "toy"
    samples.mkdir(parents=True)
    (samples / "jpg").symlink_to(trees["fake"], target_is_directory=True)
    plan = DatasetPlan("toy", root / "prepared", trees["real"], root / "latents", samples, root / "evaluation", None)
    metrics = MetricsConfig(**{**OPTS.model_dump(), "batch_clips": 1}, metrics=["kid_fallback", "fvd16_fallback"])
    return plan, EvaluateConfig(metrics=metrics, ratio_metrics=["fvd16_fallback"] if ratios else [])


@flow(name="metric-shards-test")
def _measure(plan: DatasetPlan, cfg: EvaluateConfig, shards: int) -> dict:
    """The evaluate flow's metric step (the `generative-metrics` task, called in the flow) and its flow run id."""
    from prefect.runtime import flow_run

    return {"measured": TASKS[dataset_metrics](plan, cfg, shards), "flow_run_id": str(flow_run.id)}


def _extract_task_states(flow_run_id: str, expected: int) -> list[str]:
    """States of the flow run's extract-features task runs, once the server has recorded `expected` final ones
    (task states reach the server as events, a moment after the flow returns)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from support.servers import wait_for

    def final_states() -> list[str] | None:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        states = [r.state_name for r in runs if r.name.startswith("extract-features")]
        return states if len(states) >= expected and all(r.state and r.state.is_final() for r in runs) else None

    return wait_for(final_states, timeout=60, what="extract-features task runs on the server", every=0.5)


def _assert_same_measurement(sharded: dict, sequential: dict, ratios: bool = True) -> None:
    assert _finite(sharded["values"]) == _finite(sequential["values"])
    expected = {"kid_fallback", "fvd16_fallback", *(["fvd16_fallback_ratio"] if ratios else [])}
    assert expected <= set(sequential["values"])
    assert sharded["baseline"] == sequential["baseline"]
    assert sharded["protocol"]["metrics"] == sequential["protocol"]["metrics"]


@pytest.mark.slow  # the test harness starts a Prefect server (~15 s)
def test_prefect_thread_runner_shards_equal_sequential(trees, tmp_path):
    from support.servers import prefect_api

    from pipelines.ops.scaleout import task_runner

    plan, cfg = _evaluation_inputs(trees, tmp_path)
    sequential = dataset_metrics(plan, cfg)  # the plain function: today's single-process path
    with prefect_api():
        out = _measure.with_options(task_runner=task_runner("thread", 2))(plan, cfg, 2)
        states = _extract_task_states(out["flow_run_id"], 16)
    _assert_same_measurement(out["measured"], sequential)
    # 8 extractions (frames, clips, 2 ratio calls x clips; each real + fake), every one cut into 2 shard tasks
    assert states == ["Completed"] * 16
    assert sorted(p.name for p in plan.samples.parent.iterdir()) == ["toy"]  # no scratch left behind


@pytest.mark.slow
def test_dask_cluster_shards_equal_sequential(trees, tmp_path, monkeypatch):
    from support.servers import dask_behind_prefect

    plan, cfg = _evaluation_inputs(trees, tmp_path, ratios=False)  # 4 extractions x 2 shards: time is server-bound
    sequential = dataset_metrics(plan, cfg)
    with dask_behind_prefect(monkeypatch) as dask:
        out = _measure.with_options(task_runner=dask.runner)(plan, cfg, 2)
        states = _extract_task_states(out["flow_run_id"], 8)
    workers = dask.workers()  # the flow submits only extract-features shards

    assert len(workers) == 2  # both worker processes ran extract-features shards
    assert states == ["Completed"] * 8
    _assert_same_measurement(out["measured"], sequential, ratios=False)
