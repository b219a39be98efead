"""Conditioning sources for batch generation: where each sample's heart frame and clinical condition come from.

Frames (`--conditioning FOLDER`, file type decided per file by suffix, stray files ignored):
- our latent store: `ROOT/Latents/<name>.safetensors` (or the `Latents/` folder itself), (T, C, h, w);
- the reference format: `<name>.pt` plain tensors, (T, C, h, w) videos or (C, h, w) LIDM frame latents
  (`torch.load(weights_only=True)`: never unpickles objects);
- image folders: `.jpg` / `.jpeg` / `.png`, resized to the model resolution and VAE-encoded (posterior mean).
The frame of a latent video is its first frame, or a random one drawn from the sample's own seed.

Conditions: a fixed EF or an EF range (uniform integer %, per-sample seeded), class ids (cycled) or random
classes, prompts (cycled), a CSV of conditions (rows cycled; columns `ef`/`EF`, `class_id`, `text`/`prompt`),
or none. Everything is cycled by sample index, so fewer files/rows than the batch size simply repeat
(the reference looped forever, seed-systems §8.23) and a plan is a pure function of (config, sources).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from echo_core.config import StrictModel
from echo_core.errors import DataError, UsageError
from echo_core.generation.pipeline import CondSpec

LATENT_SUFFIXES = (".safetensors", ".pt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ConditionsConfig(StrictModel):
    """`sample.conditions`: at most one source of clinical conditions."""

    ef: float | None = Field(None, ge=0, le=100)
    ef_range: tuple[float, float] | None = None
    class_ids: list[int] | None = None  # [] → a random class of the model's num_classes per sample
    prompts: list[str] | None = None
    csv: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ConditionsConfig:
        given = [k for k in ("ef", "ef_range", "class_ids", "prompts", "csv") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one condition source, got {given}")
        if self.ef_range is not None and not 0 <= self.ef_range[0] <= self.ef_range[1] <= 100:
            raise ValueError(f"ef_range must satisfy 0 <= low <= high <= 100, got {self.ef_range}")
        if self.prompts is not None and not all(p.strip() for p in self.prompts):
            raise ValueError("prompts must not be empty strings")
        return self


@dataclass(frozen=True)
class FrameRef:
    """One conditioning file. kind: latent (safetensors / .pt) or image."""

    path: Path
    kind: Literal["latent", "image"]


@dataclass(frozen=True)
class SamplePlan:
    index: int
    seed: int
    spec: CondSpec
    frame: FrameRef | None  # None → the bundle's default frame

    @property
    def name(self) -> str:
        return f"sample_{self.index:06d}"


def list_frame_sources(folder: str | os.PathLike) -> list[FrameRef]:
    """Conditioning files of `folder` (or of its `Latents/`: a latent store; or `latents/`: a heart folder),
    sorted by name; other files are ignored."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"conditioning folder not found: {root}", fix="pass a latent store or an image folder")
    search = next((root / sub for sub in ("Latents", "latents") if (root / sub).is_dir()), root)
    refs = [FrameRef(p, "latent" if p.suffix.lower() in LATENT_SUFFIXES else "image")
            for p in sorted(search.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in LATENT_SUFFIXES + IMAGE_SUFFIXES]
    if not refs:
        raise DataError(f"no conditioning files in {search}",
                        fix=f"the folder needs {', '.join(LATENT_SUFFIXES + IMAGE_SUFFIXES)} files")
    return refs


def read_conditions_csv(path: str | os.PathLike) -> list[CondSpec]:
    """A CSV of conditions → specs (one per row). Columns: ef|EF (%), class_id, text|prompt."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read conditions CSV {path}: {exc}", fix="pass a CSV with a header row") from None
    cols = {c.lower(): c for c in df.columns}
    known = [c for c in ("ef", "class_id", "text", "prompt") if c in cols]
    if not known or df.empty:
        raise DataError(f"{path} has no rows or none of the columns ef, class_id, text, prompt",
                        fix="add a header with at least one of: ef, class_id, text")
    specs = []
    for i, row in enumerate(df.itertuples(index=False)):
        values = dict(zip(df.columns, row, strict=True))
        specs.append(_row_spec(values, cols, f"{path} row {i + 2}"))
    return specs


def _row_spec(values: dict, cols: dict[str, str], where: str) -> CondSpec:
    def get(name: str):
        v = values.get(cols.get(name, ""))
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else v

    try:
        ef = get("ef")
        cid = get("class_id")
        text = get("text") if get("text") is not None else get("prompt")
        return CondSpec(ef_percent=float(ef) if ef is not None else None,
                        class_id=int(cid) if cid is not None else None,
                        text=str(text) if text is not None else None)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {exc}", fix="ef must be a number, class_id an integer") from None


def draw_spec(cfg: ConditionsConfig, index: int, seed: int, num_classes: int | None,
              table: list[CondSpec] | None) -> CondSpec:
    """The condition of sample `index` (seeded by the sample's own seed, so resume redraws the same)."""
    rng = np.random.default_rng([seed, 1])
    if cfg.ef is not None:
        return CondSpec(ef_percent=float(cfg.ef))
    if cfg.ef_range is not None:
        return CondSpec(ef_percent=float(rng.integers(round(cfg.ef_range[0]), round(cfg.ef_range[1]) + 1)))
    if cfg.class_ids is not None:
        if cfg.class_ids:
            return CondSpec(class_id=int(cfg.class_ids[index % len(cfg.class_ids)]))
        if not num_classes:
            raise UsageError("random classes need a class-conditioned model", fix="pass explicit class ids")
        return CondSpec(class_id=int(rng.integers(num_classes)))
    if cfg.prompts is not None:
        return CondSpec(text=cfg.prompts[index % len(cfg.prompts)])
    if table is not None:
        return table[index % len(table)]
    return CondSpec()


def plan_samples(num_samples: int, seed: int, cfg: ConditionsConfig, frames: list[FrameRef] | None,
                 num_classes: int | None = None) -> list[SamplePlan]:
    """Sample i: seed + i, frame i mod len(frames), condition `draw_spec(i)`."""
    table = read_conditions_csv(cfg.csv) if cfg.csv else None
    return [SamplePlan(i, seed + i, draw_spec(cfg, i, seed + i, num_classes, table),
                       frames[i % len(frames)] if frames else None) for i in range(num_samples)]


# ---------------------------------------------------------------- loading frames


def load_latent_frame(path: Path, rule: Literal["first", "random"], seed: int) -> torch.Tensor:
    """One frame latent (C, h, w) from a (T, C, h, w) video latent or a (C, h, w) frame latent (a heart)."""
    if path.suffix.lower() == ".safetensors":
        latents = _read_safetensors_latent(path)
    else:
        try:
            latents = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"cannot load {path}: {exc}", fix="it must be a plain tensor saved with torch.save") \
                from None
    if not isinstance(latents, torch.Tensor) or latents.ndim not in (3, 4):
        raise DataError(f"{path} holds no (T, C, h, w) or (C, h, w) latent tensor",
                        fix="use latents written by `echoforge latents encode` or the reference scripts")
    if latents.ndim == 3:
        return latents.float()
    index = 0 if rule == "first" else int(np.random.default_rng([seed, 2]).integers(latents.shape[0]))
    return latents[index].float()


def _read_safetensors_latent(path: Path) -> torch.Tensor:
    """A latent store's video (tensor "latents") or a heart folder's frame (tensor "latent")."""
    from safetensors import safe_open

    from echo_core.generation.hearts import HEART_KEY, read_heart
    from echo_core.latents.store import read_latents

    try:
        with safe_open(str(path), framework="pt") as f:
            is_heart = HEART_KEY in f.keys()  # noqa: SIM118 (safe_open is not a mapping)
    except Exception:  # unreadable: read_latents names the file and the fix
        is_heart = False
    return read_heart(path)[0] if is_heart else read_latents(path)[0]


def load_image(path: Path, size: int) -> np.ndarray:
    """An image file → (size, size) uint8 gray (resized with bilinear filtering when needed)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
            if gray.size != (size, size):
                gray = gray.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(gray)
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}", fix="remove or replace the file") from None
