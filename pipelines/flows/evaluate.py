"""Prefect flow `evaluate`: a registered model version → samples → metrics + downstream → MLflow + DVC files.

For each dataset (params.yaml `evaluate.datasets`):
1. sample: the version generates `evaluate.sample` videos into <out_root>/samples/<ds>, conditioned on frames
   of the dataset's TRAIN-split latents only (a TEST video's frame would leak into the downstream test), with
   conditions chosen from the model's conditioning config: EF for EF/text models on EF datasets, classes for
   class models on class datasets, none otherwise. A folder already made by the same version with the same
   parameters is reused without loading the model; a half-made one is resumed; one made by another
   version or other parameters is replaced (it is a pure function of the two).
2. metrics: `evaluate.metrics` between <out_root>/reference/<ds> and the samples, plus, for every Fréchet
   metric, `<name>_ratio` = FD(samples, real half A) / FD(real half B, real half A): how far the samples are
   from real videos relative to how far other real videos are (≈1 = indistinguishable at this N; scale-free,
   so one gate threshold works for any extractor and sample size).
3. downstream: EF regression (`downstream.regression`) for EF conditions, classification
   (`downstream.classification`) for class conditions, with torch on `evaluate.torch_threads` threads.
4. verdict: the samples judged as any folder is (`echoforge evaluate samples`, `evaluate.assess`): every
   metric with a video-level bootstrap CI, ratios at equal N, EF adherence by the dataset's EF judge, and
   pass / fail / inconclusive. <metrics_dir>/<ds>/assessment.json, `gate/*` metrics, and the version's
   `verdict.<ds>` / `verdict_reasons.<ds>` tags, which the gate reads when `promotion.require_verdict`,
   and `judge.ef.<ds>` (the EF judge file's sha256 prefix, its held-out R², its registered version).

Outputs: <metrics_dir>/evaluate.json (flat {"<ds>/<metric>": value}, `dvc metrics show`),
<metrics_dir>/<ds>/metrics.json (values + protocol + downstream reports), <metrics_dir>/plots/<ds>/*.csv
(`dvc plots`), <out_root>/evaluation/<ds>/ (downstream artefacts). One MLflow run (experiment
`echo-evaluate`, tag `model_version`) gets params, metrics and artefacts, and the version gets a
`metric.<name>` tag per value, which `echoforge registry promote` reads. The maths and configs live in
echo_core.evaluation; this module wires them into tasks. Run it:
    echoforge flow evaluate --model echo-lvdm --version candidate
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from echo_core.evaluation.assess import flat_estimates
from echo_core.evaluation.config import EvaluateConfig, dataset_names, load_configs, sample_config
from echo_core.evaluation.plan import DatasetPlan, plan_dataset, samples_state, train_conditioning
from echo_core.evaluation.ratios import measure_samples
from echo_core.evaluation.summary import flat_metrics, run_downstream
from echo_core.utils.atomic import write_json_atomic
from pipelines.flows.common import retry_transient_only
from pipelines.flows.metric_shards import features_on_task_runner
from pipelines.ops.scaleout import runner_from_env, shard_count

EXPERIMENT = "echo-evaluate"
log = logging.getLogger("echoforge.evaluate")


# ------------------------------------------------------------------------------------- model and data


@dataclass(frozen=True)
class ModelTarget:
    """One registered version, pinned by number (an alias that moves mid-evaluation cannot mix versions)."""

    name: str
    version: str
    run_id: str | None
    types: tuple[str, ...]  # conditioning types of the model
    vae: str | None = None  # VAE for a bare LVDM version (a serving bundle carries its own)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.version}"  # what `run_sampling` records as the samples' model id


def resolve_target(model: str, version: str, vae: str | None = None) -> ModelTarget:
    """`model` at `version` (number or alias) pinned by number, with the conditioning types it takes."""
    from echo_core.models.conditioning import ConditioningConfig
    from echo_core.models.lvdm import LVDM_CONFIG_FILE
    from pipelines.registry import get_model_version, resolve_model_folder

    mv = get_model_version(model, str(version))
    folder = resolve_model_folder(f"models:/{model}/{mv.version}")
    train_cfg = json.loads((folder / LVDM_CONFIG_FILE).read_text(encoding="utf-8"))["train"]
    conditioning = ConditioningConfig.model_validate(train_cfg["conditioning"])
    return ModelTarget(model, str(mv.version), mv.run_id, tuple(conditioning.types), vae)


# --------------------------------------------------------------------------------------------- sampling


def sample_dataset(plan: DatasetPlan, target: ModelTarget, sample_cfg) -> dict[str, Any]:
    """Make (or reuse) the evaluation samples of one dataset; → {"out", "state", "generated", "skipped"}."""
    from pipelines.flows.sample import run_sampling

    with train_conditioning(plan.latents, plan.samples.parent) as (cond_dir, sources):
        state = samples_state(plan.samples, sample_cfg, target.model_id, sources)
        if state == "complete":
            _info(f"{plan.name}: reusing {plan.samples} (same version and parameters)")
            return {"out": str(plan.samples), "state": state, "generated": 0, "skipped": sample_cfg.num_samples}
        if state == "stale":
            _info(f"{plan.name}: {plan.samples} was made by another version or other parameters; replacing it")
            shutil.rmtree(plan.samples)
        report = run_sampling(target.uri, plan.samples, sample_cfg, conditioning=str(cond_dir), vae=target.vae,
                              track=False, on_batch=lambda done, todo: _info(f"{plan.name}: {done}/{todo} samples"))
    return {"out": str(plan.samples), "state": state, "generated": report.generated, "skipped": report.skipped}


# ---------------------------------------------------------------------------------------------- metrics


def dataset_metrics(plan: DatasetPlan, cfg: EvaluateConfig, shards: int = 1) -> dict[str, Any]:
    """echo_core.evaluation.ratios.measure_samples; `shards` > 1 fans feature extraction out as
    `extract-features` tasks on the flow's task runner (same values)."""
    return measure_samples(plan, cfg, features_on_task_runner if shards > 1 else None, shards)


