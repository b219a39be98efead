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

Outputs: <metrics_dir>/evaluate.json (flat {"<ds>/<metric>": value}, `dvc metrics show`),
<metrics_dir>/<ds>/metrics.json (values + protocol + downstream reports), <metrics_dir>/plots/<ds>/*.csv
(`dvc plots`), <out_root>/evaluation/<ds>/ (downstream artefacts). One MLflow run (experiment
`echo-evaluate`, tag `model_version`) gets params, metrics and artefacts, and the version gets a
`metric.<name>` tag per value, which `echoforge registry promote` reads. Run it directly:
    python -m pipelines.flows.evaluate --model echo-lvdm --version candidate
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field, model_validator

from echo_core.config import StrictModel, load_params, validate_config
from echo_core.downstream.classification import ClassificationConfig
from echo_core.downstream.regression import RegressionConfig
from echo_core.errors import DataError
from echo_core.generation.conditions import ConditionsConfig
from echo_core.metrics.api import METRICS, RESULT_NAMES, MetricsConfig
from echo_core.utils.atomic import write_json_atomic
from pipelines.flows.common import retry_transient_only
from pipelines.flows.metric_shards import features_on_task_runner
from pipelines.ops.scaleout import runner_from_env, shard_count

EXPERIMENT = "echo-evaluate"
METRIC_TAG = "metric."
Condition = Literal["ef", "class_id"]
# sampling settings that do not change any sample: a folder that differs only in these is reused
_SAMPLE_FREE = {"batch_size", "device", "decode_chunk"}
FRECHET_NAMES = frozenset(name for base, names in RESULT_NAMES.items()
                          if METRICS[base].kind.startswith("frechet") for name in names)
log = logging.getLogger("echoforge.evaluate")


# ---------------------------------------------------------------------------------------------- config


class EvalConditions(StrictModel):
    """`evaluate.conditions`: what the samples are conditioned on, per kind of condition."""

    ef: ConditionsConfig = Field(default_factory=lambda: ConditionsConfig(ef_range=(20.0, 80.0)))
    class_id: ConditionsConfig = Field(default_factory=lambda: ConditionsConfig(class_ids=[0, 1]))


class EvaluateConfig(StrictModel):
    """params.yaml `evaluate:`."""

    datasets: list[str] | None = None  # None → every dataset in `datasets:`
    sample: dict[str, Any] = Field(default_factory=dict)  # overrides of `sample:` for evaluation samples
    conditions: EvalConditions = Field(default_factory=EvalConditions)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    # Fréchet metrics that also get `<name>_ratio` (None = every requested one); each costs two more FDs
    ratio_metrics: list[str] | None = None
    ratio_seed: int = 0  # the seeded split of the reference set into halves A and B
    torch_threads: int = Field(1, ge=1)  # 3D convs on 2 shared cores run ~40x slower with 2 threads

    @model_validator(mode="after")
    def _ratios_of_requested_frechet_metrics(self) -> EvaluateConfig:
        bad = [n for n in self.ratio_metrics or [] if n not in FRECHET_NAMES or n not in self.metrics.metrics]
        if bad:
            raise ValueError(f"ratio_metrics {bad} must be Fréchet metrics listed in metrics.metrics "
                             f"({[n for n in self.metrics.metrics if n in FRECHET_NAMES]})")
        return self


class DownstreamConfig(StrictModel):
    """params.yaml `downstream:`."""

    regression: RegressionConfig = Field(default_factory=RegressionConfig)
    classification: ClassificationConfig = Field(
        default_factory=lambda: ClassificationConfig(train_on="synthetic"))


def load_configs(params_path: str | Path) -> tuple[EvaluateConfig, DownstreamConfig, dict[str, Any]]:
    """(`evaluate:`, `downstream:`, `sample:`) of params.yaml, all validated; absent sections take defaults."""
    params = load_params(params_path)
    cfg = validate_config(EvaluateConfig, params.get("evaluate") or {}, where=f"{params_path}:evaluate")
    downstream = validate_config(DownstreamConfig, params.get("downstream") or {}, where=f"{params_path}:downstream")
    sample_section = params.get("sample") or {}
    sample_config(sample_section, cfg, None)  # a typo in sample: / evaluate.sample fails now, not mid-flow
    return cfg, downstream, sample_section


def dataset_names(params_path: str | Path, cfg: EvaluateConfig, requested: list[str] | None) -> list[str]:
    names = requested or cfg.datasets or list(load_params(params_path).get("datasets") or {})
    if not names:
        raise DataError(f"no dataset to evaluate in {params_path}",
                        fix="set evaluate.datasets (or datasets:) in params.yaml, or pass --dataset")
    return list(dict.fromkeys(names))


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
    from echo_core.models.conditioning import ConditioningConfig
    from echo_core.training.loop import LVDM_CONFIG_FILE
    from pipelines.tracking import get_model_version, resolve_model_folder

    mv = get_model_version(model, str(version))
    folder = resolve_model_folder(f"models:/{model}/{mv.version}")
    train_cfg = json.loads((folder / LVDM_CONFIG_FILE).read_text(encoding="utf-8"))["train"]
    conditioning = ConditioningConfig.model_validate(train_cfg["conditioning"])
    return ModelTarget(model, str(mv.version), mv.run_id, tuple(conditioning.types), vae)


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    prepared: Path
    reference: Path
    latents: Path
    samples: Path
    downstream: Path
    condition: Condition | None


def condition_for(filelist_columns: set[str], model_types: tuple[str, ...]) -> Condition | None:
    """The condition both the dataset carries and the model takes (text models render EF as a prompt)."""
    if "EF" in filelist_columns and {"ef", "text"} & set(model_types):
        return "ef"
    if "class_id" in filelist_columns and "class_id" in model_types:
        return "class_id"
    return None


def plan_dataset(name: str, out_root: Path, target: ModelTarget) -> DatasetPlan:
    from echo_core.data.filelist import read_filelist

    paths = {"prepared": out_root / "prepared" / name, "reference": out_root / "reference" / name,
             "latents": out_root / "latents" / name}
    for what, path in paths.items():
        if not path.is_dir():
            raise DataError(f"dataset {name!r}: {what} folder {path} does not exist",
                            fix="run the pipeline up to `encode` first (`dvc repro encode`)")
    columns = set(read_filelist(paths["prepared"] / "FileList.csv").columns)
    return DatasetPlan(name, **paths, samples=out_root / "samples" / name,
                       downstream=out_root / "evaluation" / name, condition=condition_for(columns, target.types))


# --------------------------------------------------------------------------------------------- sampling


def sample_config(sample_section: dict[str, Any], cfg: EvaluateConfig, condition: Condition | None):
    """`sample:` + `evaluate.sample` overrides + the dataset's conditions; always jpg (metrics) + a video
    format (downstream)."""
    from echo_core.generation.generate import SampleConfig
    from echo_core.generation.writers import VIDEO_FORMATS

    merged = {**sample_section, **cfg.sample}
    merged["conditions"] = getattr(cfg.conditions, condition).model_dump() if condition else {}
    sample = validate_config(SampleConfig, merged, where="sample + evaluate.sample")
    formats = list(sample.formats)
    formats += [f for f in ("jpg",) if f not in formats]
    formats += [] if set(formats) & set(VIDEO_FORMATS) else ["mp4"]
    return sample.model_copy(update={"formats": formats})


@contextlib.contextmanager
def train_conditioning(latents: Path, scratch: Path) -> Iterator[tuple[Path, list[str]]]:
    """(temporary folder of links to the TRAIN-split latents, their sorted file names)."""
    from echo_core.data.filelist import read_filelist

    df = read_filelist(latents / "FileList.csv")
    names = df.loc[df["Split"].astype(str).str.upper() == "TRAIN", "FileName"] if "Split" in df else df["FileName"]
    files = sorted(f"{n}.safetensors" for n in names.astype(str)
                   if (latents / "Latents" / f"{n}.safetensors").is_file())
    if not files:
        raise DataError(f"no TRAIN-split latents in {latents}", fix="re-run `echoforge latents encode` on the "
                        "prepared dataset (its FileList.csv needs Split)")
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".conditioning-", dir=scratch))
    try:
        for name in files:
            (folder / name).symlink_to((latents / "Latents" / name).resolve())
        yield folder, files
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def samples_state(out: Path, sample_cfg, model_id: str, sources: list[str]) -> str:
    """absent | complete | partial (same plan, unfinished) | stale (another model, parameters or sources)."""
    from echo_core.generation.generate import PARAMS_FILE

    path = out / PARAMS_FILE
    if not path.is_file():
        return "absent"
    record = json.loads(path.read_text(encoding="utf-8"))
    wanted = {k: v for k, v in sample_cfg.model_dump(mode="json").items() if k not in _SAMPLE_FREE}
    had = {k: v for k, v in (record.get("config") or {}).items() if k not in _SAMPLE_FREE}
    same = had == wanted and (record.get("model") or {}).get("id") == model_id \
        and record.get("conditioning_files") == sources
    if not same:
        return "stale"
    return "complete" if record.get("status") == "complete" else "partial"


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


def video_tree(reference: Path, into: Path, videos: list[Path] | None = None) -> Path:
    """`into`/<video>/<frame> links to the reference frames: the bare depth-2 tree the metrics read (the
    reference folder also holds manifest.json, which StyleGAN-V's reader would take for a video)."""
    from echo_core.metrics.protocol import image_extensions

    exts = image_extensions()
    for video in videos if videos is not None else sorted(p for p in reference.iterdir() if p.is_dir()):
        (into / video.name).mkdir(parents=True)
        for frame in video.iterdir():
            if frame.suffix.lower() in exts:
                (into / video.name / frame.name).symlink_to(frame.resolve())
    return into


def reference_halves(reference: Path, into: Path, seed: int) -> tuple[Path, Path] | None:
    """Seeded split of the reference videos into video trees A and B; None with fewer than 4 videos."""
    import numpy as np

    videos = sorted(p for p in reference.iterdir() if p.is_dir())
    if len(videos) < 4:
        return None
    order = [videos[i] for i in np.random.default_rng(seed).permutation(len(videos))]
    half = (len(videos) + 1) // 2
    return video_tree(reference, into / "a", order[:half]), video_tree(reference, into / "b", order[half:])


def metric_execution(scratch: Path, shards: int = 1) -> dict[str, Any]:
    """compute_metrics' scratch and fan-out keywords: with shards > 1, feature extraction runs as `extract-features`
    tasks on the flow's task runner (scratch is in the output tree, which the workers share)."""
    return {"scratch": scratch, "feature_map": features_on_task_runner if shards > 1 else None, "shards": shards}


def frechet_ratios(reference: Path, fake: Path, cfg: EvaluateConfig, options, scratch: Path,
                   shards: int = 1) -> dict[str, Any]:
    """{"values": {<name>_ratio, <name>_real_baseline}, "baseline": protocol} for the requested Fréchet metrics."""
    from echo_core.metrics.api import compute_metrics

    names = [n for n in cfg.metrics.metrics if n in FRECHET_NAMES] if cfg.ratio_metrics is None \
        else cfg.ratio_metrics
    if not names:
        return {"values": {}, "baseline": None}
    with tempfile.TemporaryDirectory(prefix=".halves-", dir=scratch) as tmp:
        halves = reference_halves(reference, Path(tmp), cfg.ratio_seed)
        if halves is None:
            _info(f"{reference}: fewer than 4 reference videos, no real-vs-real baseline")
            return {"values": {}, "baseline": None}
        real_a, real_b = halves
        fake_a = compute_metrics(real_a, fake, names, options, **metric_execution(scratch, shards))
        real_ba = compute_metrics(real_a, real_b, names, options, **metric_execution(scratch, shards))
    values = {}
    for name in names:
        values[f"{name}_real_baseline"] = real_ba.values[name]
        values[f"{name}_ratio"] = _ratio(fake_a.values[name], real_ba.values[name])
    baseline = {"definition": "ratio = FD(generated, real half A) / FD(real half B, real half A)",
                "seed": cfg.ratio_seed, "generated_vs_a": {n: fake_a.values[n] for n in names},
                "real_b_vs_a": {n: real_ba.values[n] for n in names},
                "n": {n: {"a": real_ba.protocol["metrics"][n]["n_real"], "b": real_ba.protocol["metrics"][n]["n_fake"],
                          "generated": fake_a.protocol["metrics"][n]["n_fake"]} for n in names}}
    return {"values": values, "baseline": baseline}


def _ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 and math.isfinite(baseline) else math.nan


def dataset_metrics(plan: DatasetPlan, cfg: EvaluateConfig, shards: int = 1) -> dict[str, Any]:
    """{"values": flat metrics, "protocol", "baseline"} between the reference set and the samples' jpg tree;
    `shards` > 1 fans feature extraction out over the flow's task runner (same values)."""
    from echo_core.metrics.api import MetricsOptions, compute_metrics

    options = MetricsOptions(**cfg.metrics.model_dump(exclude={"metrics"}))
    fake = plan.samples / "jpg"
    plan.samples.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".reference-", dir=plan.samples.parent) as tmp:
        result = compute_metrics(video_tree(plan.reference, Path(tmp) / plan.name), fake, cfg.metrics.metrics,
                                 options, **metric_execution(plan.samples.parent, shards))
    ratios = frechet_ratios(plan.reference, fake, cfg, options, plan.samples.parent, shards)
    return {"values": {**result.values, **ratios["values"]}, "protocol": result.protocol,
            "baseline": ratios["baseline"]}


# ------------------------------------------------------------------------------------------- downstream


class PrefixedTracker:
    """One dataset's view of the shared evaluation run: its metrics, params and artefacts are namespaced."""

    def __init__(self, inner, prefix: str):
        self.inner, self.prefix = inner, prefix

    def log_params(self, params: dict[str, Any]) -> None:
        self.inner.log_params({self.prefix: params})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.inner.log_metrics({f"{self.prefix}/{k}": v for k, v in metrics.items()}, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, f"{self.prefix}/{artifact_path}" if artifact_path else self.prefix)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.inner.set_tags({f"{self.prefix}.{k}": v for k, v in tags.items()})


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def dataset_downstream(plan: DatasetPlan, cfg: DownstreamConfig, threads: int, tracker) -> dict[str, Any]:
    """EF regression (EF conditions) or classification (class conditions) → {"values", "report", "plots"}."""
    from echo_core.downstream.classification import run_classification
    from echo_core.downstream.regression import run_ef_regression

    if plan.condition is None:
        return {"values": {}, "report": None, "plots": {}}
    with torch_threads(threads):
        if plan.condition == "ef":
            report = run_ef_regression(cfg.regression, plan.samples, plan.prepared, tracker=tracker,
                                       out_dir=plan.downstream / "regression")
            return {"values": regression_values(report), "report": report.to_dict(),
                    "plots": regression_plots(report)}
        report = run_classification(cfg.classification, plan.prepared, plan.samples, tracker=tracker,
                                    out_dir=plan.downstream / "classification")
    return {"values": classification_values(report), "report": report.to_dict(),
            "plots": classification_plots(report, cfg.classification.train_on)}


def regression_values(report) -> dict[str, float]:
    values = {}
    for evaluation in ("synthetic_to_real", "real_to_real", "adherence"):
        for key in ("r2", "mae"):
            values[f"ef_{evaluation}_{key}"] = float((getattr(report, evaluation) or {}).get(key, math.nan))
    return values


def classification_values(report) -> dict[str, float]:
    return {f"cls_{name}": float(stats["mean"]) for name, stats in report.summary.items()}


def regression_plots(report) -> dict[str, Any]:
    """loss_curve: epoch × <model>_{train,val}_loss; ef_predictions: evaluation, true_ef, predicted_ef."""
    history = report.history.pivot_table(index="epoch", columns="model", values=["train_loss", "val_loss"],
                                         dropna=False)
    history.columns = [f"{model}_{loss}" for loss, model in history.columns]
    return {"loss_curve.csv": history.reset_index(),
            "ef_predictions.csv": report.predictions[["evaluation", "true_ef", "predicted_ef"]]}


def classification_plots(report, train_on: str) -> dict[str, Any]:
    """loss_curve: epoch × <train_on>_{train,val}_loss (mean over folds); confusion_matrix: actual, predicted."""
    history = report.history.groupby("epoch", as_index=False)[["train_loss", "val_loss"]].mean()
    history = history.rename(columns={"train_loss": f"{train_on}_train_loss", "val_loss": f"{train_on}_val_loss"})
    return {"loss_curve.csv": history, "confusion_matrix.csv": report.predictions[["actual", "predicted"]]}


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


def flat_metrics(per_dataset: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"<ds>/<metric>": value}, finite values only (JSON and MLflow have no NaN)."""
    return {f"{ds}/{name}": float(value) for ds, values in per_dataset.items() for name, value in values.items()
            if value is not None and math.isfinite(float(value))}


def tag_model_version(target: ModelTarget, metrics: dict[str, float], run_id: str) -> None:
    """Replace the version's `metric.*` tags with this evaluation's values (stale ones would fool the gate)."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    old = client.get_model_version(target.name, target.version).tags or {}
    for key in old:
        if key.startswith(METRIC_TAG) and key.removeprefix(METRIC_TAG) not in metrics:
            client.delete_model_version_tag(target.name, target.version, key)
    for name, value in metrics.items():
        client.set_model_version_tag(target.name, target.version, f"{METRIC_TAG}{name}", repr(value))
    client.set_model_version_tag(target.name, target.version, "evaluation_run_id", run_id)


# --------------------------------------------------------------------------------------------- wiring


def sample_for_evaluation(model: str = "echo-lvdm", version: str = "candidate", datasets: list[str] | None = None,
                          params_path: str = "params.yaml", out_root: str = "outputs",
                          vae: str | None = None) -> dict[str, dict[str, Any]]:
    """Only step 1 (the DVC `sample` stage): the same samples `run_evaluation` would make, which it then reuses."""
    cfg, _, sample_section = load_configs(params_path)
    target = resolve_target(model, str(version), vae)
    results = {}
    for name in dataset_names(params_path, cfg, datasets):
        plan = plan_dataset(name, Path(out_root), target)
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
    from pipelines.tracking import git_commit, start_run

    cfg, down_cfg, sample_section = load_configs(params_path)
    target = step(resolve_target)(model, str(version), vae)
    root, mdir = Path(out_root), Path(metrics_dir)
    plans = [plan_dataset(name, root, target) for name in dataset_names(params_path, cfg, datasets)]
    tags = {"model_name": target.name, "model_version": target.version, "model_uri": target.uri,
            "model_run_id": target.run_id or "", "git_commit": git_commit()}
    per_dataset, summaries = {}, {}
    with start_run(EXPERIMENT, run_name=f"evaluate-{target.name}-v{target.version}", tags=tags) as tracker:
        tracker.log_params({"evaluate": cfg.model_dump(mode="json"), "downstream": down_cfg.model_dump(mode="json"),
                            "datasets": [p.name for p in plans]})
        for plan in plans:
            sample_cfg = sample_config(sample_section, cfg, plan.condition)
            tracker.log_params({plan.name: {"sample": sample_cfg.model_dump(mode="json"), "condition": plan.condition}})
            sampled = step(sample_dataset)(plan, target, sample_cfg)
            measured = step(dataset_metrics)(plan, cfg, shards)
            downstream = step(dataset_downstream)(plan, down_cfg, cfg.torch_threads,
                                                  PrefixedTracker(tracker, plan.name))
            per_dataset[plan.name] = {**measured["values"], **downstream["values"]}
            for path in write_dataset_outputs(mdir, plan, target, measured, downstream, sampled):
                tracker.log_artifact(path, f"metrics/{plan.name}")
            for name in ("FileList.csv", "generation_params.json"):
                tracker.log_artifact(plan.samples / name, f"samples/{plan.name}")
            summaries[plan.name] = {"condition": plan.condition, "samples": sampled}
        metrics = flat_metrics(per_dataset)
        write_json_atomic(mdir / "evaluate.json", dict(sorted(metrics.items())))
        tracker.log_metrics(metrics)
        tracker.log_artifact(mdir / "evaluate.json", "metrics")
        run_id = tracker.run_id
    tag_model_version(target, metrics, run_id)
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
    # no retry: training is not transient IO, and a retry would double the run's epoch metrics
    dataset_downstream: task(_on_gpu(dataset_downstream), name="downstream", cache_policy=NO_CACHE),
}


@flow(name="evaluate", log_prints=True, task_runner=runner_from_env("thread", workers=2))
def evaluate(model: str = "echo-lvdm", version: str = "candidate", datasets: list[str] | None = None,
             params_path: str = "params.yaml", out_root: str = "outputs", metrics_dir: str = "metrics",
             vae: str | None = None, shards: int | None = None) -> dict[str, Any]:
    """Sample, measure and track one registered model version (see the module docstring). `shards`: metric
    feature extraction cut into that many tasks on the flow's task runner (None: pipelines.ops.scaleout)."""
    return run_evaluation(model, str(version), datasets, params_path, out_root, metrics_dir, vae,
                          step=TASKS.__getitem__, shards=shard_count(shards))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="echo-lvdm")
    parser.add_argument("--version", default="candidate", help="version number or alias")
    parser.add_argument("--dataset", action="append")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-root", default="outputs")
    parser.add_argument("--metrics-dir", default="metrics")
    parser.add_argument("--vae", default=None)
    parser.add_argument("--shards", type=int, default=None, help="metric feature-extraction shards")
    args = parser.parse_args()
    result = evaluate(args.model, args.version, args.dataset, args.params, args.out_root, args.metrics_dir, args.vae,
                      args.shards)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
