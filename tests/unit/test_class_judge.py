"""The CardiacNet class judge and class adherence, on a real CardiacNet phantom and on hand-made inputs.

The project fixture builds the demo's CardiacNet phantom (24 patients: TRAIN 16 / VAL 4 / TEST 4, one video
each, four classes), prepares it, writes the 16-frame reference set, fits the class judge and runs the
controls once, all through the CLI (~1 min on 2 shared cores: its tests are slow). The rest needs no video.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from support.threads import one_torch_thread
from typer.testing import CliRunner

from echo_core.data.filelist import read_filelist, write_filelist
from echo_core.errors import ConfigError, DataError
from echo_core.evaluation.assess import AssessConfig, assess_folder
from echo_core.evaluation.class_judge_file import (
    CLASS_JUDGE_FILE,
    METRIC,
    class_judgement,
    judge_kind,
    load_class_judge,
)
from echo_core.evaluation.competence import accuracy, classification_competence, macro_auc
from echo_core.evaluation.verdict import Bound
from echo_core.models.class_judge import UNMEASURED, PixelClassJudge, clip_features

slow = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DS = "cardiacnet"
HELDOUT = 8  # VAL 4 + TEST 4 of 24 patients
BOUNDS = {"fd_fallback_ratio": {"max": 1.3}, "fvd16_fallback_ratio": {"max": 1.5},
          "class_adherence_accuracy": {"min": 0.4}}
CAUGHT_BY = {"motionless": "fvd16_fallback_ratio", "shuffled": "fvd16_fallback_ratio",
             "blurred": "fd_fallback_ratio", "noisy": "fd_fallback_ratio", "class_permuted": METRIC}


def _cli(*args):
    from pipelines.cli import app

    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from threadpoolctl import threadpool_limits

    # 2 shared cores: a 2-thread BLAS spin-waits in the bootstrap's small SVDs
    with one_torch_thread(), threadpool_limits(1):
        yield _build_project(tmp_path_factory.mktemp("class_judge"))


def _build_project(root: Path) -> SimpleNamespace:
    from echo_core.data.phantom.datasets import generate_dataset
    from echo_core.data.prepare import prepare_dataset
    from echo_core.data.reference import build_reference

    out = root / "outputs"
    prepared, reference = out / "prepared" / DS, out / "reference" / DS
    generate_dataset(DS, root / "raw", num_videos=24, seed=0)
    prepare_dataset(DS, root / "raw", prepared, seed=42)
    build_reference(prepared, reference, frames=16, fps=32.0, size=112, seed=42)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["evaluate"]["sample"]["num_frames"] = 40
    params["evaluate"]["assess"] = {"resamples": 200, "class_judge_min_accuracy": 0.5,
                                    "bounds": {f"{DS}/{k}": v for k, v in BOUNDS.items()}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    common = ("--dataset", DS, "--out-root", out, "--params", root / "params.yaml", "--metrics-dir",
              root / "metrics", "--no-track")
    judge = _cli("judge", *common)
    assert judge.exit_code == 0, judge.output
    controls = _cli("controls", *common)
    return SimpleNamespace(root=root, out=out, prepared=prepared, reference=reference, controls_run=controls,
                           controls=out / "controls" / DS, judge_file=out / "judges" / DS / CLASS_JUDGE_FILE,
                           table=json.loads((root / "metrics" / "controls" / f"{DS}.json").read_text("utf-8")))


# ------------------------------------------------------------------------------ the judge on real phantoms


@slow
def test_the_class_judge_reaches_its_bar_on_held_out_phantoms_and_round_trips(project):
    assert not (project.out / "judges" / DS / "ef_judge.json").exists()  # a class_id dataset: the class judge
    record = json.loads(project.judge_file.read_text(encoding="utf-8"))
    comp = record["competence"]
    assert comp["n"] == HELDOUT and comp["n_train"] == 16 and comp["unmeasured"] == 0
    assert comp["class_ids"] == [0, 1, 2, 3] and comp["chance_accuracy"] == 0.25
    assert comp["n_train_clips"] > comp["n_train"]  # several clips per TRAIN video
    assert comp["accuracy"] >= comp["bar_accuracy"] == 0.5 and comp["competent"] is True, comp
    assert comp["accuracy_ci_low"] <= comp["accuracy"] <= comp["accuracy_ci_high"]
    assert comp["auc"] > 0.5 and comp["auc_ci_low"] <= comp["auc"] <= comp["auc_ci_high"]
    assert np.trace(comp["confusion"]) == round(comp["accuracy"] * HELDOUT)
    rows = record["heldout"]
    assert accuracy([r["predicted"] for r in rows], [r["class_id"] for r in rows]) == comp["accuracy"]
    assert json.loads((project.root / "metrics" / "judges" / f"{DS}.json").read_text("utf-8")) == comp

    loaded = load_class_judge(project.judge_file)
    assert loaded.judge.to_dict() == record["judge"]
    from echo_core.evaluation.judge_file import read_prepared_videos

    held = read_filelist(project.prepared / "FileList.csv").set_index("FileName").loc[[r["FileName"] for r in rows]]
    for (name, frames, fps), row in zip(read_prepared_videos(project.prepared, held.reset_index()), rows,
                                        strict=True):
        predicted, p = loaded.judge.judge(frames, fps, name)
        assert predicted == row["predicted"] and p[0] == pytest.approx(row["p_0"], abs=1e-12)


@slow
def test_controls_positive_passes_class_permuted_and_every_negative_fail_on_their_metric(project):
    assert project.controls_run.exit_code == 0, project.controls_run.output
    rows = {r["control"]: r for r in project.table["controls"]}
    assert set(rows) == {"positive", *CAUGHT_BY}  # no EF column: ef_permuted does not apply
    positive = rows["positive"]
    assert positive["verdict"] == "pass" and positive["failing_metrics"] == [], positive["reasons"]
    assert positive["metrics"][METRIC]["value"] >= BOUNDS[METRIC]["min"]
    for name, metric in CAUGHT_BY.items():
        assert rows[name]["verdict"] == "fail" and metric in rows[name]["failing_metrics"], rows[name]["reasons"]
    assert rows["class_permuted"]["metrics"][METRIC]["value"] < BOUNDS[METRIC]["min"]
    # the pixels of class_permuted are the positive's: only the requested class differs
    assert rows["class_permuted"]["metrics"]["fd_fallback_ratio"] == positive["metrics"]["fd_fallback_ratio"]
    permuted = read_filelist(project.controls / "class_permuted" / "FileList.csv")
    assert (permuted["class_id"] != permuted["true_class_id"]).all()
    assert project.table["evaluator_ok"] is True and all(r["n_videos"] == HELDOUT for r in rows.values())


def _class_only(**overrides) -> AssessConfig:
    """Only class adherence (no Fréchet features): the cheap way to look at the class judge's verdict."""
    return AssessConfig(frechet=[], resamples=200, **overrides)


