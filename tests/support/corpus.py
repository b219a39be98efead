"""Bad-input corpus: broken copies of a small valid dataset, one defect each, and quirks that must pass.

Every `break_*` / quirk function edits a dataset folder (FileList.csv + Videos/) IN PLACE and returns the
FileName of the row it touched ("" for file-level defects), so a test can check that the error names it.
`make_case(base, out, case)` copies a valid base first. The functions work on any valid dynamic-schema
dataset (the tiny `make_fixture_dataset` here, or a phantom dataset).

    base = make_fixture_dataset(tmp / "base")
    root, file_name = make_case(base, tmp / "ef", CASES["ef_out_of_range"])
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echo_core.data.filelist import CARDIACNET_CLASSES, resolve_video
from echo_core.data.video import write_video

TARGET_ROW = 1  # the row every defect goes into (FileList.csv line 3), so it is never the first row


# ------------------------------------------------------------------------------------------------ base


def fixture_frames(rng: np.random.Generator, num_frames: int = 8, height: int = 112, width: int = 112,
                   rgb: bool = False) -> np.ndarray:
    """A smooth moving blob on noise: (T, H, W) or (T, H, W, 3) uint8 (channels differ when rgb)."""
    yy, xx = np.mgrid[:height, :width]
    frames = []
    for t in range(num_frames):
        cy, cx = height / 2 + 10 * np.sin(t / 3), width / 2
        blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.2 * min(height, width)) ** 2))
        frames.append(blob + rng.normal(0, 8, (height, width)))
    gray = np.clip(np.stack(frames), 0, 255).astype(np.uint8)
    if not rgb:
        return gray
    return np.stack([gray, np.roll(gray, 3, axis=2), 255 - gray], axis=-1)  # genuinely 3 distinct channels


def make_fixture_dataset(out: str | Path, *, kind: str = "dynamic", num_videos: int = 6, num_frames: int = 8,
                         fps: float = 30.0, seed: int = 0) -> Path:
    """A small valid raw dataset: FileList.csv (the kind's raw schema) + Videos/ (112x112 gray).

    dynamic: .avi, splits TRAIN/VAL/TEST; pediatric: FileName with .avi, Split folds 0-9;
    cardiacnet: .mp4, classes from the fixed map, split TRAIN/VAL/TEST.
    """
    root = Path(out)
    (root / "Videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_videos):
        name, ext = (f"0X{seed:02d}{i:04X}", ".avi") if kind != "cardiacnet" else (f"asd_{i:03d}", ".mp4")
        write_video(root / "Videos" / f"{name}{ext}", fixture_frames(rng, num_frames), fps)
        rows.append(_fixture_row(kind, i, name, rng, num_frames, fps))
    pd.DataFrame(rows).to_csv(root / "FileList.csv", index=False, lineterminator="\n")
    return root


def _fixture_row(kind: str, i: int, name: str, rng: np.random.Generator, num_frames: int, fps: float) -> dict:
    meta = {"FrameHeight": 112, "FrameWidth": 112, "FPS": fps, "NumberOfFrames": num_frames}
    split = ("TRAIN", "TRAIN", "VAL", "TEST")[i % 4]
    ef = round(float(rng.uniform(30, 70)), 2)
    if kind == "dynamic":
        edv = round(float(rng.uniform(80, 160)), 2)
        return {"FileName": name, "EF": ef, "ESV": round(edv * (1 - ef / 100), 2), "EDV": edv, **meta,
                "Split": split}
    if kind == "pediatric":
        return {"FileName": f"{name}.avi", "EF": ef, "Split": i % 10, "Sex": "F", "Age": 7}
    class_id = i % len(CARDIACNET_CLASSES)
    class_name = CARDIACNET_CLASSES[class_id]
    return {"FileName": name, "condition": "PAH" if "PAH" in class_name else "ASD", "class_name": class_name,
            "class_id": class_id, "patient_id": name, **meta, "Split": split}


def copy_dataset(src: str | Path, dst: str | Path) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


# ------------------------------------------------------------------------------------------------ edits


def read_raw(root: Path) -> pd.DataFrame:
    """FileList.csv exactly as text (no NaN parsing), so an edit changes only what it means to change."""
    return pd.read_csv(root / "FileList.csv", dtype=str, keep_default_na=False)


def write_raw(root: Path, df: pd.DataFrame, *, encoding: str = "utf-8", lineterminator: str = "\n") -> None:
    text = df.to_csv(index=False, lineterminator=lineterminator)
    (root / "FileList.csv").write_bytes(text.encode(encoding))


def set_value(root: Path, column: str, value: str, row: int = TARGET_ROW) -> str:
    df = read_raw(root)
    df.loc[row, column] = value
    write_raw(root, df)
    return df.loc[row, "FileName"]


def target_video(root: Path, row: int = TARGET_ROW) -> tuple[str, Path]:
    name = read_raw(root).loc[row, "FileName"]
    return name, resolve_video(root, name)


# ------------------------------------------------------------------------------------------------ defects


def break_missing_column(root: Path, column: str = "EF") -> str:
    write_raw(root, read_raw(root).drop(columns=[column]))
    return ""


def break_nan_ef(root: Path) -> str:
    return set_value(root, "EF", "")


def break_ef_out_of_range(root: Path, value: float = 140.0) -> str:
    return set_value(root, "EF", str(value))


def break_duplicate_file_name(root: Path) -> str:
    df = read_raw(root)
    df.loc[TARGET_ROW, "FileName"] = df.loc[TARGET_ROW + 1, "FileName"]
    write_raw(root, df)
    return df.loc[TARGET_ROW, "FileName"]


def break_unknown_split(root: Path, label: str = "TRAINING") -> str:
    return set_value(root, "Split", label)


def break_unreadable_video(root: Path) -> str:
    name, path = target_video(root)
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return name


def break_zero_byte_video(root: Path) -> str:
    name, path = target_video(root)
    path.write_bytes(b"")
    return name


def break_truncated_video(root: Path, keep: float = 0.4) -> str:
    name, path = target_video(root)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return name


def break_wrong_resolution(root: Path, height: int = 96, width: int = 128) -> str:
    """Re-encode the target video at 128x96 (W x H) while the FileList still claims 112x112."""
    name, path = target_video(root)
    write_video(path, fixture_frames(np.random.default_rng(2), 8, height, width), 30.0)
    return name


def break_path_traversal(root: Path) -> str:
    name = "../" + read_raw(root).loc[TARGET_ROW, "FileName"]
    set_value(root, "FileName", name)
    return name


def break_non_utf8(root: Path) -> str:
    """Latin-1 'é' in a cell value: a typical spreadsheet export."""
    df = read_raw(root)
    df["Comment"] = ""
    df.loc[TARGET_ROW, "Comment"] = "échographie"
    write_raw(root, df, encoding="latin-1")
    return ""


# ------------------------------------------------------------------------------------------------ quirks


def quirk_three_channel_videos(root: Path) -> str:
    """Every video re-encoded as RGB with distinct channels (real scanner exports are often colour)."""
    rng = np.random.default_rng(3)
    for name in read_raw(root)["FileName"]:
        write_video(resolve_video(root, name), fixture_frames(rng, 8, rgb=True), 30.0)
    return ""


def quirk_mixed_fps(root: Path) -> str:
    """The target video at 50 fps (FileList says so) while the others stay at 30."""
    name, path = target_video(root)
    write_video(path, fixture_frames(np.random.default_rng(4), 8), 50.0)
    set_value(root, "FPS", "50.0")
    return name


def quirk_crlf_line_endings(root: Path) -> str:
    write_raw(root, read_raw(root), lineterminator="\r\n")
    return ""


def quirk_extra_columns(root: Path) -> str:
    df = read_raw(root)
    df["Operator"], df["Notes"] = "tech-1", "ok"
    write_raw(root, df)
    return ""


# ------------------------------------------------------------------------------------------------ catalogue


@dataclass(frozen=True)
class Case:
    name: str
    apply: Callable[[Path], str]
    field: str  # the field the error must name ("" for quirks)
    row_level: bool  # True: --quarantine sets the row aside and the rest validates


CASES = {c.name: c for c in [
    Case("missing_column", break_missing_column, "EF", row_level=False),
    Case("nan_ef", break_nan_ef, "EF", row_level=True),
    Case("ef_out_of_range", break_ef_out_of_range, "EF", row_level=True),
    Case("duplicate_file_name", break_duplicate_file_name, "FileName", row_level=True),
    Case("unknown_split", break_unknown_split, "Split", row_level=True),
    Case("unreadable_video", break_unreadable_video, "video", row_level=True),
    Case("zero_byte_video", break_zero_byte_video, "video", row_level=True),
    Case("truncated_video", break_truncated_video, "video", row_level=True),
    Case("wrong_resolution", break_wrong_resolution, "video", row_level=True),
    Case("path_traversal", break_path_traversal, "FileName", row_level=True),
    Case("non_utf8", break_non_utf8, "FileList", row_level=False),
]}

QUIRKS = {c.name: c for c in [
    Case("three_channel_videos", quirk_three_channel_videos, "", row_level=False),
    Case("mixed_fps", quirk_mixed_fps, "", row_level=False),
    Case("extra_columns", quirk_extra_columns, "", row_level=False),
    Case("crlf_line_endings", quirk_crlf_line_endings, "", row_level=False),  # last: other edits rewrite LF
]}


def make_case(base: str | Path, out: str | Path, *cases: Case) -> tuple[Path, list[str]]:
    """Copy `base` to `out` and apply `cases` in order; returns (root, FileNames each case touched)."""
    root = copy_dataset(base, out)
    return root, [case.apply(root) for case in cases]

