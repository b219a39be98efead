"""echo_core.data.filelist: schemas, structural reading, atomic writing, and safe path resolution."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from echo_core.data.filelist import (
    CARDIACNET_CLASSES,
    CARDIACNET_CONDITIONS,
    PREPARED_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
    SYNTHETIC_SPLITS,
    DatasetKind,
    class_id_for,
    dataset_kind,
    fold_to_split,
    pediatric_view,
    read_filelist,
    read_volume_tracings,
    resolve_video,
    safe_member,
    strip_extension,
    write_filelist,
    write_volume_tracings,
)
from echo_core.errors import DataError, UsageError

DYNAMIC_HEADER = "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"


# ------------------------------------------------------------------------------------------ reading CSVs


def test_crlf_and_extra_columns_are_kept_in_order(tmp_path):
    path = tmp_path / "FileList.csv"
    rows = [
        "Site," + DYNAMIC_HEADER + ",Note",
        "A,0X1A2B,55.5,30,70,112,112,50,174,TRAIN,ok",
        "B,1E5,60,20,50,112,112,30,120,VAL,",
        "C,0123,45,25,45,112,112,30,99,TEST,x",
    ]
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode())
    df = read_filelist(path, DatasetKind.DYNAMIC)
    assert list(df.columns) == ["Site", *DYNAMIC_HEADER.split(","), "Note"]
    # FileName is never coerced to a number: "1E5" stays "1E5", "0123" keeps its zero
    assert df["FileName"].tolist() == ["0X1A2B", "1E5", "0123"]
    assert df["Split"].tolist() == ["TRAIN", "VAL", "TEST"]  # no trailing "\r"
    assert df["EF"].tolist() == [55.5, 60.0, 45.0]


def test_values_are_not_judged_here(tmp_path):
    # NaN / out-of-range EF and unknown splits are reported by the GX suites, with all other bad rows
    path = tmp_path / "FileList.csv"
    path.write_text(DYNAMIC_HEADER + "\nv1,,1,2,112,112,50,10,TRAIN\nv2,250,1,2,112,112,50,10,SOMETIMES\n")
    df = read_filelist(path, "dynamic", prepared=True)
    assert np.isnan(df.loc[0, "EF"]) and df.loc[1, "EF"] == 250
    assert df.loc[1, "Split"] == "SOMETIMES"


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "FileList.csv"
    path.write_bytes(b"\xef\xbb\xbfFileName,EF,Split\nv1.avi,50,3\n")
    assert list(read_filelist(path, "pediatric-a4c").columns) == ["FileName", "EF", "Split"]


def test_non_utf8_file_names_offset_line_and_fix(tmp_path):
    path = tmp_path / "FileList.csv"
    path.write_bytes("FileName,EF,Split\nv1.avi,50,3\nCaf\u00e9.avi,60,8\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        read_filelist(path, DatasetKind.PEDIATRIC)
    message = str(info.value)
    offset = len(b"FileName,EF,Split\nv1.avi,50,3\nCaf")
    assert str(path) in message and f"offset {offset}" in message and "line 3" in message
    assert "0xe9" in message and "re-save the file as UTF-8" in message


def test_missing_columns_are_named_with_the_file(tmp_path):
    path = tmp_path / "FileList.csv"
    path.write_text("FileName, EF\nv1,50\n")
    with pytest.raises(DataError) as info:
        read_filelist(path, DatasetKind.PEDIATRIC)
    message = str(info.value)
    assert str(path) in message and "missing column(s) EF, Split" in message
    assert "' EF' -> 'EF'" in message  # the near miss is pointed at


def test_prepared_schema_is_stricter_than_raw(tmp_path):
    path = tmp_path / "FileList.csv"
    path.write_text("FileName,EF,Split,Sex,Age\nv1.avi,50,3,F,4\n")
    raw = read_filelist(path, DatasetKind.PEDIATRIC)
    assert list(raw.columns) == ["FileName", "EF", "Split", "Sex", "Age"]
    with pytest.raises(DataError, match="Fold, FrameHeight, FrameWidth, FPS, NumberOfFrames"):
        read_filelist(path, DatasetKind.PEDIATRIC, prepared=True)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_filelist(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_filelist(tmp_path / "empty.csv")


def test_schemas_cover_every_kind():
    for kind in DatasetKind:
        assert "FileName" in REQUIRED_COLUMNS[kind] and "Split" in PREPARED_COLUMNS[kind]
        assert set(REQUIRED_COLUMNS[kind]) <= set(PREPARED_COLUMNS[kind])
    assert list(PREPARED_COLUMNS[DatasetKind.DYNAMIC]) == DYNAMIC_HEADER.split(",")
    assert PREPARED_COLUMNS[DatasetKind.CARDIACNET]["class_id"] == "int"


# ----------------------------------------------------------------------------------------------- writing


def test_write_filelist_round_trip_lf_no_index(tmp_path):
    df = pd.DataFrame({"FileName": ["0123", "a.b"], "EF": [50.5, 60.0], "Split": ["TRAIN", "VAL"], "Extra": ["é", ""]})
    path = write_filelist(df, tmp_path / "out" / "FileList.csv")
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.startswith(b"FileName,EF,Split,Extra\n")
    assert "é".encode() in raw
    back = read_filelist(path)
    assert back["FileName"].tolist() == ["0123", "a.b"] and back["EF"].tolist() == [50.5, 60.0]
    assert [p.name for p in path.parent.iterdir()] == ["FileList.csv"]


def test_volume_tracings_per_kind(tmp_path):
    dynamic = pd.DataFrame({"FileName": ["v1.avi"], "X1": [1.0], "Y1": [2.0], "X2": [3.0], "Y2": [4.0], "Frame": [46]})
    path = write_volume_tracings(dynamic, tmp_path / "VolumeTracings.csv")
    assert read_volume_tracings(path, "dynamic").equals(dynamic)
    with pytest.raises(DataError, match="missing column"):
        read_volume_tracings(path, "pediatric-psax")
    pediatric = pd.DataFrame({"FileName": ["p1.avi"], "X": [1.5], "Y": [2.5], "Frame": [3]})
    write_volume_tracings(pediatric, path)
    assert read_volume_tracings(path, DatasetKind.PEDIATRIC)["X"].tolist() == [1.5]
    with pytest.raises(DataError, match="no VolumeTracings"):
        read_volume_tracings(path, DatasetKind.CARDIACNET)


# -------------------------------------------------------------------------------------------------- paths


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "Videos").mkdir(parents=True)
    (root / "Videos" / "a.avi").write_bytes(b"x")
    (root / "Videos" / "b.mp4").write_bytes(b"x")
    (root / "Videos" / "c.d.avi").write_bytes(b"x")
    (tmp_path / "secret.avi").write_bytes(b"x")
    return root


@pytest.mark.parametrize("bad", ["../x", "Videos/../../secret.avi", "..\\secret.avi", "/etc/passwd", "C:\\x", ""])
def test_safe_member_rejects_escapes(dataset, bad):
    with pytest.raises(DataError) as info:
        safe_member(dataset, bad)
    assert repr(bad) in str(info.value) and str(dataset) in str(info.value)


def test_safe_member_rejects_symlinks_leaving_the_root(dataset):
    os.symlink(dataset.parent / "secret.avi", dataset / "Videos" / "link.avi")
    os.symlink(dataset.parent, dataset / "Videos" / "up")
    with pytest.raises(DataError, match="outside the root"):
        safe_member(dataset, "Videos/link.avi")
    with pytest.raises(DataError, match="outside the root"):
        safe_member(dataset, "Videos/up/secret.avi")
    with pytest.raises(DataError, match="outside the root"):
        resolve_video(dataset, "link")


def test_safe_member_accepts_names_and_links_inside_the_root(dataset):
    os.symlink(dataset / "Videos" / "a.avi", dataset / "Videos" / "alias.avi")
    assert safe_member(dataset, "Videos/a.avi") == dataset / "Videos" / "a.avi"
    assert safe_member(dataset, "Videos/alias.avi").is_file()


def test_resolve_video_with_or_without_extension(dataset):
    videos = dataset / "Videos"
    assert resolve_video(dataset, "a") == videos / "a.avi"
    assert resolve_video(dataset, "a.avi") == videos / "a.avi"
    assert resolve_video(dataset, "b") == videos / "b.mp4"
    assert resolve_video(dataset, "b.avi") == videos / "b.mp4"  # extension in the CSV is stale
    assert resolve_video(dataset, "c.d") == videos / "c.d.avi"


def test_resolve_video_missing_names_the_paths_tried(dataset):
    with pytest.raises(DataError) as info:
        resolve_video(dataset, "zzz")
    message = str(info.value)
    assert "'zzz'" in message and "zzz.avi" in message and "zzz.mp4" in message
    with pytest.raises(DataError, match="contains '..'"):
        resolve_video(dataset, "../secret")


def test_strip_extension_only_drops_video_extensions():
    assert strip_extension("a.b.avi") == "a.b"
    assert strip_extension("X.AVI") == "X"
    assert strip_extension("clip.mp4") == "clip"
    assert strip_extension("a.b") == "a.b"
    assert strip_extension("0X1A2B") == "0X1A2B"
    assert strip_extension(".avi") == ".avi"


# ---------------------------------------------------------------------------------- kinds, splits, classes


def test_fold_to_split():
    assert [fold_to_split(f) for f in range(10)] == ["TRAIN"] * 8 + ["VAL", "TEST"]
    assert fold_to_split(np.int64(8)) == "VAL"
    for bad in (-1, 10, 2.5, "TRAIN", True, None):
        with pytest.raises(DataError, match="fold must be an integer 0-9"):
            fold_to_split(bad)
    assert SPLITS == ("TRAIN", "VAL", "TEST") and SYNTHETIC_SPLITS == ("GENERATED", "EXTRA")


def test_cardiacnet_class_map():
    assert CARDIACNET_CLASSES == {0: "ASD", 1: "Non-ASD", 2: "Non-PAH", 3: "PAH"}
    assert [class_id_for(n) for n in ("ASD", "Non-ASD", "Non-PAH", "PAH")] == [0, 1, 2, 3]
    assert {n for pair in CARDIACNET_CONDITIONS.values() for n in pair} == set(CARDIACNET_CLASSES.values())
    with pytest.raises(DataError, match="unknown CardiacNet class 'Normal'"):
        class_id_for("Normal")


def test_dataset_kinds():
    assert DatasetKind("dynamic") is DatasetKind.DYNAMIC and DatasetKind.DYNAMIC == "dynamic"
    assert dataset_kind("pediatric-a4c") is DatasetKind.PEDIATRIC
    assert dataset_kind("Pediatric-PSAX") is DatasetKind.PEDIATRIC
    assert dataset_kind(DatasetKind.CARDIACNET) is DatasetKind.CARDIACNET
    assert (pediatric_view("pediatric-psax"), pediatric_view("dynamic")) == ("PSAX", None)
    with pytest.raises(UsageError, match="pediatric-a4c"):
        dataset_kind("echonet")
