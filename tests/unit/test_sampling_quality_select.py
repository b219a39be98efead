"""The "fastest setting at equal quality" rule of benchmarks/sampling_quality.py on hand-made tables."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from support import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    path = REPO_ROOT / "benchmarks" / "sampling_quality.py"
    spec = importlib.util.spec_from_file_location("sampling_quality_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass resolves its string annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def est(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "ci_low": low, "ci_high": high, "n": 8}


def row(setting: str, seconds: float, **metrics) -> dict:
    return {"setting": setting, "seconds": {"median": seconds}, "metrics": metrics}


REF = {"fvd16_fallback_ratio": est(1.2, 1.0, 1.4), "ef_adherence_mae": est(5.0, 4.0, 6.0)}


def test_fastest_overlapping_setting_wins_and_a_faster_non_overlapping_one_does_not(bench):
    rows = [row("ddpm-64", 100.0, **REF),
            row("dpmpp_2m-10", 20.0, fvd16_fallback_ratio=est(1.3, 1.1, 1.5), ef_adherence_mae=est(5.5, 4.5, 6.5)),
            row("euler-4", 10.0, fvd16_fallback_ratio=est(1.5, 1.39, 1.6), ef_adherence_mae=est(6.5, 6.0, 7.0)),
            # faster still, but EF adherence is off: equality needs EVERY metric
            row("euler-1", 2.0, fvd16_fallback_ratio=est(1.2, 1.0, 1.4), ef_adherence_mae=est(20.0, 15.0, 25.0))]
    choice = bench.fastest_at_equal_quality(rows)
    assert choice == {"setting": "euler-4", "speedup": 10.0}


def test_a_metric_the_candidate_lacks_is_not_equal(bench):
    rows = [row("ddpm-64", 100.0, **REF),
            row("euler-1", 2.0, fvd16_fallback_ratio=est(1.2, 1.0, 1.4),
                ef_adherence_mae={"value": None, "ci_low": None, "ci_high": None})]
    assert bench.fastest_at_equal_quality(rows) == {"setting": "ddpm-64", "speedup": 1.0}


def test_a_reference_that_measured_nothing_gives_no_speedup(bench):
    rows = [row("ddpm-64", 100.0), row("euler-1", 2.0, **REF)]
    assert bench.fastest_at_equal_quality(rows) == {"setting": None, "speedup": None}


def test_only_metrics_the_reference_measured_are_compared(bench):
    reference = {**REF, "ef_adherence_pearson": {"value": None, "ci_low": None, "ci_high": None}}
    assert bench.compared_metrics(reference) == ["fvd16_fallback_ratio", "ef_adherence_mae"]
    assert bench.equal_quality({**REF}, reference)


def test_controls_that_pass_the_equality_test_are_named(bench):
    controls = [{"control": "positive", "metrics": REF},  # real videos: equal is expected, never listed
                {"control": "motionless", "metrics": {**REF, "fvd16_fallback_ratio": est(3.0, 2.5, 3.5)}},
                {"control": "ef_permuted", "metrics": {**REF, "ef_adherence_mae": est(5.9, 5.5, 7.0)}}]
    assert bench.controls_passing(controls, REF) == ["ef_permuted"]


def test_touching_intervals_overlap_and_disjoint_ones_do_not(bench):
    assert bench.overlaps(est(1, 0, 1), est(2, 1, 3))
    assert not bench.overlaps(est(1, 0, 0.99), est(2, 1, 3))
    assert not bench.overlaps(None, est(2, 1, 3))


def test_control_power_counts_only_detections_on_the_worse_side(bench):
    ref = {"fvd16_fallback_ratio": est(1.5, 1.0, 1.8), "ef_adherence_mae": est(40.0, 30.0, 54.0),
           "ef_adherence_pearson": est(0.1, -0.5, 0.7)}
    controls = [{"control": "positive", "metrics": {}},
                # real frames shuffled in time: FVD far above the reference's CI -> detected as worse
                {"control": "shuffled", "metrics": {"fvd16_fallback_ratio": est(3.4, 2.2, 4.0),
                                                    "ef_adherence_mae": est(9.0, 6.0, 11.0),
                                                    "ef_adherence_pearson": est(0.98, 0.9, 1.0)}},
                # real videos, EF permuted: better than a model that ignores EF, never detected as worse
                {"control": "ef_permuted", "metrics": {"fvd16_fallback_ratio": est(1.0, 0.7, 1.3),
                                                       "ef_adherence_mae": est(23.0, 17.0, 29.0),
                                                       "ef_adherence_pearson": est(-0.3, -0.8, 0.2)}},
                # a Pearson the control lacks makes it "not equal", yet nothing shows it is worse
                {"control": "motionless", "metrics": {"fvd16_fallback_ratio": est(2.6, 1.7, 2.9),
                                                      "ef_adherence_mae": est(44.0, 34.0, 55.0)}}]
    power = bench.control_power(controls, ref)
    assert "positive" not in power
    assert power["shuffled"] == {"worse_on": ["fvd16_fallback_ratio"], "equal": False}
    assert power["ef_permuted"] == {"worse_on": [], "equal": False}
    assert power["motionless"] == {"worse_on": [], "equal": False}
    notes = bench.power_notes(power)
    assert notes[0] == "detected as worse than the reference: shuffled (on fvd16_fallback_ratio)"
    assert notes[1].startswith("NOT detected as worse than the reference at this N: ef_permuted, motionless")
    low_pearson = {"ef_adherence_pearson": est(-0.9, -1.0, -0.6)}  # below the reference's CI: worse
    assert bench.worse_on(low_pearson, ref) == ["ef_adherence_pearson"]
