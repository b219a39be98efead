"""Clips for downstream evaluation, from real prepared datasets and generated sample folders alike.

One loader accepts both layouts, because the point of the evaluation is to treat them identically:

    ROOT/FileList.csv                       one row per video; `FileName` with or without extension
    ROOT/Videos/<FileName>.avi|.mp4         prepared datasets (`echoforge data prepare`)
    ROOT/mp4/<FileName>.mp4  or  ROOT/avi/  generated samples (the first of Videos/, mp4/, avi/ that exists)

Columns read (others are ignored):
    Split        TRAIN / VAL / TEST (real; required). Synthetic rows may carry anything (GENERATED): every
                 synthetic video is training data and never enters validation or test.
    patient_id   groups videos for patient-level folds; missing -> each video is its own patient.
    class_id     CardiacNet class id in the fixed map `CARDIACNET_CLASSES` (0 ASD, 1 Non-ASD, 2 Non-PAH, 3 PAH);
                 or, for samples, `CondType` in {class_id, class} with the id in `CondValue`. If `class_name`
                 is present it must agree with the fixed map (a converter that numbered classes in listdir
                 order, seed §8 item 11, is caught here instead of silently swapping labels).
    EF           ejection fraction in percent; or `CondType` in {ef, lvef} with the EF in `CondValue`.

Frames: gray uint8, resampled to a fixed `fps` with `resample_indices` (sample-and-hold; the container's
frame rate is used, never the CSV's FPS column, which generated FileLists have got wrong: seed §8 item 9),
resized to `size` x `size`, then one window of `frames` consecutive frames: a seeded random start for
training, the centred window for evaluation (deterministic). Videos shorter than the window are looped
(a heart cycle repeats; padding with a frozen frame would invent a still heart). Clips are float in [0, 1].

Tests and notebooks can skip files: a `VideoRecord` can hold its frames in memory (`frames` + `fps`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from echo_core.data.filelist import CARDIACNET_CLASSES, read_filelist, resolve_video, strip_extension
from echo_core.data.video import read_video, resample_indices, resize_frames
from echo_core.errors import ConfigError, DataError

VIDEO_FOLDERS = ("Videos", "mp4", "avi")
CLASS_COND_TYPES = {"class_id", "class"}
EF_COND_TYPES = {"ef", "lvef"}
REAL, SYNTHETIC = "real", "synthetic"


@dataclass(eq=False)
class VideoRecord:
    """One video and what evaluation needs to know about it."""

    name: str
    source: str  # REAL or SYNTHETIC
    split: str  # TRAIN / VAL / TEST for real videos
    patient_id: str
    class_id: int | None = None
    ef: float | None = None  # percent
    path: Path | None = None
    frames: np.ndarray | None = None  # (T, H, W) uint8: in-memory alternative to `path`
    fps: float | None = None  # required with `frames`; files use their container's rate


# ------------------------------------------------------------------------------------------- scanning


def scan_video_folder(root: str | os.PathLike, *, source: str) -> list[VideoRecord]:
    """Records of every row of `root/FileList.csv` (see module docstring for the layout and columns)."""
    if source not in (REAL, SYNTHETIC):
        raise ValueError(f"source must be {REAL!r} or {SYNTHETIC!r}, got {source!r}")
    root = Path(root)
    csv = root / "FileList.csv"
    df = read_filelist(csv)
    if "FileName" not in df.columns:
        raise DataError(f"{csv} has no FileName column", fix="the FileList must name each video in FileName")
    folder = _video_folder(root)
    splits = _splits(df, csv, source)
    patients = _patients(df, source)
    class_ids, efs = _class_ids(df, csv), _ef_values(df, csv)
    return [
        VideoRecord(name=str(name), source=source, split=splits[i], patient_id=patients[i],
                    class_id=class_ids[i], ef=efs[i], path=resolve_video(root, name, folder=folder))
        for i, name in enumerate(df["FileName"])
    ]


def _video_folder(root: Path) -> str:
    for folder in VIDEO_FOLDERS:
        if (root / folder).is_dir():
            return folder
    raise DataError(f"no video folder in {root}: expected one of {', '.join(VIDEO_FOLDERS)}/",
                    fix="point at a prepared dataset or a sample folder (written with --save-as mp4 or avi)")


def _splits(df: pd.DataFrame, csv: Path, source: str) -> list[str]:
    if "Split" in df.columns:
        return [str(s).strip().upper() for s in df["Split"]]
    if source == SYNTHETIC:
        return ["GENERATED"] * len(df)
    raise DataError(f"{csv} has no Split column", fix="run `echoforge data prepare` to assign TRAIN/VAL/TEST")


def _patients(df: pd.DataFrame, source: str) -> list[str]:
    names = [strip_extension(str(n)) for n in df["FileName"]]
    if source == SYNTHETIC:
        return [f"synthetic/{n}" for n in names]
    if "patient_id" not in df.columns:
        return names  # no patient ids (EchoNet-Dynamic): every video is its own group
    return [n if pd.isna(p) else str(p) for n, p in zip(names, df["patient_id"], strict=True)]


def _conditions(df: pd.DataFrame, types: set[str]) -> pd.Series | None:
    """CondValue where CondType is one of `types` (NaN elsewhere), or None without those columns."""
    if not {"CondType", "CondValue"} <= set(df.columns):
        return None
    kinds = df["CondType"].astype(str).str.strip().str.lower()
    return pd.to_numeric(df["CondValue"], errors="coerce").where(kinds.isin(types))


def _class_ids(df: pd.DataFrame, csv: Path) -> list[int | None]:
    values = df["class_id"] if "class_id" in df.columns else _conditions(df, CLASS_COND_TYPES)
    if values is None:
        return [None] * len(df)
    values = pd.to_numeric(values, errors="coerce")
    out: list[int | None] = []
    for row, value in enumerate(values):
        if pd.isna(value):
            out.append(None)
            continue
        if value != int(value) or int(value) not in CARDIACNET_CLASSES:
            raise DataError(f"{csv} row {row + 2}: class id {value!r} is not in the fixed map {CARDIACNET_CLASSES}",
                            fix="class ids must follow the fixed CardiacNet map; re-run `echoforge data prepare`")
        out.append(int(value))
    if "class_name" in df.columns:
        _check_class_names(df["class_name"], out, csv)
    return out


def _check_class_names(names: pd.Series, class_ids: list[int | None], csv: Path) -> None:
    for row, (name, cid) in enumerate(zip(names, class_ids, strict=True)):
        if cid is not None and not pd.isna(name) and str(name) != CARDIACNET_CLASSES[cid]:
            raise DataError(
                f"{csv} row {row + 2}: class_name {name!r} disagrees with class_id {cid} "
                f"({CARDIACNET_CLASSES[cid]!r} in the fixed map)",
                fix="the FileList was labelled with another class numbering; re-run `echoforge data prepare`",
            )


def _ef_values(df: pd.DataFrame, csv: Path) -> list[float | None]:
    values = df["EF"] if "EF" in df.columns else _conditions(df, EF_COND_TYPES)
    if values is None:
        return [None] * len(df)
    values = pd.to_numeric(values, errors="coerce")
    known = values.dropna()
    if len(known) > 1 and known.max() <= 1.0:
        raise DataError(f"{csv}: every EF is <= 1; EF must be in percent (e.g. 55, not 0.55)",
                        fix="multiply the EF / CondValue column by 100")
    bad = known[(known < 0) | (known > 100)]
    if len(bad):
        raise DataError(f"{csv} row {int(bad.index[0]) + 2}: EF {bad.iloc[0]} is outside [0, 100]",
                        fix="fix the EF value (percent)")
    return [None if pd.isna(v) else float(v) for v in values]


# --------------------------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelMap:
    """The fixed global class map, restricted to `class_ids`, in that order: class_ids[i] -> label i.

    Labels never depend on which classes a split happens to contain or on class-name spelling (the
    reference built them per split from sorted names, so a split missing a class shifted every label).
    """

    class_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        ids = tuple(self.class_ids)
        unknown = [c for c in ids if c not in CARDIACNET_CLASSES]
        if unknown or len(ids) < 2 or len(set(ids)) != len(ids):
            raise ConfigError(f"class_ids {list(ids)} must be >= 2 distinct ids of {CARDIACNET_CLASSES}",
                              fix="e.g. class_ids: [0, 1] (ASD vs Non-ASD) or [2, 3] (Non-PAH vs PAH)")
        object.__setattr__(self, "class_ids", ids)

    @property
    def names(self) -> list[str]:
        return [CARDIACNET_CLASSES[c] for c in self.class_ids]

    def encode(self, records: Sequence[VideoRecord]) -> tuple[list[VideoRecord], np.ndarray, dict[str, int]]:
        """Keep records whose class is in the map -> (kept, labels (N,) int64, excluded counts).

        Excluded counts are keyed "source/split/class_id" so the report says what was left out and why.
        """
        index = {cid: i for i, cid in enumerate(self.class_ids)}
        kept, labels, excluded = [], [], {}
        for record in records:
            if record.class_id in index:
                kept.append(record)
                labels.append(index[record.class_id])
            else:
                key = f"{record.source}/{record.split}/{'missing' if record.class_id is None else record.class_id}"
                excluded[key] = excluded.get(key, 0) + 1
        return kept, np.asarray(labels, dtype=np.int64), excluded


# ---------------------------------------------------------------------------------------------- clips


@dataclass
class VideoStore:
    """Decoded videos at a fixed fps and size, memoised: (N, size, size) uint8 per record.

    Records are identified by (source, name, path). Holding them costs N * size^2 bytes per video (~1.2 MB
    for 100 frames at 112 px); `cache=False` decodes on every access instead (large datasets).
    """

    fps: float
    size: int
    cache: bool = True
    _memo: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)

    def get(self, record: VideoRecord) -> np.ndarray:
        key = (record.source, record.name, str(record.path))
        if key in self._memo:
            return self._memo[key]
        frames, fps = self._decode(record)
        frames = resize_frames(frames[resample_indices(len(frames), fps, self.fps)], self.size)
        if self.cache:
            self._memo[key] = frames
        return frames

    @staticmethod
    def _decode(record: VideoRecord) -> tuple[np.ndarray, float]:
        if record.frames is not None:
            if record.fps is None:
                raise ValueError(f"record {record.name}: in-memory frames need an fps")
            return np.asarray(record.frames, dtype=np.uint8), float(record.fps)
        if record.path is None:
            raise ValueError(f"record {record.name} has neither a path nor frames")
        return read_video(record.path, gray=True)


def clip_indices(available: int, frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of a `frames`-long window into `available` frames: random start with `rng`, else centred.

    Shorter videos are looped: (0, 1, ..., available - 1, 0, 1, ...).
    """
    if available < 1 or frames < 1:
        raise ValueError(f"need available >= 1 and frames >= 1, got {available}, {frames}")
    if available < frames:
        return np.arange(frames) % available
    slack = available - frames
    start = int(rng.integers(0, slack + 1)) if rng is not None else slack // 2
    return np.arange(start, start + frames)


class ClipDataset(torch.utils.data.Dataset):
    """(clip, target) pairs. clip: (1, frames, size, size) float32 in [0, 1]; target: () int64 or float32.

    `train=True` draws a random window per item from a generator seeded by (seed, epoch, index), so a run
    is reproducible regardless of worker count; call `set_epoch` each epoch for fresh windows.
    """

    def __init__(self, records: Sequence[VideoRecord], targets: np.ndarray, store: VideoStore, *,
                 frames: int, train: bool, seed: int = 0):
        if len(records) != len(targets):
            raise ValueError(f"{len(records)} records but {len(targets)} targets")
        self.records, self.targets, self.store = list(records), np.asarray(targets), store
        self.frames, self.train, self.seed, self.epoch = frames, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        video = self.store.get(self.records[index])
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.train else None
        clip = video[clip_indices(len(video), self.frames, rng)]
        x = torch.from_numpy(np.ascontiguousarray(clip)).float().div_(255.0).unsqueeze(0)
        return x, torch.as_tensor(self.targets[index])

