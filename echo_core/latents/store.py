"""The latent store: per-video VAE latents + FileList + manifest (the contract LVDM training reads).

Layout of a store folder `OUT/`:
- `Latents/<FileName>.safetensors`: tensor `"latents"` (T, C, h, w), float16 or float32, already multiplied
  by the VAE's `scaling_factor` (as the reference systems do); string metadata `fps`, `source_sha256`,
  `scaling_factor`, `mode` ("mean" | "sample"), plus `vae_sha256` and `seed` (used to skip finished work).
- `FileList.csv`: the source dataset's FileList without the rows of excluded (failed) videos.
- `manifest.json`: VAE {uri, version, sha256, scaling_factor, config_hash}, mode, gray, dtype, source
  {path, sha256, ...}, counts, failed videos with reasons. It describes the store, not a run (no timings),
  so re-running a finished encode rewrites it byte-identically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from echo_core.data.filelist import read_filelist, write_filelist
from echo_core.errors import DataError
from echo_core.utils.atomic import atomic_path, write_json_atomic
from echo_core.utils.hashing import sha256_file

LATENTS_DIR = "Latents"
LATENT_KEY = "latents"
SUFFIX = ".safetensors"
MANIFEST = "manifest.json"
FILELIST = "FileList.csv"
REFERENCE_SCALING_FACTOR = 0.18215  # diffusers' AutoencoderKL default; the reference VAE's config is unpublished


def latent_path(out_dir: str | os.PathLike, file_name: str) -> Path:
    return Path(out_dir) / LATENTS_DIR / f"{file_name}{SUFFIX}"


@dataclass(frozen=True)
class LatentMeta:
    """safetensors metadata of one latent file (stored as strings)."""

    fps: float
    source_sha256: str
    scaling_factor: float
    mode: str
    vae_sha256: str = ""
    seed: int | None = None

    def to_strings(self) -> dict[str, str]:
        return {k: "" if v is None else str(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_strings(cls, meta: dict[str, str]) -> LatentMeta:
        seed = meta.get("seed", "")
        return cls(fps=float(meta["fps"]), source_sha256=meta["source_sha256"],
                   scaling_factor=float(meta["scaling_factor"]), mode=meta["mode"],
                   vae_sha256=meta.get("vae_sha256", ""), seed=int(seed) if seed else None)


def canonical_safetensors(blob: bytes) -> bytes:
    """Re-serialise the header with sorted keys: safetensors writes its metadata map in random (Rust
    HashMap) order, so identical tensors would otherwise give different bytes on every write."""
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8-byte alignment with spaces
    return len(header).to_bytes(8, "little") + header + blob[8 + size :]


def write_latents(path: str | os.PathLike, latents: torch.Tensor, meta: LatentMeta,
                  dtype: torch.dtype = torch.float16) -> Path:
    """Atomically write one video's latents (byte-deterministic). latents: (T, C, h, w), already scaled."""
    from safetensors.torch import save

    if latents.ndim != 4:
        raise ValueError(f"latents must be (T, C, h, w), got shape {tuple(latents.shape)}")
    blob = save({LATENT_KEY: latents.detach().to("cpu", dtype).contiguous()}, metadata=meta.to_strings())
    with atomic_path(path) as tmp:
        tmp.write_bytes(canonical_safetensors(blob))
    return Path(path)


def read_latents(path: str | os.PathLike) -> tuple[torch.Tensor, LatentMeta]:
    """One video's latents (T, C, h, w) and metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(LATENT_KEY), LatentMeta.from_strings(f.metadata() or {})
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        raise DataError(f"cannot read latent file {path}: {exc}",
                        fix="delete it and re-run `echoforge latents encode` (finished videos are skipped)") from None


_SAFETENSORS_DTYPES = {"F16": torch.float16, "F32": torch.float32, "BF16": torch.bfloat16}


def peek_latents(path: str | os.PathLike) -> tuple[tuple[int, ...], torch.dtype, LatentMeta] | None:
    """Shape, dtype and metadata without reading the tensor; None when missing or unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            sl = f.get_slice(LATENT_KEY)
            return (tuple(sl.get_shape()), _SAFETENSORS_DTYPES.get(sl.get_dtype()),
                    LatentMeta.from_strings(f.metadata() or {}))
    except Exception:  # missing, truncated or foreign file: treat as not done
        return None


def remove_orphans(out_dir: str | os.PathLike, keep: set[str]) -> list[str]:
    """Delete latent files whose FileName is not in `keep` (failed or dropped videos); return their names."""
    folder = Path(out_dir) / LATENTS_DIR
    gone = []
    for p in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
        name = p.name[: -len(SUFFIX)]
        if name not in keep:
            p.unlink()
            gone.append(name)
    return gone


def write_store_index(out_dir: str | os.PathLike, filelist, manifest: dict[str, Any]) -> None:
    """FileList.csv (the kept rows) and manifest.json, both atomic; manifest last, as the completion mark."""
    write_filelist(filelist, Path(out_dir) / FILELIST)
    write_json_atomic(Path(out_dir) / MANIFEST, manifest)


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"latent store {out_dir} has no {MANIFEST}",
                        fix="run `echoforge latents encode` (or `latents import-reference`) to completion")
    return json.loads(path.read_text(encoding="utf-8"))


def _load_reference_pt(path: Path) -> torch.Tensor:
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as exc:
        raise DataError(f"cannot load reference latent {path}: {exc}",
                        fix="the file must be a plain tensor saved with torch.save") from None
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise DataError(f"reference latent {path} is not a (T, C, h, w) tensor",
                        fix="import only `Latents/<name>.pt` files written by the reference encode script")
    return x


def import_reference_latents(src_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                             scaling_factor: float = REFERENCE_SCALING_FACTOR, dtype: torch.dtype = torch.float32,
                             vae: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert a reference-system latent folder (`Latents/<name>.pt` + FileList.csv) into the store format.

    The reference encoder sampled the posterior (`latent_dist.sample()`), so mode is "sample". Rows whose
    `.pt` is missing are excluded and listed in the manifest. Returns the manifest.
    """
    src, out = Path(src_dir), Path(out_dir)
    df = read_filelist(src / FILELIST)
    failed: dict[str, str] = {}
    shapes = set()
    for row in df.itertuples(index=False):
        name, pt = str(row.FileName), src / LATENTS_DIR / f"{row.FileName}.pt"
        if not pt.is_file():
            failed[name] = f"missing {pt}"
            continue
        x = _load_reference_pt(pt)
        meta = LatentMeta(fps=float(getattr(row, "FPS", 0.0) or 0.0), source_sha256=sha256_file(pt),
                          scaling_factor=scaling_factor, mode="sample")
        write_latents(latent_path(out, name), x, meta, dtype)
        shapes.add(tuple(x.shape[1:]))
    mask = ~df["FileName"].astype(str).isin(failed)
    manifest = {
        "vae": vae or {"uri": "reference", "version": None, "sha256": None, "config_hash": None,
                       "scaling_factor": scaling_factor},
        "mode": "sample", "gray": True, "dtype": str(dtype).removeprefix("torch."),
        "source": {"path": str(src), "sha256": sha256_file(src / FILELIST), "kind": "reference-latents"},
        "latent_shape": list(next(iter(shapes))) if len(shapes) == 1 else None,
        "counts": {"videos": int(mask.sum()), "failed": len(failed)},
        "failed": failed,
    }
    write_store_index(out, df[mask], manifest)
    return manifest
