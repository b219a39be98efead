"""A tiny real heart generator for serving tests: an untrained tiny LIDM and a small re-identification net
calibrated on the re-id test store, both recorded as coming from a given VAE; `set_tau` pins τ so a test
decides whether hearts pass."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from echo_core.models.lidm import LidmModelConfig, LidmSpec, build_lidm_net
from echo_core.models.reid import build_reid_net
from echo_core.models.vae import WEIGHTS_NAME
from echo_core.privacy.calibrate import PRIVACY_FILE, PrivacyConfig, calibrate
from echo_core.utils.hashing import sha256_file
from support.privacy_data import write_reid_store


def make_heart_generator(root: Path, vae_folder: Path, vae_sha: str | None = None) -> tuple[Path, Path]:
    """(root/lidm, root/reid) of the VAE in `vae_folder` (or of `vae_sha`, to make a mismatching pair)."""
    sha = vae_sha or sha256_file(Path(vae_folder) / WEIGHTS_NAME)
    torch.manual_seed(0)
    lidm = build_lidm_net(LidmSpec(model=LidmModelConfig(name="tiny"))).save_pretrained(
        root / "lidm", vae={"sha256": sha, "scaling_factor": 0.5})
    torch.manual_seed(0)
    reid = build_reid_net("small").save_pretrained(root / "reid", vae_sha256=sha)
    calibrate(reid, [write_reid_store(root / "store", vae_sha=sha)], PrivacyConfig(frames_per_video=2))
    return lidm, reid


def set_tau(reid: Path, tau: float) -> Path:
    path = reid / PRIVACY_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "tau": tau}))
    return reid
