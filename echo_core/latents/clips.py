"""Windowed clips from latent stores, for LVDM training.

A latent store (written by the encode stage) is a folder ROOT with
  ROOT/FileList.csv                      FileName, FPS, NumberOfFrames, Split (+ EF, or class_id/class_name)
  ROOT/Latents/<FileName>.safetensors    tensor "latents": (T, C, h, w), already × the VAE scaling factor
Several stores (Dynamic, Pediatric A4C/PSAX, CardiacNet) are read as one dataset with one condition schema:
a column a store lacks becomes that condition's null for its rows (never a crash).

Per item (seed-systems §3.1, with the reference's defects fixed):
  1. resample the video to `target_fps` with a random phase, seeded per (seed, epoch, index) so an epoch is
     reproducible and a resumed run replays it exactly (`set_epoch`); no global RNG;
  2. take a random window of `num_frames`, zero-pad, `padding` = number of valid frames;
  3. draw the conditioning frame from the CLIP by default (the reference drew it from the whole video);
  4. read only the needed frames through safetensors' memory-mapped slices (the reference `torch.load`ed
     every whole video per item, §8.31), keeping a small LRU of open files per worker.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch.utils.data import Dataset

from echo_core.config import StrictModel
from echo_core.errors import DataError
from echo_core.models.conditioning import MISSING_CLASS_ID, PromptTemplates, render_prompt

LATENT_KEY = "latents"
REQUIRED_COLUMNS = ("FileName", "FPS", "NumberOfFrames", "Split")
CondFrameRule = Literal["clip_random", "clip_first", "video_random"]
DurationRule = Literal["full_window", "any"]


class LatentDatasetConfig(StrictModel):
    """`lvdm.dataset` in params.yaml. Roots come from dvc.yaml/CLI, the condition list from
    `lvdm.conditioning.types`, the seed from the run."""

    num_frames: int = Field(64, ge=1)
    target_fps: float = Field(32.0, gt=0)
    cond_frame: CondFrameRule = "clip_random"
    # full_window: keep videos with at least num_frames frames after resampling (the reference's strict
    # `Duration > num_frames / fps` also dropped videos of exactly 2.0 s); any: keep all, pad short ones.
    min_duration_rule: DurationRule = "full_window"
    prompts: PromptTemplates = Field(default_factory=PromptTemplates)
    max_open_files: int = Field(64, ge=1)


# ---------------------------------------------------------------- FileList → rows


def _read_filelist(root: Path, split: str) -> pd.DataFrame:
    """ROOT/FileList.csv rows of `split` in a uniform schema: file_name, fps, num_frames, ef (EF %, NaN if
    absent), class_id (−1 if absent), class_name ("" if absent), dataset, path."""
    csv = root / "FileList.csv"
    if not csv.is_file():
        raise DataError(f"latent store {root} has no FileList.csv", fix="run the encode stage for this dataset")
    df = pd.read_csv(csv)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv} lacks column(s) {missing}", fix="re-run the encode stage (it writes them)")
    df = df[df["Split"].astype(str).str.strip().str.upper() == split.upper()]
    rows = pd.DataFrame({
        "file_name": df["FileName"].astype(str),
        "fps": pd.to_numeric(df["FPS"], errors="coerce"),
        "num_frames": pd.to_numeric(df["NumberOfFrames"], errors="coerce"),
        "ef": pd.to_numeric(df["EF"], errors="coerce") if "EF" in df else np.nan,
        "class_id": pd.to_numeric(df["class_id"], errors="coerce") if "class_id" in df else np.nan,
        "class_name": df["class_name"].fillna("").astype(str) if "class_name" in df else "",
        "dataset": root.name,
    })
    rows["class_id"] = rows["class_id"].fillna(MISSING_CLASS_ID).astype(int)
    rows["path"] = [str(root / "Latents" / f"{name}.safetensors") for name in rows["file_name"]]
    bad = rows[~(rows["fps"] > 0) | ~(rows["num_frames"] > 0)]
    if len(bad):
        raise DataError(f"{csv}: FileName {bad['file_name'].iloc[0]!r} has FPS/NumberOfFrames that are not "
                        f"positive numbers ({len(bad)} such rows)", fix="fix or drop these rows upstream")
    return rows.reset_index(drop=True)


def _provided_conditions(root: Path) -> set[str]:
    """Conditions a store's FileList columns provide (decided by columns, not by one split's rows)."""
    columns = set(pd.read_csv(root / "FileList.csv", nrows=0).columns)
    provided = {"ef"} if "EF" in columns else set()
    provided |= {"class_id"} if "class_id" in columns else set()
    return provided | ({"text"} if columns & {"EF", "class_name"} else set())


def _check_schema(roots: Sequence[Path], conditions: Sequence[str]) -> None:
    """Every requested condition must be provided by at least one store (else training is unconditional
    by accident); stores lacking it give that condition's null for their rows."""
    provided = set().union(*(_provided_conditions(root) for root in roots))
    for condition in conditions:
        if condition not in {"ef", "class_id", "text"}:
            raise DataError(f"unknown condition {condition!r}", fix="use some of ['class_id', 'ef', 'text']")
        if condition not in provided:
            raise DataError(f"condition {condition!r} is requested but no store provides it "
                            f"({[str(r) for r in roots]})",
                            fix="add stores with that column (EF, class_id, class_name) or change "
                                "lvdm.conditioning.types")