def assess_dataset(plan: DatasetPlan, cfg: EvaluateConfig, out_root: str, target: ModelTarget) -> dict[str, Any]:
    """The samples judged exactly as `echoforge evaluate samples` judges any folder: metrics with CIs and a
    verdict (its --out JSON). The version gets a `judge.ef.<ds>` tag naming the EF judge file that judged it."""
    from echo_core.evaluation.assess import assess_samples
    from echo_core.evaluation.judge_file import JUDGE_FILE
    from pipelines.judge_registry import record_judge_use

    assessed = assess_samples(plan.samples, Path(out_root), plan.name, cfg.assess).to_dict()
    record_judge_use(target.name, target.version, plan.name, Path(out_root) / "judges" / plan.name / JUDGE_FILE)
    return assessed


# ----------------------------------------------------------------------------------------------- outputs


def write_dataset_outputs(metrics_dir: Path, plan: DatasetPlan, target: ModelTarget, measured: dict[str, Any],
                          downstream: dict[str, Any], sampled: dict[str, Any]) -> list[Path]:
    """<metrics_dir>/<ds>/metrics.json and <metrics_dir>/plots/<ds>/*.csv (atomic); returns the paths."""
    from echo_core.downstream.plots import json_safe, write_csv

    path = metrics_dir / plan.name / "metrics.json"
    write_json_atomic(path, json_safe({
        **measured["values"], **downstream["values"], "model": {"name": target.name, "version": target.version},
        "condition": plan.condition, "samples": sampled, "protocol": measured["protocol"],
        "baseline": measured["baseline"], "downstream": downstream["report"]}))
    plots = metrics_dir / "plots" / plan.name
    return [path] + [write_csv(df, plots / name) for name, df in downstream["plots"].items()]


# --------------------------------------------------------------------------------------------- wiring


def sample_for_evaluation(model: str = "echo-lvdm", version: str = "candidate", datasets: list[str] | None = None,
                          params_path: str = "params.yaml", out_root: str = "outputs",
                          vae: str | None = None) -> dict[str, dict[str, Any]]:
    """Only step 1 (the DVC `sample` stage): the same samples `run_evaluation` would make, which it then reuses."""
    cfg, _, sample_section = load_configs(params_path)
    target = resolve_target(model, str(version), vae)
    results = {}
    for name in dataset_names(params_path, cfg, datasets):
        plan = plan_dataset(name, Path(out_root), target.types)
        results[name] = sample_dataset(plan, target, sample_config(sample_section, cfg, plan.condition))
    return results


def _direct(fn: Callable) -> Callable:
    return fn


