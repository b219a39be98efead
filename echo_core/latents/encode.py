"""Batched, resumable encoding of a prepared dataset into the latent store (see store.py).

Speed: a background thread decodes videos ahead of the VAE; frames from several videos are packed into
one batch; `torch.inference_mode`; bf16 autocast + channels_last on CUDA only.

Resume and byte-identical re-runs: frames form one stream (FileList order) cut into fixed batches of
`batch_frames`. A re-run with the same shard count (see below) cuts the *same* batches (finished videos
count with their stored length) and runs every batch that holds a frame of an unfinished video,
re-decoding a finished neighbour when it shares such a batch. Each frame therefore always goes through
the VAE in the same batch at the same position, so a killed-and-resumed run writes the same bytes as an
uninterrupted one even where kernels are not batch-invariant (GPU, and CPU too: a one-frame batch gives
other bits). Stochastic mode draws its noise from a generator seeded by (seed, FileName). Each latent
file is written atomically once all its frames are encoded; a kill leaves no partial file.

Sharding (fan-out over task runners): `plan_shards` cuts the FileList rows into contiguous slices;
`prepare_encode` runs once before (stale temp files), `encode_shard` once per slice (its own frame stream,
batches and resume; no index, no temp cleanup, which could delete another shard's in-flight file), and
`finalize_encode` once after (re-plans the whole dataset, merges the shards' failures, writes FileList +
manifest, removes orphans). The shard count decides which frames share a batch, so the manifest records
it. `encode_dataset` is that procedure with one shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.data.filelist import read_filelist, resolve_video
from echo_core.errors import DataError
from echo_core.latents.store import (
    FILELIST,
    LATENTS_DIR,
    LatentMeta,
    latent_path,
    peek_latents,
    remove_orphans,
    write_latents,
    write_store_index,
)
from echo_core.models.vae import VaeInfo, check_vae_matches, downsample_factor, frames_to_input
from echo_core.tracking import NullTracker, Tracker
from echo_core.utils.atomic import remove_stale_temps
from echo_core.utils.hashing import sha256_file
from echo_core.utils.prefetch import prefetch
from echo_core.utils.progress import progress
from echo_core.utils.shards import contiguous_shards

log = logging.getLogger("echoforge.encode")
DTYPES = {"float16": torch.float16, "float32": torch.float32}


class EncodeConfig(StrictModel):
    """params.yaml `encode:` section."""

    mode: Literal["mean", "sample"] = "mean"  # "sample" reproduces the reference's latent_dist.sample()
    dtype: Literal["float16", "float32"] = "float16"
    # Frames per VAE batch, across videos. None: 256 on CUDA (fills the GPU), 32 on CPU (bigger CPU batches
    # spill the caches: 128 frames in one batch ran 5x slower than 4 batches of 32 on the tiny VAE).
    batch_frames: int | None = Field(None, ge=1)
    gray: bool = True
    fail_on_error: bool = False
    seed: int = 0
    prefetch_videos: int = 4


@dataclass
class EncodeReport:
    out_dir: Path
    encoded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    frames_encoded: int = 0
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)
    latent_shape: list[int] = field(default_factory=list)  # (C, h, w) of one frame's latent

    @property
    def frames_per_second(self) -> float:
        return self.frames_encoded / self.seconds if self.seconds else 0.0


@dataclass
class _Video:
    """One FileList row on its way through the stream."""

    name: str
    path: Path | None
    sha256: str = ""
    done: bool = False
    n: int = 0  # frames in the stream (stored length for finished videos)
    fps: float = 0.0
    error: str | None = None
    frames: np.ndarray | None = None  # uint8 (n, H, W) or (n, H, W, 3) while needed
    mean: torch.Tensor | None = None  # (n, C, h, w) float32, filled batch by batch
    std: torch.Tensor | None = None
    filled: int = 0


def video_seed(seed: int, file_name: str) -> int:
    """Per-video noise seed: independent of batching, order and which videos a re-run still has to do."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{file_name}".encode()).digest()[:8], "little") >> 1


def _expected_meta(v: _Video, cfg: EncodeConfig, info: VaeInfo) -> LatentMeta:
    return LatentMeta(fps=v.fps, source_sha256=v.sha256, scaling_factor=info.scaling_factor, mode=cfg.mode,
                      vae_sha256=info.weights_sha256, seed=cfg.seed if cfg.mode == "sample" else None)


