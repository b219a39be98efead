"""Video-level bootstrap intervals (echo_core.metrics.bootstrap) and the interval gate (echo_core.evaluation.verdict).

Small dimensions and a few hundred resamples keep the file fast; the statistical claims are chosen with wide
margins (factors of 2 or more) so that a correct implementation cannot fail them by chance at these seeds.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from echo_core.errors import DataError
from echo_core.evaluation.verdict import (
    Bound,
    MetricVerdict,
    VerdictConfig,
    exit_code,
    judge_all,
    judge_metric,
    overall,
)
from echo_core.metrics import bootstrap as bs
from echo_core.metrics.bootstrap import (
    Estimate,
    equal_n_split,
    frechet_distance_ci,
    frechet_ratio,
    mae,
    paired_statistic,
    pearson,
    percentile_interval,
    r2,
)
from echo_core.metrics.frechet import frechet_distance


def videos(rng, n, d=8, rows=16, shift=0.0, spread=0.0, noise=1.0):
    """n videos of `rows` feature rows: a per-video offset (spread) plus per-row noise, all moved by shift."""
    return [noise * rng.standard_normal((rows, d)) + spread * rng.standard_normal(d) + shift for _ in range(n)]


def width(est: Estimate) -> float:
    return est.ci_high - est.ci_low


# ---------------------------------------------------------------- Fréchet intervals


def test_ratio_is_near_one_for_one_gaussian_and_large_for_a_shifted_fake():
    rng = np.random.default_rng(0)
    fake, a, b = videos(rng, 20), videos(rng, 20), videos(rng, 20)
    same = frechet_ratio(fake, a, b, resamples=200, seed=0)
    assert 0.5 < same.value < 2.0
    assert same.ci_low <= 1.0 <= same.ci_high
    assert same.ci_low <= same.value <= same.ci_high  # the CI contains the point value
    assert (same.n, same.level, same.resamples) == (20, 0.95, 200)
    shifted = frechet_ratio(videos(rng, 20, shift=1.0), a, b, resamples=200, seed=0)
    assert shifted.value > 10 and shifted.ci_low > 5


def test_fewer_videos_give_a_wider_interval():
    rng = np.random.default_rng(1)
    real = videos(rng, 40, spread=0.5)
    fake = videos(rng, 40, spread=0.5, shift=0.7)
    many = frechet_distance_ci(fake, real, resamples=200, seed=0)
    few = frechet_distance_ci(fake[:8], real[:8], resamples=200, seed=0)
    assert many.ci_low <= many.value <= many.ci_high
    assert width(few) > 1.5 * width(many)


def test_video_level_resampling_is_wider_than_row_level_on_clustered_data():
    rng = np.random.default_rng(2)
    # strongly clustered: the 16 rows of a video are near-copies (between-video spread 3, within 0.1)
    real = videos(rng, 10, d=4, spread=3.0, noise=0.1)
    fake = videos(rng, 10, d=4, spread=3.0, noise=0.1, shift=1.0)
    by_video = frechet_distance_ci(fake, real, resamples=200, seed=0)
    as_rows = frechet_distance_ci([r[None] for v in fake for r in v], [r[None] for v in real for r in v],
                                  resamples=200, seed=0)
    assert by_video.value == pytest.approx(as_rows.value, rel=1e-12)  # same pooled rows, same point value
    assert width(by_video) > 2 * width(as_rows)


def test_same_seed_reproduces_and_another_seed_differs():
    rng = np.random.default_rng(3)
    fake, a, b = videos(rng, 8), videos(rng, 8), videos(rng, 8)
    first = frechet_ratio(fake, a, b, resamples=50, seed=7)
    assert frechet_ratio(fake, a, b, resamples=50, seed=7) == first
    other = frechet_ratio(fake, a, b, resamples=50, seed=8)
    assert other.value == first.value and (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)


@pytest.mark.xfail(strict=True, reason="known limit of the percentile bootstrap on FD: a resample holds ~63% "
                   "distinct videos, so the draws carry more of FD's k/N bias than the full-set value (plain FD of "
                   "identical sets: draws above it; ratio of a far fake: the bias-only baseline grows, draws below)")
@pytest.mark.parametrize("case", ["fd-identical-sets", "ratio-far-fake"])
def test_known_limit_the_interval_misses_a_bias_dominated_point_value(case):
    rng = np.random.default_rng(4)
    a, b = videos(rng, 20), videos(rng, 20)
    if case == "fd-identical-sets":
        e = frechet_distance_ci(videos(rng, 20), a, resamples=100, seed=0)
    else:
        e = frechet_ratio(videos(rng, 20, shift=1.0), a, b, resamples=100, seed=0)
    assert e.ci_low <= e.value <= e.ci_high


def _repooled_fd(x, y, wx, wy) -> float:
    """Oracle: physically repeat each video's rows w times, pool, and call frechet_distance."""
    px = np.concatenate([v for v, k in zip(x, wx, strict=True) for _ in range(k)])
    py = np.concatenate([v for v, k in zip(y, wy, strict=True) for _ in range(k)])
    return frechet_distance(px.mean(0), np.cov(px.T, ddof=0), py.mean(0), np.cov(py.T, ddof=0))


