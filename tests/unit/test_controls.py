"""Negative controls: built from held-out videos only, in the sample layout, each spoiled the way it says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.latent_data import make_prepared_dataset

from echo_core.data.filelist import read_filelist, write_filelist
from echo_core.data.video import read_jpg_tree
from echo_core.errors import DataError, UsageError
from echo_core.evaluation.controls import (
    CONTROLS,
    applicable,
    build_control,
    build_controls,
    derangement,
    heldout_rows,
    motionless,
    shuffled,
    value_derangement,
)
from echo_core.generation.writers import describe_sample
from echo_core.utils.hashing import sha256_tree

FRAMES, FPS = 10, 32.0
# 12 videos; splits cycle TRAIN, TRAIN, VAL, TEST and lengths 8, 12, 16: held-out = 2 (16 f), 3 (8), 6 (8),
# 7 (12), 10 (12), 11 (16). At 10 frames, 3 is too short by its (doctored) FileList row only once decoded,
# 6 is too short by its FileList row; 2, 7, 10, 11 are usable.
HELDOUT = {"video_002", "video_003", "video_006", "video_007", "video_010", "video_011"}
USABLE = ["video_002", "video_007", "video_010", "video_011"]
GENERATED_COLUMNS = ["FileName", "CondType", "CondValue", "EF", "class_id", "Prompt", "Seed", "ConditioningFile",
                     "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]


def _dataset(root: Path, *, classes: bool = False) -> Path:
    make_prepared_dataset(root, num_videos=12)
    df = read_filelist(root / "FileList.csv")
    df.loc[df["FileName"] == "video_003", "NumberOfFrames"] = 16  # the FileList lies: 8 frames decode
    if classes:  # CardiacNet-like: class ids instead of EF, two held-out usable videos per class
        df = df.drop(columns=["EF"]).assign(class_id=[i % 2 for i in range(len(df))])
    write_filelist(df, root / "FileList.csv")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = _dataset(tmp_path_factory.mktemp("prepared"))
    out = tmp_path_factory.mktemp("controls")
    return {"prepared": root, **build_controls(root, out, frames=FRAMES, fps=FPS, seed=3)}


def _clips(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: read_jpg_tree(p, gray=True) for p in sorted((folder / "jpg").iterdir())}


def _gradient_energy(clip: np.ndarray) -> float:
    x = clip.astype(np.float64)
    return float((np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=2) ** 2).mean())


def test_every_applicable_control_is_built_from_held_out_videos_only(built):
    assert set(built) - {"prepared"} == set(CONTROLS) - {"class_permuted"}  # the dataset has EF, no class_id
    train = set(read_filelist(built["prepared"] / "FileList.csv").query("Split == 'TRAIN'")["FileName"])
    for name in set(built) - {"prepared"}:
        df = read_filelist(built[name] / "FileList.csv")
        assert sorted(df["FileName"]) == USABLE, name
        assert not train & set(df["FileName"]) and not train & {p.name for p in (built[name] / "jpg").iterdir()}
        assert set(df["SourceSplit"]) <= {"VAL", "TEST"}


def test_layout_is_the_sample_layout_and_reads_back(built):
    folder = built["noisy"]
    df = read_filelist(folder / "FileList.csv")
    assert list(df.columns[: len(GENERATED_COLUMNS)]) == GENERATED_COLUMNS
    assert {"TrueEF", "Control"} <= set(df.columns) and "true_class_id" not in df.columns
    assert (df["Split"] == "GENERATED").all() and (df["CondType"] == "ef").all()
    for _, row in df.iterrows():
        assert (folder / "mp4" / f"{row['FileName']}.mp4").is_file()
        assert sorted(p.name for p in (folder / "jpg" / row["FileName"]).iterdir())[0] == "0000.jpg"
        described = describe_sample(folder, row["FileName"], ["jpg", "mp4"], FPS)
        assert described == {"FrameHeight": 112, "FrameWidth": 112, "FPS": FPS, "NumberOfFrames": FRAMES}
        assert {k: row[k] for k in described} == described


def test_pixel_controls_are_spoiled_the_way_they_say(built):
    real, still, shuffle = _clips(built["positive"]), _clips(built["motionless"]), _clips(built["shuffled"])
    blur, noise = _clips(built["blurred"]), _clips(built["noisy"])
    for name, clip in real.items():
        assert clip.std(axis=0).max() > 0 and still[name].std(axis=0).max() == 0  # no motion at all
        np.testing.assert_array_equal(still[name][0], clip[0])
        assert sorted(f.tobytes() for f in shuffle[name]) == sorted(f.tobytes() for f in clip)  # same frames
        assert all((shuffle[name][t] != clip[t]).any() for t in range(FRAMES))  # none in its own place
        assert _gradient_energy(blur[name]) < 0.5 * _gradient_energy(clip)
        assert _gradient_energy(noise[name]) > 2 * _gradient_energy(clip)


def test_ef_permuted_keeps_pixels_but_no_row_keeps_its_true_ef(built):
    truth = read_filelist(built["prepared"] / "FileList.csv").set_index("FileName")["EF"]
    df = read_filelist(built["ef_permuted"] / "FileList.csv")
    assert (df["EF"] != df["TrueEF"]).all()
    assert sorted(df["EF"]) == sorted(df["TrueEF"]) == sorted(truth[USABLE])  # another held-out video's EF
    assert (df["TrueEF"].to_numpy() == truth[df["FileName"]].to_numpy()).all()
    assert list(df["CondValue"].astype(str)) == [f"{ef:g}" for ef in df["EF"]]
    positive = read_filelist(built["positive"] / "FileList.csv")
    assert (positive["EF"] == positive["TrueEF"]).all()
    assert sha256_tree(built["ef_permuted"] / "jpg") == sha256_tree(built["positive"] / "jpg")


def test_too_short_videos_are_recorded_not_dropped_silently(built):
    skipped = json.loads((built["positive"] / "control_params.json").read_text())["skipped"]
    assert set(skipped) == {"video_003", "video_006"}
    assert "decoded" in skipped["video_003"] and "FileList" in skipped["video_006"]


def test_seeded_controls_are_identical_bytes_and_a_complete_folder_is_reused(built, tmp_path):
    again = build_control(built["prepared"], "noisy", tmp_path / "noisy", frames=FRAMES, fps=FPS, seed=3)
    assert sha256_tree(again) == sha256_tree(built["noisy"])
    stamp = (again / "FileList.csv").stat().st_mtime_ns
    build_control(built["prepared"], "noisy", again, frames=FRAMES, fps=FPS, seed=3)
    assert (again / "FileList.csv").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = build_control(built["prepared"], "noisy", again, frames=FRAMES, fps=FPS, seed=4)  # new params
    assert sha256_tree(other / "jpg") != sha256_tree(built["noisy"] / "jpg")


def test_class_permuted_gives_every_video_another_class(tmp_path):
    root = _dataset(tmp_path / "cardiac", classes=True)
    assert "class_permuted" in applicable(heldout_rows(root)) and "ef_permuted" not in applicable(heldout_rows(root))
    out = build_control(root, "class_permuted", tmp_path / "cp", frames=FRAMES, fps=FPS, seed=0, formats=["jpg"])
    df = read_filelist(out / "FileList.csv")
    assert len(df) == 4 and (df["class_id"] != df["true_class_id"]).all() and (df["CondType"] == "class_id").all()
    assert sorted(df["class_id"]) == sorted(df["true_class_id"])
    with pytest.raises(UsageError, match="ef"):
        build_control(root, "ef_permuted", tmp_path / "ep", frames=FRAMES, fps=FPS)


def test_no_held_out_rows_is_a_data_error_naming_the_file(tmp_path):
    root = make_prepared_dataset(tmp_path / "train_only", num_videos=2, splits=("TRAIN",))
    with pytest.raises(DataError, match="no VAL/TEST rows") as info:
        build_control(root, "positive", tmp_path / "out", frames=4, fps=FPS)
    assert str(root / "FileList.csv") in str(info.value) and info.value.fix
    with pytest.raises(UsageError, match="TRAIN"):
        heldout_rows(root, splits=("TRAIN", "VAL"))


def test_a_foreign_folder_is_refused_and_unknown_names_are_value_errors(built, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a control folder"):
        build_control(built["prepared"], "positive", tmp_path / "mine", frames=FRAMES, fps=FPS)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown control"):
        build_controls(built["prepared"], tmp_path / "x", names=["positive", "sharpened"], frames=FRAMES)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("n", [2, 3, 5, 16])
def test_derangements_have_no_fixed_point(n):
    for seed in range(20):
        order = derangement(n, np.random.default_rng(seed))
        assert sorted(order) == list(range(n)) and (order != np.arange(n)).all()
    clip = np.arange(n, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)
    assert (shuffled(clip, np.random.default_rng(0))[:, 0, 0] != np.arange(n)).all()
    assert (motionless(clip, np.random.default_rng(0)) == clip[0]).all()


def test_value_derangement_handles_ties_and_refuses_the_impossible():
    values = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    for seed in range(20):
        order = value_derangement(values, np.random.default_rng(seed))
        assert sorted(order) == list(range(len(values))) and (values[order] != values).all()
    with pytest.raises(DataError, match="share one"):
        value_derangement([3, 3, 3, 1], np.random.default_rng(0))
    with pytest.raises(DataError):
        value_derangement([50.0], np.random.default_rng(0))


def test_label_controls_only_where_the_filelist_has_the_column():
    assert "ef_permuted" in applicable(pd.DataFrame({"EF": [50.0]}))
    assert "class_permuted" not in applicable(pd.DataFrame({"EF": [50.0]}))
    assert applicable(pd.DataFrame({"FileName": ["a"]})) == ["positive", "motionless", "shuffled", "blurred",
                                                             "noisy"]
