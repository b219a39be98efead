"""`echoforge vae train | import`: train or bring in the frame VAE, log it to MLflow, register `echo-vae`.

Both register the diffusers folder unchanged as a version of `echo-vae` with lineage tags (git commit,
config hash, DVC/content hash of the data) and an optional alias; downstream stages then take
`models:/echo-vae@<alias>` or the local folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

REGISTERED_NAME = "echo-vae"
EXPERIMENT = "echo-vae"
RUN_FILE = "mlflow_run.json"  # run id of a training output folder, so `--resume` continues the same run


def _overrides(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def train(
    data: list[Path] = typer.Option(..., "--data", help="Prepared dataset folder (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output folder: vae/, checkpoints/, metrics.json, ..."),
    config: str | None = typer.Option(None, "--config", help="VAE architecture: tiny | reference."),
    params: Path | None = typer.Option(None, "--params", help="params.yaml; its `vae:` section is used."),
    resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint folder."),
    seed: int | None = typer.Option(None, "--seed", help="Overrides vae.seed."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Overrides vae.max_steps."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register as echo-vae."),
    alias: str | None = typer.Option("candidate", "--alias", help="Alias for the new version ('' for none)."),
) -> None:
    """Train the VAE (accelerate; checkpoints; exact resume), log it to MLflow and register it."""
    from echo_core.config import load_section, validate_config
    from echo_core.training.vae import VaeTrainConfig, train_vae
    from echo_core.utils.atomic import write_json_atomic
    from pipelines.tracking import lineage_tags, start_run

    overrides = _overrides(model=config, seed=seed, max_steps=max_steps)
    cfg = load_section(VaeTrainConfig, "vae", params, overrides) if params \
        else validate_config(VaeTrainConfig, overrides, where="vae options")
    tags = lineage_tags(cfg, data)
    run_file = out / RUN_FILE
    run_id = json.loads(run_file.read_text())["run_id"] if resume and run_file.is_file() else None
    with start_run(EXPERIMENT, run_name=f"train-{cfg.model}", tags=tags, run_id=run_id) as tracker:
        write_json_atomic(run_file, {"run_id": tracker.run_id})
        tracker.log_dict({"data": [str(d) for d in data], **cfg.model_dump(mode="json")}, "config/vae.json")
        folder = train_vae(cfg, data, out, tracker, resume=resume)
        metrics = json.loads((out / "metrics.json").read_text())
        if register:
            _register(folder, source="trained", tags=tags, alias=alias, metrics=metrics)
    typer.echo(f"VAE at {folder}: val_psnr {metrics['val_psnr']:.2f} dB, scaling_factor "
               f"{metrics['scaling_factor']:.5f}")


def import_(
    folder: Path = typer.Argument(..., help="diffusers AutoencoderKL folder (config.json + weights)."),
    data: list[Path] | None = typer.Option(None, "--data", help="Prepared dataset(s): report VAL PSNR/SSIM."),
    resolution: int = typer.Option(112, "--resolution", help="Frame size the VAE must fit."),
    alias: str | None = typer.Option("candidate", "--alias", help="Alias for the new version ('' for none)."),
) -> None:
    """Verify an existing VAE folder (as published by the reference systems) and register it unchanged."""
    from echo_core.models.vae import check_vae_matches, load_vae
    from pipelines.tracking import data_hash, git_commit, start_run

    vae, info = load_vae(folder)
    check_vae_matches(vae, resolution=resolution, where=f"VAE folder {folder}")
    tags = {"git_commit": git_commit(), "config_hash": info.config_hash,
            "data_dvc_hash": data_hash(data[0]) if data else "none"}
    with start_run(EXPERIMENT, run_name="import", tags=tags) as tracker:
        tracker.log_params({"source_folder": str(folder.resolve()), "vae": dict(vae.config)})
        metrics = _evaluate(vae, data, resolution, tracker) if data else {}
        metrics["scaling_factor"] = info.scaling_factor
        _register(folder, source="imported", tags={**tags, "weights_sha256": info.weights_sha256},
                  alias=alias, metrics=metrics)
    typer.echo(f"imported {folder} (scaling_factor {info.scaling_factor})"
               + (f", val_psnr {metrics['val_psnr']:.2f} dB" if "val_psnr" in metrics else ""))


def _evaluate(vae, data: list[Path], resolution: int, tracker) -> dict[str, float]:
    """decode(encode(x)) PSNR/SSIM of the VAL frames of `data`, logged to the run."""
    import tempfile

    from echo_core.data.frames import FrameDataset, load_split_frames
    from echo_core.training.vae import evaluate_reconstruction, save_recon_grid

    val = FrameDataset(load_split_frames(data, "VAL", resolution=resolution))
    metrics, pairs = evaluate_reconstruction(vae, val)
    tracker.log_metrics(metrics, step=0)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        tracker.log_artifact(save_recon_grid(pairs, Path(tmp) / "import.png"), "reconstructions")
    return metrics


def _register(folder: Path, *, source: str, tags: dict[str, str], alias: str | None,
              metrics: dict[str, float]) -> None:
    from pipelines.registry import log_model_folder

    version_tags = {**tags, "source": source, **{k: f"{v:.6g}" for k, v in metrics.items()}}
    info = log_model_folder(folder, name="vae", registered_model_name=REGISTERED_NAME, alias=alias or None,
                            tags=version_tags)
    typer.echo(f"registered {info.name} version {info.version}"
               + (f" as models:/{info.name}@{alias}" if alias else f" ({info.uri})"))


def register(app: typer.Typer) -> None:
    """Add `train` and `import` to the `vae` group."""
    app.command("train")(train)
    app.command("import")(import_)