@pytest.mark.parametrize("d, n_videos, rows", [(32, 6, 3), (6, 12, 8)])  # rows < d and rows > d
@pytest.mark.parametrize("method", ["gram", "moments", "moments-from-rows"])
def test_weighted_moments_equal_repooled_rows(d, n_videos, rows, method, monkeypatch):
    rng = np.random.default_rng(5)
    x = videos(rng, n_videos, d=d, rows=rows, shift=4.0, spread=0.5)  # a large common mean: no lost digits
    y = videos(rng, n_videos + 2, d=d, rows=rows, shift=4.3, spread=0.7)
    if method == "moments-from-rows":  # the memory fallback of the moment path
        monkeypatch.setattr(bs, "OUTER_BYTES_LIMIT", 0)
    sx, sy = bs._sets({"x": x, "y": y}, reference="y")
    wx, wy = bs._video_weights(rng, len(x), 1)[0], bs._video_weights(rng, len(y), 1)[0]
    fd = bs._pair_fd(sx, sy, method.split("-")[0])
    assert fd(wx, wy) == pytest.approx(_repooled_fd(x, y, wx, wy), rel=1e-9)
    assert fd(np.ones(len(x)), np.ones(len(y))) == pytest.approx(_repooled_fd(x, y, [1] * len(x), [1] * len(y)),
                                                                 rel=1e-9)


def test_video_weights_count_n_draws_per_resample():
    w = bs._video_weights(np.random.default_rng(0), 7, 300)
    assert w.shape == (300, 7) and (w.sum(axis=1) == 7).all()
    assert 0.55 < (w > 0).mean() < 0.72  # ~1 - 1/e of the videos appear in a draw


def test_bad_feature_sets_are_refused_with_the_set_and_video_named():
    rng = np.random.default_rng(6)
    good = videos(rng, 3, d=4)
    with pytest.raises(DataError, match="fake: 1 video"):
        frechet_distance_ci(good[:1], good, resamples=5, seed=0)
    with pytest.raises(DataError, match="real video 1"):
        frechet_distance_ci(good, [good[0], good[1][:, :3]], resamples=5, seed=0)
    nan = [good[0], np.full((2, 4), np.nan)]
    with pytest.raises(DataError, match="real_b video 1: features contain NaN"):
        frechet_ratio(good, good, nan, resamples=5, seed=0)
    with pytest.raises(DataError, match="dimensions differ"):
        frechet_distance_ci(good, videos(rng, 3, d=5), resamples=5, seed=0)


# ---------------------------------------------------------------- intervals, splits, adherence


def test_percentile_interval_ignores_non_finite_draws_and_refuses_when_most_are():
    draws = np.r_[np.arange(101.0), np.nan, np.inf]
    assert percentile_interval(draws, 0.9) == pytest.approx((5.0, 95.0))
    with pytest.raises(DataError, match="only 2 of 5 bootstrap draws are finite"):
        percentile_interval([1.0, 2.0, np.nan, np.nan, -np.inf])
    with pytest.raises(ValueError, match="level"):
        percentile_interval([1.0, 2.0], level=95)


