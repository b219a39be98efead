"""Memorisation audit (Dombrowski et al., arXiv 2411.04956): the share of generated items whose frames
re-identify a training video, with the same re-identification model and τ as the privacy filter.

An item is flagged when any of its k evenly spaced frames has a maximum correlation ≥ τ to a real TRAIN
embedding. The share carries a bootstrap CI over items, and beside it its negative control: the share of
unseen real (held-out) videos that the same rule flags (`heldout_real_share`, from the calibration; with k
frames per item it exceeds 1 − percentile/100, since any of k frames may cross τ).

Folders it reads (told apart by their sub-folder):
- a latent store: `Latents/<name>.safetensors`, tensor "latents" (T, C, h, w);
- a sample folder of `echoforge sample`: `safetensors/<name>.safetensors`, tensor "latents" (C, T, h, w);
- a heart folder: `latents/<name>.safetensors`, tensor "latent" (C, h, w) (one frame per item).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from echo_core.errors import DataError
from echo_core.generation.hearts import HEART_SHAPE, LATENTS_SUBDIR, heart_name, list_hearts, read_heart
from echo_core.latents.store import LATENT_KEY, LATENTS_DIR
from echo_core.metrics.bootstrap import paired_statistic
from echo_core.privacy.calibrate import check_vae, embed, load_calibration, max_correlation
from echo_core.privacy.frames import evenly_spaced
from echo_core.training.lidm import stores_vae

SAMPLES_SUBDIR = "safetensors"
# sub-folder → frame axis of its "latents" tensor (None: a heart folder, one "latent" frame per file)
LAYOUTS = {LATENTS_DIR: 0, SAMPLES_SUBDIR: 1, LATENTS_SUBDIR: None}


def _layout(folder: Path) -> tuple[str, int | None]:
    for sub, axis in LAYOUTS.items():
        # exact names: "Latents" and "latents" differ only in case (a case-insensitive disk has one)
        if sub in {p.name for p in folder.iterdir() if p.is_dir()} and any((folder / sub).glob("*.safetensors")):
            return sub, axis
    raise DataError(f"{folder} has no Latents/, safetensors/ or latents/ folder of .safetensors files",
                    fix="pass a latent store, an `echoforge sample` output (--formats safetensors) or a heart folder")


def read_item_frames(path: Path, axis: int, k: int) -> tuple[list[torch.Tensor], str]:
    """k evenly spaced frames (C, h, w) of one latent video file, read by slicing, and its vae_sha256."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            sl, meta = f.get_slice(LATENT_KEY), f.metadata() or {}
            shape = tuple(sl.get_shape())
            if len(shape) != 4 or tuple(np.delete(shape, axis)) != HEART_SHAPE:
                raise DataError(f"latent video {path} has shape {shape}, expected {HEART_SHAPE} frames on axis {axis}",
                                fix="audit latents of the VAE the re-identification model was trained on")
            picks = evenly_spaced(shape[axis], k)
            frames = [sl[i].float() if axis == 0 else sl[:, i].float() for i in picks]
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        raise DataError(f"cannot read latent video {path}: {type(exc).__name__}: {str(exc)[:200]}",
                        fix="regenerate it, or remove it from the folder") from None
    return frames, meta.get("vae_sha256", "")


def _items(folder: Path, k: int, expected_vae: str) -> list[tuple[str, list[torch.Tensor]]]:
    sub, axis = _layout(folder)
    items = []
    if axis is None:
        for path in list_hearts(folder):
            latent, meta = read_heart(path)
            check_vae(expected_vae, meta.get("vae_sha256", ""), f"heart {path}")
            items.append((heart_name(path), [latent]))
        return items
    for path in sorted((folder / sub).glob("*.safetensors")):
        frames, vae = read_item_frames(path, axis, k)
        check_vae(expected_vae, vae, f"latent video {path}")
        items.append((path.name.removesuffix(".safetensors"), frames))
    return items


def audit(model_dir: str | os.PathLike, store: str | os.PathLike, samples: str | os.PathLike, *,
          frames_per_item: int | None = None, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The memorisation share (with CI), the count and the flagged items of `samples` (module docstring);
    `store` is the real latent store the model was calibrated on (its VAE is checked)."""
    net, record, train_emb, train_names = load_calibration(model_dir)
    check_vae(record.get("vae_sha256", ""), stores_vae([store]).get("sha256") or "", f"latent store {store}")
    k = frames_per_item or int(record.get("frames_per_video", 8))
    items = _items(Path(samples), k, record.get("vae_sha256", ""))
    counts = [len(frames) for _, frames in items]
    scores, nearest = max_correlation(embed(net, [f for _, frames in items for f in frames]), train_emb)
    starts = np.cumsum([0, *counts[:-1]])
    best = [int(s + np.argmax(scores[s:s + c])) for s, c in zip(starts, counts, strict=True)]
    tau = float(record["tau"])
    flags = np.array([scores[b] >= tau for b in best], dtype=np.float64)
    share = (paired_statistic(np.mean, flags, resamples=resamples, seed=seed).to_dict() if len(flags) >= 2
             else {"value": float(flags.mean()), "ci_low": None, "ci_high": None, "n": len(flags)})
    flagged = [{"FileName": name, "nearest_real": train_names[nearest[b]], "max_correlation": float(scores[b])}
               for (name, _), b, f in zip(items, best, flags, strict=True) if f]
    return {"samples": str(samples), "model": str(model_dir), "tau": tau, "frames_per_item": k,
            "items": len(items), "memorised": len(flagged), "memorised_share": share,
            "heldout_real_share": _control_share(record, counts, k), "flagged": flagged}


def _control_share(record: dict[str, Any], counts: list[int], k: int) -> float | None:
    """The rule's share on unseen real items like these: single frames (hearts) cross τ at the rate
    1 − percentile/100 by construction; k-frame videos at the calibrated held-out video rate (None when the
    audit uses another k than the calibration)."""
    if max(counts) == 1:
        return 1 - float(record["percentile"]) / 100
    return record.get("heldout_video_flag_rate") if k == record.get("frames_per_video") else None
