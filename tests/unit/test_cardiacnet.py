"""CardiacNet import: image volumes only, fixed class map, orientation, per-volume intensity window,
seeded patient-level stratified split, errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from echo_core.data.cardiacnet import (
    COLUMNS,
    CardiacNetConfig,
    assign_splits,
    load_volume,
    normalise_volume,
    plan_cardiacnet,
    split_counts,
)
from echo_core.data.filelist import CARDIACNET_CLASSES, read_filelist
from echo_core.data.prepare import PrepareConfig, prepare_dataset
from echo_core.data.video import read_video
from echo_core.errors import ConfigError, DataError
from echo_core.utils.hashing import sha256_tree

SMALL_CN = CardiacNetConfig(size=32, fps=16.0)
SMALL = PrepareConfig(cardiacnet=SMALL_CN)
X, Y, T = 24, 20, 6


def _volume(seed: int) -> np.ndarray:
    """(X, Y, T) float volume with a global intensity ramp over time (brighter every frame)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 100, size=(X, Y, 1))
    return (base + 40.0 * np.arange(T)[None, None, :]).astype(np.float32)


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine=np.eye(4)), str(path))
    return path


def make_cardiacnet(root: Path, patients: dict[str, int], label_files: bool = True) -> Path:
    """Kaggle layout: CardiacNet-<COND>/<class>/<n>/<n>_image.nii (+ <n>_label.nii mask)."""
    for class_name, count in patients.items():
        condition = class_name.removeprefix("Non-")
        for n in range(1, count + 1):
            folder = root / f"CardiacNet-{condition}" / class_name / f"{n:03d}"
            _save(folder / f"{n:03d}_image.nii", _volume(sum(map(ord, class_name)) * 100 + n))
            if label_files:
                _save(folder / f"{n:03d}_label.nii", np.ones((X, Y, T), np.uint8))
    return root


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return make_cardiacnet(tmp_path / "kaggle", {"ASD": 3, "Non-ASD": 4, "PAH": 3, "Non-PAH": 3})


def test_import_columns_names_class_ids_and_stated_fps(raw: Path, tmp_path: Path):
    dst = tmp_path / "cardiacnet"
    report = prepare_dataset("cardiacnet", raw, dst, config=SMALL)
    df = read_filelist(dst / "FileList.csv", "cardiacnet", prepared=True)
    assert tuple(df.columns) == COLUMNS
    assert len(df) == report.count == 13  # label volumes are not rows
    assert df["FileName"].tolist()[:4] == ["asd_001", "asd_002", "asd_003", "non-asd_001"]
    assert df["patient_id"].tolist()[:2] == ["asd_1", "asd_2"]
    for row in df.itertuples():
        assert CARDIACNET_CLASSES[row.class_id] == row.class_name
        assert row.condition == row.class_name.removeprefix("Non-")
    assert (df["FPS"] == 16.0).all() and (df["FrameHeight"] == 32).all() and (df["NumberOfFrames"] == T).all()
    frames, fps = read_video(dst / "Videos" / "asd_001.mp4")
    assert frames.shape == (T, 32, 32) and fps == 16.0
    manifest = json.loads((dst / "manifest.json").read_text())
    assert "not the acquisition rate" in manifest["notes"]["fps"]
    assert manifest["notes"]["skipped_label_files"] == 13
    assert manifest["params"]["fps"] == 16.0 and manifest["params"]["seed"] == 42


def test_label_files_are_skipped_not_converted(raw: Path, tmp_path: Path):
    plan = plan_cardiacnet(raw, tmp_path / "out", config=SMALL_CN)
    sources = [Path(job.source).name for job in plan.jobs]
    assert all(name.endswith("_image.nii") for name in sources) and len(sources) == 13
    # a patient folder with only a mask has no image: an error, not a video made of the mask
    (raw / "CardiacNet-ASD" / "ASD" / "001" / "001_image.nii").unlink()
    with pytest.raises(DataError, match=r"ASD/001 holds 0 image volume"):
        plan_cardiacnet(raw, tmp_path / "out", config=SMALL_CN)


