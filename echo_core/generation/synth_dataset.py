"""Fully synthetic datasets in the real datasets' own layout: the last step of `echoforge synth build`.

A build is LIDM hearts → privacy filter → LVDM videos animated from the surviving hearts; this module holds
its pure parts: the split spec, the conditions of each video, and the assembly of the EchoNet-format
folder (`Videos/` + `FileList.csv` + `privacy_scores.csv` + `manifest.json`). The folder is built in a
temp folder and swapped into place, so a crash leaves either the previous dataset or none.

What the reference wrote wrong (seed-systems §4.3) and this does not: FrameHeight/FrameWidth/
NumberOfFrames are read back from the written videos (the reference wrote T, H and the batch size), the
stated FPS is the files' fps (the reference stated 32 for files encoded at 30), ESV/EDV are left empty
rather than 0 (0 < 0 fails "ESV < EDV"), and Split comes from the requested counts, not "all TRAIN".
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from echo_core.config import StrictModel
from echo_core.data.filelist import CARDIACNET_CLASSES, CARDIACNET_CONDITIONS, write_filelist
from echo_core.errors import DataError, UsageError
from echo_core.utils.atomic import atomic_dir, write_json_atomic

SPLITS = ("TRAIN", "VAL", "TEST")
VIDEO_FORMAT = {"dynamic": "avi", "pediatric": "avi", "cardiacnet": "mp4"}  # each dataset's own container


class SynthConfig(StrictModel):
    """`synth.<dataset>` in params.yaml: what a synthetic build of that dataset generates."""

    kind: Literal["dynamic", "pediatric", "cardiacnet"]
    num_frames: int = Field(192, ge=1)  # EchoNet-Synthetic: 192 for Dynamic, 128 for Pediatric
    ef: Literal["uniform", "real", "none"] = "uniform"  # uniform in ef_range, or drawn from real TRAIN EFs
    ef_range: tuple[float, float] = (10.0, 90.0)
    class_ids: list[int] = Field(default_factory=list)  # class-conditioned hearts: the classes to draw
    splits: str = "TRAIN=0.8,VAL=0.1,TEST=0.1"
    hearts_per_video: float = Field(2.0, ge=1.0)  # first round of candidates (the reference: "usually 2×")
    max_hearts_per_video: float = Field(16.0, ge=1.0)  # give up past this many candidates per video
    sample: dict[str, Any] = Field(default_factory=dict)  # LVDM sampler overrides of `sample:` (sampler, steps, ...)

    @model_validator(mode="after")
    def _ef_range_valid(self) -> SynthConfig:
        if not 0 <= self.ef_range[0] <= self.ef_range[1] <= 100:
            raise ValueError(f"ef_range must satisfy 0 <= low <= high <= 100, got {self.ef_range}")
        return self


def split_counts(spec: str, n: int) -> dict[str, int]:
    """'TRAIN=8,VAL=1,TEST=1' (counts adding up to n) or 'TRAIN=0.8,VAL=0.1,TEST=0.1' (ratios adding up to
    1, rounded by largest remainder) → {split: count}; a UsageError naming the spec otherwise."""
    try:
        parts = {k.strip().upper(): float(v) for k, v in (item.split("=") for item in spec.split(","))}
    except ValueError:
        raise UsageError(f"--splits {spec!r} is not SPLIT=VALUE,...", fix="e.g. TRAIN=0.8,VAL=0.1,TEST=0.1") from None
    unknown = sorted(set(parts) - set(SPLITS))
    if unknown or any(v < 0 for v in parts.values()):
        raise UsageError(f"--splits {spec!r}: unknown split {unknown} or a negative value",
                         fix=f"use only {', '.join(SPLITS)} with values >= 0")
    values = np.array([parts.get(s, 0.0) for s in SPLITS])
    if all(v.is_integer() for v in values) and values.sum() > 1:
        if int(values.sum()) != n:
            raise UsageError(f"--splits {spec!r} counts add up to {int(values.sum())}, not --num-videos {n}",
                             fix="make the counts add up to the number of videos, or give ratios")
        return dict(zip(SPLITS, values.astype(int).tolist(), strict=True))
    if not np.isclose(values.sum(), 1.0):
        raise UsageError(f"--splits {spec!r} ratios add up to {values.sum():g}, not 1",
                         fix="e.g. TRAIN=0.8,VAL=0.1,TEST=0.1")
    raw = values * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return dict(zip(SPLITS, counts.tolist(), strict=True))


def assign_splits(n: int, counts: Mapping[str, int], seed: int) -> list[str]:
    """A seeded shuffle of the split labels, `counts[s]` of each."""
    labels = [s for s in SPLITS for _ in range(counts[s])]
    return [labels[i] for i in np.random.default_rng([seed, 3]).permutation(n)]


def video_conditions(hearts: pd.DataFrame, cfg: SynthConfig, seed: int,
                     real_efs: Sequence[float] = ()) -> pd.DataFrame:
    """The condition of each video, one row per kept heart (in order): `ef` (%) and/or the heart's
    `class_id` (EchoDream animates a heart under the class it was generated with)."""
    rng = np.random.default_rng([seed, 4])
    table = pd.DataFrame(index=range(len(hearts)))
    if cfg.ef == "uniform":
        table["ef"] = rng.integers(round(cfg.ef_range[0]), round(cfg.ef_range[1]) + 1, len(hearts)).astype(float)
    elif cfg.ef == "real":
        if not len(real_efs):
            raise DataError("synth ef: real needs the real TRAIN EFs, and the latent store has none",
                            fix="use ef: uniform, or a store whose FileList has an EF column")
        table["ef"] = rng.choice(np.asarray(real_efs, dtype=float), len(hearts))
    if "class_id" in hearts:
        table["class_id"] = hearts["class_id"].astype(int).to_numpy()
    if table.columns.empty:
        raise UsageError("a synthetic build needs a condition: EF or class-conditioned hearts",
                         fix="set synth.<dataset>.ef to uniform or real, or use a class-conditioned LIDM")
    return table


def _filelist(cfg: SynthConfig, generated: pd.DataFrame, hearts: pd.DataFrame, splits: list[str]) -> pd.DataFrame:
    """The dataset's FileList in its kind's schema (+ lineage columns Heart, HeartSeed, Seed)."""
    names = [f"synth_{i:06d}" for i in range(len(generated))]
    meta = {"FrameHeight": generated["FrameHeight"].astype(int), "FrameWidth": generated["FrameWidth"].astype(int),
            "FPS": generated["FPS"].astype(float), "NumberOfFrames": generated["NumberOfFrames"].astype(int)}
    lineage = {"Heart": hearts["FileName"].tolist(), "HeartSeed": hearts["Seed"].tolist(),
               "Seed": generated["Seed"].tolist()}
    if cfg.kind == "cardiacnet":
        ids = generated["class_id"].astype(int)
        name = [CARDIACNET_CLASSES[int(k)] for k in ids]
        condition = [next(c for c, pair in CARDIACNET_CONDITIONS.items() if n in pair) for n in name]
        # each synthetic video is its own "patient": no two share a heart, so patient-grouped splits hold
        return pd.DataFrame({"FileName": names, "condition": condition, "class_name": name, "class_id": ids,
                             "patient_id": names, **meta, "Split": splits, **lineage})
    efs = generated["EF"].astype(float)
    empty = [np.nan] * len(names)  # no volumes for a synthetic heart (0 would fail ESV < EDV)
    return pd.DataFrame({"FileName": names, "EF": efs, "ESV": empty, "EDV": empty, **meta, "Split": splits,
                         **lineage})


class EfMeasurer(Protocol):
    """The EF judge (`echo_core.evaluation.judge_file.LoadedEfJudge`): frames (T, H, W) uint8, fps → EF %."""

    competence: dict[str, Any]

    def predict_one(self, frames: np.ndarray, fps: float) -> float: ...


def measured_ef(videos: Path, table: pd.DataFrame, judge: EfMeasurer) -> list[float]:
    """The judge's EF of every video of `table` (NaN where the judge cannot measure one)."""
    from echo_core.data.video import read_video

    values = []
    for name in table["FileName"]:
        frames, fps = read_video(next(videos.glob(f"{name}.*")), gray=True, size=112)
        values.append(judge.predict_one(frames, fps))
    return values


