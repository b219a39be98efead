"""The promotion gate's pure decision: do a version's metrics pass params.yaml `promotion:`?"""

from __future__ import annotations

from pydantic import Field

from echo_core.config import StrictModel


class Threshold(StrictModel):
    min: float | None = None
    max: float | None = None


class PromotionConfig(StrictModel):
    """`promotion:` in params.yaml."""

    metric_thresholds: dict[str, Threshold] = Field(default_factory=dict)
    require_metrics: list[str] = Field(default_factory=list)


def gate_failures(metrics: dict[str, float], gate: PromotionConfig) -> list[str]:
    """Every reason `metrics` fail the gate (empty = pass); a missing metric fails when required or bounded."""
    failures = [f"{name}: missing" for name in gate.require_metrics if name not in metrics]
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
