"""The downstream tables of a synthetic dataset (`echoforge synth evaluate`, #13 §4): grouped bootstrap,
paired comparison with the negative control, EF and class tables on tiny phantom videos, the CLI and MLflow."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from support import REPO_ROOT
from support.latent_data import make_prepared_dataset
from support.threads import one_torch_thread
from typer.testing import CliRunner

from echo_core.downstream.classification import ClassificationConfig
from echo_core.downstream.data import VideoRecord
from echo_core.downstream.regression import RegressionConfig
from echo_core.downstream.scores import roc_auc
from echo_core.downstream.tables import (
    BootstrapSettings,
    RowPredictions,
    classification_table,
    ef_regression_table,
    group_draws,
    rank_auc,
    regression_scores,
    score_rows,
)

FPS = 15.0
BOOT = BootstrapSettings(resamples=300, seed=0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # 2 shared cores: OpenMP spinning makes small 3D convs many times slower
    with one_torch_thread():
        yield


def beating(ef: float, rng: np.random.Generator, frames: int = 16, size: int = 16) -> np.ndarray:
    """A disc whose area contracts by `ef` % once per 8 frames (random centre and phase)."""
    yy, xx = np.mgrid[:size, :size]
    cx, cy, phase = *rng.uniform(7, 9, 2), rng.uniform(0, 1)
    video = np.full((frames, size, size), 30.0)
    for t in range(frames):
        radius = 6 * np.sqrt(1 - ef / 100 * (0.5 - 0.5 * np.cos(2 * np.pi * (t / 8 + phase))))
        video[t][(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = 180
    return np.clip(video + rng.normal(0, 6, video.shape), 0, 255).astype(np.uint8)


def blob(class_id: int, rng: np.random.Generator, frames: int = 4, size: int = 12) -> np.ndarray:
    """Class 0 a bright disc, class 1 a dim one: separable by design."""
    yy, xx = np.mgrid[:size, :size]
    video = np.full((frames, size, size), 40.0)
    video[:, (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2] = 220 if class_id == 0 else 90
    return np.clip(video + rng.normal(0, 10, video.shape), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ bootstrap


def test_group_draws_resample_whole_patients_within_each_class():
    groups = np.repeat([f"p{i}" for i in range(6)], 2)  # two videos per patient
    strata = np.repeat([0, 0, 0, 0, 1, 1], 2)
    for idx in group_draws(groups, strata, 50, seed=1):
        drawn = pd.Series(groups[idx]).value_counts()
        assert (drawn % 2 == 0).all()  # a patient comes with both its videos, never one
        assert np.bincount(strata[idx], minlength=2).tolist() == [8, 4]  # 4 and 2 patients per class kept
    again = [d.tolist() for d in group_draws(groups, strata, 3, 7)]
    assert [d.tolist() for d in group_draws(groups, strata, 3, 7)] == again  # seeded


def test_rows_are_compared_with_the_control_on_paired_draws():
    rng = np.random.default_rng(0)
    truth = rng.uniform(20, 80, 40)
    rows = [RowPredictions("good", False, truth + rng.normal(0, 3, 40), {}),
            RowPredictions("shuffled", False, rng.permutation(truth), {}),
            RowPredictions("mean", True, np.full(40, truth.mean() + 2.0), {})]  # a TRAIN mean: not TEST's own
    scored = score_rows(rows, regression_scores, ("r2", "mae", "rmse"), truth, np.arange(40).astype(str), None, BOOT)
    for row in scored.values():
        for est in row["metrics"].values():
            assert est["ci_low"] <= est["value"] <= est["ci_high"] and est["n"] == 40
    assert scored["good"]["beats_control"] == {"r2": True, "mae": True, "rmse": True}
    assert scored["shuffled"]["beats_control"] == {"r2": False, "mae": False, "rmse": False}
    gain = scored["good"]["improvement"]["mae"]["value"]  # lower is better: control MAE minus the row's
    assert gain == pytest.approx(scored["mean"]["metrics"]["mae"]["value"] - scored["good"]["metrics"]["mae"]["value"])
    assert "improvement" not in scored["mean"] and -0.05 < scored["mean"]["metrics"]["r2"]["value"] < 0.0


def test_no_row_beats_the_control_when_a_class_has_a_single_test_unit():
    """One TEST patient per class (the demo's CardiacNet): every draw holds the same set, the interval is the
    point, and a better point value must not be reported as beating the control."""
    truth = np.array([10.0, 40.0, 70.0, 90.0])
    rows = [RowPredictions("good", False, truth + 1.0, {}), RowPredictions("mean", True, np.full(4, 50.0), {})]
    scored = score_rows(rows, regression_scores, ("mae",), truth, np.arange(4).astype(str), np.arange(4), BOOT)
    gain = scored["good"]["improvement"]["mae"]
    assert gain["value"] > 0 and gain["ci_low"] == gain["ci_high"]  # collapsed
    assert scored["good"]["beats_control"] == {"mae": False}


@pytest.mark.parametrize("num_classes", [2, 4])
def test_rank_auc_is_the_sklearn_auc(num_classes):
    rng = np.random.default_rng(num_classes)
    labels = np.arange(30) % num_classes
    probs = rng.dirichlet(np.ones(num_classes), 30)
    probs[:10] = np.round(probs[:10], 1)  # ties
    probs /= probs.sum(axis=1, keepdims=True)
    assert rank_auc(labels, probs) == pytest.approx(roc_auc(labels, probs), abs=1e-12)
    assert np.isnan(rank_auc(labels % (num_classes - 1), probs))  # a class absent: undefined, as roc_auc


# ------------------------------------------------------------------------------------------- EF table


@pytest.mark.slow  # ~15 s alone, 30 s on 2 busy cores: two regressors
def test_a_synthetic_set_with_shuffled_ef_does_not_beat_the_mean_but_real_training_does():
    rng = np.random.default_rng(1)
    real_ef, synth_ef = rng.uniform(15, 85, 36), rng.uniform(15, 85, 16)
    splits = ["TRAIN"] * 24 + ["TEST"] * 12
    real = [VideoRecord(f"r{i}", "real", s, f"r{i}", ef=float(ef), frames=beating(ef, rng), fps=FPS)
            for i, (ef, s) in enumerate(zip(real_ef, splits, strict=True))]
    shuffled = rng.permutation(synth_ef)  # videos animated at one EF, labelled with another's
    synthetic = [VideoRecord(f"s{i}", "synthetic", "TRAIN", f"s{i}", ef=float(label), frames=beating(ef, rng), fps=FPS)
                 for i, (ef, label) in enumerate(zip(synth_ef, shuffled, strict=True))]
    cfg = RegressionConfig(frames=8, fps=FPS, size=16, width=8, epochs=10, batch_size=4, lr=1e-2, seed=0,
                           select_epoch_on="last")
    messages = []
    table = ef_regression_table(cfg, real, synthetic, BOOT, progress=messages.append)
    rows = table.rows
    assert rows["real"]["beats_control"]["r2"] and rows["real"]["metrics"]["r2"]["value"] > 0.5
    assert not any(rows["synthetic"]["beats_control"].values())
    assert rows["mean_ef"]["metrics"]["r2"]["value"] <= 0.0
    assert rows["mean_ef"]["predicts"] == pytest.approx(real_ef[:24].mean(), abs=1e-4)
    assert rows["real"]["n"] == {"test": 12, "val_real": 0, "train_real": 24, "train_synthetic": 0}
    assert rows["synthetic"]["n"] == {"test": 12, "val_real": 0, "train_real": 0, "train_synthetic": 16}
    assert sum("EF regressor on" in m for m in messages) == 4  # start and result of each trained model
    assert len(table.predictions) == 3 * 12 and set(table.predictions["row"]) == {"real", "synthetic", "mean_ef"}


# -------------------------------------------------------------------------------------- class table


@pytest.mark.slow  # ~15 s alone, 35 s on 2 busy cores: three rows x two folds
def test_class_table_trains_on_real_synthetic_and_mixed_and_counts_both(tmp_path):
    rng = np.random.default_rng(2)
    ids = [i % 2 for i in range(24)]
    splits = ["TRAIN"] * 12 + ["VAL"] * 4 + ["TEST"] * 8
    patients = [f"p{i // 2}" if s != "TEST" else f"t{i}" for i, s in enumerate(splits)]  # 2 videos per pool patient
    real = [VideoRecord(f"v{i}", "real", s, p, class_id=c, frames=blob(c, rng), fps=FPS)
            for i, (c, s, p) in enumerate(zip(ids, splits, patients, strict=True))]
    synthetic = [VideoRecord(f"s{i}", "synthetic", "TRAIN", f"synthetic/s{i}", class_id=i % 2,
                             frames=blob(i % 2, rng), fps=FPS) for i in range(6)]
    cfg = ClassificationConfig(class_ids=[0, 1], frames=4, fps=FPS, size=12, width=8, dropout=0.0, epochs=3,
                               batch_size=4, lr=1e-2, folds=2, seed=0)
    table = classification_table(cfg, real, synthetic, BOOT, out_dir=tmp_path)
    rows = table.rows
    assert rows["mixed"]["n"]["train_real"] == rows["real"]["n"]["train_real"] == 16
    assert rows["mixed"]["n"]["train_synthetic"] == rows["synthetic"]["n"]["train_synthetic"] == 6
    assert rows["real"]["n"]["train_synthetic"] == 0 == rows["synthetic"]["n"]["train_real"]
    assert all(f["n_train_real"] + f["n_train_synthetic"] > f["n_train_synthetic"] for f in rows["mixed"]["folds"])
    control = rows["class_prior"]["metrics"]
    assert control["auc"]["value"] == 0.5 and control["accuracy"]["value"] == 0.5  # 4 + 4 TEST, prior 8 / 8
    assert rows["real"]["beats_control"]["auc"] and rows["real"]["metrics"]["auc"]["value"] > 0.9
    for row in rows.values():
        for est in row["metrics"].values():
            assert est["ci_low"] <= est["value"] <= est["ci_high"]
    assert (tmp_path / "rows" / "mixed" / "confusion_matrix.png").is_file()


# ------------------------------------------------------------------------------------------------ CLI


def _params(tmp_path, **synth_evaluate):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["synth_evaluate"] = {"bootstrap": {"resamples": 50},
                                "regression": {"size": 16, "frames": 4, "epochs": 1, "select_epoch_on": "last"},
                                **synth_evaluate}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def _cli(*args):
    from pipelines.cli import app

    return CliRunner().invoke(app, ["synth", "evaluate", "--dataset", "dynamic", *map(str, args)])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("tables")
    real = make_prepared_dataset(base / "real", num_videos=8, frames=(8,), size=16, splits=("TRAIN", "TEST"))
    synthetic = make_prepared_dataset(base / "synthetic", num_videos=4, frames=(8,), size=16)
    (synthetic / "manifest.json").write_text(json.dumps({"models": {"lvdm": "models:/echo-lvdm@champion"},
                                                         "git_commit": "abc", "seed": 3}))
    return real, synthetic


@pytest.mark.slow  # MLflow's first sqlite store costs most of it
def test_cli_writes_the_table_and_logs_it_to_mlflow(folders, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import tracking_uri

    real, synthetic = folders
    result = _cli("--synthetic", synthetic, "--real", real, "--out", tmp_path / "out", "--params", _params(tmp_path))
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "downstream_table.json").read_text())
    assert set(saved["rows"]) == {"real", "synthetic", "mean_ef"} and saved["config"]["regression"]["epochs"] == 1
    assert saved["synthetic_manifest"]["seed"] == 3 and saved["warnings"]  # 4 TEST videos: said so
    csv = pd.read_csv(tmp_path / "out" / "downstream_table.csv")
    assert len(csv) == 3 * 3 and csv.loc[csv["row"] == "mean_ef", "beats_control"].isna().all()
    assert (tmp_path / "out" / "downstream_table.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(tracking_uri())
    run = client.search_runs([client.get_experiment_by_name("echo-synthetic").experiment_id],
                             "attributes.run_name = 'downstream-dynamic'")[0]
    assert run.data.tags["dataset"] == "dynamic" and run.data.tags["synthetic.models.lvdm"].endswith("@champion")
    assert run.data.metrics["real/r2"] == pytest.approx(saved["rows"]["real"]["metrics"]["r2"]["value"])
    assert "synthetic/mae_beats_control" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "downstream")}
    assert "downstream/downstream_table.json" in artifacts


def test_cli_names_the_file_and_the_fix_for_unusable_folders(folders, tmp_path):
    real, synthetic = folders
    params = _params(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _cli("--synthetic", empty, "--real", real, "--out", tmp_path / "o", "--params", params, "--no-track")
    assert result.exit_code == 1 and "has no FileList.csv" in str(result.exception)
    no_ef = tmp_path / "no_ef"
    no_ef.mkdir()
    pd.read_csv(synthetic / "FileList.csv").drop(columns="EF").to_csv(no_ef / "FileList.csv", index=False)
    result = _cli("--synthetic", no_ef, "--real", real, "--out", tmp_path / "o", "--params", params, "--no-track")
    assert f"{no_ef / 'FileList.csv'} has no EF values" in str(result.exception)
    no_test = tmp_path / "no_test"
    no_test.mkdir()
    pd.read_csv(real / "FileList.csv").assign(Split="TRAIN").to_csv(no_test / "FileList.csv", index=False)
    result = _cli("--synthetic", synthetic, "--real", no_test, "--out", tmp_path / "o", "--params", params,
                  "--no-track")
    assert "has no TEST rows" in str(result.exception) and "fix:" in str(result.exception)
    assert not (tmp_path / "o").exists()