def test_class_ids_come_from_the_fixed_map_not_listdir_order(tmp_path: Path):
    raw = make_cardiacnet(tmp_path / "only_pah", {"PAH": 2}, label_files=False)
    dst = tmp_path / "out"
    prepare_dataset("cardiacnet", raw, dst, config=SMALL)
    df = read_filelist(dst / "FileList.csv")
    assert df["class_id"].tolist() == [3, 3] and df["class_name"].tolist() == ["PAH", "PAH"]


def test_unknown_class_folder_or_patient_name_is_an_error(raw: Path, tmp_path: Path):
    bad = raw / "CardiacNet-ASD" / "Normal" / "001"
    _save(bad / "001_image.nii", _volume(0))
    with pytest.raises(DataError, match=r"unknown class folder .*Normal"):
        plan_cardiacnet(raw, tmp_path / "out")
    (bad / "001_image.nii").unlink()
    bad.rmdir()
    bad.parent.rmdir()
    _save(raw / "CardiacNet-PAH" / "PAH" / "patient_x" / "x_image.nii", _volume(1))
    with pytest.raises(DataError, match="cannot read a patient number from .*patient_x"):
        plan_cardiacnet(raw, tmp_path / "out")


def test_orientation_is_rot90_then_left_right_flip(tmp_path: Path):
    vol = np.zeros((X, Y, 2), np.float32)
    vol[0, 0, :] = 1.0  # voxel (x=0, y=0)
    vol[X - 1, 0, :] = 2.0  # voxel (x=X-1, y=0)
    frames = load_volume(_save(tmp_path / "v.nii", vol))
    assert frames.shape == (2, Y, X)  # (T, H, W): rows are y, columns are x
    # documented mapping: frame[row, col] = volume[X-1-col, Y-1-row]
    assert frames[0, Y - 1, X - 1] == 1.0 and frames[0, Y - 1, 0] == 2.0
    assert np.array_equal(frames[1], vol[::-1, ::-1, 1].T)


def test_intensity_window_is_per_volume_so_a_ramp_stays_a_ramp(raw: Path, tmp_path: Path):
    vol = np.moveaxis(_volume(5), 2, 0)
    frames = normalise_volume(vol)
    means = frames.reshape(T, -1).mean(axis=1)
    assert np.all(np.diff(means) > 20)  # per-frame min-max would make every frame's mean about equal
    assert frames.min() == 0 and frames.max() == 255
    # and through the whole pipeline (MP4 written, decoded back)
    dst = tmp_path / "out"
    prepare_dataset("cardiacnet", raw, dst, config=SMALL)
    video, _ = read_video(dst / "Videos" / "pah_002.mp4")
    assert np.all(np.diff(video.reshape(T, -1).mean(axis=1)) > 20)


def test_constant_volume_is_an_error_and_nothing_is_written(raw: Path, tmp_path: Path):
    _save(raw / "CardiacNet-PAH" / "PAH" / "002" / "002_image.nii", np.full((X, Y, T), 7.0, np.float32))
    dst = tmp_path / "out"
    with pytest.raises(DataError, match=r"PAH/002/002_image.nii.*constant"):
        prepare_dataset("cardiacnet", raw, dst, config=SMALL)
    assert not dst.exists()


def test_split_counts_cover_every_split_from_three_patients():
    assert split_counts(3, (0.7, 0.15, 0.15)) == (1, 1, 1)
    assert split_counts(10, (0.7, 0.15, 0.15)) == (7, 2, 1)
    assert split_counts(100, (0.8, 0.1, 0.1)) == (80, 10, 10)
    assert split_counts(2, (0.7, 0.15, 0.15)) == (2, 0, 0)
    assert split_counts(5, (1.0, 0.0, 0.0)) == (5, 0, 0)
    for n in range(3, 40):
        counts = split_counts(n, (0.7, 0.15, 0.15))
        assert sum(counts) == n and min(counts) >= 1


