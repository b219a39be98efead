"""EchoNet layouts (Dynamic, Pediatric A4C / PSAX): plans of `copy` jobs for the staging engine (jobs.py).

A raw folder holds `Videos/`, `FileList.csv` and optionally `VolumeTracings.csv`. The prepared folder has the
same layout: FileName without extension, the published splits kept, the frame facts re-measured on the real
files (raw FileLists carry stale ones, e.g. FPS 0), and the tracings of the kept videos.

Pediatric fixes the reference `complete_pediatrics_filelist.py`: it was not idempotent (a second run mapped
the already-converted TRAIN/VAL/TEST strings to TEST and overwrote its own backup), silently wrote fps=0 for
a missing video, and edited the raw FileList in place. Here the raw folder is only read, a missing or
unreadable video is an error naming the row, and a prepared folder prepared again gives identical output:
the fold is the source of truth (raw: `Split` holds the fold; prepared: `Fold` does).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from echo_core.data.filelist import (
    dataset_kind,
    fold_to_split,
    read_filelist,
    read_volume_tracings,
    strip_extension,
    write_volume_tracings,
)
from echo_core.data.jobs import (
    VIDEO_FACTS,
    Job,
    Plan,
    apply_exclude,
    check_src_dst,
    check_unique,
    locate,
    with_context,
)
from echo_core.errors import DataError
from echo_core.utils.atomic import atomic_path
from echo_core.utils.hashing import sha256_file

VIEWS = ("A4C", "PSAX")
LAYOUT = "echonet: FileList.csv + Videos/<FileName>.<ext> (+ VolumeTracings.csv)"


def plan_dynamic(src: str | os.PathLike, dst: str | os.PathLike, *, link: bool = False,
                 exclude: Iterable[str] = ()) -> Plan:
    """EchoNet-Dynamic: FileName without extension, published splits kept, frame facts re-measured."""

    def harmonise(df: pd.DataFrame, path: Path) -> pd.DataFrame:
        return df.assign(FileName=df["FileName"].map(strip_extension))

    return _plan_echonet("dynamic", src, dst, harmonise, link=link, exclude=exclude)


def plan_pediatric(src: str | os.PathLike, dst: str | os.PathLike, *, view: str, link: bool = False,
                   exclude: Iterable[str] = ()) -> Plan:
    """One EchoNet-Pediatric view folder (`view` = A4C or PSAX): raw or already prepared, same result."""
    if view not in VIEWS:
        raise DataError(f"unknown pediatric view {view!r}", fix=f"use one of: {', '.join(VIEWS)}")

    def harmonise(df: pd.DataFrame, path: Path) -> pd.DataFrame:
        return harmonise_pediatric(df, path, view)

    return _plan_echonet(f"pediatric-{view.lower()}", src, dst, harmonise, link=link, exclude=exclude)


def _plan_echonet(kind: str, src: str | os.PathLike, dst: str | os.PathLike,
                  harmonise: Callable[[pd.DataFrame, Path], pd.DataFrame], *, link: bool,
                  exclude: Iterable[str]) -> Plan:
    src, dst = check_src_dst(src, dst)
    filelist = src / "FileList.csv"
    df = harmonise(read_filelist(filelist, dataset_kind(kind)), filelist)
    check_unique(df["FileName"], filelist)
    df, excluded, unknown = apply_exclude(df, exclude)
    jobs = []
    for line, row in zip(df.index, df.to_dict(orient="records"), strict=True):
        where = f"{filelist} line {line + 2} (FileName {row['FileName']!r})"
        video = locate(src, row["FileName"], where)
        jobs.append(Job(op=copy_video, file_name=row["FileName"], source=str(video),
                        output=f"Videos/{row['FileName']}{video.suffix.lower()}", row=row,
                        params={"link": link}, where=where))
    columns = tuple(df.columns) + tuple(c for c in VIDEO_FACTS if c not in df.columns)
    tracings = src / "VolumeTracings.csv"
    sources = {"FileList.csv": sha256_file(filelist)}
    side_files = ()
    if tracings.is_file():
        sources["VolumeTracings.csv"] = sha256_file(tracings)
        side_files = (functools.partial(write_tracings, str(tracings), kind),)
    return Plan(kind=kind, layout=LAYOUT, src=str(src), dst=str(dst), jobs=tuple(jobs), params={"link": link},
                source_files=sources, columns=columns, side_files=side_files, excluded=excluded,
                unknown_excludes=unknown)


def write_tracings(tracings: str, kind: str, staging: Path, names: set[str]) -> str:
    """Side file: the tracings of the kept videos, FileName harmonised like the FileList (no extension)."""
    df = read_volume_tracings(tracings, dataset_kind(kind))
    df = df.assign(FileName=df["FileName"].map(strip_extension))
    write_volume_tracings(df[df["FileName"].isin(names)], staging / "VolumeTracings.csv")
    return "VolumeTracings.csv"


def copy_video(job: Job, out: Path) -> dict[str, Any]:
    """Job op: copy (or hardlink) one video and measure its frame facts on the real file."""
    with atomic_path(out) as tmp:
        if job.params.get("link"):
            tmp.unlink()
            try:
                os.link(job.source, tmp)
            except OSError as exc:
                raise DataError(f"cannot hardlink {job.source} into {out.parent}: {exc.strerror or exc}",
                                fix="hardlinks need one filesystem; set `prepare.link: false` to copy") from None
        else:
            shutil.copyfile(job.source, tmp)
    return measure_video(out)


def measure_video(path: Path) -> dict[str, Any]:
    """FrameHeight, FrameWidth, FPS, NumberOfFrames as the decoder sees them (never fps=0 silently)."""
    from echo_core.data.video import probe_video

    info = probe_video(path)
    if info.num_frames <= 0 or not info.fps or info.fps <= 0:
        raise DataError(f"video {path} has {info.num_frames} frames at {info.fps} fps",
                        fix="the file is empty or damaged; replace it or --exclude the row")
    return {"FrameHeight": int(info.height), "FrameWidth": int(info.width), "FPS": float(info.fps),
            "NumberOfFrames": int(info.num_frames)}


# ------------------------------------------------------------------------------------------ pediatric


def harmonise_pediatric(df: pd.DataFrame, path: Path, view: str) -> pd.DataFrame:
    """FileName without extension; `Fold` = original fold; `Split` = TRAIN 0-7 / VAL 8 / TEST 9; View."""
    df = df.copy()
    df["FileName"] = df["FileName"].map(strip_extension)
    already_prepared = "Fold" in df.columns
    folds = df["Fold"] if already_prepared else df["Split"]
    splits = [_split_of(fold, path, line, name, "Fold" if already_prepared else "Split")
              for line, fold, name in zip(df.index, folds, df["FileName"], strict=True)]
    if already_prepared:
        _check_splits_agree(df, splits, path)
    df["Fold"] = [int(f) for f in folds]
    df["Split"] = splits
    if not already_prepared:  # keep Fold next to Split, where a reader looks for it
        columns = [c for c in df.columns if c != "Fold"]
        columns.insert(columns.index("Split") + 1, "Fold")
        df = df[columns]
    return _with_view(df, path, view)


def _split_of(fold, path: Path, line: int, name: str, column: str) -> str:
    try:
        return fold_to_split(fold)
    except DataError as exc:
        raise with_context(exc, f"{path} line {line + 2} (FileName {name!r}) field {column}") from None


def _check_splits_agree(df: pd.DataFrame, splits: list[str], path: Path) -> None:
    """A prepared FileList whose Split disagrees with its Fold was edited by hand: refuse to guess."""
    current = df["Split"].astype(str).str.upper().tolist()
    rows = zip(df.index, df["FileName"], current, splits, strict=True)
    bad = [(i, n, c, s) for i, n, c, s in rows if c != s]
    if bad:
        i, name, have, want = bad[0]
        raise DataError(f"{path} line {i + 2} (FileName {name!r}): Split {have!r} disagrees with Fold "
                        f"(-> {want!r}); {len(bad)} row(s) disagree",
                        fix="Fold is the source of truth for pediatric splits; fix or drop the Split column")


def _with_view(df: pd.DataFrame, path: Path, view: str) -> pd.DataFrame:
    if "View" not in df.columns:
        return df.assign(View=view)
    other = df.loc[df["View"].astype(str).str.upper() != view]
    if not other.empty:
        i = other.index[0]
        raise DataError(f"{path} line {i + 2} (FileName {df.at[i, 'FileName']!r}) field View: "
                        f"{df.at[i, 'View']!r}, but preparing as {view}",
                        fix=f"use --kind pediatric-{str(df.at[i, 'View']).lower()} for this folder")
    return df
