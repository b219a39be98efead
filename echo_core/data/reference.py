"""Reference sets for FID/FVD/IS: TRAIN videos as StyleGAN-V jpg trees `dst/<video>/%04d.jpg`.

Reproduces `create_reference_dataset.py` (TRAIN rows whose duration covers `frames` frames at `fps`,
resampled to `fps`, the first `frames` frames, gray replicated to 3 channels, JPEG quality 100) and fixes it:
any `frames` value works (the reference raised KeyError outside 16/128), the selection is seeded and
recorded, the video extension comes from the files, and the tree is built atomically with a manifest.

`dst/manifest.json` sits at the root, beside the video folders; StyleGAN-V's folder reader treats a root-level
file as an (empty) video entry and skips it, and its image reader ignores non-image files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.data.filelist import read_filelist, safe_member
from echo_core.data.jobs import Job, Plan, Report, check_src_dst, finalize, locate, open_staging, run_jobs
from echo_core.errors import DataError
from echo_core.utils.hashing import sha256_file

NEEDED = ("FileName", "Split", "FPS", "NumberOfFrames")
LAYOUT = "stylegan-v: <video>/%04d.jpg, gray replicated to RGB, JPEG quality 100"


class ReferenceConfig(StrictModel):
    """params.yaml `reference:` section; `frames` comes from the command line (one dvc stage per N)."""

    frames: int = Field(ge=1)
    fps: float = Field(32.0, gt=0)
    size: int = Field(112, ge=8)
    max_videos: int | None = Field(None, ge=1)
    seed: int = 42


def eligible_rows(df: pd.DataFrame, frames: int, fps: float) -> pd.DataFrame:
    """TRAIN rows whose duration NumberOfFrames / FPS covers frames / fps (compared without division)."""
    split = df["Split"].astype(str).str.upper()
    n, src_fps = df["NumberOfFrames"].astype(float), df["FPS"].astype(float)
    long_enough = (src_fps > 0) & (n * fps >= frames * src_fps - 1e-9)
    return df[(split == "TRAIN") & long_enough]


def select(names: Iterable[str], max_videos: int | None, seed: int) -> list[str]:
    """Seeded choice of up to `max_videos` names (shuffle the sorted names, take the head), sorted."""
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    chosen = [names[i] for i in order[: max_videos if max_videos is not None else len(names)]]
    return sorted(chosen)


def plan_reference(src_prepared: str | os.PathLike, dst: str | os.PathLike, *,
                   config: ReferenceConfig) -> Plan:
    """Pick the videos and plan one `write_reference_clip` job each (output folder = FileName)."""
    src, dst = check_src_dst(src_prepared, dst)
    filelist = src / "FileList.csv"
    df = read_filelist(filelist)
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise DataError(f"{filelist} lacks column(s) {', '.join(missing)}",
                        fix="build reference sets from a prepared dataset (`echoforge data prepare`)")
    rows = eligible_rows(df, config.frames, config.fps)
    chosen = select(rows["FileName"], config.max_videos, config.seed)
    wanted = config.max_videos
    warnings = []
    if wanted is not None and len(chosen) < wanted:
        warnings.append(f"only {len(rows)} TRAIN videos last {config.frames} frames at {config.fps:g} fps; "
                        f"{wanted} were requested")
    if not chosen:
        raise DataError(f"no TRAIN video in {filelist} lasts {config.frames} frames at {config.fps:g} fps",
                        fix="use fewer --frames, or a dataset with longer videos")
    by_name = rows.set_index("FileName")
    params = {"frames": config.frames, "fps": config.fps, "size": config.size}
    jobs = tuple(_job(src, filelist, name, float(by_name.at[name, "FPS"]), params) for name in chosen)
    # No `columns`: a reference set is the bare jpg tree (+ manifest.json) that StyleGAN-V reads.
    return Plan(kind="reference", layout=LAYOUT, src=str(src), dst=str(dst), jobs=jobs,
                params=config.model_dump(mode="json"), source_files={"FileList.csv": sha256_file(filelist)},
                notes={"eligible": len(rows), "videos": chosen}, warnings=tuple(warnings))


def _job(src: Path, filelist: Path, name: str, src_fps: float, params: dict[str, Any]) -> Job:
    where = f"{filelist} (FileName {name!r})"
    safe_member(src, name)  # the output folder is named after FileName: refuse '..' and absolute names
    if "/" in name or "\\" in name:
        raise DataError(f"{where}: FileName contains a path separator; a reference set is 2 levels deep",
                        fix="rename the video so FileName is a plain name")
    return Job(op=write_reference_clip, file_name=name, source=str(locate(src, name, where)), output=name,
               row={"FileName": name}, params={**params, "src_fps": src_fps}, where=where)


def write_reference_clip(job: Job, out: Path) -> dict[str, Any]:
    """Job op: first `frames` frames at `fps`, gray as 3-channel JPEG q100 in `out/%04d.jpg`."""
    from echo_core.data.video import read_video, resample_indices, write_jpg_tree

    p = job.params
    video, _ = read_video(job.source, gray=True, size=p["size"])
    index = resample_indices(len(video), p["src_fps"], p["fps"])[: p["frames"]]
    if len(index) < p["frames"]:
        raise DataError(f"video has {len(video)} decodable frames, {len(index)} at {p['fps']:g} fps; "
                        f"{p['frames']} needed", fix="its FileList NumberOfFrames is wrong; prepare it again")
    write_jpg_tree(out, video[index], quality=100)
    return {"NumberOfFrames": len(index)}


def build_reference(src_prepared: str | os.PathLike, dst: str | os.PathLike, *, frames: int,
                    fps: float = 32.0, max_videos: int | None = None, seed: int = 42, size: int = 112,
                    workers: int = 1, pool: str = "thread") -> Report:
    """Plan, write every clip (resuming a crashed run), finalize; `workers`/`pool` as in `run_jobs`."""
    config = ReferenceConfig(frames=frames, fps=fps, max_videos=max_videos, seed=seed, size=size)
    plan = plan_reference(src_prepared, dst, config=config)
    staging = open_staging(plan.dst)
    results = run_jobs(plan.jobs, staging, workers=workers, desc=f"reference {frames}f", pool=pool)
    return finalize(plan, results)
