"""Prefect flow `preprocess`: validate (GX) → prepare → reference, per dataset, fanned out per video.

Thin wiring of echo_core functions: tasks pass paths and small dicts, never tensors. Resumable: each
video's output is reused when its source content hash matches (echo_core.data.jobs), so a re-run
after a crash only redoes the missing videos. Run it:
    echoforge flow preprocess --dataset dynamic
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from echo_core.config import load_params, load_section
from echo_core.data.jobs import finalize, open_staging, read_exclude, run_job
from echo_core.data.prepare import PrepareConfig, plan_prepare
from echo_core.data.reference import ReferenceConfig, plan_reference
from echo_core.errors import DataError
from echo_core.utils.shards import contiguous_shards
from pipelines.flows.common import retry_transient_only
from pipelines.ops.scaleout import runner_from_env, runner_settings


@task(name="validate", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient_only)
def validate_task(kind: str, root: str, out_dir: str, quarantine: bool, prepared: bool = False) -> dict[str, Any]:
    from pipelines.validation import format_report, validate_dataset, write_quarantine

    out = Path(out_dir)
    report = validate_dataset(kind, root, prepared=prepared, docs_dir=out / "data_docs",
                              report_path=out / "report.json", quarantine=quarantine)
    quarantine_csv = write_quarantine(report, out / "quarantine.csv", quarantined=quarantine)
    get_run_logger().info(format_report(report))
    if not report.success:
        raise DataError(f"validation failed for {root}; see {out / 'report.json'}",
                        fix="fix the rows listed above, or re-run with quarantine enabled")
    return {"report": str(out / "report.json"), "quarantine": str(quarantine_csv),
            "bad_rows": len(report.bad_rows)}


# At most this many videos per task: at phantom scale a video costs ~0.1 s and a Prefect task run about as
# much in bookkeeping, so one task per video spent half the time orchestrating (benchmarks/results/prepare.json).
VIDEOS_PER_TASK = 8


@task(name="prepare-videos", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_transient_only)
def prepare_videos_task(jobs: list, staging: str) -> list[dict[str, Any]]:
    """A few videos in a row (each resumable on its own: a retry skips the finished ones)."""
    return [run_job(job, staging) for job in jobs]


def _fan_out(jobs, staging: Path, label: str) -> list[dict[str, Any]]:
    """Submit the videos in small contiguous groups to the flow's bounded pool; progress as an artifact."""
    logger = get_run_logger()
    workers = runner_settings()[1]  # at least two groups per worker keeps every worker busy to the end
    groups = contiguous_shards(len(jobs), max(-(-len(jobs) // VIDEOS_PER_TASK), 2 * workers))
    futures = [prepare_videos_task.submit([jobs[i] for i in group], str(staging)) for group in groups]
    artifact = create_progress_artifact(0.0, description=label)
    results = []
    for future in futures:
        results.extend(future.result())
        update_progress_artifact(artifact, 100.0 * len(results) / len(jobs))
        logger.info("%s: %d/%d videos", label, len(results), len(jobs))
    return results


def prepare_one(name: str, spec: dict[str, Any], out_root: Path, config: PrepareConfig,
                quarantine: bool) -> str:
    """validate (raw) → prepare for one FileList dataset; returns the prepared folder."""
    checked = validate_task(spec["validate_kind"], spec["raw"], str(out_root / "validation" / name), quarantine)
    plan = plan_prepare(spec["kind"], spec["raw"], out_root / "prepared" / name, config=config,
                        exclude=read_exclude(checked["quarantine"]))
    return _finish_prepare(plan, name)


def import_cardiacnet(raw: str, out_root: Path, config: PrepareConfig) -> str:
    """CardiacNet's raw NIfTI tree has no table to validate: convert it, then validate the import."""
    plan = plan_prepare("cardiacnet", raw, out_root / "prepared" / "cardiacnet", config=config)
    return _finish_prepare(plan, "cardiacnet")


def _finish_prepare(plan, name: str) -> str:
    results = _fan_out(plan.jobs, open_staging(plan.dst), f"prepare {name}")
    report = finalize(plan, results)
    get_run_logger().info(report.summary())
    return report.dst


def reference_one(name: str, prepared: str, out_root: Path, config: ReferenceConfig) -> str:
    plan = plan_reference(prepared, out_root / "reference" / name, config=config)
    results = _fan_out(plan.jobs, open_staging(plan.dst), f"reference {name}")
    return finalize(plan, results).dst


@flow(name="preprocess", log_prints=True, task_runner=runner_from_env("thread", workers=2))
def preprocess(datasets: list[str] | None = None, params_path: str = "params.yaml", out_root: str = "outputs",
               quarantine: bool = False) -> dict[str, dict[str, str]]:
    """Validate, prepare and build reference sets for `datasets` (default: all in params.yaml)."""
    params = load_params(params_path)
    prepare_cfg = load_section(PrepareConfig, "prepare", params_path)
    out = Path(out_root)
    done: dict[str, dict[str, str]] = {}
    for name in datasets or list(params["datasets"]):
        spec = params["datasets"].get(name)
        if spec is None:
            raise DataError(f"unknown dataset {name!r}", fix=f"use one of: {', '.join(params['datasets'])}")
        if name in params.get("raw_datasets", {}):
            prepared = prepare_one(name, params["raw_datasets"][name], out, prepare_cfg, quarantine)
        else:
            prepared = import_cardiacnet(params["cardiacnet_raw"], out, prepare_cfg)
        validate_task(spec["validate_kind"], prepared, str(out / "validation" / f"{name}-prepared"), False,
                      prepared=True)
        ref_cfg = ReferenceConfig(**{**params.get("reference", {}), "frames": spec["reference_frames"]})
        done[name] = {"prepared": prepared, "reference": reference_one(name, prepared, out, ref_cfg)}
    return done
