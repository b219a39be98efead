"""The serving bundle's heart generator: a request without a `conditioning_frame` gets a synthetic heart,
LIDM → privacy check → (the LVDM animates it), as `echoforge synth build` does for a whole dataset.

A bundle carries one when it was registered with `--lidm DIR --reid DIR`:

    lidm/          the LIDM folder (`echo_core.models.lidm`), the hearts' generator
    reid/          the calibrated re-identification folder (`echo_core.privacy.calibrate`): the net, τ and the
                   real TRAIN embeddings, so the check needs no real data at serving time
    hearts.json    `HeartServing` (params.yaml `serving.hearts`)

A row with video seed s tries heart seeds s, s+1, …, s+max_tries-1 and takes the first heart whose maximum
correlation to every TRAIN embedding is below τ: the privacy filter's own scoring (`embed` +
`max_correlation`, the functions `echo_core.privacy.filter.score_candidates` uses) on one latent. The same
seed gives the same heart, hence the same video. No heart passing within max_tries raises `HeartRejected`
(served as HTTP 409 with the tried seeds, never a traceback).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.errors import DataError, EchoForgeError, WeightsError
from echo_core.generation.pipeline import CondSpec

LIDM_DIR = "lidm"
REID_DIR = "reid"
HEARTS_FILE = "hearts.json"


class HeartServing(StrictModel):
    """`serving.hearts` in params.yaml: how a bundle with a heart generator makes a request's heart."""

    max_tries: int = Field(8, ge=1)  # heart seeds tried per row before the request is refused (HTTP 409)
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun"] | None = None  # None: ddpm, or heun for flow
    steps: int = Field(64, ge=1)
    guidance_scale: float = Field(1.0, ge=0.0)  # class-conditioned LIDMs only


class HeartRejected(EchoForgeError):
    """No synthetic heart passed the privacy check within `max_tries` seeds (a valid request, refused)."""


def vae_of_lidm(folder: str | os.PathLike) -> str:
    from echo_core.models.lidm import read_lidm_meta

    return read_lidm_meta(folder).get("vae", {}).get("sha256") or ""


def vae_of_reid(folder: str | os.PathLike) -> str:
    """The VAE of the latents τ was calibrated on (privacy.json), else the one the net was trained on."""
    from echo_core.models.reid import read_reid_meta
    from echo_core.privacy.calibrate import PRIVACY_FILE

    record = Path(folder) / PRIVACY_FILE
    calibrated = json.loads(record.read_text(encoding="utf-8")).get("vae_sha256") if record.is_file() else ""
    return calibrated or read_reid_meta(folder).get("vae_sha256", "")


def check_same_vae(lvdm_vae: str, lidm: str | os.PathLike, reid: str | os.PathLike) -> None:
    """A WeightsError naming the folder and both hashes unless the LIDM and the re-identification model
    both come from the LVDM's VAE (an unrecorded hash cannot be checked, so it is refused too)."""
    for what, folder, found in (("LIDM", lidm, vae_of_lidm(lidm)), ("re-identification model", reid,
                                                                    vae_of_reid(reid))):
        if found != lvdm_vae:
            raise WeightsError(f"the {what} {folder} models latents of VAE {found[:12] or '(not recorded)'}…, "
                               f"but the LVDM is served with VAE {lvdm_vae[:12]}…",
                               fix=f"pass the {what} trained on the latents of the serving VAE (--vae)")


class HeartGenerator:
    """LIDM + calibrated re-identification net from a bundle; `heart(seed, spec)` → (latent, the check)."""

    def __init__(self, lidm: str | os.PathLike, reid: str | os.PathLike, cfg: HeartServing,
                 device: str | torch.device = "cpu"):
        from echo_core.diffusion.samplers import check_sampler
        from echo_core.generation.lidm_sample import HeartSampling, heart_request
        from echo_core.models.lidm import LidmNet
        from echo_core.privacy.calibrate import load_calibration

        self.net, self.cfg, self.device = LidmNet.from_pretrained(lidm).to(device), cfg, torch.device(device)
        self.reid, record, self.train_emb, _ = load_calibration(reid)
        self.tau = float(record["tau"])
        # the LIDM CLI's defaults (sampler per objective, guidance for class models only), checked here once
        sampling = HeartSampling(sampler=cfg.sampler, steps=cfg.steps, guidance_scale=cfg.guidance_scale)
        self.request = heart_request(self.net, sampling, num_samples=1)
        check_sampler(self.request.sampler, self.net.spec.objective)

    @classmethod
    def from_bundle(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> HeartGenerator | None:
        """The bundle's generator, or None for a bundle registered without one."""
        folder = Path(folder)
        if not (folder / LIDM_DIR).is_dir():
            return None
        cfg = HeartServing.model_validate_json((folder / HEARTS_FILE).read_text(encoding="utf-8"))
        return cls(folder / LIDM_DIR, folder / REID_DIR, cfg, device)

    @property
    def class_conditioned(self) -> bool:
        return bool(self.net.spec.conditioning.class_id)

    def sample(self, seed: int, class_id: int | None) -> torch.Tensor:
        """One heart latent (C, h, w) on the latent store's scale; it depends only on seed and class."""
        from echo_core.diffusion.samplers import sample_image
        from echo_core.generation.hearts import HEART_SHAPE

        cond, null = self.net.class_tokens(None if class_id is None else [class_id], 1)
        return sample_image(self.net, self.request.sampler, objective=self.net.spec.objective,
                            cond_tokens=cond.to(self.device), null_tokens=null.to(self.device), seeds=[seed],
                            shape=HEART_SHAPE, steps=self.request.steps,
                            guidance_scale=self.request.guidance_scale if self.class_conditioned else 1.0)[0]

    def score(self, latent: torch.Tensor) -> float:
        """The heart's maximum Pearson correlation to any real TRAIN embedding (the filter's score)."""
        from echo_core.privacy.calibrate import embed, max_correlation

        scores, _ = max_correlation(embed(self.reid, [latent.float().cpu()]), self.train_emb)
        return float(scores[0])

    def heart(self, seed: int, spec: CondSpec, where: str = "row") -> tuple[torch.Tensor, dict[str, Any]]:
        """The first heart of seeds seed, seed+1, … that passes (score < τ) → (latent, privacy check)."""
        if self.class_conditioned and spec.class_id is None:
            raise DataError(f"invalid request: {where}: this model's heart generator is class-conditioned",
                            fix="send class_id, or a conditioning_frame")
        class_id = spec.class_id if self.class_conditioned else None
        lowest = float("inf")
        for tries in range(1, self.cfg.max_tries + 1):
            latent = self.sample(seed + tries - 1, class_id)
            score = self.score(latent)
            if score < self.tau:
                return latent, {"passed": True, "max_correlation": round(score, 6), "tau": round(self.tau, 6),
                                "tries": tries, "heart_seed": seed + tries - 1}
            lowest = min(lowest, score)
        raise HeartRejected(f"{where}: no synthetic heart passed the privacy check in {self.cfg.max_tries} tries "
                            f"(heart seeds {seed}-{seed + self.cfg.max_tries - 1}; lowest max correlation to a "
                            f"training patient {lowest:.4f}, needs < tau {self.tau:.4f})",
                            fix="retry with another seed, send a conditioning_frame, or register the version "
                                "with an LIDM that copies its training hearts less (serving.hearts.max_tries)")
