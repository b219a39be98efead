"""Output writers for generated videos, and the FileList.csv that describes them.

Layout under OUT (one file or folder per sample and format, each written atomically):
    avi/sample_000000.avi  mp4/sample_000000.mp4  gif/sample_000000.gif
    jpg/sample_000000/0000.jpg ...   (the StyleGAN-V layout the metrics read)
    png/sample_000000/0000.png ...
    safetensors/sample_000000.safetensors   ("frames" uint8 (T, H, W[, 3]), "latents" float16 (C, T, h, w))
FileList.csv values are read back from what was written (probe of the video file), so FrameHeight,
FrameWidth, NumberOfFrames and FPS are the file's truth (the reference wrote T as the height, the batch
size as the frame count and 32 fps for files encoded at 30, seed-systems §8.9).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from echo_core.data.video import probe_video, write_jpg_tree, write_video
from echo_core.errors import UsageError
from echo_core.utils.atomic import atomic_dir, atomic_path

VIDEO_FORMATS = ("mp4", "avi", "gif")
TREE_FORMATS = ("jpg", "png")
FORMATS = VIDEO_FORMATS + TREE_FORMATS + ("safetensors",)


def parse_formats(formats: str | list[str]) -> list[str]:
    """'mp4,jpg' or a list → validated list (unknown names are a UsageError; at least one format)."""
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    items = [f for f in dict.fromkeys(items) if f]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise UsageError(f"unknown output format(s) {unknown or formats!r}", fix=f"use some of {list(FORMATS)}")
    return items


def output_path(out: str | os.PathLike, name: str, fmt: str) -> Path:
    """Where sample `name` is written in format `fmt` (a folder for jpg/png)."""
    base = Path(out) / fmt
    return base / name if fmt in TREE_FORMATS else base / f"{name}.{fmt}"


def is_done(out: str | os.PathLike, name: str, formats: list[str]) -> bool:
    """All requested outputs of a sample exist (each was renamed into place only when complete)."""
    return all(output_path(out, name, fmt).exists() for fmt in formats)


def write_png_tree(folder: Path, frames: np.ndarray) -> Path:
    from PIL import Image

    with atomic_dir(folder) as tmp:
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"{index:04d}.png")
    return folder


def write_safetensors(path: Path, frames: np.ndarray, latents: torch.Tensor | None, meta: dict[str, str]) -> Path:
    """Atomically write frames (+ latents) with string metadata; the same sample gives the same bytes."""
    from safetensors.torch import save

    from echo_core.latents.store import canonical_safetensors

    tensors = {"frames": torch.from_numpy(np.ascontiguousarray(frames))}
    if latents is not None:
        tensors["latents"] = latents.detach().to("cpu", torch.float16).contiguous()
    with atomic_path(path) as tmp:
        tmp.write_bytes(canonical_safetensors(save(tensors, metadata=meta)))
    return path


def write_sample(out: str | os.PathLike, name: str, frames: np.ndarray, formats: list[str], fps: float, *,
                 latents: torch.Tensor | None = None, meta: dict[str, str] | None = None) -> None:
    """frames: (T, H, W) or (T, H, W, 3) uint8; latents: (C, T, h, w) or None. Writes every format."""
    for fmt in formats:
        path = output_path(out, name, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt in VIDEO_FORMATS:
            write_video(path, frames, fps)
        elif fmt == "jpg":
            write_jpg_tree(path, frames)
        elif fmt == "png":
            write_png_tree(path, frames)
        else:
            write_safetensors(path, frames, latents, {"fps": str(fps), **(meta or {})})


def describe_sample(out: str | os.PathLike, name: str, formats: list[str], fps: float) -> dict[str, float]:
    """FrameHeight, FrameWidth, NumberOfFrames, FPS of a written sample, read back from disk.

    FPS is the rate stored in the first video file (mp4 > avi > gif); for frame trees only it is `fps`.
    """
    for fmt in VIDEO_FORMATS:
        if fmt in formats:
            info = probe_video(output_path(out, name, fmt))
            return {"FrameHeight": info.height, "FrameWidth": info.width, "FPS": round(info.fps, 6),
                    "NumberOfFrames": info.num_frames}
    if "safetensors" in formats:
        from safetensors import safe_open

        with safe_open(str(output_path(out, name, "safetensors")), framework="pt") as f:
            shape = f.get_slice("frames").get_shape()
    else:
        from PIL import Image

        tree = output_path(out, name, next(f for f in formats if f in TREE_FORMATS))
        files = sorted(tree.iterdir())
        with Image.open(files[0]) as image:
            shape = (len(files), image.height, image.width)
    return {"FrameHeight": int(shape[1]), "FrameWidth": int(shape[2]), "FPS": float(fps),
            "NumberOfFrames": int(shape[0])}


def make_grid(videos: list[np.ndarray], cols: int = 4) -> np.ndarray:
    """Tile equal-sized videos (T, H, W[, 3]) into one (T, rows·H, cols·W[, 3]) video (blank cells black)."""
    if not videos:
        raise ValueError("make_grid needs at least one video")
    cols = min(cols, len(videos))
    rows = -(-len(videos) // cols)
    t, h, w = videos[0].shape[:3]
    grid = np.zeros((t, rows * h, cols * w, *videos[0].shape[3:]), dtype=np.uint8)
    for i, video in enumerate(videos):
        r, c = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = video[:t]
    return grid