def assemble_dataset(samples: str | os.PathLike, hearts: pd.DataFrame, scores: str | os.PathLike,
                     out: str | os.PathLike, cfg: SynthConfig, *, seed: int, manifest: dict[str, Any],
                     judge: EfMeasurer | None = None) -> pd.DataFrame:
    """Write the dataset folder `out` from the LVDM's sample folder (its FileList rows in heart order) and
    the kept `hearts` rows; returns its FileList. With an EF `judge` (EF datasets), `EF_measured` holds its
    reading of each video beside the requested `EF`, and the manifest its held-out competence. The previous
    `out` is replaced only when complete."""
    samples = Path(samples)
    generated = pd.read_csv(samples / "FileList.csv", dtype={"FileName": str})
    if len(generated) != len(hearts):
        raise DataError(f"{samples} holds {len(generated)} videos for {len(hearts)} hearts",
                        fix="re-run the build (the sample folder is resumable)")
    splits = assign_splits(len(generated), split_counts(cfg.splits, len(generated)), seed)
    table = _filelist(cfg, generated, hearts, splits)
    fmt = VIDEO_FORMAT[cfg.kind]
    with atomic_dir(out) as tmp:
        (tmp / "Videos").mkdir()
        for sample, name in zip(generated["FileName"], table["FileName"], strict=True):
            shutil.copyfile(samples / fmt / f"{sample}.{fmt}", tmp / "Videos" / f"{name}.{fmt}")
        if judge is not None and "EF" in table:
            table["EF_measured"] = measured_ef(tmp / "Videos", table, judge)
            manifest = {**manifest, "ef_judge": judge.competence}
        write_filelist(table, tmp / "FileList.csv")
        shutil.copyfile(scores, tmp / "privacy_scores.csv")
        write_json_atomic(tmp / "manifest.json", {**manifest, "counts": {s: splits.count(s) for s in SPLITS},
                                                  "videos": len(table), "format": fmt})
    return table
