"""Prepared videos -> jpg trees `dst/<FileName>/%04d.jpg` (+ FileList.csv, manifest.json), for classification.

Replaces `6video_to_jpg.py` (no resampling, no CSV, no error handling, `frame_%04d.jpg` names): frames can be
resized and resampled to a fixed fps, the FileList of the exported videos travels with them (labels, splits,
the new frame facts), and the export is atomic and resumable like every other prepare step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echo_core.data.filelist import read_filelist
from echo_core.data.jobs import (
    VIDEO_FACTS,
    Job,
    Plan,
    Report,
    check_src_dst,
    check_unique,
    finalize,
    locate,
    open_staging,
    run_jobs,
)
from echo_core.errors import DataError
from echo_core.utils.hashing import sha256_file

LAYOUT = "<FileName>/%04d.jpg, gray replicated to RGB, JPEG quality 100"


def plan_export(src_prepared: str | os.PathLike, dst: str | os.PathLike, *,
                splits: Sequence[str] | None = None, size: int | None = None,
                fps: float | None = None) -> Plan:
    """One `write_jpg_video` job per FileList row in `splits` (all rows when None)."""
    src, dst = check_src_dst(src_prepared, dst)
    filelist = src / "FileList.csv"
    df = read_filelist(filelist)
    if splits:
        if "Split" not in df.columns:
            raise DataError(f"{filelist} has no Split column",
                            fix="export a prepared dataset, or omit --split")
        df = df[df["Split"].astype(str).str.upper().isin([s.upper() for s in splits])]
    if df.empty:
        raise DataError(f"no rows of {filelist} in splits {list(splits or [])}", fix="check --split")
    check_unique(df["FileName"], filelist)
    params = {"size": size, "fps": fps}
    jobs = []
    for line, row in zip(df.index, df.to_dict(orient="records"), strict=True):
        where = f"{filelist} line {line + 2} (FileName {row['FileName']!r})"
        source = locate(src, row["FileName"], where)
        jobs.append(Job(op=write_jpg_video, file_name=row["FileName"], source=str(source), output=row["FileName"],
                        row=row, params=params, where=where))
    columns = tuple(df.columns) + tuple(c for c in VIDEO_FACTS if c not in df.columns)
    return Plan(kind="jpg-export", layout=LAYOUT, src=str(src), dst=str(dst), jobs=tuple(jobs),
                params={"splits": list(splits) if splits else None, **params},
                source_files={"FileList.csv": sha256_file(filelist)}, columns=columns)


def write_jpg_video(job: Job, out: Path) -> dict[str, Any]:
    """Job op: a whole video (optionally resized / resampled to `fps`) as `out/%04d.jpg`."""
    from echo_core.data.video import read_video, resample_indices, write_jpg_tree

    size, fps = job.params["size"], job.params["fps"]
    video, src_fps = read_video(job.source, gray=True, size=size)
    if fps is not None:
        video = video[resample_indices(len(video), src_fps, fps)]
    if len(video) == 0:
        raise DataError(f"video {job.source} is shorter than one frame at {fps} fps", fix="--exclude it")
    write_jpg_tree(out, video, quality=100)
    return {"FrameHeight": int(video.shape[1]), "FrameWidth": int(video.shape[2]),
            "FPS": float(fps if fps is not None else src_fps), "NumberOfFrames": len(video)}


def export_jpg(src_prepared: str | os.PathLike, dst: str | os.PathLike, *,
               splits: Sequence[str] | None = None, size: int | None = None, fps: float | None = None,
               workers: int = 1, pool: str = "thread") -> Report:
    """Plan, export every video (resuming a crashed run), finalize; `workers`/`pool` as in `run_jobs`."""
    plan = plan_export(src_prepared, dst, splits=splits, size=size, fps=fps)
    staging = open_staging(plan.dst)
    return finalize(plan, run_jobs(plan.jobs, staging, workers=workers, desc="export jpg",
                                     pool=pool))
