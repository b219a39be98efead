"""Register a serving bundle (LVDM folder + VAE [+ a heart generator: LIDM + re-identification folder]) as a
version of `echo-lvdm` whose pyfunc is `lvdm_model.py` (models-from-code), with a signature, the model card
and lineage tags. A heart generator is checked before anything is logged: both of its VAE hashes must be
the serving VAE's, τ must be calibrated and the sampler must fit the LIDM (`hearts.HeartGenerator`).

`mlflow models serve -m models:/echo-lvdm@champion --env-manager local` then serves it directly.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.registry import ModelVersionInfo, default_requirements, tag_version
from pipelines.serving.hearts import HEARTS_FILE, LIDM_DIR, REID_DIR, HeartServing
from pipelines.serving.model_card import build_model_card, card_tags, render_markdown
from pipelines.tracking import start_run

LVDM_MODEL_CODE = Path(__file__).parent / "lvdm_model.py"
DEFAULT_FRAME = Path(__file__).parent / "default_frame.png"
REGISTERED_NAME = "echo-lvdm"
EXPERIMENT = "echo-lvdm"
LINEAGE_KEYS = ("git_commit", "config_hash", "objective", "conditioning")


@dataclass(frozen=True)
class HeartSpec:
    """What a version's heart generator is made of: the LIDM and calibrated re-identification folders."""

    lidm: Path
    reid: Path
    cfg: HeartServing


def load_serving_params(params: Path):
    """params.yaml `serving:` → (ServingLimits, HeartServing of `serving.hearts`); defaults where absent."""
    from echo_core.config import load_params, validate_config
    from echo_core.generation.requests import ServingLimits

    section = dict((load_params(params).get("serving") or {}) if params.is_file() else {})
    hearts = section.pop("hearts", None) or {}
    return (validate_config(ServingLimits, section, where=f"{params}:serving"),
            validate_config(HeartServing, hearts, where=f"{params}:serving.hearts"))


def training_run_tags(run_id: str) -> dict[str, str]:
    """The lineage tags of the LVDM's training run: git commit, config and data hashes, objective, conditioning."""
    import mlflow

    tags = mlflow.get_run(run_id).data.tags
    return {k: v for k, v in tags.items() if k in LINEAGE_KEYS or k.startswith("data_dvc_hash")}


def check_heart_spec(hearts: HeartSpec, vae_folder: Path) -> dict[str, Any]:
    """Refuse a heart generator of another VAE, an uncalibrated τ or an unfit sampler (by loading it);
    → the model card's `heart_generator` entry."""
    from echo_core.models.vae import WEIGHTS_NAME
    from echo_core.utils.hashing import sha256_file
    from pipelines.serving.hearts import HeartGenerator, check_same_vae

    check_same_vae(sha256_file(vae_folder / WEIGHTS_NAME), hearts.lidm, hearts.reid)
    generator = HeartGenerator(hearts.lidm, hearts.reid, hearts.cfg)
    return {"tau": generator.tau, "max_tries": hearts.cfg.max_tries, "sampler": generator.request.sampler,
            "steps": generator.request.steps, "class_conditioned": generator.class_conditioned}


