"""Resumable batch generation: plan → generate the missing samples → FileList.csv + generation_params.json.

The plan (seed, condition and conditioning file of every sample) is a pure function of the config and the
conditioning folder, so a re-run after a crash regenerates exactly the missing samples and skips the rest
(a sample counts as done when all its requested outputs exist; each is renamed into place complete).
A folder made with different generation parameters is refused rather than silently mixed.

Scale-out: `generate_samples` = `start_generation` (once: stale temps, resume check, "running" record)
→ `generate_shard` over the whole plan → `finish_generation` (once: FileList.csv, "complete" record).
A flow fans the middle step out over `shard_ranges` (contiguous plan ranges cut between batches); each shard
writes only its own samples. The plan needs the model's config, not its weights (`read_model_config`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator

from echo_core.data.filelist import write_filelist
from echo_core.errors import DataError, UsageError
from echo_core.generation.conditions import (
    ConditionsConfig,
    FrameRef,
    SamplePlan,
    list_frame_sources,
    load_image,
    load_latent_frame,
    plan_samples,
)
from echo_core.generation.pipeline import LvdmPipeline, SamplerOptions, check_lvdm_folder, check_spec
from echo_core.generation.writers import describe_sample, is_done, parse_formats, write_sample
from echo_core.models.lvdm import LvdmSpec, read_lvdm_spec
from echo_core.utils.atomic import remove_stale_temps, write_json_atomic
from echo_core.utils.hashing import config_hash
from echo_core.utils.shards import contiguous_shards

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


def _recorded_hash(out: Path) -> str | None:
    """The plan hash `out` records ("" for a record without one); None when there is no record yet."""
    path = out / PARAMS_FILE
    return json.loads(path.read_text(encoding="utf-8")).get("plan_hash", "") if path.is_file() else None


def _check_resume(out: Path, record: dict[str, Any]) -> None:
    recorded = _recorded_hash(out)
    if recorded is not None and recorded != record["plan_hash"]:
        raise UsageError(f"{out} holds samples made with different parameters, model or conditioning "
                         f"(see {out / PARAMS_FILE})", fix="use a new --out folder, or delete the old one")


@dataclass(frozen=True)
class GenerationJob:
    """One generation without its weights: the ordered plan, where it is written and what is recorded.

    A pure function of (model config, generation config, conditioning files), so the start step, every shard
    and the finish step rebuild the same job independently (a shard may run on another machine)."""

    out: Path
    cfg: SampleConfig
    plans: list[SamplePlan]
    record: dict[str, Any]  # generation_params.json without its status
    fps: float


def read_model_config(folder: str | os.PathLike) -> LvdmSpec:
    """The bundle's model spec (lvdm_config.json): all a plan needs, without loading any weights."""
    return read_lvdm_spec(check_lvdm_folder(folder))


def plan_generation(model_cfg: LvdmSpec, cfg: SampleConfig, out: str | os.PathLike, *,
                    conditioning: str | os.PathLike | None = None,
                    model: dict[str, Any] | None = None) -> GenerationJob:
    """Plan every sample (seed, condition, conditioning file); every condition is checked against the model
    before any compute is spent. `model` ({"id": ...}) is recorded and part of the resume check."""
    frames = list_frame_sources(conditioning) if conditioning else None
    plans = plan_samples(cfg.num_samples, cfg.seed, cfg.conditions, frames, model_cfg.conditioning.num_classes)
    for plan in plans:
        check_spec(plan.spec, model_cfg.conditioning, where=plan.name)
    fps = float(cfg.fps or model_cfg.dataset.target_fps)
    return GenerationJob(Path(out), cfg, plans, _params_record(cfg, model or {}, frames, plans, fps), fps)


def missing_samples(job: GenerationJob, indices: Sequence[int] | None = None) -> list[int]:
    """Plan indices (of `indices`, default all) whose requested outputs are not all written yet."""
    indices = range(len(job.plans)) if indices is None else indices
    return [i for i in indices if not is_done(job.out, job.plans[i].name, job.cfg.formats)]


