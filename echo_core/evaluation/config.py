"""Typed configs of an evaluation: params.yaml `evaluate:` and `downstream:`, and the samples they ask for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from echo_core.config import StrictModel, load_params, validate_config
from echo_core.downstream.classification import ClassificationConfig
from echo_core.downstream.regression import RegressionConfig
from echo_core.errors import DataError
from echo_core.evaluation.assess import AssessConfig
from echo_core.generation.conditions import ConditionsConfig
from echo_core.metrics.api import METRICS, RESULT_NAMES, MetricsConfig

Condition = Literal["ef", "class_id"]
FRECHET_NAMES = frozenset(name for base, names in RESULT_NAMES.items()
                          if METRICS[base].kind.startswith("frechet") for name in names)


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
    assess: AssessConfig = Field(default_factory=AssessConfig)  # metrics with CIs and the verdict of a folder

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
    """`requested`, else `evaluate.datasets`, else every dataset of params.yaml (duplicates dropped)."""
    names = requested or cfg.datasets or list(load_params(params_path).get("datasets") or {})
    if not names:
        raise DataError(f"no dataset to evaluate in {params_path}",
                        fix="set evaluate.datasets (or datasets:) in params.yaml, or pass --dataset")
    return list(dict.fromkeys(names))


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