def serving_signature(objective_kind: str, limits):
    """inputs: ef | class_id | text (+ conditioning_frame, base64 PNG), all optional per row;
    params with the serving defaults; output: base64 video + metadata + where its heart came from."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    sampler = limits.default_sampler or ("euler" if objective_kind == "rectified_flow" else "dpmpp_2m")
    inputs = Schema([ColSpec("double", "ef", required=False), ColSpec("long", "class_id", required=False),
                     ColSpec("string", "text", required=False),
                     ColSpec("string", "conditioning_frame", required=False)])
    outputs = Schema([ColSpec("string", "video"), ColSpec("string", "format"), ColSpec("string", "mime_type"),
                      ColSpec("long", "num_frames"), ColSpec("long", "height"), ColSpec("long", "width"),
                      ColSpec("double", "fps"), ColSpec("long", "seed"), ColSpec("string", "sampler"),
                      ColSpec("long", "num_inference_steps"), ColSpec("double", "guidance_scale"),
                      ColSpec("string", "cond_type"), ColSpec("string", "cond_value"),
                      ColSpec("string", "heart"),  # request | synthetic | default
                      ColSpec(Object([Property("passed", "boolean"), Property("max_correlation", "double"),
                                      Property("tau", "double"), Property("tries", "long"),
                                      Property("heart_seed", "long")]), "privacy", required=False)])
    params = ParamSchema([
        ParamSpec("num_frames", "long", limits.default_frames), ParamSpec("num_inference_steps", "long",
                                                                          limits.default_steps),
        ParamSpec("guidance_scale", "double", limits.default_guidance_scale),
        ParamSpec("sampler", "string", sampler), ParamSpec("seed", "long", 0),
        ParamSpec("fps", "double", 0.0),  # 0 → the model's training fps
        ParamSpec("output_format", "string", limits.default_output_format)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def register_serving_model(lvdm_folder: str | Path, vae_folder: str | Path, *, alias: str | None = None,
                           tags: dict[str, str] | None = None, limits=None, metrics: dict[str, float] | None = None,
                           registered_model_name: str = REGISTERED_NAME, hearts: HeartSpec | None = None,
                           run_id: str | None = None) -> ModelVersionInfo:
    """Build the bundle, log it as a models-from-code pyfunc and register it (in the active run, the run
    `run_id` re-opened, or a new run of the `echo-lvdm` experiment). tags: lineage (git_commit,
    data_dvc_hash, source_version, ...). hearts: the heart generator a frameless request is served with."""
    import mlflow

    from echo_core.generation.pipeline import SERVING_FILE, build_serving_bundle
    from echo_core.generation.requests import ServingLimits

    limits = limits or ServingLimits()
    config = json.loads((Path(lvdm_folder) / "lvdm_config.json").read_text(encoding="utf-8"))["train"]
    generator = check_heart_spec(hearts, Path(vae_folder)) if hearts else None
    card = build_model_card(name=registered_model_name, config=config, lineage=tags or {}, metrics=metrics,
                            heart_generator=generator)
    extra = {SERVING_FILE: limits.model_dump_json(indent=2), "model_card.json": json.dumps(card, indent=2),
             "model_card.md": render_markdown(card)}
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".serving-bundle-") as tmp:
        bundle = build_serving_bundle(lvdm_folder, vae_folder, Path(tmp) / "bundle", default_frame=DEFAULT_FRAME,
                                      extra_files=extra)
        if hearts:
            _add_hearts(bundle, hearts)
        if mlflow.active_run() is None:
            with start_run(EXPERIMENT, run_name="register-serving", tags=None if run_id else tags, run_id=run_id):
                return _log(bundle, card, config, limits, alias, tags, registered_model_name)
        return _log(bundle, card, config, limits, alias, tags, registered_model_name)


def _add_hearts(bundle: Path, hearts: HeartSpec) -> None:
    """The heart generator's folders and config into the bundle (layout: `hearts.py`)."""
    shutil.copytree(hearts.lidm, bundle / LIDM_DIR)
    shutil.copytree(hearts.reid, bundle / REID_DIR)
    (bundle / HEARTS_FILE).write_text(hearts.cfg.model_dump_json(indent=2), encoding="utf-8")


def _log(bundle: Path, card: dict[str, Any], config: dict[str, Any], limits, alias: str | None,
         tags: dict[str, str] | None, name: str) -> ModelVersionInfo:
    import mlflow

    info = mlflow.pyfunc.log_model(
        name="lvdm", python_model=str(LVDM_MODEL_CODE), artifacts={"model_dir": str(bundle)},
        signature=serving_signature(config.get("objective", {}).get("kind", "v_ddpm"), limits),
        pip_requirements=default_requirements(), registered_model_name=name)
    mlflow.log_dict(card, "model_card/model_card.json")
    mlflow.log_text(render_markdown(card), "model_card/model_card.md")
    version = str(info.registered_model_version)
    tag_version(name, version, {**(tags or {}), **card_tags(card), "serving": "pyfunc",
                                "heart_generator": "lidm+privacy" if card["heart_generator"] else "none"}, alias)
    return ModelVersionInfo(name, version, f"models:/{name}/{version}", mlflow.active_run().info.run_id)