def start_generation(job: GenerationJob) -> list[int]:
    """Once per run, before any shard: drop temp files of a killed run, refuse a folder made with another
    plan, record "running". Returns the plan indices still to generate."""
    job.out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(job.out)
    _check_resume(job.out, job.record)
    write_json_atomic(job.out / PARAMS_FILE, {**job.record, "status": "running"})
    return missing_samples(job)


def shard_ranges(job: GenerationJob, todo: Sequence[int], n_shards: int) -> list[range]:
    """Contiguous plan-index ranges, one per shard, cut between the batches the sequential run makes of
    `todo` (so every sample is generated in the same batch, hence bit-identical). Done samples inside a
    range are skipped by its shard; [] when nothing is left to do."""
    cuts = contiguous_shards(len(todo), n_shards, align=job.cfg.batch_size)
    return [range(todo[cut.start], todo[cut.stop - 1] + 1) for cut in cuts]


def generate_shard(pipe: LvdmPipeline, job: GenerationJob, indices: range, *,
                   default_frame: np.ndarray | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> int:
    """Generate the missing samples of plan indices `indices` in batches of cfg.batch_size; writes only
    those samples' files (each atomically), never the FileList, the record or other temp files.
    Returns how many were generated. on_batch(done, todo) reports progress."""
    if _recorded_hash(job.out) != job.record["plan_hash"]:
        raise UsageError(f"{job.out / PARAMS_FILE} does not record this plan",
                         fix="run start_generation first (parameters, model or conditioning changed?)")
    todo = [job.plans[i] for i in missing_samples(job, indices)]
    opts, size = job.cfg.sampler_options(), job.cfg.batch_size
    for start in range(0, len(todo), size):
        batch = todo[start:start + size]
        cond = load_cond_frames(pipe, batch, job.cfg.cond_frame, default_frame)
        videos, latents = pipe.generate(cond, [p.spec for p in batch], [p.seed for p in batch], opts)
        for plan, video, latent in zip(batch, videos, latents, strict=True):
            write_sample(job.out, plan.name, video, job.cfg.formats, job.fps, latents=latent,
                         meta={"seed": str(plan.seed), "cond": json.dumps(plan.spec.kind_value())})
        if on_batch is not None:
            on_batch(start + len(batch), len(todo))
    return len(todo)


def finish_generation(job: GenerationJob, generated: int) -> GenerationReport:
    """Once per run, after every shard: FileList.csv (read back from the written files) and the "complete"
    record. `generated` = what this run's shards generated (the rest counts as skipped)."""
    left = missing_samples(job)
    if left:
        names = ", ".join(job.plans[i].name for i in left[:5])
        raise DataError(f"{len(left)} sample(s) of {job.out} are not written yet ({names}...)",
                        fix="re-run the generation: it makes only the missing samples")
    rows = [_filelist_row(p, describe_sample(job.out, p.name, job.cfg.formats, job.fps)) for p in job.plans]
    df = pd.DataFrame(rows).astype({"class_id": "Int64"})
    write_filelist(df, job.out / FILELIST_FILE)
    write_json_atomic(job.out / PARAMS_FILE, {**job.record, "status": "complete"})
    return GenerationReport(job.out, generated, len(job.plans) - generated, job.fps)


def generate_samples(pipe: LvdmPipeline, cfg: SampleConfig, out: str | os.PathLike, *,
                     conditioning: str | os.PathLike | None = None, model: dict[str, Any] | None = None,
                     default_frame: np.ndarray | None = None,
                     on_batch: Callable[[int, int], None] | None = None) -> GenerationReport:
    """Generate cfg.num_samples videos into `out`; finished samples are skipped. `model` ({"id": ...}) is
    recorded (and part of the resume check). on_batch(done, todo) reports progress.
    = start + one shard over the whole plan + finish (the flow fans the middle out)."""
    job = plan_generation(pipe.config, cfg, out, conditioning=conditioning, model=model)
    start_generation(job)
    generated = generate_shard(pipe, job, range(len(job.plans)), default_frame=default_frame, on_batch=on_batch)
    return finish_generation(job, generated)
