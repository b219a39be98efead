"""Serving requests for the LVDM, without any serving framework: validate → generate → encode.

The MLflow pyfunc (`pipelines/serving/lvdm_model.py`) is a thin shell around `handle_request`; every
invalid request raises `DataError` with a message naming the field and the fix, which the shell turns
into HTTP 400 (never a 500).

Request: rows with `ef` (percent) or `class_id` or `text`, plus an optional `conditioning_frame` (base64
PNG at the model resolution; otherwise a privacy-checked synthetic heart where the bundle has a heart
generator, else the bundle's phantom default frame). Params: num_frames,
num_inference_steps, guidance_scale, sampler, seed, fps, output_format (mp4 | avi | gif | npy).
Response rows: the base64 video (or .npy frames array), its metadata read back from the encoded file, and
`heart` (request | synthetic | default) with `privacy` (the synthetic heart's check, else null).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from echo_core.config import StrictModel
from echo_core.diffusion.samplers import samplers_for
from echo_core.errors import DataError
from echo_core.generation.pipeline import CondSpec, LvdmPipeline, SamplerOptions, check_spec

OUTPUT_FORMATS = {"mp4": "video/mp4", "avi": "video/x-msvideo", "gif": "image/gif", "npy": "application/x-npy"}
INPUT_COLUMNS = ("ef", "class_id", "text", "conditioning_frame")


class ServingLimits(StrictModel):
    """`serving:` caps and defaults (stored in the bundle as serving.json)."""

    max_frames: int = Field(192, ge=1)
    max_steps: int = Field(100, ge=1)
    max_rows: int = Field(4, ge=1)
    max_guidance_scale: float = Field(20.0, gt=0)
    default_frames: int = Field(64, ge=1)
    default_steps: int = Field(25, ge=1)
    default_guidance_scale: float = Field(1.0, ge=0)
    default_sampler: str | None = None  # None → dpmpp_2m (diffusion) or euler (flow)
    default_output_format: str = "mp4"

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> ServingLimits:
        if self.default_frames > self.max_frames or self.default_steps > self.max_steps:
            raise ValueError("default_frames/default_steps must not exceed max_frames/max_steps")
        return self


def default_sampler(pipe: LvdmPipeline, limits: ServingLimits) -> str:
    if limits.default_sampler:
        return limits.default_sampler
    return "euler" if pipe.config.objective.kind == "rectified_flow" else "dpmpp_2m"


def _bad(field: str, message: str, fix: str) -> DataError:
    return DataError(f"invalid request: {field}: {message}", fix=fix)


def parse_params(params: dict[str, Any] | None, pipe: LvdmPipeline,
                 limits: ServingLimits) -> tuple[SamplerOptions, int, str]:
    """params → (sampler options, base seed, output format); every bound is checked here."""
    p = dict(params or {})
    frames = int(p.get("num_frames", limits.default_frames))
    steps = int(p.get("num_inference_steps", limits.default_steps))
    scale = float(p.get("guidance_scale", limits.default_guidance_scale))
    sampler = str(p.get("sampler", default_sampler(pipe, limits)))
    fps = float(p.get("fps") or pipe.fps)  # absent or 0 → the model's training fps
    fmt = str(p.get("output_format", limits.default_output_format)).lower()
    if not 1 <= frames <= limits.max_frames:
        raise _bad("num_frames", f"{frames} is outside [1, {limits.max_frames}]", "ask for fewer frames")
    if not 1 <= steps <= limits.max_steps:
        raise _bad("num_inference_steps", f"{steps} is outside [1, {limits.max_steps}]", "ask for fewer steps")
    if not (math.isfinite(scale) and 0 <= scale <= limits.max_guidance_scale):
        raise _bad("guidance_scale", f"{scale} is outside [0, {limits.max_guidance_scale}]", "use e.g. 1-7.5")
    allowed = samplers_for(pipe.config.objective)
    if sampler not in allowed:
        raise _bad("sampler", f"{sampler!r} is not available for this model", f"use one of {list(allowed)}")
    if not (math.isfinite(fps) and 0 < fps <= 240):
        raise _bad("fps", f"{fps} is outside (0, 240]", "use the model's fps (default) or e.g. 25-60")
    if fmt not in OUTPUT_FORMATS:
        raise _bad("output_format", f"{fmt!r} is unknown", f"use one of {list(OUTPUT_FORMATS)}")
    opts = SamplerOptions(sampler=sampler, steps=steps, guidance_scale=scale, num_frames=frames, fps=fps)
    return opts, int(p.get("seed", 0)), fmt


def _cell(row: pd.Series, name: str) -> Any:
    value = row.get(name, None)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value


def parse_row(row: pd.Series, index: int, pipe: LvdmPipeline) -> CondSpec:
    """One input row → its condition (checked against the model's condition types)."""
    where = f"row {index}"
    ef, class_id, text = _cell(row, "ef"), _cell(row, "class_id"), _cell(row, "text")
    if ef is None and class_id is None and text is None:
        raise _bad(where, "no condition given", f"send one of {pipe.config.conditioning.types} (ef, class_id, text)")
    try:
        spec = CondSpec(ef_percent=None if ef is None else float(ef),
                        class_id=None if class_id is None else int(class_id),
                        text=None if text is None else str(text))
    except (TypeError, ValueError) as exc:
        raise _bad(where, f"not a number ({exc})", "ef must be a number, class_id an integer") from None
    types = pipe.config.conditioning.types
    if spec.ef_percent is not None and "ef" not in types and "text" not in types:
        raise _bad(where, f"this model is not EF-conditioned (types {types})", f"send one of {types}")
    check_spec(spec, pipe.config.conditioning, where=f"invalid request: {where}")
    return spec


def decode_frame_png(text: str, size: int, where: str) -> np.ndarray:
    """A base64 PNG → (size, size) uint8 gray; bad base64, a non-image or another size → DataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise _bad(where, "conditioning_frame is not valid base64", "send base64 of a PNG file") from None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            frame = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError):
        raise _bad(where, "conditioning_frame is not a readable image", "send base64 of a PNG file") from None
    if frame.shape != (size, size):
        raise _bad(where, f"conditioning_frame is {frame.shape[1]}x{frame.shape[0]}, the model needs "
                          f"{size}x{size}", f"resize the frame to {size}x{size}")
    return frame


def encode_output(frames: np.ndarray, fmt: str, fps: float) -> tuple[bytes, dict[str, Any]]:
    """(T, H, W[, 3]) uint8 → (file bytes, metadata read back from the encoded file)."""
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, frames)
        return buffer.getvalue(), {"num_frames": frames.shape[0], "height": frames.shape[1],
                                   "width": frames.shape[2], "fps": fps}
    from echo_core.data.video import probe_video, write_video

    with tempfile.TemporaryDirectory(prefix="echoforge-serve-") as tmp:
        path = write_video(Path(tmp) / f"video.{fmt}", frames, fps)
        info = probe_video(path)
        data = path.read_bytes()
    return data, {"num_frames": info.num_frames, "height": info.height, "width": info.width,
                  "fps": round(info.fps, 6)}


class HeartSource(Protocol):
    """Makes a privacy-checked synthetic heart for a row without a conditioning_frame
    (`pipelines/serving/hearts.py`: LIDM → re-identification check)."""

    def heart(self, seed: int, spec: CondSpec, where: str) -> tuple[torch.Tensor, dict[str, Any]]:
        """→ (scaled latent (C, h, w), the privacy check: passed, max_correlation, tau, tries, heart_seed)."""
        ...


def condition_latents(pipe: LvdmPipeline, frames: list[np.ndarray | None], specs: list[CondSpec],
                      seeds: list[int], default_frame: np.ndarray,
                      hearts: HeartSource | None = None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Each row's conditioning latent (B, C, h, w) and its origin: `heart` = "request" (the row's frame),
    "synthetic" (from `hearts`, with its `privacy` check) or "default" (the phantom frame, no generator)."""
    framed = [i for i, frame in enumerate(frames) if frame is not None or hearts is None]
    latents: list[torch.Tensor | None] = [None] * len(frames)
    origins: list[dict[str, Any]] = [{}] * len(frames)
    if framed:
        encoded = pipe.encode_frames(np.stack([default_frame if frames[i] is None else frames[i] for i in framed]))
        for i, latent in zip(framed, encoded, strict=True):
            latents[i] = latent
            origins[i] = {"heart": "default" if frames[i] is None else "request", "privacy": None}
    for i, latent in enumerate(latents):
        if latent is None:
            heart, check = hearts.heart(seeds[i], specs[i], f"row {i}")
            latents[i], origins[i] = heart.to(pipe.device), {"heart": "synthetic", "privacy": check}
    return torch.stack(latents), origins


def handle_request(pipe: LvdmPipeline, model_input: pd.DataFrame, params: dict[str, Any] | None,
                   limits: ServingLimits, default_frame: np.ndarray,
                   hearts: HeartSource | None = None) -> pd.DataFrame:
    """Validate a whole request first (no compute on a bad one), then generate one video per row; a row
    without a frame gets a synthetic heart from `hearts` when given, else the default frame."""
    if not isinstance(model_input, pd.DataFrame) or model_input.empty:
        raise _bad("inputs", "no rows", "send at least one row with ef, class_id or text")
    if len(model_input) > limits.max_rows:
        raise _bad("inputs", f"{len(model_input)} rows, at most {limits.max_rows}", "split the request")
    opts, seed, fmt = parse_params(params, pipe, limits)
    rows = [row for _, row in model_input.reset_index(drop=True).iterrows()]
    specs = [parse_row(row, i, pipe) for i, row in enumerate(rows)]
    frames = [decode_frame_png(_cell(r, "conditioning_frame"), pipe.resolution, f"row {i}")
              if _cell(r, "conditioning_frame") is not None else None for i, r in enumerate(rows)]
    seeds = [seed + i for i in range(len(rows))]
    cond, origins = condition_latents(pipe, frames, specs, seeds, default_frame, hearts)
    videos, _ = pipe.generate(cond, specs, seeds, opts)
    out = []
    for spec, video, s, origin in zip(specs, videos, seeds, origins, strict=True):
        data, meta = encode_output(video, fmt, float(opts.fps))
        cond_type, cond_value = spec.kind_value()
        out.append({"video": base64.b64encode(data).decode("ascii"), "format": fmt,
                    "mime_type": OUTPUT_FORMATS[fmt], **meta, "seed": s, "sampler": opts.sampler,
                    "num_inference_steps": opts.steps, "guidance_scale": opts.guidance_scale,
                    "cond_type": cond_type, "cond_value": cond_value, **origin})
    return pd.DataFrame(out)
