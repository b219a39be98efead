"""Single latent frames from latent stores: the training items of the LIDM ("hearts").

Which frame of a video is its heart (EchoNet-Synthetic trains on `batch['image']`, a random frame of the
whole video, seed-systems §3.1):
- `ed_frames(VolumeTracings.csv)` gives each traced video's end-diastolic frame: of the two traced frames,
  the one with the larger left ventricle (disk-method volume for EchoNet-Dynamic's chords, polygon area for
  Pediatric's outline). Where a video has a tracing, its heart is that frame in every epoch.
- Documented rule for every other video (CardiacNet, untraced rows): a frame drawn uniformly from the whole
  video, anew each epoch, seeded by (seed, epoch, item), so a run and its resume read the same frames.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from echo_core.data.filelist import read_volume_tracings
from echo_core.errors import DataError
from echo_core.latents.store import LATENT_KEY, latent_path


def _dynamic_volume(rows: pd.DataFrame) -> float:
    """EchoNet-Dynamic tracing of one frame: row 0 is the long axis, the rest are the disks' diameters;
    the volume is ∝ Σ d² × (long axis / number of disks)."""
    d = np.hypot(rows["X2"] - rows["X1"], rows["Y2"] - rows["Y1"]).to_numpy()
    return float((d[1:] ** 2).sum() * d[0] / max(len(d) - 1, 1)) if len(d) > 1 else 0.0


def _polygon_area(rows: pd.DataFrame) -> float:
    """Shoelace area of a Pediatric outline (X, Y points in order)."""
    x, y = rows["X"].to_numpy(), rows["Y"].to_numpy()
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def ed_frames(tracings: str | os.PathLike) -> dict[str, int]:
    """{FileName: end-diastolic frame index} of every video traced in `tracings` (EchoNet-Dynamic chords
    X1,Y1,X2,Y2 or Pediatric points X,Y, told apart by the header)."""
    if not Path(tracings).is_file():
        raise DataError(f"VolumeTracings file {tracings} does not exist",
                        fix="pass the prepared dataset's VolumeTracings.csv, or omit --tracings")
    chords = "X1" in pd.read_csv(tracings, nrows=0).columns
    df = read_volume_tracings(tracings, "dynamic" if chords else "pediatric")
    size = _dynamic_volume if chords else _polygon_area
    out: dict[str, int] = {}
    for name, video in df.groupby("FileName", sort=True):
        sizes = {int(frame): size(rows) for frame, rows in video.groupby("Frame", sort=True)}
        out[str(name)] = max(sizes, key=sizes.get)
    return out


def store_rows(root: str | os.PathLike, split: str) -> pd.DataFrame:
    """FileName, NumberOfFrames, class_id (−1 where absent) and path of the `split` rows of a latent store."""
    csv = Path(root) / "FileList.csv"
    if not csv.is_file():
        raise DataError(f"latent store {root} has no FileList.csv", fix="run the encode stage for this dataset")
    df = pd.read_csv(csv, dtype={"FileName": str})
    missing = [c for c in ("FileName", "NumberOfFrames", "Split") if c not in df.columns]
    if missing:
        raise DataError(f"{csv} lacks column(s) {missing}", fix="re-run the encode stage (it writes them)")
    df = df[df["Split"].astype(str).str.strip().str.upper() == split.upper()]
    class_id = pd.to_numeric(df["class_id"], errors="coerce") if "class_id" in df else pd.Series(-1, df.index)
    return pd.DataFrame({
        "FileName": df["FileName"].astype(str), "NumberOfFrames": df["NumberOfFrames"].astype(int),
        "class_id": class_id.fillna(-1).astype(int),
        "path": [str(latent_path(root, n)) for n in df["FileName"].astype(str)],
    }).reset_index(drop=True)


def read_frame(path: str | os.PathLike, index: int) -> torch.Tensor:
    """Frame `index` (C, h, w) float32 of one video's latents, read without loading the others."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_slice(LATENT_KEY)[index].float()
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError, IndexError) as exc:
        raise DataError(f"cannot read frame {index} of latent file {path}: {exc}",
                        fix="re-run `echoforge latents encode` for this store (finished videos are skipped)") from None


class HeartFrameDataset(Dataset):
    """One latent frame per video of the `split` rows of latent stores. Item: latent (C, h, w) float32,
    class_id (−1 = none), file_name. `ed`: {FileName: ED frame} from `ed_frames` (module docstring)."""

    def __init__(self, roots: Sequence[str | os.PathLike], split: str = "TRAIN", *,
                 ed: Mapping[str, int] | None = None, seed: int = 0):
        self.rows = pd.concat([store_rows(r, split) for r in roots], ignore_index=True)
        if self.rows.empty:
            raise DataError(f"no {split} rows in latent store(s) {[str(r) for r in roots]}",
                            fix="check the stores' FileList.csv Split column")
        self.ed, self.seed, self.epoch = dict(ed or {}), seed, 0

    @property
    def traced_fraction(self) -> float:
        return float(self.rows["FileName"].isin(self.ed).mean())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def frame_index(self, index: int) -> int:
        row = self.rows.iloc[index]
        if row["FileName"] in self.ed:
            return min(int(self.ed[row["FileName"]]), int(row["NumberOfFrames"]) - 1)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(int(row["NumberOfFrames"])))

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index]
        return {"latent": read_frame(row["path"], self.frame_index(index)),
                "class_id": torch.tensor(int(row["class_id"]), dtype=torch.long), "file_name": row["FileName"]}
