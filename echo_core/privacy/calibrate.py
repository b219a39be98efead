"""The threshold τ of the privacy filter, calibrated on real frames (seed-systems §5.3, bug 14 fixed).

Embeddings of k evenly spaced frames of every real TRAIN video, and of every held-out (VAL + TEST) video.
Each held-out frame's score is its maximum Pearson correlation to any TRAIN embedding: how close a frame of a
patient the net never saw comes to the training set. τ = the `percentile` of those scores, so a candidate at
or above τ is closer to a training video than that share of genuinely unseen real frames.

The reference took the maxima the other way round (each TRAIN frame against the TEST set) on frame 0 only,
with inconsistent normalisation; here held-out frames are scored against TRAIN, exactly as candidates are.

The model folder gets `privacy.json` (τ, percentile, scores, counts, VAE sha256), `train_embeddings.safetensors`
(the TRAIN embeddings (N, 128)) and `train_frames.csv` (FileName, Frame of each row), so filtering and
auditing never re-embed the real data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.errors import DataError, WeightsError
from echo_core.latents.frames import read_frame
from echo_core.models.reid import ReidNet, read_reid_meta
from echo_core.privacy.frames import evenly_spaced, video_rows
from echo_core.training.lidm import stores_vae
from echo_core.utils.atomic import atomic_path, write_json_atomic

PRIVACY_FILE = "privacy.json"
EMBEDDINGS_FILE = "train_embeddings.safetensors"
FRAMES_FILE = "train_frames.csv"
CHUNK = 4096  # rows per side of one correlation block: 4096² float32 = 64 MiB at most


class PrivacyConfig(StrictModel):
    """`privacy:` in params.yaml: how τ is calibrated."""

    percentile: float = Field(95.0, gt=0, lt=100)
    frames_per_video: int = Field(8, ge=1)  # evenly spaced real frames embedded per video
    batch_size: int = Field(256, ge=1)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm, so a dot product is their Pearson correlation. x: (N, d)."""
    x = x.double()
    x = x - x.mean(dim=1, keepdim=True)
    return (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


def max_correlation(queries: torch.Tensor, keys: torch.Tensor, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Each query's maximum Pearson correlation to any key, and that key's index. queries: (Nq, d),
    keys: (Nk, d) → (Nq,) float64, (Nq,) int. Computed in chunk × chunk blocks, never Nq × Nk at once."""
    if len(keys) == 0:
        raise DataError("no reference embeddings to compare with", fix="re-run `echoforge privacy train`")
    q, k = standardise(queries), standardise(keys)
    best = torch.full((len(q),), -torch.inf)
    where = torch.zeros(len(q), dtype=torch.long)
    for i in range(0, len(q), chunk):
        for j in range(0, len(k), chunk):
            block = q[i:i + chunk] @ k[j:j + chunk].T
            value, index = block.max(dim=1)
            better = value > best[i:i + chunk]
            best[i:i + chunk] = torch.where(better, value, best[i:i + chunk])
            where[i:i + chunk] = torch.where(better, index + j, where[i:i + chunk])
    return best.double().numpy(), where.numpy()


@torch.no_grad()
def embed(net: ReidNet, frames: Iterator[torch.Tensor] | Sequence[torch.Tensor], batch_size: int = 256) -> torch.Tensor:
    """(N, 128) embeddings of latent frames (each (C, h, w)), batch by batch."""
    out, batch = [], []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            out.append(net.embed(torch.stack(batch)))
            batch = []
    if batch:
        out.append(net.embed(torch.stack(batch)))
    return torch.cat(out) if out else torch.empty(0, 128)


def video_frames(rows: pd.DataFrame, k: int) -> tuple[list[tuple[str, int]], Iterator[torch.Tensor]]:
    """([(FileName, frame index)], lazy frames): k evenly spaced frames of every video, read one by one."""
    picks = [(str(r.FileName), str(r.path), f) for r in rows.itertuples(index=False)
             for f in evenly_spaced(int(r.NumberOfFrames), k)]
    return [(name, f) for name, _, f in picks], (read_frame(path, f) for _, path, f in picks)


def check_vae(expected: str, found: str, what: str) -> None:
    """A WeightsError naming both hashes when `what` comes from another VAE than the model (an empty hash
    on either side is unknown, not a mismatch)."""
    if expected and found and expected != found:
        raise WeightsError(f"{what} comes from VAE {found}, but the re-identification model was trained on "
                           f"latents of VAE {expected}",
                           fix="use the re-identification model trained on this VAE's latents, or re-encode")


def calibrate(model_dir: str | os.PathLike, roots: Sequence[str | os.PathLike],
              cfg: PrivacyConfig | None = None) -> dict[str, Any]:
    """Calibrate τ (module docstring) into `model_dir`; returns privacy.json's content."""
    cfg = cfg or PrivacyConfig()
    frames_per_video, percentile, batch_size = cfg.frames_per_video, cfg.percentile, cfg.batch_size
    model_dir = Path(model_dir)
    meta, vae_sha = read_reid_meta(model_dir), stores_vae(roots).get("sha256") or ""
    check_vae(meta.get("vae_sha256", ""), vae_sha, f"latent store(s) {[str(r) for r in roots]}")
    net = ReidNet.from_pretrained(model_dir)
    identity = meta.get("train", {}).get("identity", "video")
    train_rows, held_rows = video_rows(roots, ["TRAIN"], identity), video_rows(roots, ["VAL", "TEST"], identity)
    train_names, train_frames = video_frames(train_rows, frames_per_video)
    train_emb = embed(net, train_frames, batch_size)
    held_names, held_frames = video_frames(held_rows, frames_per_video)
    scores, _ = max_correlation(embed(net, held_frames, batch_size), train_emb)
    tau = float(np.percentile(scores, percentile))
    per_video = pd.Series(scores).groupby([name for name, _ in held_names]).max()
    record = {
        "tau": tau, "percentile": percentile,
        # the audit's negative control: unseen real videos with any of their k frames at or above τ
        "heldout_video_flag_rate": float((per_video >= tau).mean()),
        "frames_per_video": frames_per_video, "vae_sha256": vae_sha or meta.get("vae_sha256", ""),
        "counts": {"train_videos": len(train_rows), "train_frames": len(train_names),
                   "heldout_videos": len(held_rows), "heldout_frames": len(held_names)},
        "heldout_scores": [round(float(s), 6) for s in scores], "stores": [str(r) for r in roots],
    }
    (model_dir / PRIVACY_FILE).unlink(missing_ok=True)  # a crash below must not leave an old τ with new rows
    _write_reference(model_dir, train_emb, train_names)
    write_json_atomic(model_dir / PRIVACY_FILE, record)  # last: its presence marks a complete calibration
    return record


def _write_reference(model_dir: Path, embeddings: torch.Tensor, names: list[tuple[str, int]]) -> None:
    from safetensors.torch import save_file

    with atomic_path(model_dir / EMBEDDINGS_FILE) as tmp:
        save_file({"embeddings": embeddings.contiguous()}, str(tmp))
    with atomic_path(model_dir / FRAMES_FILE) as tmp:
        pd.DataFrame(names, columns=["FileName", "Frame"]).to_csv(tmp, index=False)


def load_calibration(model_dir: str | os.PathLike) -> tuple[ReidNet, dict[str, Any], torch.Tensor, list[str]]:
    """(net, privacy.json, TRAIN embeddings (N, 128), their FileNames); a DataError when τ is missing."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    net = ReidNet.from_pretrained(model_dir)
    path = model_dir / PRIVACY_FILE
    if not path.is_file():
        raise DataError(f"{model_dir} has no {PRIVACY_FILE} (the calibrated threshold τ)",
                        fix="run `echoforge privacy train` to completion (it calibrates τ after training)")
    record = json.loads(path.read_text(encoding="utf-8"))
    try:
        embeddings = load_file(str(model_dir / EMBEDDINGS_FILE))["embeddings"]
        names = pd.read_csv(model_dir / FRAMES_FILE, dtype={"FileName": str})["FileName"].tolist()
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read the TRAIN embeddings of {model_dir}: {str(exc)[:200]}",
                        fix="re-run `echoforge privacy train`") from None
    if len(names) != len(embeddings):
        raise DataError(f"{model_dir}: {len(embeddings)} TRAIN embeddings but {len(names)} rows in {FRAMES_FILE}",
                        fix="re-run `echoforge privacy train`")
    return net, record, embeddings, names
