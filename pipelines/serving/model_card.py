"""The model cards: the LVDM's, attached to every registered serving version, and the LIDM's (`lidm_card`),
attached to every `echo-lidm` version, as artifacts (JSON + Markdown) and as model-version tags (`card.*`),
so the registry UI and `echoforge registry list` show them."""

from __future__ import annotations

from typing import Any

INTENDED_USE = ("Research only: synthetic echocardiography videos for method development, data augmentation "
                "studies and benchmarking. Not a medical device; never for diagnosis, treatment or any "
                "clinical decision.")
METRICS_PROTOCOL = ("StyleGAN-V protocol (FID on frames, FVD16/FVD128 on clips, IS, KID) when verified "
                    "weights are present; otherwise the offline *_fallback metrics, which are NOT comparable "
                    "to published numbers. EF adherence: MAE (with a bootstrap CI) between the requested EF and the "
                    "dataset's EF judge's estimate on generated videos; the judge's held-out real R² is recorded. "
                    "See `echoforge evaluate samples` and the run's protocol JSON.")
KNOWN_LIMITS = [
    "Trained on 112x112 grayscale apical/parasternal echo clips; other views, sizes or colour Doppler are "
    "out of distribution.",
    "Videos longer than the training clip are made by overlapping-window joint denoising; motion can drift "
    "over long horizons.",
    "Conditioning (EF, class, text) is followed approximately; check adherence metrics before relying on it.",
    "The privacy filter bounds re-identification by its re-identification model, not every possible attack.",
]
NOT_CHECKED = ("Videos served or sampled from this version are NOT privacy-checked: animating a real patient's "
               "frame reproduces that patient. A request without a conditioning_frame is animated from the "
               "default frame, a synthetic phantom (not anatomy of a real patient). Only datasets built with "
               "`echoforge synth build` are privacy-checked (LIDM hearts kept only when the re-identification "
               "model links none to a training patient; see each build's privacy_scores.csv).")
CHECKED = ("A request without a conditioning_frame is served a SYNTHETIC heart from this version's LIDM, kept only "
           "if the re-identification model links it to no training patient (max correlation to every real "
           "TRAIN embedding < tau = {tau:.4f}; up to {max_tries} heart seeds are tried, else HTTP 409); the "
           "response says `heart: synthetic` and carries the check. A request's own conditioning_frame is NOT "
           "privacy-checked (`heart: request`): animating a real patient's frame reproduces that patient, and so "
           "does `echoforge sample` from real latents.")


def privacy_statement(heart_generator: dict[str, Any] | None) -> str:
    """What is and is not privacy-checked for a version, with or without a heart generator."""
    return CHECKED.format(**heart_generator) if heart_generator else NOT_CHECKED


def build_model_card(*, name: str, config: dict[str, Any], lineage: dict[str, str],
                     metrics: dict[str, float] | None = None,
                     heart_generator: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card as a dict. config: the LVDM training config (dump); lineage: git/data/source tags;
    heart_generator: tau, max_tries, sampler, ... of the version's LIDM + privacy check (None: none)."""
    conditioning = config.get("conditioning", {})
    return {
        "model": name,
        "intended_use": INTENDED_USE,
        "training_data_version": lineage.get("data_dvc_hash", "unknown"),
        "source_model_version": lineage.get("source_version", "unknown"),
        "git_commit": lineage.get("git_commit", "unknown"),
        "conditioning": conditioning.get("types", []),
        "objective": config.get("objective", {}).get("kind", "v_ddpm"),
        "clip_frames": config.get("dataset", {}).get("num_frames"),
        "fps": config.get("dataset", {}).get("target_fps"),
        "metrics_protocol": METRICS_PROTOCOL,
        "metrics": metrics or {},
        "known_limits": KNOWN_LIMITS,
        "privacy": privacy_statement(heart_generator),
        "heart_generator": heart_generator,
        "default_conditioning_frame": "a privacy-checked synthetic heart (LIDM)" if heart_generator else
        "phantom A4C end-diastolic frame (echo_core/generation/default_frame.py)",
    }


def render_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Model card: {card['model']}", "", "## Intended use", card["intended_use"], "",
             "## Training data", f"Version (DVC hash): `{card['training_data_version']}`; source model "
             f"version {card['source_model_version']}; code `{card['git_commit']}`.", "",
             "## Model", f"Conditioning: {', '.join(card['conditioning']) or 'none'}; objective "
             f"{card['objective']}; clip {card['clip_frames']} frames at {card['fps']} fps.", "",
             "## Metrics protocol", card["metrics_protocol"], ""]
    if card["metrics"]:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v:.6g} |" for k, v in card["metrics"].items()], ""]
    lines += ["## Privacy", card["privacy"], "",
              "## Known limits", *[f"- {limit}" for limit in card["known_limits"]], "",
              f"Default conditioning frame: {card['default_conditioning_frame']}.", ""]
    return "\n".join(lines)


