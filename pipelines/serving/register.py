"""Register a serving bundle (LVDM folder + VAE) as a version of `echo-lvdm` whose pyfunc is
`lvdm_model.py` (models-from-code), with a signature, the model card and lineage tags.

`mlflow models serve -m models:/echo-lvdm@champion --env-manager local` then serves it directly.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pipelines.registry import ModelVersionInfo, default_requirements, tag_version
from pipelines.serving.model_card import build_model_card, card_tags, render_markdown
from pipelines.tracking import start_run

LVDM_MODEL_CODE = Path(__file__).parent / "lvdm_model.py"
DEFAULT_FRAME = Path(__file__).parent / "default_frame.png"
REGISTERED_NAME = "echo-lvdm"
EXPERIMENT = "echo-lvdm"


def serving_signature(objective_kind: str, limits):
    """inputs: ef | class_id | text (+ conditioning_frame, base64 PNG), all optional per row;
    params with the serving defaults; output: base64 video + metadata."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    sampler = limits.default_sampler or ("euler" if objective_kind == "rectified_flow" else "dpmpp_2m")
    inputs = Schema([ColSpec("double", "ef", required=False), ColSpec("long", "class_id", required=False),
                     ColSpec("string", "text", required=False),
                     ColSpec("string", "conditioning_frame", required=False)])
    outputs = Schema([ColSpec("string", "video"), ColSpec("string", "format"), ColSpec("string", "mime_type"),
                      ColSpec("long", "num_frames"), ColSpec("long", "height"), ColSpec("long", "width"),
                      ColSpec("double", "fps"), ColSpec("long", "seed"), ColSpec("string", "sampler"),
                      ColSpec("long", "num_inference_steps"), ColSpec("double", "guidance_scale"),
                      ColSpec("string", "cond_type"), ColSpec("string", "cond_value")])
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
                           registered_model_name: str = REGISTERED_NAME) -> ModelVersionInfo:
    """Build the bundle, log it as a models-from-code pyfunc and register it (in the active run, or a new
    run of the `echo-lvdm` experiment). tags: lineage (git_commit, data_dvc_hash, source_version, ...)."""
    import mlflow

    from echo_core.generation.pipeline import SERVING_FILE, build_serving_bundle
    from echo_core.generation.requests import ServingLimits

    limits = limits or ServingLimits()
    config = json.loads((Path(lvdm_folder) / "lvdm_config.json").read_text(encoding="utf-8"))["train"]
    card = build_model_card(name=registered_model_name, config=config, lineage=tags or {}, metrics=metrics)
    extra = {SERVING_FILE: limits.model_dump_json(indent=2), "model_card.json": json.dumps(card, indent=2),
             "model_card.md": render_markdown(card)}
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".serving-bundle-") as tmp:
        bundle = build_serving_bundle(lvdm_folder, vae_folder, Path(tmp) / "bundle", default_frame=DEFAULT_FRAME,
                                      extra_files=extra)
        if mlflow.active_run() is None:
            with start_run(EXPERIMENT, run_name="register-serving", tags=tags):
                return _log(bundle, card, config, limits, alias, tags, registered_model_name)
        return _log(bundle, card, config, limits, alias, tags, registered_model_name)


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
    tag_version(name, version, {**(tags or {}), **card_tags(card), "serving": "pyfunc"}, alias)
    return ModelVersionInfo(name, version, f"models:/{name}/{version}", mlflow.active_run().info.run_id)