@slow
def test_a_judge_below_its_bar_makes_class_adherence_inconclusive_never_pass(project):
    judge = load_class_judge(project.judge_file)
    bounds = {METRIC: Bound(min=0.4)}
    strict = assess_folder(project.controls / "positive", project.reference, DS, bounds,
                           _class_only(class_judge_min_accuracy=0.99), class_judge=judge)
    assert strict.verdict == "inconclusive" and strict.judges["class"]["competent"] is False
    assert "below its competence bar" in strict.verdicts[0].reason
    absent = assess_folder(project.controls / "positive", project.reference, DS, bounds, _class_only())
    assert absent.verdict == "inconclusive" and "class_judge" in absent.judges["class"]["why_not"]
    trusted = assess_folder(project.controls / "positive", project.reference, DS, bounds, _class_only(),
                            class_judge=judge)
    assert trusted.verdict == "pass" and trusted.judges["class"]["competent"] is True


@slow
def test_samples_requesting_an_unknown_class_or_too_short_are_inconclusive(project, tmp_path):
    judge, bounds = load_class_judge(project.judge_file), {METRIC: Bound(min=0.4)}
    folder = tmp_path / "samples"
    shutil.copytree(project.controls / "positive", folder)
    df = read_filelist(folder / "FileList.csv")
    write_filelist(df.assign(class_id=pd.array([7] * len(df), dtype="Int64")), folder / "FileList.csv")
    unknown = assess_folder(folder, project.reference, DS, bounds, _class_only(), class_judge=judge)
    assert unknown.verdict == "inconclusive" and "[7]" in unknown.judges["class"]["why_not"]
    write_filelist(df.assign(FPS=200.0), folder / "FileList.csv")  # 40 frames at 200 fps: 0.2 s
    short = assess_folder(folder, project.reference, DS, bounds, _class_only(), class_judge=judge)
    assert short.verdict == "inconclusive" and "0.20 s" in short.judges["class"]["why_not"]


# ---------------------------------------------------------------------------------- no videos needed


