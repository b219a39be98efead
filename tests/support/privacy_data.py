"""A latent store for re-identification tests: each video has its own identity pattern (4, 14, 14) plus a
per-frame motion shared by all videos (a blob that moves with the cardiac phase) and noise, so "same video"
is learnable only by looking past the motion. Also heart folders of copies and of never-seen identities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from echo_core.generation.hearts import heart_path, write_heart

SIZE = 14
FRAMES = 10
VAE_SHA = "cd" * 32
SPLITS = {"TRAIN": 40, "VAL": 6, "TEST": 6}


def identity_pattern(seed: int) -> np.ndarray:
    return np.random.default_rng([7, seed]).standard_normal((4, SIZE, SIZE)).astype(np.float32)


def motion(frame: int) -> np.ndarray:
    """(4, 14, 14): a bright blob whose centre moves along a circle with the frame."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    angle = 2 * np.pi * frame / FRAMES
    cy, cx = 7 + 3.5 * np.sin(angle), 7 + 3.5 * np.cos(angle)
    blob = 1.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
    return np.broadcast_to(blob, (4, SIZE, SIZE)).astype(np.float32)


def video(seed: int, frames: int = FRAMES) -> np.ndarray:
    """(T, 4, 14, 14) latents of identity `seed`."""
    rng = np.random.default_rng([11, seed])
    noise = 0.2 * rng.standard_normal((frames, 4, SIZE, SIZE)).astype(np.float32)
    return np.stack([identity_pattern(seed) + motion(t) for t in range(frames)]) + noise


def write_reid_store(root: Path, vae_sha: str = VAE_SHA) -> Path:
    """Latents/v<i>.safetensors (identity i), FileList.csv (FileName, NumberOfFrames, FPS, Split), manifest."""
    (root / "Latents").mkdir(parents=True)
    rows, i = [], 0
    for split, count in SPLITS.items():
        for _ in range(count):
            save_file({"latents": torch.from_numpy(video(i)).half()}, str(root / "Latents" / f"v{i}.safetensors"))
            rows.append({"FileName": f"v{i}", "NumberOfFrames": FRAMES, "FPS": 32.0, "Split": split})
            i += 1
    pd.DataFrame(rows).to_csv(root / "FileList.csv", index=False)
    (root / "manifest.json").write_text(json.dumps({"vae": {"sha256": vae_sha, "scaling_factor": 1.0}}))
    return root


def write_hearts(folder: Path, latents: dict[str, np.ndarray], vae_sha: str = VAE_SHA) -> Path:
    """A heart folder of the given (4, 14, 14) latents, with its FileList (FileName, Seed)."""
    for name, latent in latents.items():
        write_heart(heart_path(folder, name), torch.from_numpy(np.asarray(latent, np.float32)),
                    {"vae_sha256": vae_sha, "seed": "0"})
    pd.DataFrame({"FileName": list(latents), "Seed": 0}).to_csv(folder / "FileList.csv", index=False)
    return folder


def tiny_reid_section(**changes) -> dict:
    section = {
        "variant": "small", "pairs_per_epoch": 512, "eval_pairs": 400, "eval_resamples": 200,
        "optim": {"lr": 1e-3, "warmup_steps": 10, "batch_size": 32, "max_steps": 300, "weight_decay": 0.0},
        "checkpoint": {"every": 100, "total_limit": 1},
        "deterministic": True, "num_workers": 0, "seed": 0, "log_every": 20,
    }
    return {**section, **changes}
