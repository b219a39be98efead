"""A latent store of 14×14 single-frame "hearts" for LIDM tests: each class has its own spatial pattern, so a
class-conditioned model that learned anything draws its class's pattern."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

SIZE = 14
VAE_SHA = "ab" * 32


def class_pattern(class_id: int) -> np.ndarray:
    """(4, 14, 14): class 0 bright left half, class 1 bright right half (± 1.5), per channel sign flips."""
    xx = np.broadcast_to(np.arange(SIZE)[None, :], (SIZE, SIZE))
    half = np.where(xx < SIZE // 2, 1.5, -1.5) * (1 if class_id == 0 else -1)
    return np.stack([half, -half, half, -half]).astype(np.float32)


def write_heart_store(root: Path, *, n_train: int = 16, n_val: int = 4, frames: int = 6, seed: int = 0) -> Path:
    """Latents/v<i>.safetensors (T, 4, 14, 14) = the class pattern + small noise; FileList.csv (EF, class_id,
    Split); manifest.json with the VAE sha256; VolumeTracings.csv tracing frames 1 (small) and 3 (large)."""
    rng = np.random.default_rng(seed)
    (root / "Latents").mkdir(parents=True)
    rows, tracings = [], []
    for i in range(n_train + n_val):
        cls = i % 2
        video = class_pattern(cls)[None] + 0.2 * rng.standard_normal((frames, 4, SIZE, SIZE)).astype(np.float32)
        save_file({"latents": torch.from_numpy(video.astype(np.float16))}, str(root / "Latents" / f"v{i}.safetensors"))
        rows.append({"FileName": f"v{i}", "EF": 40.0 + i, "FPS": 32.0, "NumberOfFrames": frames,
                     "class_id": cls, "Split": "TRAIN" if i < n_train else "VAL"})
        for frame, r in ((1, 10.0), (3, 20.0)):  # long axis then two disks of diameter r
            tracings += [{"FileName": f"v{i}", "X1": 50, "Y1": 10, "X2": 50, "Y2": 90, "Frame": frame},
                         {"FileName": f"v{i}", "X1": 50 - r / 2, "Y1": 40, "X2": 50 + r / 2, "Y2": 40, "Frame": frame},
                         {"FileName": f"v{i}", "X1": 50 - r / 2, "Y1": 60, "X2": 50 + r / 2, "Y2": 60, "Frame": frame}]
    pd.DataFrame(rows).to_csv(root / "FileList.csv", index=False)
    pd.DataFrame(tracings).to_csv(root / "VolumeTracings.csv", index=False)
    (root / "manifest.json").write_text(json.dumps({"vae": {"sha256": VAE_SHA, "scaling_factor": 1.0}}))
    return root


def tiny_lidm_section(**changes) -> dict:
    section = {
        "model": {"name": "tiny"},
        "conditioning": {"class_id": True, "num_classes": 2, "p_uncond": 0.2},
        "objective": {"kind": "rectified_flow"},
        "optim": {"lr": 2e-3, "warmup_steps": 5, "batch_size": 8, "max_steps": 6},
        "ema": {"decay": 0.9, "warmup": "none"},
        "checkpoint": {"every": 3, "total_limit": 2},
        "deterministic": True, "num_workers": 0, "seed": 1, "log_every": 1,
    }
    return {**section, **changes}
