"""Downstream evaluation: R3D model, clip loading, labels, folds, metrics, and end-to-end learning on
tiny phantom videos written as real AVI/MP4 files with PyAV."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from support.threads import one_torch_thread

from echo_core.data.video import write_video
from echo_core.downstream.classification import (
    ClassificationConfig,
    classify_records,
    inverse_frequency_weights,
    patient_folds,
    run_classification,
)
from echo_core.downstream.data import ClipDataset, LabelMap, VideoRecord, VideoStore, clip_indices, scan_video_folder
from echo_core.downstream.regression import RegressionConfig, run_ef_regression
from echo_core.downstream.scores import classification_metrics, regression_metrics, roc_auc
from echo_core.errors import ConfigError, DataError, UsageError
from echo_core.models.classifier import build_video_model
from echo_core.tracking import NullTracker

FPS = 30.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread_deterministic():
    # One thread: on a shared 2-core machine, OpenMP spinning makes small 3D convs ~40x slower.
    with one_torch_thread():
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield
        torch.use_deterministic_algorithms(False)


# --------------------------------------------------------------------------------------- phantom videos


def blob_video(bright: bool, rng: np.random.Generator, frames: int = 24, size: int = 32) -> np.ndarray:
    """A pulsing, drifting disc: bright (class 0) or dim (class 1) on a dark noisy background.

    Bright and dim discs differ in total brightness at every radius, so the task is separable by design.
    """
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.uniform(13, 19, 2)
    phase = rng.uniform(0, 2 * np.pi)
    video = np.full((frames, size, size), 40.0)
    for t in range(frames):
        radius = 6 + np.sin(2 * np.pi * t / 12 + phase)
        video[t][(xx - cx - 2 * np.sin(t / 4)) ** 2 + (yy - cy) ** 2 < radius**2] = 220 if bright else 70
    return np.clip(video + rng.normal(0, 10, video.shape), 0, 255).astype(np.uint8)


def heart_video(ef: float, rng: np.random.Generator, frames: int = 40, size: int = 32) -> np.ndarray:
    """A 'ventricle' whose area contracts by EF % each beat (random position, phase, 67-86 bpm)."""
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.uniform(13, 19, 2)
    phase, period = rng.uniform(0, 1), rng.uniform(0.7, 0.9)
    video = np.full((frames, size, size), 30.0)
    for t in range(frames):
        squeeze = 0.5 - 0.5 * np.cos(2 * np.pi * (t / FPS / period + phase))
        radius = 11 * np.sqrt(1 - ef / 100 * squeeze)
        video[t][(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = 180
    return np.clip(video + rng.normal(0, 8, video.shape), 0, 255).astype(np.uint8)


def write_folder(root, rows: list[dict], videos: list[np.ndarray], folder: str = "Videos", ext: str = ".avi"):
    (root / folder).mkdir(parents=True)
    for row, video in zip(rows, videos, strict=True):
        write_video(root / folder / f"{row['FileName']}{ext}", video, FPS)
    pd.DataFrame(rows).to_csv(root / "FileList.csv", index=False)
    return root


def cardiacnet_rows(class_ids: list[int], splits: list[str], patients: list[str]) -> list[dict]:
    names = {0: "ASD", 1: "Non-ASD", 2: "Non-PAH", 3: "PAH"}
    return [
        {"FileName": f"{names[c].lower()}_{i:03d}", "condition": "ASD" if c < 2 else "PAH", "class_name": names[c],
         "class_id": c, "patient_id": p, "FPS": FPS, "FrameHeight": 32, "FrameWidth": 32, "NumberOfFrames": 24,
         "Split": s}
        for i, (c, s, p) in enumerate(zip(class_ids, splits, patients, strict=True))
    ]


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    """Real: 28 TRAIN/VAL videos (2 per patient) + 10 TEST of classes 0/1, and 2 class-2 videos to exclude.
    Synthetic: 16 generated mp4s labelled through CondType/CondValue, no Split column."""
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("cls")
    ids = [i % 2 for i in range(38)] + [2, 2]
    splits = ["TRAIN"] * 20 + ["VAL"] * 8 + ["TEST"] * 10 + ["TRAIN", "TEST"]
    patients = [f"P{i // 2 if i < 28 else i}" for i in range(40)]
    real = write_folder(base / "real", cardiacnet_rows(ids, splits, patients), [blob_video(c == 0, rng) for c in ids])
    synth_rows = [{"FileName": f"sample_{i:06d}", "CondType": "class_id", "CondValue": i % 2, "FrameHeight": 32,
                   "FrameWidth": 32, "FPS": 32, "NumberOfFrames": 24} for i in range(16)]
    synth = write_folder(base / "samples", synth_rows, [blob_video(i % 2 == 0, rng) for i in range(16)],
                         folder="mp4", ext=".mp4")
    return real, synth


TINY_CLS = dict(class_ids=[0, 1], frames=8, fps=FPS, size=32, width=8, dropout=0.0, epochs=6, batch_size=4,
                lr=1e-2, folds=2, seed=0)


# ------------------------------------------------------------------------------------------------ model


def test_r3d_heads_shapes_and_full_size():
    classifier = build_video_model("classification", width=8, num_classes=3).eval()
    regressor = build_video_model("regression", width=8).eval()
    regressor.set_target_stats(55.0, 10.0)
    x = torch.rand(2, 1, 16, 56, 56)
    assert classifier(x).shape == (2, 3)
    assert regressor(x).shape == (2,)
    assert classifier(torch.rand(1, 1, 5, 20, 20)).shape == (1, 3)  # any clip length / size
    # the published R3D-18 (width 64) has 33.2 M parameters with 3 input channels; gray input saves 6 k
    full = build_video_model("classification", width=64, num_classes=400, in_channels=3)
    assert 33.0e6 < sum(p.numel() for p in full.parameters()) < 33.5e6
    with pytest.raises(ValueError, match="unknown video model task"):
        build_video_model("segmentation", width=8)


# ---------------------------------------------------------------------------------------------- metrics


def test_auc_comes_from_probabilities_not_hard_labels():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    hard = roc_auc_score(y, probs.argmax(axis=1))  # what the reference reported
    assert roc_auc(y, probs) == pytest.approx(roc_auc_score(y, p1)) == pytest.approx(0.75)
    assert hard == pytest.approx(0.5)
    assert classification_metrics(y, probs) == pytest.approx({"accuracy": 0.5, "macro_f1": 0.5, "auc": 0.75})


def test_multiclass_auc_is_one_vs_rest_and_nan_when_a_class_is_missing():
    rng = np.random.default_rng(3)
    y = np.array([0, 1, 2, 0, 1, 2, 2, 1])
    probs = rng.dirichlet(np.ones(3), size=len(y))
    assert roc_auc(y, probs) == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert np.isnan(roc_auc(np.array([0, 0, 1, 1]), rng.dirichlet(np.ones(3), size=4)))


def test_regression_metrics():
    metrics = regression_metrics(np.array([40.0, 50.0, 60.0]), np.array([42.0, 50.0, 58.0]))
    assert metrics["mae"] == pytest.approx(4 / 3)
    assert metrics["r2"] == pytest.approx(1 - 8 / 200)


# ------------------------------------------------------------------------------------ folds and labels


def test_patient_folds_never_put_a_patient_in_train_and_val():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 15, size=60).astype(str)
    labels = rng.integers(0, 2, size=60)
    folds = patient_folds(labels, groups, k=3, seed=7)
    seen = np.concatenate([val for _, val in folds])
    assert sorted(seen) == list(range(60))  # each video validated exactly once
    for train, val in folds:
        assert set(groups[train]).isdisjoint(groups[val])
    assert [v.tolist() for _, v in folds] == [v.tolist() for _, v in patient_folds(labels, groups, 3, 7)]
    with pytest.raises(DataError, match="at least 5 patients"):
        patient_folds(labels[:4], np.array(["a", "a", "b", "c"]), k=5, seed=0)


def _record(name, class_id, split, source="real"):
    return VideoRecord(name=name, source=source, split=split, patient_id=name, class_id=class_id)


def test_labels_come_from_the_fixed_map_even_when_a_split_lacks_a_class():
    """The reference's per-split `sorted(class_name)` gave TEST-only-PAH videos label 0 (Non-PAH's)."""
    label_map = LabelMap((2, 3))  # Non-PAH -> 0, PAH -> 1
    test = [_record("t1", 3, "TEST"), _record("t2", 3, "TEST")]
    train = [_record("a", 2, "TRAIN"), _record("b", 3, "TRAIN"), _record("c", 0, "TRAIN"), _record("d", None, "VAL")]
    synthetic = [_record("s", 3, "GENERATED", source="synthetic")]
    _, test_labels, _ = label_map.encode(test)
    kept, train_labels, excluded = label_map.encode(train)
    _, synth_labels, _ = label_map.encode(synthetic)
    reference_bug = {name: i for i, name in enumerate(sorted({"PAH"}))}["PAH"]
    assert reference_bug == 0 and test_labels.tolist() == [1, 1]
    assert train_labels.tolist() == [0, 1] and synth_labels.tolist() == [1]
    assert [r.name for r in kept] == ["a", "b"]
    assert excluded == {"real/TRAIN/0": 1, "real/VAL/missing": 1}
    assert label_map.names == ["Non-PAH", "PAH"]
    with pytest.raises(ConfigError, match="class_ids"):
        ClassificationConfig(class_ids=[0, 7])


def test_inverse_frequency_weights():
    weights = inverse_frequency_weights(np.array([0, 0, 0, 1]), 3)
    assert weights.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])


# -------------------------------------------------------------------------------------------- loading


def test_scan_reads_prepared_and_sample_layouts(class_data, tmp_path):
    real_root, synth_root = class_data
    real = scan_video_folder(real_root, source="real")
    assert len(real) == 40 and real[0].path.name == "asd_000.avi" and real[0].patient_id == "P0"
    assert {r.split for r in real} == {"TRAIN", "VAL", "TEST"}
    synthetic = scan_video_folder(synth_root, source="synthetic")
    assert [r.class_id for r in synthetic[:3]] == [0, 1, 0]
    assert synthetic[0].split == "GENERATED" and synthetic[0].path.suffix == ".mp4"
    # a class_name that disagrees with the fixed map (listdir-order numbering) is refused
    rows = cardiacnet_rows([0], ["TRAIN"], ["P0"])
    rows[0]["class_name"] = "PAH"
    write_folder(tmp_path / "bad", rows, [blob_video(True, np.random.default_rng(0))])
    with pytest.raises(DataError, match="disagrees with class_id 0"):
        scan_video_folder(tmp_path / "bad", source="real")
    (tmp_path / "novideos").mkdir()
    pd.DataFrame({"FileName": ["a"], "Split": ["TRAIN"]}).to_csv(tmp_path / "novideos" / "FileList.csv")
    with pytest.raises(DataError, match="no video folder"):
        scan_video_folder(tmp_path / "novideos", source="real")


def test_ef_in_fractions_is_refused(tmp_path):
    rows = [{"FileName": f"s{i}", "CondType": "lvef", "CondValue": v} for i, v in enumerate([0.4, 0.6])]
    write_folder(tmp_path, rows, [heart_video(50, np.random.default_rng(0))] * 2, folder="avi")
    with pytest.raises(DataError, match="percent"):
        scan_video_folder(tmp_path, source="synthetic")


def test_clip_dataset_resamples_windows_and_loops():
    video = np.repeat(np.arange(40, dtype=np.uint8)[:, None, None], 16, axis=1).repeat(16, axis=2)  # frame t = t
    record = VideoRecord("v", "real", "TRAIN", "v", frames=video, fps=30.0)
    store = VideoStore(fps=15.0, size=8)
    assert store.get(record).shape == (20, 8, 8)  # 40 frames at 30 fps -> 20 at 15 fps
    values = lambda ds, i=0: (ds[i][0][0, :, 0, 0] * 255).round().int().tolist()  # noqa: E731
    evaluation = ClipDataset([record], np.array([0]), store, frames=8, train=False)
    x, _ = evaluation[0]
    assert x.shape == (1, 8, 8, 8) and x.min() >= 0.0 and x.max() <= 1.0
    assert values(evaluation) == list(range(12, 28, 2))  # centred window of every other frame
    train = ClipDataset([record], np.array([0]), store, frames=8, train=True, seed=5)
    again = ClipDataset([record], np.array([0]), store, frames=8, train=True, seed=5)
    windows = []
    for epoch in range(6):
        train.set_epoch(epoch)
        again.set_epoch(epoch)
        assert values(train) == values(again)
        windows.append(values(train)[0])
    assert len(set(windows)) > 1  # fresh windows each epoch
    assert clip_indices(3, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]


# ----------------------------------------------------------------------------------- end to end: class


def test_classifier_learns_a_separable_task_and_writes_artefacts(class_data, tmp_path):
    real_root, _ = class_data
    tracker = NullTracker()
    cfg = ClassificationConfig(**TINY_CLS)
    report = run_classification(cfg, real_root, tracker=tracker, out_dir=tmp_path)
    assert report.summary["accuracy"]["mean"] >= 0.9
    assert report.summary["auc"]["mean"] >= 0.9
    assert report.n_test == 10 and np.asarray(report.confusion).sum() == 2 * 10
    assert report.excluded == {"real/TEST/2": 1, "real/TRAIN/2": 1}
    assert all(f.n_train_real + f.n_val == 28 and f.n_train_synthetic == 0 for f in report.folds)
    assert tracker.last_metrics["classification/accuracy_mean"] == report.summary["accuracy"]["mean"]
    saved = json.loads((tmp_path / "classification.json").read_text())
    assert saved["class_names"] == ["ASD", "Non-ASD"] and len(saved["folds"]) == 2
    confusion_rows = pd.read_csv(tmp_path / "confusion_matrix.csv")
    assert list(confusion_rows.columns) == ["actual", "predicted"] and len(confusion_rows) == 20
    curve = pd.read_csv(tmp_path / "loss_curve.csv")
    assert list(curve.columns) == ["fold", "epoch", "train_loss", "val_loss"] and len(curve) == 2 * 6
    for png in ("confusion_matrix.png", "loss_curve.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classifier_trained_on_synthetic_only_is_tested_on_real(class_data):
    real_root, synth_root = class_data
    cfg = ClassificationConfig(**{**TINY_CLS, "train_on": "synthetic"})
    report = run_classification(cfg, real_root, synth_root)
    assert report.summary["accuracy"]["mean"] >= 0.9  # labels of CondValue rows map like the real ones
    assert all(f.n_train_real == 0 and f.n_train_synthetic == 16 for f in report.folds)
    assert set(report.predictions["FileName"]) <= {r.name for r in scan_video_folder(real_root, source="real")}
    with pytest.raises(UsageError, match="synthetic sample folder"):
        run_classification(cfg, real_root)


def test_classification_is_deterministic_given_the_seed():
    rng = np.random.default_rng(2)
    records = [VideoRecord(f"v{i}", "real", "TEST" if i >= 12 else "TRAIN", f"p{i // 2}", class_id=i % 2,
                           frames=blob_video(i % 2 == 0, rng, frames=12, size=16), fps=FPS) for i in range(16)]
    cfg = ClassificationConfig(**{**TINY_CLS, "size": 16, "epochs": 2})
    first, second = classify_records(cfg, records, []), classify_records(cfg, records, [])
    pd.testing.assert_frame_equal(first.predictions, second.predictions)
    pd.testing.assert_frame_equal(first.history, second.history)


# ------------------------------------------------------------------------------------ end to end: EF


@pytest.mark.slow
def test_ef_regression_trained_on_synthetic_predicts_real_ef(tmp_path):
    rng = np.random.default_rng(1)
    real_ef = rng.uniform(20, 80, 38)
    splits = ["TRAIN"] * 24 + ["VAL"] * 6 + ["TEST"] * 8
    real_rows = [{"FileName": f"r{i}", "EF": ef, "FPS": FPS, "Split": s}
                 for i, (ef, s) in enumerate(zip(real_ef, splits, strict=True))]
    write_folder(tmp_path / "real", real_rows, [heart_video(ef, rng) for ef in real_ef])
    synth_ef = rng.uniform(20, 80, 32)
    synth_rows = [{"FileName": f"sample_{i:06d}", "CondType": "ef", "CondValue": ef} for i, ef in enumerate(synth_ef)]
    write_folder(tmp_path / "samples", synth_rows, [heart_video(ef, rng) for ef in synth_ef], "mp4", ".mp4")
    # 16 frames at 15 fps cover a whole beat, so the contraction (the EF) is visible in every clip
    cfg = RegressionConfig(frames=16, fps=15, size=32, width=8, epochs=8, batch_size=4, lr=1e-2, seed=0)
    report = run_ef_regression(cfg, tmp_path / "samples", tmp_path / "real", out_dir=tmp_path / "out")
    assert report.synthetic_to_real["r2"] > 0.5 and report.synthetic_to_real["n"] == 8
    assert report.adherence["r2"] > 0.5 and report.adherence["n"] == 32
    assert report.real_to_real["n"] == 8
    saved = json.loads((tmp_path / "out" / "regression.json").read_text())
    assert saved["synthetic_to_real"]["mae"] == pytest.approx(report.synthetic_to_real["mae"])
    curve = pd.read_csv(tmp_path / "out" / "loss_curve.csv")
    assert set(curve["model"]) == {"synthetic", "real"} and len(curve) == 16
    assert (tmp_path / "out" / "ef_scatter.png").read_bytes()[:4] == b"\x89PNG"