def test_patient_level_stratified_seeded_split():
    # several videos per patient: all of a patient's videos must share one split
    rows = [{"patient_id": f"{c.lower()}_{p}", "class_name": c} for c in ("ASD", "Non-ASD", "PAH")
            for p in range(12) for _ in range(3)]
    patients = pd.DataFrame(rows)
    split_of, warnings = assign_splits(patients, (0.7, 0.15, 0.15), seed=1)
    assert not warnings and set(split_of) == set(patients["patient_id"])
    patients["Split"] = patients["patient_id"].map(split_of)
    assert patients.groupby("patient_id")["Split"].nunique().max() == 1
    per_class = patients.drop_duplicates("patient_id").groupby(["class_name", "Split"]).size().unstack()
    assert (per_class[["TRAIN", "VAL", "TEST"]].to_numpy() == [8, 2, 2]).all()
    assert assign_splits(patients, (0.7, 0.15, 0.15), seed=1)[0] == split_of
    assert assign_splits(patients, (0.7, 0.15, 0.15), seed=2)[0] != split_of
    _, warnings = assign_splits(pd.DataFrame([{"patient_id": "pah_1", "class_name": "PAH"}]), (0.7, 0.15, 0.15), 0)
    assert warnings == ["class PAH has 1 patient(s); some splits have none of it"]


def test_split_in_output_is_stratified_and_exclusion_does_not_reshuffle(raw: Path, tmp_path: Path):
    full = plan_cardiacnet(raw, tmp_path / "a", config=SMALL_CN)
    split_full = {j.file_name: j.row["Split"] for j in full.jobs}
    for class_name in CARDIACNET_CLASSES.values():
        assert {s for n, s in split_full.items() if n.startswith(class_name.lower() + "_")} == {
            "TRAIN", "VAL", "TEST"}
    part = plan_cardiacnet(raw, tmp_path / "b", config=SMALL_CN, exclude={"asd_002"})
    assert part.excluded == ("asd_002",)
    assert {j.file_name: j.row["Split"] for j in part.jobs} == {
        n: s for n, s in split_full.items() if n != "asd_002"}


def test_bad_split_ratios_are_config_errors():
    from echo_core.config import validate_config

    with pytest.raises(ConfigError, match="sum to 1"):
        validate_config(PrepareConfig, {"cardiacnet": {"split_ratios": [0.5, 0.2, 0.2]}})
    with pytest.raises(ConfigError, match="low < high"):
        validate_config(PrepareConfig, {"cardiacnet": {"intensity_percentiles": [50, 10]}})


def test_raw_tree_is_not_modified_and_rerun_is_identical(raw: Path, tmp_path: Path):
    before = sha256_tree(raw)
    one = prepare_dataset("cardiacnet", raw, tmp_path / "one", config=SMALL)
    two = prepare_dataset("cardiacnet", raw, tmp_path / "two", config=SMALL)
    assert sha256_tree(raw) == before
    assert one.sha256 == two.sha256  # byte-deterministic MP4s and FileList


def test_phantom_cardiacnet(tmp_path: Path):
    from echo_core.data.phantom.datasets import generate_dataset, to_nifti_layout

    raw = generate_dataset("cardiacnet", tmp_path / "raw", num_videos=8, seed=0, num_frames=12)
    dst = tmp_path / "out"
    report = prepare_dataset("cardiacnet", raw, dst, config=SMALL)
    df = read_filelist(dst / "FileList.csv", "cardiacnet", prepared=True)
    truth = pd.read_csv(raw / "GROUND_TRUTH.csv")
    assert report.count == len(df) == len(truth) == 8
    expected = {f"{c.lower()}_{p:03d}": cid for c, p, cid in truth[["class_name", "patient_number", "class_id"]]
                .itertuples(index=False)}
    assert dict(zip(df["FileName"], df["class_id"], strict=True)) == expected
    assert json.loads((dst / "manifest.json").read_text())["notes"]["skipped_label_files"] == 8
    assert (df["NumberOfFrames"] == 12).all() and df["Split"].isin(["TRAIN", "VAL", "TEST"]).all()
    # the phantom's documented storage convention is undone exactly by the import orientation
    upright = np.random.default_rng(0).random((3, 10, 14)).astype(np.float32)
    assert np.array_equal(load_volume(_save(tmp_path / "o.nii", to_nifti_layout(upright))), upright)
