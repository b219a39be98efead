"""Generate synthetic hearts with an LIDM into a heart folder (`echo_core.generation.hearts`).

Heart i of a run is `heart_<i:06d>` with seed `seed + i`; its latent depends only on that seed, its class
and the model (the sampler's per-sample generators), whatever the batch it is drawn in. A rerun skips
every heart whose file already holds its seed, so a killed run resumes, and asking for more hearts adds
them. Fixes seed-systems §8.27: the reference LIDM sampler ignored `--seed` (it used config.seed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.data.filelist import write_filelist
from echo_core.diffusion.samplers import check_sampler, sample_image, samplers_for
from echo_core.errors import DataError, UsageError
from echo_core.generation.hearts import (
    HEART_SHAPE,
    HEARTS_FILELIST,
    IMAGES_SUBDIR,
    heart_path,
    read_heart,
    write_heart,
)
from echo_core.models.lidm import LidmNet
from echo_core.utils.atomic import atomic_path
from echo_core.utils.progress import progress


class HeartSampling(StrictModel):
    """`sample_lidm:` in params.yaml: how hearts are sampled (the reference: DDPM, 64–128 steps)."""

    num_samples: int = Field(64, ge=1)  # the LIDM's own FD/IS sample (the reference: 50k-100k on GPUs)
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun"] | None = None  # None: ddpm, or heun for flow
    steps: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    guidance_scale: float = Field(1.0, ge=0.0)  # class-conditioned LIDMs only (EchoDream: 5)


@dataclass(frozen=True)
class HeartRequest:
    num_samples: int
    seed: int = 0
    class_ids: Sequence[int] = ()  # cycled over the hearts; empty for an unconditional model
    guidance_scale: float = 1.0
    sampler: str = "ddpm"
    steps: int = 64
    batch_size: int = 16

    def plan(self) -> pd.DataFrame:
        """FileName, Seed[, class_id] of every heart, in generation order."""
        rows = pd.DataFrame({"FileName": [f"heart_{i:06d}" for i in range(self.num_samples)],
                             "Seed": [self.seed + i for i in range(self.num_samples)]})
        if self.class_ids:
            rows["class_id"] = [int(self.class_ids[i % len(self.class_ids)]) for i in range(self.num_samples)]
        return rows


def heart_request(net: LidmNet, sampling: HeartSampling, *, num_samples: int, seed: int = 0,
                  class_ids: Sequence[int] = (), guidance_scale: float | None = None) -> HeartRequest:
    """The request for `num_samples` hearts: a class-conditioned LIDM cycles over `class_ids` (default:
    all its classes) under the sampling's guidance; an explicit `guidance_scale` wins."""
    cond = net.spec.conditioning
    ids = list(class_ids) or (list(range(cond.num_classes)) if cond.class_id else [])
    default_guidance = sampling.guidance_scale if cond.class_id else 1.0
    allowed = samplers_for(net.spec.objective)
    return HeartRequest(num_samples=num_samples, seed=seed, class_ids=ids,
                        guidance_scale=default_guidance if guidance_scale is None else guidance_scale,
                        sampler=sampling.sampler or ("ddpm" if "ddpm" in allowed else "heun"),
                        steps=sampling.steps, batch_size=sampling.batch_size)


def check_request(net: LidmNet, request: HeartRequest) -> None:
    """A clear UsageError for a request the model cannot honour."""
    cond = net.spec.conditioning
    check_sampler(request.sampler, net.spec.objective)
    if request.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {request.num_samples}", fix="ask for at least one heart")
    if cond.class_id and not request.class_ids:
        raise UsageError(f"this LIDM is class-conditioned ({cond.num_classes} classes): pass --class-id",
                         fix=f"e.g. --class-id 0 --class-id 1 (ids in [0, {cond.num_classes}))")
    if not cond.class_id and (request.class_ids or request.guidance_scale != 1.0):
        raise UsageError("this LIDM is unconditional: --class-id and --guidance-scale do not apply",
                         fix="drop --class-id / --guidance-scale")
    bad = [k for k in request.class_ids if cond.class_id and not 0 <= k < cond.num_classes]
    if bad:
        raise UsageError(f"--class-id {bad[0]} is outside [0, {cond.num_classes})",
                         fix=f"use class ids 0..{cond.num_classes - 1}")


def _done(folder: Path, row: pd.Series) -> bool:
    path = heart_path(folder, row["FileName"])
    if not path.is_file():
        return False
    try:
        return read_heart(path)[1].get("seed") == str(row["Seed"])
    except DataError:  # torn or foreign file: regenerate it
        return False


def _write_image(path: Path, latent: torch.Tensor, vae: Any) -> None:
    from PIL import Image

    from echo_core.models.vae import output_to_frames

    with torch.no_grad():
        decoded = vae.decode(latent[None] / vae.config.scaling_factor).sample
    gray = output_to_frames(decoded)[0].float().mean(-1).round().to(torch.uint8).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(np.repeat(gray[..., None], 3, axis=-1)).save(tmp, format="JPEG", quality=100)


def _sample_batch(net: LidmNet, rows: pd.DataFrame, request: HeartRequest) -> torch.Tensor:
    ids = rows["class_id"].tolist() if "class_id" in rows else None
    cond, null = net.class_tokens(ids, len(rows))

    def denoiser(x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return net(x, t, tokens)

    return sample_image(denoiser, request.sampler, objective=net.spec.objective, cond_tokens=cond,
                        null_tokens=null, seeds=rows["Seed"].tolist(), shape=HEART_SHAPE, steps=request.steps,
                        guidance_scale=request.guidance_scale)


def sample_hearts(net: LidmNet, request: HeartRequest, out: str | os.PathLike, *, vae: Any = None,
                  vae_sha256: str = "") -> pd.DataFrame:
    """Write `request.num_samples` hearts (latents, images when `vae` is given, FileList) into `out`;
    return the FileList. `vae_sha256` (the LIDM's recorded VAE) goes into every heart's metadata."""
    check_request(net, request)
    out = Path(out)
    plan = request.plan()
    todo = plan[[not _done(out, row) for _, row in plan.iterrows()]]
    batches = [todo.iloc[i:i + request.batch_size] for i in range(0, len(todo), request.batch_size)]
    for rows in progress(batches, desc="lidm sample"):
        latents = _sample_batch(net, rows, request)
        for latent, (_, row) in zip(latents, rows.iterrows(), strict=True):
            if vae is not None:  # the image first: a heart whose latent exists is complete
                _write_image(out / IMAGES_SUBDIR / f"{row['FileName']}.jpg", latent, vae)
            meta = {"seed": row["Seed"], "vae_sha256": vae_sha256,
                    **({"class_id": row["class_id"]} if "class_id" in row else {})}
            write_heart(heart_path(out, row["FileName"]), latent, meta)
    write_filelist(plan, out / HEARTS_FILELIST)
    return plan
