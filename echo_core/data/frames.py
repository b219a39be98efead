"""Frames of prepared datasets, for VAE training: every k-th frame of each TRAIN (or VAL) video.

The reference systems dumped every 5th frame of every video to JPG files (lossy, and a second copy of
the data). Here the frames are decoded once into a uint8 `.npy` cache (written atomically, memory-mapped
on reuse, keyed by the FileLists' content and the sampling settings), so a resumed run does not decode again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from echo_core.data.filelist import read_filelist, resolve_video
from echo_core.errors import DataError
from echo_core.models.vae import frames_to_input
from echo_core.utils.atomic import atomic_path
from echo_core.utils.hashing import sha256_file


def split_videos(data_dirs: Sequence[str | os.PathLike], split: str) -> list[tuple[Path, int]]:
    """(video path, NumberOfFrames) of `split` (TRAIN / VAL / TEST) across prepared datasets, in FileList order."""
    found = []
    for root in map(Path, data_dirs):
        df = read_filelist(root / "FileList.csv")
        missing = {"Split", "NumberOfFrames"} - set(df.columns)
        if missing:
            raise DataError(f"{root / 'FileList.csv'} has no {', '.join(sorted(missing))} column",
                            fix="run `echoforge data prepare` first")
        rows = df[df["Split"].astype(str).str.upper() == split.upper()]
        found += [(resolve_video(root, name), int(n)) for name, n in zip(rows["FileName"], rows["NumberOfFrames"],
                                                                           strict=True)]
    return found


def sample_frames(path: Path, every: int, resolution: int) -> np.ndarray:
    """Every `every`-th gray frame of one video: (T', H, W) uint8; the video must be resolution² already."""
    from echo_core.data.video import read_video

    frames, _ = read_video(path, gray=True)
    if frames.shape[1:] != (resolution, resolution):
        raise DataError(f"{path} has {frames.shape[2]}×{frames.shape[1]} frames, the VAE needs "
                        f"{resolution}×{resolution}", fix="train on prepared datasets (`echoforge data prepare`)")
    return frames[::every]


def frames_key(data_dirs: Sequence[str | os.PathLike], split: str, every: int, resolution: int) -> str:
    """Content key of a split's sampled frames: the FileLists (which carry every video's frame facts) + settings."""
    h = hashlib.sha256(f"{split}|{every}|{resolution}".encode())
    for root in map(Path, data_dirs):
        h.update(sha256_file(root / "FileList.csv").encode())
    return h.hexdigest()[:16]


def _fill(target: np.ndarray, videos: list[tuple[Path, int]], every: int, resolution: int) -> None:
    """Decode video by video into `target` (N, H, W), so only one video is in memory at a time."""
    pos = 0
    for path, num_frames in videos:
        frames = sample_frames(path, every, resolution)
        if len(frames) != -(-num_frames // every):
            raise DataError(f"{path} decodes to a different frame count than FileList's NumberOfFrames "
                            f"({num_frames})", fix="re-run `echoforge data prepare` for this dataset")
        target[pos : pos + len(frames)] = frames
        pos += len(frames)


def load_split_frames(data_dirs: Sequence[str | os.PathLike], split: str, *, every: int = 5,
                      resolution: int = 112, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """All sampled frames of `split`: (N, H, W) uint8, memory-mapped from the cache when there is one."""
    key = frames_key(data_dirs, split, every, resolution)
    cache = Path(cache_dir) / f"frames-{split.lower()}-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache, mmap_mode="r")
    videos = split_videos(data_dirs, split)
    if not videos:
        raise DataError(f"no {split} videos in {', '.join(map(str, data_dirs))}",
                        fix="check the Split column of FileList.csv")
    shape = (sum(-(-n // every) for _, n in videos), resolution, resolution)
    if cache is None:
        frames = np.empty(shape, np.uint8)
        _fill(frames, videos, every, resolution)
        return frames
    with atomic_path(cache) as tmp:  # streamed to disk: Dynamic's TRAIN frames would not fit in RAM twice
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _fill(target, videos, every, resolution)
        target.flush()
        del target
    return np.load(cache, mmap_mode="r")


class FrameDataset(torch.utils.data.Dataset):
    """uint8 gray frames → VAE inputs. item: (3, H, W) float in [-1, 1] (gray replicated to 3 channels)."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        return frames_to_input(np.asarray(self.frames[index : index + 1]))[0]

    def batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Gather a batch without a DataLoader (fancy indexing works on the memory map). → (B, 3, H, W)."""
        return frames_to_input(np.asarray(self.frames[np.asarray(indices)]))