def _judge(seed: int = 0) -> PixelClassJudge:
    """A judge fitted on separable synthetic features: class k has mean k along feature 0."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 3], 6)
    features = rng.normal(size=(len(labels), 5)) * 0.1
    features[:, 0] += labels
    return PixelClassJudge.fit(features, labels)


def test_fitted_judge_separates_classes_and_round_trips_through_json():
    judge = _judge()
    assert judge.class_ids == (0, 1, 3) and judge.n_fit == 18
    probe = np.zeros(5)
    for cid in judge.class_ids:
        probe[0] = cid
        p = judge.proba(probe)
        assert judge.class_ids[int(np.argmax(p))] == cid and p.sum() == pytest.approx(1.0)
    again = PixelClassJudge.from_dict(json.loads(json.dumps(judge.to_dict())))
    assert np.allclose(again.proba(probe), judge.proba(probe)) and again.params == judge.params
    assert np.allclose(judge.proba(None), 1 / 3)  # an unmeasured clip carries no information


def test_two_class_judge_gives_two_probabilities():
    labels = np.repeat([0, 1], 4)
    features = np.c_[labels + np.linspace(0, 0.1, 8), np.linspace(1, 0, 8)]
    judge = PixelClassJudge.fit(features, labels)
    assert judge.coef.shape == (2, 2)
    assert judge.proba(np.array([1.0, 0.5]))[1] > 0.5 > judge.proba(np.array([0.0, 0.5]))[1]


def test_bad_judge_files_and_fits_raise_clear_errors():
    with pytest.raises(ConfigError, match="pixel_class"):
        PixelClassJudge.from_dict({**_judge().to_dict(), "version": 99})
    with pytest.raises(ConfigError, match="unknown field"):
        PixelClassJudge.from_dict({**_judge().to_dict(), "params": {"colour": 1}})
    with pytest.raises(DataError, match="2 classes"):
        PixelClassJudge.fit(np.zeros((4, 3)), [0, 0, 0, 0])


def test_clips_without_a_heart_or_too_short_have_no_features():
    assert clip_features(np.zeros((40, 112, 112), np.uint8), 32.0) is None  # black: no fan
    assert clip_features(np.full((40, 112, 112), 128, np.uint8), 32.0) is None  # flat grey: no contrast
    assert clip_features(np.zeros((10, 112, 112), np.uint8), 32.0) is None  # 0.31 s < 1.25 s
    predicted, p = _judge_on_black()
    assert predicted == UNMEASURED and np.allclose(p, 1 / 3)
    with pytest.raises(DataError, match="expected"):
        clip_features(np.zeros((40, 112)), 32.0)


def _judge_on_black():
    return _judge().judge(np.zeros((40, 112, 112), np.uint8), 32.0)


def test_accuracy_and_macro_auc_by_hand():
    assert accuracy([0, 1, UNMEASURED, 3], [0, 1, 2, 2]) == 0.5  # an unmeasured video counts as wrong
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.7, 0.3]])
    truth = np.array([0, 0, 1, 1])
    # class 0 vs rest: scores 0.9, 0.6 against 0.3, 0.7 -> 3 of 4 pairs ordered; class 1 the mirror
    assert macro_auc(proba, truth, (0, 1)) == pytest.approx(0.75)
    assert np.isnan(macro_auc(proba[:2], truth[:2], (0, 1)))  # one class only: no AUC
    comp = classification_competence(proba.argmax(1), proba, truth, (0, 1), n_boot=200, seed=0)
    assert comp["accuracy"] == 0.75 and comp["auc"] == pytest.approx(0.75) and comp["n"] == 4
    assert comp["accuracy_ci_low"] <= 0.75 <= comp["accuracy_ci_high"]
    with pytest.raises(DataError, match="N >= 2"):
        classification_competence([0], proba[:1], [0], (0, 1))


def test_class_judgement_without_class_request_or_judge():
    frames = [np.zeros((40, 3, 112, 112), np.uint8)] * 2
    df = pd.DataFrame({"FileName": ["a", "b"], "FPS": 32.0, "EF": [50.0, 60.0]})
    assert class_judgement(df, None, frames, _class_only()) == ({}, {})  # an EF FileList: nothing to judge
    metrics, record = class_judgement(df.assign(class_id=[0, 1]), None, frames, _class_only())
    assert metrics == {} and record["competent"] is False and "dvc repro class_judge" in record["why_not"]


def test_judge_kind_follows_the_filelist_columns(tmp_path):
    for columns, kind in ((["FileName", "EF", "Split"], "ef"), (["FileName", "class_id", "Split"], "class")):
        pd.DataFrame([dict.fromkeys(columns, 1)]).assign(FileName="a").to_csv(tmp_path / "FileList.csv", index=False)
        assert judge_kind(tmp_path) == kind
    pd.DataFrame({"FileName": ["a"], "Split": ["TRAIN"]}).to_csv(tmp_path / "FileList.csv", index=False)
    with pytest.raises(DataError, match="neither an EF nor a class_id"):
        judge_kind(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        judge_kind(tmp_path / "missing")
