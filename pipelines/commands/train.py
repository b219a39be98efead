"""`echoforge train lvdm`: train the latent video diffusion model, track it in MLflow, register `echo-lvdm`;
`echoforge train distill`: distill a rectified-flow LVDM into a few-step student (the same trainer).

One process or many: run it directly, or under `accelerate launch` (profiles in infra/accelerate/):

    echoforge train lvdm --data outputs/latents/dynamic --out outputs/lvdm
    accelerate launch --config_file infra/accelerate/cpu-2proc.yaml -m pipelines.cli train lvdm --data ... --out ...

Only rank 0 talks to MLflow (it prints `MLFLOW_RUN_ID=<id>` first, which the Prefect flow parses); the
other ranks train with a NullTracker. `--resume latest` continues from the newest complete checkpoint and
re-opens the same MLflow run (its id is kept in OUT/mlflow_run.json). The DAG trains with `--no-register`:
its `register` stage (`registry build-serving --train-run OUT`) registers the version in this run once the
heart generator (LIDM + re-identification net) exists.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

REGISTERED_NAME = "echo-lvdm"
EXPERIMENT = "echo-lvdm"
SECTION = "train_lvdm"
DISTILL_SECTION = "train_distill"
RUN_FILE = "mlflow_run.json"


def apply_overrides(section: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """`["optim.lr=3e-4", "conditioning.types=[ef, text]"]` → a copy of `section` with those keys set.
    Values are parsed as YAML (numbers, booleans, lists, null)."""
    import yaml

    from echo_core.errors import UsageError

    data = copy.deepcopy(section)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r} is not key=value", fix="e.g. --set optim.lr=3e-4")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {item!r}: '{part}' is not a section", fix="check the key path")
        node[leaf] = yaml.safe_load(raw)
    return data


def section_data(section: str, params: Path, assignments: list[str], *, max_steps: int | None = None,
                 seed: int | None = None) -> dict[str, Any]:
    """params.yaml `<section>:` + `--set` + the dedicated flags, not yet validated."""
    from echo_core.config import load_params
    from echo_core.errors import ConfigError

    doc = load_params(params)
    if section not in doc:
        raise ConfigError(f"{params} has no '{section}' section", fix=f"add a '{section}:' section (see README)")
    data = apply_overrides(doc[section] or {}, assignments)
    if max_steps is not None:
        data.setdefault("optim", {})["max_steps"] = max_steps
    if seed is not None:
        data["seed"] = seed
    return data


def resolve_section(model_cls, section: str, params: Path, assignments: list[str], *,
                    max_steps: int | None = None, seed: int | None = None):
    """params.yaml `<section>:` + `--set` + the dedicated flags → a validated `model_cls` (any trainer task)."""
    from echo_core.config import validate_config

    data = section_data(section, params, assignments, max_steps=max_steps, seed=seed)
    return validate_config(model_cls, data, where=f"{params}:{section}")


def resolve_config(params: Path, assignments: list[str], *, max_steps: int | None = None,
                   seed: int | None = None, section: str = SECTION):
    """params.yaml `train_lvdm:` (or `section`) + `--set` + the dedicated flags → a validated LvdmTrainConfig."""
    from echo_core.training.lvdm import LvdmTrainConfig

    return resolve_section(LvdmTrainConfig, section, params, assignments, max_steps=max_steps, seed=seed)


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str, tags: dict[str, str], cfg, out: Path, resume: str | None,
                config: dict[str, Any], config_name: str) -> Iterator[Any]:
    """The MLflow run of one training: a resumed trajectory re-opens its run (the id is kept in
    OUT/mlflow_run.json), changed hyper-parameters start a new one (the loop sets such checkpoints aside).
    Prints `MLFLOW_RUN_ID=<id>` first (the train flow parses it); every metric is delivered when it closes."""
    from echo_core.training.checkpoint import trajectory_hash
    from echo_core.utils.atomic import write_json_atomic
    from pipelines.tracking import start_run

    run_file, trajectory = out / RUN_FILE, trajectory_hash(cfg)
    previous = json.loads(run_file.read_text()) if resume and run_file.is_file() else {}
    run_id = previous.get("run_id") if previous.get("trajectory_hash") == trajectory else None
    with start_run(experiment, run_name=run_name, tags=tags, run_id=run_id) as tracker:
        typer.echo(f"MLFLOW_RUN_ID={tracker.run_id}")
        write_json_atomic(run_file, {"run_id": tracker.run_id, "trajectory_hash": trajectory})
        tracker.log_dict(config, f"config/{config_name}.json")
        yield tracker


def run_tags(cfg, data: list[Path]) -> dict[str, str]:
    """Lineage tags for the run and the registered version."""
    from pipelines.tracking import lineage_tags

    return {**lineage_tags(cfg, data), "objective": cfg.objective.kind,
            "conditioning": ",".join(cfg.conditioning.types)}


def lvdm(
    data: list[Path] = typer.Option(..., "--data", help="Latent store folder (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output folder: checkpoints/, validation/, unet_ema/, ..."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml; its `train_lvdm:` section."),
    assignments: list[str] = typer.Option([], "--set", help="Override a train_lvdm key: dotted.key=value."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Overrides optim.max_steps."),
    seed: int | None = typer.Option(None, "--seed", help="Overrides train_lvdm.seed."),
    resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint folder."),
    vae: str | None = typer.Option(None, "--vae", help="VAE folder or models:/echo-vae@alias: decode "
                                                      "validation videos (else latent previews)."),
    tracking: bool = typer.Option(True, "--tracking/--no-tracking", help="Log to MLflow (rank 0)."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the EMA UNet as echo-lvdm."),
    alias: str = typer.Option("candidate", "--alias", help="Alias for the new version ('' for none)."),
    section: str = typer.Option(SECTION, "--section", help="params.yaml section, e.g. train_lvdm_cardiacnet "
                                "(EchoDream's class-conditioned LVDM)."),
) -> None:
    """Train (or resume) the LVDM on latent stores; log to MLflow and register `echo-lvdm`."""
    cfg = resolve_config(params, assignments, max_steps=max_steps, seed=seed, section=section)
    is_main = int(os.environ.get("RANK", "0")) == 0  # set by accelerate launch / torchrun
    vae_model = _load_vae(vae) if vae and is_main and cfg.validation.every else None
    if not (is_main and tracking):
        _train(cfg, data, out, resume, vae_model)
        return
    tags = run_tags(cfg, data)
    config = {"data": [str(d) for d in data], **cfg.model_dump(mode="json")}
    with tracked_run(EXPERIMENT, f"lvdm-{cfg.model.name}", tags, cfg, out, resume, config, section) as tracker:
        result = _train(cfg, data, out, resume, vae_model, tracker)
        tracker.flush(timeout=300)
        if register:  # inside the run: the registered version's source is this run
            _register(result.folder, tags, alias or None, vae, params)


def _train(cfg, data: list[Path], out: Path, resume: str | None, vae, tracker=None):
    from echo_core.training.lvdm import train_lvdm

    result = train_lvdm(cfg, data, out, tracker=tracker, resume=resume, vae=vae)
    if result.is_main:
        typer.echo(f"trained {result.step} steps on {result.world_size} process(es); EMA model at {result.folder}")
    return result


def _load_vae(uri: str):
    from echo_core.models.vae import load_vae
    from pipelines.registry import resolve_model_folder

    return load_vae(resolve_model_folder(uri))[0]


def _register(folder: Path, tags: dict[str, str], alias: str | None, vae: str | None, params: Path) -> None:
    """With a VAE: register the servable pipeline (UNet + VAE + scheduler + encoders + model card), which is
    what `mlflow models serve` and `echoforge sample` consume; without one: the bare EMA UNet folder."""
    if vae:
        from pipelines.registry import resolve_model_folder
        from pipelines.serving.register import load_serving_params, register_serving_model

        limits, _ = load_serving_params(params)
        info = register_serving_model(folder, resolve_model_folder(vae), alias=alias,
                                      tags={**tags, "vae_source": vae}, limits=limits)
    else:
        from pipelines.registry import log_model_folder

        info = log_model_folder(folder, name="lvdm", registered_model_name=REGISTERED_NAME, alias=alias, tags=tags)
    typer.echo(f"registered {info.name} version {info.version}"
               + (f" as models:/{info.name}@{alias}" if alias else f" ({info.uri})"))


def distill(
    teacher: str = typer.Option(..., "--teacher", help="Rectified-flow LVDM folder or models:/echo-lvdm@alias."),
    data: list[Path] = typer.Option(..., "--data", help="Latent store folder (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output folder: checkpoints/, unet_ema/ (the student), ..."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml; its `train_distill:` section."),
    assignments: list[str] = typer.Option([], "--set", help="Override a train_distill key: dotted.key=value."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Overrides optim.max_steps."),
    resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint folder."),
    tracking: bool = typer.Option(True, "--tracking/--no-tracking", help="Log to MLflow (rank 0)."),
    register: bool = typer.Option(False, "--register/--no-register", help="Register the student as echo-lvdm."),
    alias: str = typer.Option("distilled", "--alias", help="Alias for the registered student ('' for none)."),
    vae: str | None = typer.Option(None, "--vae", help="VAE folder or models:/echo-vae@alias: register the "
                                                      "servable pipeline (else the bare EMA UNet)."),
) -> None:
    """Distill a rectified-flow LVDM into a few-step student (sample it with `--sampler euler --steps S`)."""
    from echo_core.training.distill import distill_config
    from pipelines.registry import resolve_model_folder

    section = section_data(DISTILL_SECTION, params, assignments, max_steps=max_steps)
    cfg = distill_config(resolve_model_folder(teacher), section, where=f"{params}:{DISTILL_SECTION}")
    is_main = int(os.environ.get("RANK", "0")) == 0
    if not (is_main and tracking):
        _distill(cfg, data, out, resume)
        return
    tags = {**run_tags(cfg, data), "distilled_from": teacher, "student_steps": str(cfg.distill.student_steps)}
    config = {"data": [str(d) for d in data], **cfg.model_dump(mode="json")}
    with tracked_run(EXPERIMENT, f"distill-{cfg.model.name}", tags, cfg, out, resume, config,
                     DISTILL_SECTION) as tracker:
        result = _distill(cfg, data, out, resume, tracker)
        tracker.flush(timeout=300)
        if register:
            _register(result.folder, tags, alias or None, vae, params)


def _distill(cfg, data: list[Path], out: Path, resume: str | None, tracker=None):
    from echo_core.training.distill import train_distill

    result = train_distill(cfg, data, out, tracker=tracker, resume=resume)
    if result.is_main:
        typer.echo(f"distilled {result.step} steps; {cfg.distill.student_steps}-step student at {result.folder} "
                   f"(sample: --sampler euler --steps {cfg.distill.student_steps})")
    return result


def register(app: typer.Typer) -> None:
    """Add `lvdm` and `distill` to the `train` group."""
    app.command("lvdm")(lvdm)
    app.command("distill")(distill)
