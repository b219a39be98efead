"""StyleGAN-V's sample-selection rules (metrics-protocol.md §1.2-1.5, §5.3) and jpg-tree reading.

Selection is pure: functions over sorted path lists and `(video, n_frames)` pairs return index plans,
so every rule is testable with plain lists. Reading (PIL decode, gray -> 3 channels, resolution
check) is at the edge.

Rules, exactly as StyleGAN-V:
- Frames (FID/IS/KID): every image file under the root, recursively, as string-sorted relative
  paths; real = all of them (fid50k_full), fake = the first 50,000 (no shuffling).
- Videos (FVD): `root/<video>/<frame>.<ext>` (depth 2); videos in sorted name order, frames
  string-sorted (zero-padded names required for temporal order).
- Real clips: drop videos with fewer than n*s frames, take the first 2048 of the rest, start at a
  random offset in [0, L - n*s + s - 1] (inclusive), frames offset + [0, s, ..., (n-1)s].
  StyleGAN-V's draw is unseeded (DataLoader workers); ours is numpy PCG64(seed), recorded.
- Fake clips: the first 2048 videos, start 0; a fake video shorter than n*s is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from echo_core.errors import DataError

FID_FAKE_FRAMES = 50_000
IS_FRAMES = 50_000
IS_SPLITS = 10
FVD_CLIPS = 2048


def image_extensions() -> frozenset[str]:
    """Lower-case extensions PIL can open (StyleGAN-V accepts any of `PIL.Image.EXTENSION`)."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


@dataclass(frozen=True)
class Video:
    name: str
    frames: tuple[str, ...]  # paths relative to the root, string-sorted


@dataclass(frozen=True)
class Clip:
    video: str
    indices: tuple[int, ...]  # frame indices inside the video


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"metrics folder not found: {root}",
                        fix="pass a folder of jpg frames laid out as <root>/<video>/<frame>.jpg")


def list_frames(root: str | os.PathLike) -> list[str]:
    """All image files under `root` (recursive) as string-sorted relative posix paths."""
    root = Path(root)
    _require_dir(root)
    exts = image_extensions()
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in exts)
    if not paths:
        raise DataError(f"no image files under {root}", fix="write frames as <root>/<video>/<frame>.jpg")
    return paths


SIDECAR_SUFFIXES = (".json", ".csv", ".md", ".txt")


def list_videos(root: str | os.PathLike) -> list[Video]:
    """Videos of a depth-2 tree `root/<video>/<frame>.<ext>`, sorted; stray entries are errors."""
    root = Path(root)
    _require_dir(root)
    exts = image_extensions()
    videos = []
    for vdir in sorted(root.iterdir(), key=lambda p: p.name):
        if vdir.is_file() and vdir.suffix.lower() in SIDECAR_SUFFIXES:
            continue  # manifest.json / FileList.csv next to the videos: StyleGAN-V skips non-image files too
        if not vdir.is_dir():
            raise DataError(f"{vdir} is a file at the top of a video tree",
                            fix="keep only one folder per video under the root (<root>/<video>/<frame>.jpg)")
        frames = []
        for f in sorted(vdir.iterdir(), key=lambda p: p.name):
            if not (f.is_file() and f.suffix.lower() in exts):
                raise DataError(f"{f} is not an image frame (video folders hold only frames)",
                                fix="remove it; StyleGAN-V's reader would fail on it too")
            frames.append(f"{vdir.name}/{f.name}")
        videos.append(Video(vdir.name, tuple(frames)))
    if not videos:
        raise DataError(f"no video folders under {root}", fix="write frames as <root>/<video>/<frame>.jpg")
    return videos


def select_frames(paths: Sequence[str], max_items: int | None) -> list[str]:
    """The first `max_items` paths in sorted order (all when None): StyleGAN-V's `num_gen` rule."""
    ordered = sorted(paths)
    return ordered if max_items is None else ordered[:max_items]


def plan_real_clips(videos: Sequence[tuple[str, int]], n_frames: int, stride: int, max_clips: int,
                    seed: int, random_offset: bool = True) -> list[Clip]:
    """Real clips: discard videos shorter than n*s, first `max_clips` sorted, seeded random start."""
    need = n_frames * stride
    kept = [(name, length) for name, length in sorted(videos) if length >= need][:max_clips]
    rng = np.random.Generator(np.random.PCG64(seed))
    clips = []
    for name, length in kept:
        start = int(rng.integers(0, length - need + stride - 1, endpoint=True)) if random_offset else 0
        clips.append(Clip(name, tuple(range(start, start + need, stride))))
    return clips


def plan_fake_clips(videos: Sequence[tuple[str, int]], n_frames: int, stride: int,
                    max_clips: int) -> list[Clip]:
    """Fake clips: the first `max_clips` sorted videos, frames 0, s, ..., (n-1)s; short ones are errors."""
    need = n_frames * stride
    chosen = sorted(videos)[:max_clips]
    short = [(name, length) for name, length in chosen if length < need]
    if short:
        name, length = short[0]
        raise DataError(f"generated video '{name}' has {length} frames; {n_frames}-frame clips with stride "
                        f"{stride} need {need} ({len(short)} such videos)",
                        fix="generate longer videos or drop this FVD metric")
    return [Clip(name, tuple(range(0, need, stride))) for name, _ in chosen]


def check_count(have: int, need: int, what: str, allow_fewer: bool) -> None:
    """Refuse a protocol metric on fewer samples than it is defined on, unless `allow_fewer`."""
    if have < need and not allow_fewer:
        raise DataError(f"{what}: {have} available, the protocol uses {need}",
                        fix="add data, or pass --allow-fewer (the result then records the actual N "
                            "and is marked not exact)")
    if have == 0:
        raise DataError(f"{what}: nothing to evaluate", fix="check the folder and the clip length")


def is_split_bounds(n: int, num_splits: int = IS_SPLITS, total: int = IS_FRAMES) -> list[tuple[int, int]]:
    """IS splits [i*total//k, (i+1)*total//k): consecutive blocks. StyleGAN-V uses the constant 50,000
    as `total`; with fewer frames it would give empty splits (nan), so `total` = min(n, 50,000)."""
    total = min(n, total)
    return [(i * total // num_splits, (i + 1) * total // num_splits) for i in range(num_splits)]


def plan_hash(items: Sequence[str] | Sequence[Clip]) -> str:
    """sha256 of a selection plan (paths or clips), recorded so two runs can prove the same selection."""
    blob = json.dumps([[c.video, list(c.indices)] if isinstance(c, Clip) else c for c in items])
    return hashlib.sha256(blob.encode()).hexdigest()


def read_frame(path: str | os.PathLike, resolution: int | None) -> np.ndarray:
    """Decode one frame with PIL (as StyleGAN-V) -> uint8 (3, H, W); gray is repeated to 3 channels."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot decode frame {path}: {exc}", fix="re-write the frame as a jpg") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError(f"frame {path} has shape {arr.shape} / {arr.dtype}; expected 8-bit gray or RGB",
                        fix="save frames as 8-bit gray or RGB jpg")
    if resolution is not None and arr.shape[:2] != (resolution, resolution):
        raise DataError(f"frame {path} is {arr.shape[1]}x{arr.shape[0]}, the protocol resolution is "
                        f"{resolution}x{resolution}", fix="resize the frames or set the resolution")
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
