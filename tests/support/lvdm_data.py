"""Tiny learnable latent stores and a seconds-long `train_lvdm:` section for LVDM training tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

LATENT = 6  # latent h = w (tiny: the UNet sees 8×8 after the 1-px replicate pad)


def write_latent_store(root: Path, *, n_train: int = 4, n_val: int = 2, frames: int = 12, fps: float = 32.0,
                       amplitude: float = 1.0) -> Path:
    """A latent store of smooth travelling waves (learnable): Latents/v<i>.safetensors (T, 4, 6, 6) +
    FileList.csv with EF, class_id/class_name and TRAIN/VAL splits."""
    (root / "Latents").mkdir(parents=True)
    yy, xx = np.mgrid[:LATENT, :LATENT] / LATENT
    t = np.arange(frames)[:, None, None]
    rows = []
    for i in range(n_train + n_val):
        wave = amplitude * np.sin(2 * np.pi * (xx[None] + 0.1 * i) + t / 4.0)
        latents = np.stack([wave, -wave, 0.5 * wave, np.cos(yy[None] + t / 3.0) + 0 * wave], axis=1)
        save_file({"latents": torch.from_numpy(latents.astype(np.float32))},
                  str(root / "Latents" / f"v{i}.safetensors"))
        rows.append({"FileName": f"v{i}", "FPS": fps, "NumberOfFrames": frames, "EF": 30.0 + 5 * i,
                     "class_id": i % 2, "class_name": ["ASD", "Normal"][i % 2],
                     "Split": "TRAIN" if i < n_train else "VAL"})
    pd.DataFrame(rows).to_csv(root / "FileList.csv", index=False)
    return root


def tiny_train_section(**changes: Any) -> dict[str, Any]:
    """A `train_lvdm:` section for a seconds-long CPU run (top-level keys of `changes` replace the defaults)."""
    section = {
        "model": {"name": "tiny", "latent_size": LATENT},
        "conditioning": {"types": ["ef"], "dim": 1, "p_cond": 0.2},
        "objective": {"kind": "rectified_flow"},
        "dataset": {"num_frames": 8, "target_fps": 32.0},
        "optim": {"lr": 2e-3, "warmup_steps": 2, "batch_size": 2, "max_steps": 6},
        "ema": {"decay": 0.99},
        "checkpoint": {"every": 2, "total_limit": 2},
        "validation": {"every": None},
        "deterministic": True,
        "num_workers": 0,
        "seed": 3,
    }
    return {**section, **changes}
