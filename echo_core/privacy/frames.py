"""Which real frames the re-identification net sees: videos of latent stores with their identity, evenly spaced
frames per video, and same/different-identity pairs (seed-systems §5.2).

Fixes relative to the reference: the identity can be the patient (CardiacNet's `patient_id`), not only the
video, so two videos of one patient are never a "different person" pair; and calibration embeds k evenly
spaced frames per video, not only frame 0 (§8 bug 14), so a heart that copies any phase of a training video
is near one of its embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from echo_core.errors import DataError
from echo_core.latents.frames import read_frame, store_rows

Identity = Literal["video", "patient"]


def video_rows(roots: Sequence[str | os.PathLike], splits: Sequence[str],
               identity: Identity = "video") -> pd.DataFrame:
    """FileName, NumberOfFrames, path and identity of the `splits` rows of the stores. identity "patient"
    uses the FileList's `patient_id` where the store has one, else (and for "video") the FileName."""
    parts = []
    for root in roots:
        for split in splits:
            rows = store_rows(root, split)
            rows["identity"] = _identities(Path(root), rows, identity)
            parts.append(rows)
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if rows.empty:
        raise DataError(f"no {'/'.join(splits)} rows in latent store(s) {[str(r) for r in roots]}",
                        fix="check the stores' FileList.csv Split column")
    return rows


def _identities(root: Path, rows: pd.DataFrame, identity: Identity) -> list[str]:
    names = rows["FileName"].astype(str)
    if identity == "video":
        return [f"{root.name}/{n}" for n in names]
    table = pd.read_csv(root / "FileList.csv", dtype={"FileName": str})
    if "patient_id" not in table.columns:
        return [f"{root.name}/{n}" for n in names]
    patient = dict(zip(table["FileName"], table["patient_id"].astype(str), strict=True))
    return [f"{root.name}/patient/{patient[n]}" for n in names]


def evenly_spaced(num_frames: int, k: int) -> list[int]:
    """k frame indices spread over [0, num_frames) from first to last (fewer when the video is shorter)."""
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, max(1, k))})


class PairDataset(Dataset):
    """`pairs` items per epoch; item i: anchor = a random frame of video i mod N; with `p_positive` a
    different frame of the same identity (label 1), else a frame of another identity (label 0). Items are
    seeded by (seed, epoch, i): a run and its resume, or a fixed-seed evaluation, draw the same pairs.
    Item: a, b (C, h, w) float32, label () float32."""

    def __init__(self, rows: pd.DataFrame, pairs: int, *, p_positive: float = 0.5, seed: int = 0):
        if rows["identity"].nunique() < 2:
            raise DataError(f"{len(rows)} video(s) with one identity: negative pairs need at least 2",
                            fix="add videos of other patients to the split")
        self.rows, self.pairs, self.p_positive, self.seed, self.epoch = rows, pairs, p_positive, seed, 0
        self.by_identity = {k: np.asarray(v) for k, v in rows.groupby("identity").indices.items()}
        self.identity = rows["identity"].to_numpy()
        self.frames = rows["NumberOfFrames"].to_numpy()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.pairs

    def pick(self, index: int) -> tuple[int, int, int, int, float]:
        """(anchor video, anchor frame, partner video, partner frame, label) of item `index`."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        va = index % len(self.rows)
        fa = int(rng.integers(self.frames[va]))
        same = self.by_identity[self.identity[va]]
        positive = rng.random() < self.p_positive and (len(same) > 1 or self.frames[va] > 1)
        if positive:
            vb = int(rng.choice(same))
            while vb == va and self.frames[va] == 1:
                vb = int(rng.choice(same))
            fb = int(rng.integers(self.frames[vb] - (vb == va)))
            fb += int(vb == va and fb >= fa)  # a different frame of the same video
            return va, fa, vb, fb, 1.0
        others = np.flatnonzero(self.identity != self.identity[va])
        vb = int(rng.choice(others))
        return va, fa, vb, int(rng.integers(self.frames[vb])), 0.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        va, fa, vb, fb, label = self.pick(index)
        return {"a": read_frame(self.rows["path"].iloc[va], fa), "b": read_frame(self.rows["path"].iloc[vb], fb),
                "label": torch.tensor(label, dtype=torch.float32)}
