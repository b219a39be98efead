"""The promotion gate's pure decision: do a version's verdicts and metrics pass params.yaml `promotion:`?

The verdict of a dataset is the interval gate of `echo_core.evaluation.assess` (every metric with its
bootstrap CI against `evaluate.assess.bounds`), recorded on the version by the evaluate flow. Point thresholds
on single numbers remain for metrics the assessment does not cover; each required metric needs a bound.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from echo_core.config import StrictModel


class Threshold(StrictModel):
    min: float | None = None
    max: float | None = None


class PromotionConfig(StrictModel):
    """`promotion:` in params.yaml."""

    require_verdict: bool = False  # every evaluated dataset's verdict must be "pass" (and one must exist)
    metric_thresholds: dict[str, Threshold] = Field(default_factory=dict)
    require_metrics: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _required_metrics_are_bounded(self) -> PromotionConfig:
        # a required metric without a bound only has to exist: any value, however bad, would pass
        unbounded = [n for n in self.require_metrics if n not in self.metric_thresholds]
        if unbounded:
            raise ValueError(f"require_metrics {unbounded} have no bound in metric_thresholds; give each a "
                             "{min|max: ...} (or judge them with evaluate.assess.bounds and require_verdict)")
        return self


def verdict_failures(verdicts: dict[str, tuple[str, str]]) -> list[str]:
    """Reasons the recorded verdicts ({dataset: (verdict, reasons)}) block promotion (empty = all pass)."""
    if not verdicts:
        return ["no evaluation verdict recorded on this version: evaluate it (`echoforge evaluate run`)"]
    return [f"{ds}: verdict {verdict}" + (f" ({reasons})" if reasons else "")
            for ds, (verdict, reasons) in sorted(verdicts.items()) if verdict != "pass"]


def gate_failures(metrics: dict[str, float], gate: PromotionConfig,
                  verdicts: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """Every reason a version fails the gate (empty = pass): its verdicts when `require_verdict`, then its
    metrics; a missing metric fails when required or bounded."""
    failures = verdict_failures(verdicts or {}) if gate.require_verdict else []
    failures += [f"{name}: missing" for name in gate.require_metrics if name not in metrics]
    for name, bound in gate.metric_thresholds.items():
        if name not in metrics:
            if name not in gate.require_metrics:
                failures.append(f"{name}: missing")
            continue
        value = metrics[name]
        if bound.max is not None and not value <= bound.max:
            failures.append(f"{name}: {value:.6g} > max {bound.max:g}")
        if bound.min is not None and not value >= bound.min:
            failures.append(f"{name}: {value:.6g} < min {bound.min:g}")
    return failures
