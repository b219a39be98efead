"""Metric feature extraction fanned out over the flow's Prefect task runner: one `extract-features` task per shard.

`compute_metrics(..., feature_map=features_on_task_runner, shards=n)` cuts every extraction (one extractor, one
side) into n contiguous, batch-aligned shards; each shard is a task that rebuilds the extractor in its own
process (once per process) and writes its features atomically under the call's scratch folder, which must be
shared with the workers. The calling process streams the shards back in order, so the values are bitwise those
of the sequential path.

Prefect 3.8 `Task.submit` sends a task to `FlowRunContext.task_runner`; a task called directly in the flow (like
`generative-metrics`) runs in the flow's thread and context, so the shards it submits go to the flow's runner
(a task that was itself *submitted* to Dask or a process pool would get a fresh duplicate runner instead).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from echo_core.metrics.shards import ExtractionJob, run_extraction_job
from pipelines.flows.common import retry_transient_only, run_shards


@task(name="extract-features", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_transient_only)
def extract_features(job: ExtractionJob) -> str:
    """One shard's features -> job.out (.npy, atomic); a retry rewrites the whole file."""
    return run_extraction_job(job)


def features_on_task_runner(jobs: list[ExtractionJob]) -> list[str]:
    """compute_metrics' `feature_map`: every job a task on the current flow's task runner; paths in job order."""
    label = jobs[0].label.rsplit(" ", 1)[0] if jobs else "features"
    return run_shards(extract_features, [(job,) for job in jobs], f"extract {label}")