def test_estimate_to_dict_is_json_safe():
    est = Estimate(value=math.nan, ci_low=1.0, ci_high=math.inf, n=np.int64(5), level=0.9, resamples=10)
    out = est.to_dict()
    assert out == {"value": None, "ci_low": 1.0, "ci_high": None, "n": 5, "level": 0.9, "resamples": 10}
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("n_reference, n_fake, n_b", [(20, 6, 6), (10, 8, 5), (5, 1, 1), (2, 9, 1)])
def test_equal_n_split_sizes_and_disjointness(n_reference, n_fake, n_b):
    idx_a, idx_b = equal_n_split(n_reference, n_fake, seed=3)
    assert len(idx_b) == n_b and len(idx_a) == n_reference - n_b
    assert not set(idx_a) & set(idx_b) and sorted([*idx_a, *idx_b]) == list(range(n_reference))
    again = equal_n_split(n_reference, n_fake, seed=3)
    assert all((p == q).all() for p, q in zip(again, (idx_a, idx_b), strict=True))


def test_equal_n_split_is_seeded_and_refuses_a_tiny_reference():
    splits = {tuple(equal_n_split(20, 6, seed=s)[1]) for s in range(5)}
    assert len(splits) > 1
    with pytest.raises(DataError, match="have 1 and 4"):
        equal_n_split(1, 4, seed=0)