def run_evaluation(model: str = "echo-lvdm", version: str = "candidate", datasets: list[str] | None = None,
                   params_path: str = "params.yaml", out_root: str = "outputs", metrics_dir: str = "metrics",
                   vae: str | None = None, *, step: Callable[[Callable], Callable] = _direct,
                   shards: int = 1) -> dict[str, Any]:
    """The whole evaluation (module docstring). `step` wraps each unit of work (the flow makes them tasks);
    `shards` > 1 (inside a flow only) fans metric feature extraction out over the flow's task runner."""
    from pipelines.registry import set_metric_tags, set_verdict_tags
    from pipelines.tracking import PrefixedTracker, git_commit, start_run

    cfg, down_cfg, sample_section = load_configs(params_path)
    target = step(resolve_target)(model, str(version), vae)
    root, mdir = Path(out_root), Path(metrics_dir)
    plans = [plan_dataset(name, root, target.types) for name in dataset_names(params_path, cfg, datasets)]
    tags = {"model_name": target.name, "model_version": target.version, "model_uri": target.uri,
            "model_run_id": target.run_id or "", "git_commit": git_commit()}
    per_dataset, summaries, verdicts = {}, {}, {}
    with start_run(EXPERIMENT, run_name=f"evaluate-{target.name}-v{target.version}", tags=tags) as tracker:
        tracker.log_params({"evaluate": cfg.model_dump(mode="json"), "downstream": down_cfg.model_dump(mode="json"),
                            "datasets": [p.name for p in plans]})
        for plan in plans:
            sample_cfg = sample_config(sample_section, cfg, plan.condition)
            tracker.log_params({plan.name: {"sample": sample_cfg.model_dump(mode="json"), "condition": plan.condition}})
            sampled = step(sample_dataset)(plan, target, sample_cfg)
            measured = step(dataset_metrics)(plan, cfg, shards)
            downstream = step(run_downstream)(plan, down_cfg, cfg.torch_threads, PrefixedTracker(tracker, plan.name))
            assessed = step(assess_dataset)(plan, cfg, out_root, target)
            write_json_atomic(mdir / plan.name / "assessment.json", assessed)
            tracker.log_artifact(mdir / plan.name / "assessment.json", f"metrics/{plan.name}")
            verdicts[plan.name] = (assessed["verdict"], "; ".join(assessed["failures"] + assessed["inconclusive"]))
            per_dataset[plan.name] = {**measured["values"], **downstream["values"], **flat_estimates(assessed)}
            for path in write_dataset_outputs(mdir, plan, target, measured, downstream, sampled):
                tracker.log_artifact(path, f"metrics/{plan.name}")
            for name in ("FileList.csv", "generation_params.json"):
                tracker.log_artifact(plan.samples / name, f"samples/{plan.name}")
            summaries[plan.name] = {"condition": plan.condition, "samples": sampled}
        metrics = flat_metrics(per_dataset)
        write_json_atomic(mdir / "evaluate.json", dict(sorted(metrics.items())))
        tracker.log_metrics(metrics)
        tracker.log_artifact(mdir / "evaluate.json", "metrics")
        tracker.set_tags({f"verdict.{ds}": v for ds, (v, _) in verdicts.items()})
        run_id = tracker.run_id
    set_metric_tags(target.name, target.version, metrics, run_id)
    set_verdict_tags(target.name, target.version, verdicts)
    _info(f"evaluated {target.uri} on {', '.join(summaries)}: run {run_id}, {len(metrics)} metrics")
    return {"model": target.name, "version": target.version, "run_id": run_id, "metrics": metrics,
            "datasets": summaries}


def _info(message: str) -> None:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().info(message)
    except MissingContextError:  # plain function call (CLI, tests): no flow run
        log.info(message)


def _on_gpu(fn: Callable) -> Callable:
    """`fn` holding a slot of the Prefect `gpu` limit (one GPU job per card; no-op where no limit exists)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from pipelines.ops.concurrency import gpu_slot

        with gpu_slot():
            return fn(*args, **kwargs)

    return run


_TASK_OPTIONS = {"cache_policy": NO_CACHE, "retries": 1, "retry_delay_seconds": 5,
                 "retry_condition_fn": retry_transient_only}
TASKS: dict[Callable, Callable] = {
    resolve_target: task(resolve_target, name="resolve-model-version", **_TASK_OPTIONS),
    sample_dataset: task(_on_gpu(sample_dataset), name="sample-dataset", **_TASK_OPTIONS),
    dataset_metrics: task(dataset_metrics, name="generative-metrics", **_TASK_OPTIONS),
    assess_dataset: task(assess_dataset, name="assess-samples", **_TASK_OPTIONS),
    # no retry: training is not transient IO, and a retry would double the run's epoch metrics
    run_downstream: task(_on_gpu(run_downstream), name="downstream", cache_policy=NO_CACHE),
}


@flow(name="evaluate", log_prints=True, task_runner=runner_from_env("thread", workers=2))
def evaluate(model: str = "echo-lvdm", version: str = "candidate", datasets: list[str] | None = None,
             params_path: str = "params.yaml", out_root: str = "outputs", metrics_dir: str = "metrics",
             vae: str | None = None, shards: int | None = None) -> dict[str, Any]:
    """Sample, measure and track one registered model version (see the module docstring). `shards`: metric
    feature extraction cut into that many tasks on the flow's task runner (None: pipelines.ops.scaleout)."""
    return run_evaluation(model, str(version), datasets, params_path, out_root, metrics_dir, vae,
                          step=TASKS.__getitem__, shards=shard_count(shards))
