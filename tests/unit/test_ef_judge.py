"""PixelEfJudge on real phantom clips rendered here (ground truth known), and judge competence with CIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import mean_absolute_error, r2_score

from echo_core.data.phantom import ClipSpec, render_clip
from echo_core.errors import ConfigError, DataError
from echo_core.evaluation.competence import regression_competence
from echo_core.models.judges import JUDGE_VERSION, PixelEfJudge, cavity_trace, check_video

FPS = 50.0


def _clip(ef: float, seed: int, heart_rate: float = 80.0, frames: int = 44):
    """An A4C phantom clip holding at least one ED and the following ES (44 frames = 0.88 s at 80 bpm)."""
    spec = ClipSpec(ef=ef, heart_rate_bpm=heart_rate, num_frames=frames, fps=FPS)
    return render_clip(spec, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def phantoms() -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Seeded TRAIN (10 clips) and held-out (8 clips) sets across EF 20-75 and heart rates 70-100 bpm."""
    rng = np.random.default_rng(12)
    sets = {}
    for name, n, offset in (("train", 10, 100), ("held_out", 8, 200)):
        efs = np.linspace(20, 75, n) + rng.uniform(-2, 2, n)
        rates = rng.uniform(70, 100, n)
        clips = [_clip(float(e), offset + i, float(r)) for i, (e, r) in enumerate(zip(efs, rates, strict=True))]
        sets[name] = ([c.frames for c in clips], efs)
    return sets


@pytest.fixture(scope="module")
def judge(phantoms) -> PixelEfJudge:
    videos, efs = phantoms["train"]
    return PixelEfJudge().fit([PixelEfJudge().measure(v, FPS) for v in videos], efs)


# ----------------------------------------------------------------------------------------------- measure


def test_measure_increases_with_the_true_ef():
    measures = [PixelEfJudge().measure(_clip(ef, seed=5).frames, FPS) for ef in (20.0, 35.0, 50.0, 65.0, 80.0)]
    assert np.all(np.diff(measures) > 0.03), measures


def test_roi_is_the_left_ventricle_not_the_rv_or_the_atrium():
    clip = _clip(50.0, seed=3)
    trace = cavity_trace(*check_video(clip.frames, FPS))
    lv = (clip.labels == 1).any(axis=0)
    assert (trace.roi & lv).sum() / (trace.roi | lv).sum() > 0.8
    for other in (2, 3, 4):  # RV, LA, RA
        assert (trace.roi & (clip.labels == other).any(axis=0)).sum() < 0.06 * trace.roi.sum()


def test_calibrated_judge_is_competent_on_held_out_phantoms(phantoms, judge):
    videos, efs = phantoms["held_out"]
    pred = judge.predict(videos, FPS)
    score = regression_competence(pred, efs, n_boot=200, seed=0)
    assert score["n"] == 8 and score["r2"] >= 0.8 and score["mae"] < 6.0, score
    assert 80 < judge.alpha < 150 and abs(judge.beta) < 15 and judge.n_fit == 10


def test_motionless_video_gives_the_floor_far_from_the_truth(judge):
    frames = _clip(60.0, seed=7).frames
    moving = judge.predict([frames], FPS)[0]
    still = np.repeat(frames[:1], len(frames), axis=0)
    assert judge.measure(still, FPS) == 0.0
    assert judge.predict([still], FPS)[0] == pytest.approx(np.clip(judge.beta, 0, 100))
    assert abs(moving - 60.0) < 10 and moving - judge.predict([still], FPS)[0] > 40


def test_blur_barely_changes_the_estimate(judge):
    frames = _clip(45.0, seed=8).frames
    blurred = ndimage.gaussian_filter(frames.astype(np.float32), (0, 3, 3))
    sharp, soft = judge.predict([frames, blurred], FPS)
    assert abs(sharp - 45.0) < 8 and abs(soft - sharp) < 8


