"""Resumable batch generation: plan → generate the missing samples → FileList.csv + generation_params.json.

The plan (seed, condition and conditioning file of every sample) is a pure function of the config and the
conditioning folder, so a re-run after a crash regenerates exactly the missing samples and skips the rest
(a sample counts as done when all its requested outputs exist; each is renamed into place complete).
A folder made with different sampling parameters is refused rather than silently mixed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator

from echo_core.data.filelist import write_filelist
from echo_core.errors import UsageError
from echo_core.sampling.conditions import (
    ConditionsConfig,
    FrameRef,
    SamplePlan,
    list_frame_sources,
    load_image,
    load_latent_frame,
    plan_samples,
)
from echo_core.sampling.pipeline import LvdmPipeline, SamplerOptions, check_spec
from echo_core.sampling.writers import describe_sample, is_done, parse_formats, write_sample
from echo_core.utils.atomic import remove_stale_temps, write_json_atomic
from echo_core.utils.hashing import config_hash

PARAMS_FILE = "generation_params.json"
FILELIST_FILE = "FileList.csv"
# fields that do not change any sample: they may differ between a run and its resume
_NOT_IN_PLAN = {"num_samples", "batch_size", "formats", "device", "decode_chunk"}


class SampleConfig(SamplerOptions):
    """`sample:` in params.yaml (sampler options + what to generate and from what)."""

    num_samples: int = Field(16, ge=1)
    batch_size: int = Field(4, ge=1)
    seed: int = 0
    formats: list[str] = Field(default_factory=lambda: ["mp4", "jpg"])
    cond_frame: Literal["first", "random"] = "first"
    conditions: ConditionsConfig = Field(default_factory=ConditionsConfig)
    device: str = "auto"  # auto → cuda when available, else cpu

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        return parse_formats(value)

    def sampler_options(self) -> SamplerOptions:
        return SamplerOptions(**self.model_dump(include=set(SamplerOptions.model_fields)))


@dataclass(frozen=True)
class GenerationReport:
    out: Path
    generated: int
    skipped: int
    fps: float

    def summary(self) -> str:
        return (f"{self.generated} sample(s) generated, {self.skipped} already done, in {self.out} "
                f"(written at {self.fps:g} fps)")


def load_cond_frames(pipe: LvdmPipeline, plans: list[SamplePlan], rule: str,
                     default_frame: np.ndarray | None) -> torch.Tensor:
    """Conditioning latents (B, C, h, w) of a batch: latent files read, images (and the default) encoded."""
    latents: list[torch.Tensor | None] = [None] * len(plans)
    images: dict[int, np.ndarray] = {}
    for i, plan in enumerate(plans):
        if plan.frame is None:
            if default_frame is None:
                raise UsageError("no conditioning folder and the model has no default frame",
                                 fix="pass --conditioning FOLDER")
            images[i] = default_frame
        elif plan.frame.kind == "latent":
            latents[i] = load_latent_frame(plan.frame.path, rule, plan.seed)
        else:
            images[i] = load_image(plan.frame.path, pipe.resolution)
    if images:
        encoded = pipe.encode_frames(np.stack(list(images.values()))).cpu()
        for i, z in zip(images, encoded, strict=True):
            latents[i] = z
    return torch.stack(latents)


def _filelist_row(plan: SamplePlan, described: dict[str, float]) -> dict[str, Any]:
    cond_type, cond_value = plan.spec.kind_value()
    return {"FileName": plan.name, "CondType": cond_type, "CondValue": cond_value,
            "EF": plan.spec.ef_percent if plan.spec.ef_percent is not None else np.nan,
            "class_id": plan.spec.class_id, "Prompt": plan.spec.text or "", "Seed": plan.seed,
            "ConditioningFile": plan.frame.path.name if plan.frame else "default_frame",
            **described, "Split": "GENERATED"}


def _params_record(cfg: SampleConfig, model: dict[str, Any], frames: list[FrameRef] | None,
                   plans: list[SamplePlan], fps: float) -> dict[str, Any]:
    content = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_PLAN}
    sources = [f.path.name for f in frames] if frames else ["default_frame"]
    plan_hash = config_hash({"config": content, "model": model.get("id"), "sources": sources})
    return {"plan_hash": plan_hash, "config": cfg.model_dump(mode="json"), "model": model, "fps_written": fps,
            "conditioning_files": sources,
            "samples": [{"name": p.name, "seed": p.seed, "cond": p.spec.kind_value()} for p in plans]}


def _check_resume(out: Path, record: dict[str, Any]) -> None:
    path = out / PARAMS_FILE
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("plan_hash") != record["plan_hash"]:
        raise UsageError(f"{out} holds samples made with different parameters, model or conditioning "
                         f"(see {path})", fix="use a new --out folder, or delete the old one")


def generate_samples(pipe: LvdmPipeline, cfg: SampleConfig, out: str | os.PathLike, *,
                     conditioning: str | os.PathLike | None = None, model: dict[str, Any] | None = None,
                     default_frame: np.ndarray | None = None,
                     on_batch: Callable[[int, int], None] | None = None) -> GenerationReport:
    """Generate cfg.num_samples videos into `out`; finished samples are skipped. `model` ({"id": ...}) is
    recorded (and part of the resume check). on_batch(done, todo) reports progress."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    frames = list_frame_sources(conditioning) if conditioning else None
    plans = plan_samples(cfg.num_samples, cfg.seed, cfg.conditions, frames, pipe.config.conditioning.num_classes)
    for plan in plans:  # every condition is checked before any compute is spent
        check_spec(plan.spec, pipe.config.conditioning, where=plan.name)
    fps = float(cfg.fps or pipe.fps)
    record = _params_record(cfg, model or {}, frames, plans, fps)
    _check_resume(out, record)
    write_json_atomic(out / PARAMS_FILE, {**record, "status": "running"})
    todo = [p for p in plans if not is_done(out, p.name, cfg.formats)]
    opts = cfg.sampler_options()
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        cond = load_cond_frames(pipe, batch, cfg.cond_frame, default_frame)
        videos, latents = pipe.generate(cond, [p.spec for p in batch], [p.seed for p in batch], opts)
        for plan, video, latent in zip(batch, videos, latents, strict=True):
            write_sample(out, plan.name, video, cfg.formats, fps, latents=latent,
                         meta={"seed": str(plan.seed), "cond": json.dumps(plan.spec.kind_value())})
        if on_batch is not None:
            on_batch(start + len(batch), len(todo))
    rows = [_filelist_row(p, describe_sample(out, p.name, cfg.formats, fps)) for p in plans]
    df = pd.DataFrame(rows).astype({"class_id": "Int64"})
    write_filelist(df, out / FILELIST_FILE)
    write_json_atomic(out / PARAMS_FILE, {**record, "status": "complete"})
    return GenerationReport(out, len(todo), len(plans) - len(todo), fps)
