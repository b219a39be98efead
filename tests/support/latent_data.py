"""Tiny prepared datasets for the VAE/encode tests: real PyAV files + a prepared-schema FileList."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from echo_core.data.filelist import write_filelist
from echo_core.data.video import write_video

SIZE = 112


def moving_blob(num_frames: int, seed: int, size: int = SIZE) -> np.ndarray:
    """(T, H, W) uint8: a bright ellipse that pulses over a noisy dark background, like a phantom echo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = rng.uniform(0.35, 0.65, 2)
    frames = []
    for t in range(num_frames):
        r = 0.18 + 0.06 * np.sin(2 * np.pi * t / 8 + seed)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        img = 30 + 170 * blob + rng.normal(0, 8, (size, size))
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def make_prepared_dataset(root: Path, num_videos: int = 4, frames: tuple[int, ...] = (8, 12, 16),
                          splits: tuple[str, ...] = ("TRAIN", "TRAIN", "VAL", "TEST"), fps: float = 32.0,
                          size: int = SIZE) -> Path:
    """`root/Videos/<name>.avi` + `root/FileList.csv` (prepared schema); returns root."""
    rows = []
    for i in range(num_videos):
        name = f"video_{i:03d}"
        t = frames[i % len(frames)]
        write_video(root / "Videos" / f"{name}.avi", moving_blob(t, seed=i, size=size), fps)
        rows.append({"FileName": name, "EF": 40.0 + i, "FPS": fps, "NumberOfFrames": t, "FrameHeight": size,
                     "FrameWidth": size, "Split": splits[i % len(splits)]})
    write_filelist(pd.DataFrame(rows), root / "FileList.csv")
    return root