def test_adherence_statistics_and_their_nan_cases():
    req = np.array([30.0, 45.0, 60.0, 75.0])
    assert mae(req + [1, -1, 2, -2], req) == pytest.approx(1.5)
    assert r2(req, req) == 1.0 and r2(np.full(4, req.mean()), req) == pytest.approx(0.0)
    assert pearson(2 * req + 1, req) == pytest.approx(1.0) and pearson(-req, req) == pytest.approx(-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constant input: NaN, and no RuntimeWarning either
        assert math.isnan(r2(req, np.full(4, 50.0)))
        assert math.isnan(pearson(np.full(4, 50.0), req)) and math.isnan(pearson(req, np.full(4, 50.0)))
    assert math.isnan(mae([1.0, math.nan], [1.0, 2.0]))


def test_paired_statistic_keeps_pairs_together():
    rng = np.random.default_rng(8)
    req = rng.uniform(20, 80, 30)
    pred = req + rng.normal(0, 5, 30)
    est = paired_statistic(mae, pred, req, resamples=300, seed=0)
    assert est.value == mae(pred, req) and est.n == 30
    assert est.ci_low <= est.value <= est.ci_high and 0 < width(est) < est.value
    exact = paired_statistic(mae, req, req, resamples=50, seed=0)  # unpaired resampling would not give 0
    assert (exact.ci_low, exact.ci_high) == (0.0, 0.0)
    assert paired_statistic(mae, pred, req, resamples=300, seed=0) == est
    with pytest.raises(DataError, match=r"\[30, 29\]"):
        paired_statistic(mae, pred, req[:29], resamples=5, seed=0)


# ---------------------------------------------------------------- the interval gate


def est(value, lo, hi, n=20):
    return Estimate(value, lo, hi, n, 0.95, 1000)


MAX, MIN = Bound(max=1.5), Bound(min=0.6)


@pytest.mark.parametrize("bound, e, decisive, verdict, says", [
    (MAX, est(2.31, 1.95, 2.80), False, "fail", "> max 1.5"),
    (MAX, est(1.10, 0.90, 1.40), True, "pass", "<= max 1.5"),
    (MAX, est(1.40, 1.20, 1.70), True, "inconclusive", "CI straddles max 1.5"),
    (MAX, est(1.40, 1.20, 1.70), False, "pass", "point value <="),
    (MAX, est(1.60, 1.20, 1.70), False, "fail", "point value >"),
    (MIN, est(0.40, 0.30, 0.55), True, "fail", "< min 0.6"),
    (MIN, est(0.80, 0.70, 0.90), False, "pass", ">= min 0.6"),
    (MIN, est(0.65, 0.50, 0.75), True, "inconclusive", "CI straddles min 0.6"),
    (MIN, est(0.65, 0.50, 0.75), False, "pass", "point value >="),
    (MIN, est(0.55, 0.50, 0.75), False, "fail", "point value <"),
])
def test_every_interval_branch(bound, e, decisive, verdict, says):
    result = judge_metric("m", e, bound, decisive=decisive)
    assert result.verdict == verdict and says in result.reason and "(N=20)" in result.reason


def test_reason_names_metric_value_ci_n_and_bound():
    result = judge_metric("dynamic/fd_fallback_ratio", est(2.31, 1.95, 2.80), MAX, decisive=True)
    assert result == MetricVerdict("dynamic/fd_fallback_ratio", "fail",
                                   "dynamic/fd_fallback_ratio = 2.31 [1.95, 2.80] (N=20) > max 1.5")


def test_both_sides_of_a_bound_are_checked():
    both = Bound(min=0.0, max=1.5)
    assert judge_metric("m", est(-0.5, -0.9, -0.2), both, decisive=False).verdict == "fail"
    assert judge_metric("m", est(0.5, 0.2, 0.9), both, decisive=True).verdict == "pass"


@pytest.mark.parametrize("e", [None, est(math.nan, 1.0, 2.0), est(1.0, math.nan, 2.0), est(1.0, 0.5, math.inf)])
def test_missing_or_non_finite_estimates_fail(e):
    for decisive in (True, False):
        result = judge_metric("m", e, MAX, decisive=decisive)
        assert result.verdict == "fail" and "missing" in result.reason


def test_a_metric_an_absent_judge_could_not_measure_is_inconclusive_not_fail():
    result = judge_metric("m", None, MAX, decisive=False, judge_ok=False, judge="ef")
    assert result.verdict == "inconclusive" and "judge ef is absent" in result.reason


def test_an_incompetent_judge_is_inconclusive_never_pass():
    for e in (est(1.0, 0.9, 1.1), est(2.0, 1.9, 2.1)):  # would pass / would fail with a competent judge
        result = judge_metric("dynamic/ef_adherence_mae", e, MAX, decisive=False, judge_ok=False,
                              judge="ef_regressor")
        assert result.verdict == "inconclusive" and "judge ef_regressor" in result.reason


def test_overall_and_exit_codes():
    assert overall(["pass", "inconclusive", "fail"]) == "fail"
    assert overall([MetricVerdict("a", "pass", ""), MetricVerdict("b", "inconclusive", "")]) == "inconclusive"
    assert overall(["pass", "pass"]) == "pass" and overall([]) == "pass"
    assert [exit_code(v) for v in ("pass", "fail", "inconclusive")] == [0, 1, 3]
    with pytest.raises(ValueError, match="unknown verdicts"):
        overall(["passed"])


def test_verdict_config_rejects_empty_inverted_or_misspelled_bounds():
    with pytest.raises(ValueError, match="min, max or both"):
        VerdictConfig.model_validate({"bounds": {"x": {}}})
    with pytest.raises(ValueError, match="min 2 > max 1"):
        Bound(min=2, max=1)
    with pytest.raises(ValueError, match="maximum"):
        VerdictConfig.model_validate({"bounds": {"x": {"maximum": 1}}})


def test_judge_all_fails_a_missing_bounded_metric_and_an_incompetent_judge_is_inconclusive():
    cfg = VerdictConfig.model_validate({"bounds": {"fvd_ratio": {"max": 1.5}, "acc": {"min": 0.6}},
                                        "decisive": True})
    assert cfg.bounds == {"fvd_ratio": Bound(max=1.5), "acc": Bound(min=0.6)}
    verdicts = judge_all({"fvd_ratio": est(1.1, 0.9, 1.3)}, cfg)  # acc bounded but missing: fail
    assert [(v.name, v.verdict) for v in verdicts] == [("fvd_ratio", "pass"), ("acc", "fail")]
    verdicts = judge_all({"fvd_ratio": est(1.1, 0.9, 1.3), "acc": est(0.9, 0.8, 0.95)}, cfg,
                         judges={"acc": ("classifier", False)})
    assert overall(verdicts) == "inconclusive" and exit_code(overall(verdicts)) == 3