def _plan_videos(dataset_dir: Path, out_dir: Path, df, cfg: EncodeConfig, info: VaeInfo) -> list[_Video]:
    """Resolve and hash every row; mark finished outputs (same source, VAE, mode, seed, dtype) as done."""
    videos = []
    for name in df["FileName"].astype(str):
        try:
            v = _Video(name, resolve_video(dataset_dir, name))
            v.sha256 = sha256_file(v.path)
        except (DataError, OSError) as exc:
            videos.append(_Video(name, None, error=str(exc)))
            continue
        found = peek_latents(latent_path(out_dir, name))
        if found is not None:
            shape, dtype, meta = found
            want = _expected_meta(v, cfg, info)
            v.done = dtype == DTYPES[cfg.dtype] and (
                meta.source_sha256, meta.vae_sha256, meta.mode, meta.seed, meta.scaling_factor) == (
                want.source_sha256, want.vae_sha256, want.mode, want.seed, want.scaling_factor)
            v.n, v.fps = (shape[0], meta.fps) if v.done else (0, 0.0)
        videos.append(v)
    return videos


def _decode_into(v: _Video, cfg: EncodeConfig, resolution: int) -> None:
    from echo_core.data.video import read_video

    frames, v.fps = read_video(v.path, gray=cfg.gray)
    if frames.shape[1:3] != (resolution, resolution):
        raise DataError(f"{v.path} has {frames.shape[2]}×{frames.shape[1]} frames, expected "
                        f"{resolution}×{resolution}", fix="re-prepare the dataset at the VAE's resolution")
    if v.done and len(frames) != v.n:
        raise DataError(f"{v.path} now decodes to {len(frames)} frames, its stored latents have {v.n}",
                        fix=f"delete {v.name}.safetensors and re-run")
    v.frames, v.n = frames, len(frames)


def _decoded(videos: list[_Video], cfg: EncodeConfig, resolution: int) -> Iterator[_Video]:
    """Pending videos get their frames; finished ones pass through with their length."""
    for v in videos:
        if not v.done and v.error is None:
            try:
                _decode_into(v, cfg, resolution)
            except DataError as exc:  # VideoReadError included: excluded and reported, never fatal here
                v.error = str(exc)
        yield v


@dataclass
class _Segment:
    video: _Video
    start: int
    end: int