def test_black_or_constant_frames_give_nan_not_a_crash(judge):
    black, grey = np.zeros((30, 112, 112), np.uint8), np.full((30, 112, 112), 128.0)
    assert np.isnan(judge.predict([black, grey], FPS)).all()


def test_json_round_trip_gives_identical_predictions(phantoms, judge):
    videos, _ = phantoms["held_out"]
    data = json.loads(json.dumps(judge.to_dict()))
    assert data["version"] == JUDGE_VERSION
    again = PixelEfJudge.from_dict(data)
    assert again == judge
    np.testing.assert_array_equal(again.predict(videos[:3], FPS), judge.predict(videos[:3], FPS))


@pytest.mark.parametrize(
    ("video", "fps", "field"),
    [
        (np.zeros((112, 112)), FPS, "video"),  # one frame, no time axis
        (np.zeros((4, 112, 112, 3)), FPS, "video"),  # RGB
        (np.zeros((0, 112, 112)), FPS, "video"),  # empty
        (np.full((8, 112, 112), -1.0), FPS, "video"),  # [-1, 1] model output, not grey levels
        (np.full((8, 112, 112), np.nan), FPS, "video"),
        (np.zeros((8, 112, 112)), 0.0, "fps"),
    ],
)
def test_bad_input_raises_a_typed_error_naming_the_field(video, fps, field):
    with pytest.raises(DataError, match=field):
        PixelEfJudge().measure(video, fps)


def test_bad_calibration_and_saved_judges_are_refused():
    with pytest.raises(DataError, match="measures"):
        PixelEfJudge().fit([0.1, np.nan, 0.5], [20.0, 40.0, 60.0])
    with pytest.raises(DataError, match="measures"):
        PixelEfJudge().fit([0.3, 0.3, 0.3], [20.0, 40.0, 60.0])
    with pytest.raises(DataError, match="fps"):
        PixelEfJudge().predict([np.zeros((8, 112, 112))] * 2, [FPS])
    with pytest.raises(ConfigError, match="version"):
        PixelEfJudge.from_dict({**PixelEfJudge().to_dict(), "version": JUDGE_VERSION + 1})
    with pytest.raises(ConfigError, match="unknown"):
        data = PixelEfJudge().to_dict()
        PixelEfJudge.from_dict({**data, "params": {**data["params"], "threshold": 3}})


# ------------------------------------------------------------------------------------------- competence


def _noisy(n: int = 40, noise: float = 6.0, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.uniform(20, 75, n)
    return true + rng.normal(0, noise, n), true


def test_competence_matches_sklearn_and_its_ci_contains_the_point():
    pred, true = _noisy()
    c = regression_competence(pred, true, n_boot=500, seed=0)
    assert c["r2"] == pytest.approx(r2_score(true, pred)) and c["mae"] == pytest.approx(mean_absolute_error(true, pred))
    assert c["r2_ci_low"] < c["r2"] < c["r2_ci_high"] and c["mae_ci_low"] < c["mae"] < c["mae_ci_high"]
    assert c["r2_ci_high"] - c["r2_ci_low"] < 0.3 and c["n"] == 40


def test_perfect_predictions_score_one():
    true = np.linspace(20, 75, 12)
    c = regression_competence(true, true, n_boot=100)
    assert c["r2"] == c["r2_ci_low"] == c["r2_ci_high"] == 1.0
    assert c["mae"] == c["mae_ci_high"] == 0.0


def test_competence_is_reproducible_per_seed():
    pred, true = _noisy(n=25)
    assert regression_competence(pred, true, seed=3) == regression_competence(pred, true, seed=3)
    assert regression_competence(pred, true, seed=3) != regression_competence(pred, true, seed=4)


@pytest.mark.parametrize(
    ("pred", "true", "field"),
    [([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "pred"), ([1.0, 2.0], [1.0, 2.0, 3.0], "pred / true"),
     ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], "true")],
)  # fmt: skip
def test_competence_bad_input_raises_naming_the_field(pred, true, field):
    with pytest.raises(DataError, match=field):
        regression_competence(pred, true)