def _resampled_length(fps: float, num_frames: float, target_fps: float) -> int:
    """How many frames a video has once resampled to target_fps (the reference's floor rule)."""
    return math.floor(target_fps / fps * num_frames)


# ---------------------------------------------------------------- per-item sampling (pure, numpy)


def clip_indices(num_video_frames: int, fps: float, target_fps: float, num_frames: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Source-frame indices of one training clip: resample to target_fps with a random phase, then a
    random window of at most num_frames. Returns sorted int64 indices in [0, num_video_frames)."""
    n = max(1, _resampled_length(fps, num_video_frames, target_fps))
    step = num_video_frames / n
    idx = np.floor(np.arange(n) * step + rng.uniform(0.0, step)).astype(np.int64)
    idx = np.minimum(idx, num_video_frames - 1)  # float rounding at the very end
    start = int(rng.integers(0, max(n - num_frames, 0) + 1))
    return idx[start:start + num_frames]


def cond_frame_index(rule: str, window: np.ndarray, num_video_frames: int, rng: np.random.Generator) -> int:
    """Source index of the conditioning frame: from the clip (random or first) or, as the reference did,
    from anywhere in the video."""
    if rule == "clip_random":
        return int(window[rng.integers(len(window))])
    if rule == "clip_first":
        return int(window[0])
    if rule == "video_random":
        return int(rng.integers(num_video_frames))
    raise ValueError(f"unknown cond_frame rule {rule!r}; choose clip_random, clip_first or video_random")


# ---------------------------------------------------------------- the dataset


class LatentClipDataset(Dataset):
    """Clips of `num_frames` latent frames at `target_fps` from one or more latent stores.

    Item: video (C, T, h, w) float32 zero-padded; cond_frame (C, h, w); padding (valid frames); fps;
    ef (EF/100, 0.0 when missing) + has_ef; class_id (−1 = missing → the null class); text (prompt, "" =
    null); file_name; dataset. `missing_files` lists FileList rows whose latent file does not exist.
    """

    def __init__(self, roots: Sequence[str | Path], split: str, *, num_frames: int = 64,
                 target_fps: float = 32.0, cond_frame: CondFrameRule = "clip_random",
                 conditions: Sequence[str] = ("ef",), seed: int = 0,
                 min_duration_rule: DurationRule = "full_window", prompts: PromptTemplates | None = None,
                 max_open_files: int = 64):
        self.roots = [Path(r) for r in roots]
        self.split, self.num_frames, self.target_fps = split, num_frames, float(target_fps)
        self.cond_frame, self.seed, self.epoch = cond_frame, int(seed), 0
        self.prompts = prompts or PromptTemplates()
        self.max_open_files = max_open_files
        self._handles: OrderedDict[str, Any] = OrderedDict()
        cond_frame_index(cond_frame, np.zeros(1, dtype=np.int64), 1, np.random.default_rng(0))  # validate
        self.rows, self.missing_files, self.report = self._select_rows(conditions, min_duration_rule)

    @classmethod
    def from_config(cls, roots: Sequence[str | Path], split: str, cfg: LatentDatasetConfig, *,
                    conditions: Sequence[str], seed: int) -> LatentClipDataset:
        return cls(roots, split, num_frames=cfg.num_frames, target_fps=cfg.target_fps,
                   cond_frame=cfg.cond_frame, conditions=conditions, seed=seed,
                   min_duration_rule=cfg.min_duration_rule, prompts=cfg.prompts,
                   max_open_files=cfg.max_open_files)

    def _select_rows(self, conditions: Sequence[str],
                     rule: DurationRule) -> tuple[pd.DataFrame, list[str], dict[str, int]]:
        if not self.roots:
            raise DataError("no latent stores given", fix="pass at least one latent store folder")
        rows = pd.concat([_read_filelist(root, self.split) for root in self.roots], ignore_index=True)
        _check_schema(self.roots, conditions)
        exists = np.array([Path(p).is_file() for p in rows["path"]], dtype=bool)
        missing = rows.loc[~exists, "path"].tolist()
        if missing:
            warnings.warn(f"{len(missing)} FileList row(s) have no latent file (first: {missing[0]}); "
                          "they are skipped and listed in dataset.missing_files", stacklevel=3)
        lengths = [_resampled_length(f, n, self.target_fps) for f, n in zip(rows["fps"], rows["num_frames"],
                                                                                   strict=True)]
        min_len = self.num_frames if rule == "full_window" else 1
        long_enough = np.array(lengths) >= min_len
        kept = rows[exists & long_enough].reset_index(drop=True)
        report = {"rows": len(rows), "missing_files": len(missing),
                  "too_short": int((exists & ~long_enough).sum()), "kept": len(kept),
                  "missing_ef": int(kept["ef"].isna().sum())}
        if kept.empty:
            raise DataError(f"no usable {self.split} clips in {[str(r) for r in self.roots]} ({report})",
                            fix="check the split name, that the encode stage wrote Latents/, and "
                                "lvdm.dataset.min_duration_rule / num_frames / target_fps")
        return kept, missing, report

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random phases/windows/frames are drawn (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()  # open files are per process (DataLoader workers reopen them)
        return state

    def _slice(self, path: str):
        """A memory-mapped slice view of the file's latents, from a small LRU of open files."""
        from safetensors import safe_open

        if path in self._handles:
            self._handles.move_to_end(path)
        else:
            if len(self._handles) >= self.max_open_files:
                self._handles.popitem(last=False)
            self._handles[path] = safe_open(path, framework="pt")
        handle = self._handles[path]
        keys = list(handle.keys())
        if LATENT_KEY not in keys:
            raise DataError(f"{path} has no tensor '{LATENT_KEY}' (keys: {keys})",
                            fix="re-run the encode stage for this dataset")
        return handle.get_slice(LATENT_KEY)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        latents = self._slice(row["path"])
        total = int(latents.get_shape()[0])
        window = clip_indices(total, float(row["fps"]), self.target_fps, self.num_frames, rng)
        cond_index = cond_frame_index(self.cond_frame, window, total, rng)
        lo, hi = int(window[0]), int(window[-1]) + 1  # read one contiguous block: only the clip's span
        block = latents[lo:hi]
        frames = block[torch.from_numpy(window - lo)].float()  # (valid, C, h, w)
        cond = block[cond_index - lo] if lo <= cond_index < hi else latents[cond_index:cond_index + 1][0]
        video = torch.zeros((self.num_frames, *frames.shape[1:]), dtype=torch.float32)
        video[: len(window)] = frames
        return {
            "video": video.permute(1, 0, 2, 3).contiguous(),
            "cond_frame": cond.float(),
            "padding": len(window),
            "fps": self.target_fps,
            **self._conditions(row),
            "file_name": row["file_name"],
            "dataset": row["dataset"],
        }

    def _conditions(self, row: pd.Series) -> dict[str, Any]:
        has_ef = bool(np.isfinite(row["ef"]))
        ef_percent = float(row["ef"]) if has_ef else None
        return {
            "ef": ef_percent / 100.0 if has_ef else 0.0,
            "has_ef": has_ef,
            "class_id": int(row["class_id"]),
            "text": render_prompt(self.prompts, ef_percent=ef_percent, class_name=row["class_name"] or None),
        }
