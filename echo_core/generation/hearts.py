"""The heart folder: synthetic (or candidate) single-frame latents, the contract between the LIDM sampler, the
privacy filter and the dataset build.

Layout of a heart folder `DIR/`:
- `latents/<FileName>.safetensors`: one tensor `"latent"` (C, h, w) = (4, 14, 14), float32, on the latent
  store's scale (already × the VAE's scaling factor); string metadata `vae_sha256`, `seed`, and `class_id`
  where the heart was class-conditioned.
- `images/<FileName>.jpg`: the decoded frame (for FID/IS and for looking at), where a VAE was given.
- `FileList.csv`: FileName, Seed[, class_id]: the rows of the folder, in generation order.

One file per heart, written atomically, so a generation that is killed resumes where it stopped and a
reader never sees half a latent.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from echo_core.errors import DataError
from echo_core.latents.store import canonical_safetensors
from echo_core.utils.atomic import atomic_path

HEART_KEY = "latent"
HEART_SHAPE = (4, 14, 14)
LATENTS_SUBDIR = "latents"
IMAGES_SUBDIR = "images"
HEARTS_FILELIST = "FileList.csv"
SUFFIX = ".safetensors"


def heart_path(folder: str | os.PathLike, file_name: str) -> Path:
    return Path(folder) / LATENTS_SUBDIR / f"{file_name}{SUFFIX}"


def write_heart(path: str | os.PathLike, latent: torch.Tensor, metadata: dict[str, str]) -> Path:
    """Atomically write one heart latent (C, h, w) as float32, byte-deterministic."""
    from safetensors.torch import save

    check_heart_shape(latent, path)
    blob = save({HEART_KEY: latent.detach().to("cpu", torch.float32).contiguous()},
                metadata={k: str(v) for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        tmp.write_bytes(canonical_safetensors(blob))
    return Path(path)


def read_heart(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, str]]:
    """One heart latent (C, h, w) float32 and its metadata; a clear DataError for an unreadable file, a
    missing `latent` tensor or a wrong shape."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            latent, meta = f.get_tensor(HEART_KEY), dict(f.metadata() or {})
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        raise DataError(f"cannot read heart latent {path}: {type(exc).__name__}: {str(exc)[:200]}",
                        fix=f"each file must be a safetensors file with one tensor {HEART_KEY!r} of shape "
                            f"{HEART_SHAPE}; regenerate it with `echoforge lidm sample`") from None
    check_heart_shape(latent, path)
    return latent.float().clone(), meta  # a copy: the tensor may map the file, which a rerun may rewrite


def check_heart_shape(latent: torch.Tensor, path: str | os.PathLike) -> None:
    if tuple(latent.shape) != HEART_SHAPE:
        raise DataError(f"heart latent {path} has shape {tuple(latent.shape)}, expected {HEART_SHAPE} "
                        "(one VAE latent frame: channels, height, width)",
                        fix="pass single-frame latents of the VAE the models were trained on")


def list_hearts(folder: str | os.PathLike) -> list[Path]:
    """The heart files of a folder, sorted by name; a DataError naming the folder when it has none."""
    latents = Path(folder) / LATENTS_SUBDIR
    files = sorted(latents.glob(f"*{SUFFIX}")) if latents.is_dir() else []
    if not files:
        raise DataError(f"heart folder {folder} has no {LATENTS_SUBDIR}/*{SUFFIX} files",
                        fix="point at the output of `echoforge lidm sample` (it writes DIR/latents/)")
    return files


def heart_name(path: Path) -> str:
    return path.name[: -len(SUFFIX)]