def _encode_frames(vae, frames: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (N, H, W[, 3]) → posterior (mean, std), each (N, C, h, w) float32 on CPU."""
    x = frames_to_input(frames).to(device, non_blocking=True)
    cuda = device.type == "cuda"
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        dist = vae.encode(x).latent_dist
    return dist.mean.float().cpu(), dist.std.float().cpu()


class _BatchRunner:
    """Cuts the frame stream into fixed batches and runs those that hold unfinished frames."""

    def __init__(self, vae, cfg: EncodeConfig, device: torch.device, resolution: int,
                 on_complete: Callable[[_Video], None]):
        self.vae, self.cfg, self.device, self.resolution = vae, cfg, device, resolution
        self.on_complete = on_complete
        self.segments: list[_Segment] = []
        self.count = 0
        self.frames_encoded = 0

    def add(self, v: _Video) -> None:
        pos = 0
        while pos < v.n:
            take = min(self.cfg.batch_frames - self.count, v.n - pos)
            self.segments.append(_Segment(v, pos, pos + take))
            pos, self.count = pos + take, self.count + take
            if self.count == self.cfg.batch_frames:
                self.flush()

    def flush(self) -> None:
        segments, self.segments, self.count = self.segments, [], 0
        if any(not s.video.done for s in segments):
            for s in segments:
                if s.video.frames is None:  # a finished neighbour sharing this batch: decode it again
                    _decode_into(s.video, self.cfg, self.resolution)
            frames = np.concatenate([s.video.frames[s.start : s.end] for s in segments])
            mean, std = _encode_frames(self.vae, frames, self.device)
            self.frames_encoded += len(frames)
            self._scatter(segments, mean, std)
        for s in segments:
            if s.end == s.video.n:
                s.video.frames = None  # its last frame has passed: release the pixels

    def _scatter(self, segments: list[_Segment], mean: torch.Tensor, std: torch.Tensor) -> None:
        offset = 0
        for s in segments:
            v, size = s.video, s.end - s.start
            if not v.done:
                if v.mean is None:
                    v.mean = torch.empty((v.n, *mean.shape[1:]))
                    v.std = torch.empty_like(v.mean) if self.cfg.mode == "sample" else None
                v.mean[s.start : s.end] = mean[offset : offset + size]
                if v.std is not None:
                    v.std[s.start : s.end] = std[offset : offset + size]
                v.filled += size
                if v.filled == v.n:
                    self.on_complete(v)
            offset += size


def _latents_of(v: _Video, cfg: EncodeConfig, scaling_factor: float) -> torch.Tensor:
    """(T, C, h, w) scaled latents: posterior mean, or mean + std·ε with ε from the video's own generator."""
    z = v.mean
    if cfg.mode == "sample":
        g = torch.Generator().manual_seed(video_seed(cfg.seed, v.name))
        z = z + v.std * torch.randn(z.shape, generator=g)
    return z * scaling_factor


def _dataset_resolution(df, dataset_dir: Path) -> int:
    """The FileList's frame size (prepared datasets are square and uniform)."""
    sizes = {(int(h), int(w)) for h, w in zip(df.get("FrameHeight", []), df.get("FrameWidth", []), strict=False)}
    if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
        raise DataError(f"{dataset_dir / FILELIST} must list one square FrameHeight×FrameWidth, found "
                        f"{sorted(sizes) or 'none'}", fix="encode a prepared dataset (`echoforge data prepare`)")
    return next(iter(sizes))[0]


def source_hash(filelist_path: Path, videos: list[_Video]) -> str:
    """Content hash of the source: FileList bytes + every video's sha256, in FileList order."""
    h = hashlib.sha256(sha256_file(filelist_path).encode())
    for v in videos:
        h.update(f"{v.name}:{v.sha256}".encode())
    return h.hexdigest()


def _manifest(dataset_dir: Path, videos: list[_Video], cfg: EncodeConfig, info: VaeInfo,
              failed: dict[str, str], latent_shape: list[int], shards: int) -> dict[str, Any]:
    kept = [v for v in videos if v.name not in failed]
    return {
        "vae": info.as_dict(), "mode": cfg.mode, "gray": cfg.gray, "dtype": cfg.dtype,
        "seed": cfg.seed if cfg.mode == "sample" else None,
        # batch size and shard count fix which frames share a batch, hence the exact bits (GPU and CPU)
        "batch_frames": cfg.batch_frames, "shards": shards,
        "pixel_normalisation": "x / 127.5 - 1",
        "latent_shape": latent_shape,
        "source": {"path": str(dataset_dir), "sha256": source_hash(dataset_dir / FILELIST, videos),
                   "manifest_sha256": sha256_file(dataset_dir / "manifest.json")
                   if (dataset_dir / "manifest.json").is_file() else None},
        "counts": {"videos": len(kept), "frames": sum(v.n for v in kept), "failed": len(failed)},
        "failed": dict(sorted(failed.items())),
    }


def resolve_config(cfg: EncodeConfig | None, device: str | torch.device = "cpu") -> EncodeConfig:
    """`cfg` with its device-dependent default filled in (batch_frames: 256 on CUDA, 32 on CPU)."""
    cfg = cfg or EncodeConfig()
    if cfg.batch_frames is None:
        cfg = cfg.model_copy(update={"batch_frames": 256 if torch.device(device).type == "cuda" else 32})
    return cfg


def plan_shards(dataset_dir: str | os.PathLike, n_shards: int) -> list[range]:
    """Contiguous FileList row slices, one per shard (at least one, so an empty FileList fails in the shard
    with the sequential path's message). Not aligned to batches: each shard cuts its own frame stream."""
    n_rows = len(read_filelist(Path(dataset_dir) / FILELIST))
    return contiguous_shards(n_rows, n_shards) or [range(0, 0)]


def prepare_encode(out_dir: str | os.PathLike) -> int:
    """Once per store, before any shard: delete temp files a killed run left; returns how many."""
    return remove_stale_temps(out_dir) if Path(out_dir).is_dir() else 0


def encode_shard(vae, dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, info: VaeInfo,
                 cfg: EncodeConfig | None = None, rows: range | None = None, *, device: str | torch.device = "cpu",
                 latent_size: int | None = 14) -> EncodeReport:
    """Encode the FileList rows `rows` (default: all) into `out_dir`; resumable, each latent file atomic.

    The slice is one frame stream of its own (see the module docstring). Writes neither FileList nor manifest
    and removes no temp files: `prepare_encode` / `finalize_encode` do that once around all shards. Raises
    WeightsError before any work when the VAE does not fit the data, DataError on the first bad video when
    `cfg.fail_on_error` (otherwise bad videos are reported in `failed`).
    """
    cfg, device = resolve_config(cfg, device), torch.device(device)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    df = read_filelist(dataset_dir / FILELIST)
    rows = range(len(df)) if rows is None else rows
    if rows.step != 1 or not 0 <= rows.start <= rows.stop <= len(df):
        raise ValueError(f"rows {rows} is not a contiguous slice of the {len(df)} FileList rows")
    resolution = _dataset_resolution(df, dataset_dir)
    check_vae_matches(vae, resolution=resolution, latent_size=latent_size, where=f"VAE {info.uri or info.folder}")
    vae = vae.to(device).eval()
    if device.type == "cuda":
        vae = vae.to(memory_format=torch.channels_last)
    report = EncodeReport(out_dir, latent_shape=[vae.config.latent_channels,
                                                 *(2 * [resolution // downsample_factor(vae)])])
    videos = _plan_videos(dataset_dir, out_dir, df.iloc[rows.start : rows.stop], cfg, info)
    start = time.perf_counter()
    with torch.inference_mode():
        _run_stream(vae, videos, cfg, info, device, resolution, out_dir, report)
    report.seconds = time.perf_counter() - start
    return report


def finalize_encode(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, info: VaeInfo,
                    cfg: EncodeConfig | None = None, *, failed: Mapping[str, str], shards: int,
                    latent_shape: list[int], device: str | torch.device = "cpu") -> dict[str, Any]:
    """Once, after every shard ended: write the store index and return the manifest.

    Re-plans the whole dataset (hashes, finished latents), merges the shards' `failed` videos, checks every
    kept video has its latents (else DataError: a shard did not finish), removes latents of excluded
    videos and writes FileList.csv + manifest.json (manifest last: the completion mark).
    """
    cfg, dataset_dir, out_dir = resolve_config(cfg, device), Path(dataset_dir), Path(out_dir)
    df = read_filelist(dataset_dir / FILELIST)
    videos = _plan_videos(dataset_dir, out_dir, df, cfg, info)
    failed = {**{v.name: v.error for v in videos if v.error is not None}, **failed}
    missing = [v.name for v in videos if not v.done and v.name not in failed]
    if missing:
        raise DataError(f"{out_dir / LATENTS_DIR} lacks the latents of {len(missing)} video(s): "
                        f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''} (a shard did not finish)",
                        fix="re-run the encode; finished videos are skipped")
    manifest = _manifest(dataset_dir, videos, cfg, info, failed, latent_shape, shards)
    kept = df[~df["FileName"].astype(str).isin(failed)]
    remove_orphans(out_dir, set(kept["FileName"].astype(str)))  # stale latents of now-failed videos
    write_store_index(out_dir, kept, manifest)
    return manifest


def encode_dataset(vae, dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, info: VaeInfo,
                   cfg: EncodeConfig | None = None, *, device: str | torch.device = "cpu",
                   tracker: Tracker | None = None, latent_size: int | None = 14) -> EncodeReport:
    """Encode every video of a prepared dataset into `out_dir` (latent store); resumable and idempotent.

    One shard over all rows between `prepare_encode` and `finalize_encode`. Raises WeightsError before any
    work when the VAE does not fit the data, DataError on the first bad video when `cfg.fail_on_error`
    (otherwise bad videos are excluded and listed in the manifest).
    """
    cfg, tracker = resolve_config(cfg, device), tracker or NullTracker()
    prepare_encode(out_dir)
    report = encode_shard(vae, dataset_dir, out_dir, info, cfg, device=device, latent_size=latent_size)
    report.manifest = finalize_encode(dataset_dir, out_dir, info, cfg, failed=report.failed, shards=1,
                                      latent_shape=report.latent_shape, device=device)
    tracker.log_metrics({"encode_frames_per_s": report.frames_per_second, "encode_videos": len(report.encoded),
                         "encode_skipped": len(report.skipped), "encode_failed": len(report.failed)})
    return report


def _run_stream(vae, videos: list[_Video], cfg: EncodeConfig, info: VaeInfo, device: torch.device,
                resolution: int, out_dir: Path, report: EncodeReport) -> None:
    def complete(v: _Video) -> None:
        write_latents(latent_path(out_dir, v.name), _latents_of(v, cfg, info.scaling_factor),
                      _expected_meta(v, cfg, info), DTYPES[cfg.dtype])
        v.mean = v.std = None
        report.encoded.append(v.name)

    runner = _BatchRunner(vae, cfg, device, resolution, complete)
    for v in progress(prefetch(_decoded(videos, cfg, resolution), cfg.prefetch_videos, name="video-decode"),
                      total=len(videos), desc="encode"):
        if v.error is not None:
            if cfg.fail_on_error:
                raise DataError(f"cannot encode {v.name}: {v.error}",
                                fix="fix or remove the video, or drop --fail-on-error to exclude it")
            log.warning("excluded %s: %s", v.name, v.error.splitlines()[0])
            report.failed[v.name] = v.error
            continue
        if v.done:
            report.skipped.append(v.name)
        runner.add(v)
    runner.flush()
    report.frames_encoded = runner.frames_encoded