def card_tags(card: dict[str, Any]) -> dict[str, str]:
    """Model-version tags (`card.*`; MLflow tag values are strings)."""
    return {"card.intended_use": "research only (not clinical)",
            "card.training_data_version": str(card["training_data_version"]),
            "card.conditioning": ",".join(card["conditioning"]),
            "card.objective": str(card["objective"]),
            "card.metrics_protocol": "StyleGAN-V exact or *_fallback (offline)",
            "card.privacy": card["privacy"][:4900],
            "card.known_limits": " | ".join(card["known_limits"])[:4900]}


LIDM_PRIVACY = ("Hearts sampled from this model are NOT privacy-checked by themselves: an image diffusion model can "
                "reproduce training hearts. Use them only after `echoforge privacy filter` (or `synth build`, "
                "which filters), which keeps a heart only if the re-identification model links it to no training "
                "patient.")
LIDM_LIMITS = [
    "One 112x112 grayscale end-diastolic frame per sample (a 4x14x14 latent of its VAE); other VAEs' latents "
    "are refused (sha256 check).",
    "Trained on each TRAIN video's traced end-diastolic frame where VolumeTracings give it, else on a seeded "
    "random frame per epoch: hearts of datasets without tracings are not phase-locked.",
    "FD/IS of its hearts are measured with the offline fallback extractor against real TRAIN heart frames "
    "(`lidm evaluate`), beside a held-out real and a noise control; they are not comparable to published FID.",
]


def lidm_card(*, name: str, dataset: str, config: dict[str, Any], lineage: dict[str, str]) -> dict[str, Any]:
    """The LIDM's card as a dict (config: its training config dump; lineage: git/data tags)."""
    conditioning = config.get("conditioning", {})
    return {
        "model": f"{name}@{dataset}", "intended_use": INTENDED_USE,
        "training_data_version": lineage.get("data_dvc_hash", "unknown"),
        "git_commit": lineage.get("git_commit", "unknown"),
        "conditioning": ["class_id"] if conditioning.get("class_id") else [],
        "objective": config.get("objective", {}).get("kind", "v_ddpm"),
        "metrics_protocol": "fd_fallback / is_fallback of decoded hearts vs real TRAIN heart frames, with a "
                            "held-out real positive and a noise negative control (metrics/lidm/<dataset>.json)",
        "privacy": LIDM_PRIVACY, "known_limits": LIDM_LIMITS,
    }


def render_lidm_markdown(card: dict[str, Any]) -> str:
    return "\n".join([
        f"# Model card: {card['model']}", "", "## Intended use", card["intended_use"], "",
        "## Training data", f"Version (DVC hash): `{card['training_data_version']}`; code `{card['git_commit']}`.",
        "", "## Model", f"Latent image diffusion (UNet2DModel); conditioning: "
        f"{', '.join(card['conditioning']) or 'none'}; objective {card['objective']}.", "",
        "## Metrics protocol", card["metrics_protocol"], "", "## Privacy", card["privacy"], "",
        "## Known limits", *[f"- {limit}" for limit in card["known_limits"]], ""])
