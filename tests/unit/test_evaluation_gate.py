"""The promotion gate's pure decision (echo_core.evaluation.gate): plain dicts in, reasons out."""

from __future__ import annotations

import math

import pytest

from echo_core.evaluation.gate import PromotionConfig, gate_failures


def test_gate_failures_lists_every_problem():
    gate = PromotionConfig.model_validate({"metric_thresholds": {"fvd": {"max": 5}, "acc": {"min": 0.5},
                                                                 "mae": {"max": 3}},
                                           "require_metrics": ["fvd", "mae"]})
    assert gate_failures({"fvd": 4.0, "acc": 0.9, "mae": 1.0}, gate) == []
    assert gate_failures({"fvd": 6.0, "acc": 0.1}, gate) == ["mae: missing", "fvd: 6 > max 5", "acc: 0.1 < min 0.5"]


def test_a_required_metric_without_a_bound_is_refused():
    """The audit's finding: `ef_adherence_mae` was required with no bound, so any value passed."""
    with pytest.raises(ValueError, match=r"require_metrics \['dynamic/ef_adherence_mae'\] have no bound"):
        PromotionConfig.model_validate({"require_metrics": ["dynamic/ef_adherence_mae"]})


def test_the_verdict_gate_promotes_only_when_every_dataset_passes():
    gate = PromotionConfig(require_verdict=True)
    assert gate_failures({}, gate, {"dynamic": ("pass", "")}) == []
    assert gate_failures({}, gate, {}) == [
        "no evaluation verdict recorded on this version: evaluate it (`echoforge evaluate run`)"]
    failures = gate_failures({}, gate, {"dynamic": ("pass", ""), "cardiacnet": ("inconclusive", "judge below bar"),
                                        "ped": ("fail", "fd 3.1 > max 1.5")})
    assert failures == ["cardiacnet: verdict inconclusive (judge below bar)", "ped: verdict fail (fd 3.1 > max 1.5)"]
    assert gate_failures({}, PromotionConfig(), {"dynamic": ("fail", "x")}) == []  # verdicts only when required


def test_nan_never_passes_a_bound_and_an_empty_gate_passes_anything():
    gate = PromotionConfig.model_validate({"metric_thresholds": {"ratio": {"min": 0.0, "max": 2.0}}})
    assert gate_failures({"ratio": math.nan}, gate) == ["ratio: nan > max 2", "ratio: nan < min 0"]
    assert gate_failures({}, PromotionConfig()) == []


def test_a_typo_in_the_gate_is_refused():
    with pytest.raises(ValueError, match="maximum"):
        PromotionConfig.model_validate({"metric_thresholds": {"fvd": {"maximum": 5}}})
