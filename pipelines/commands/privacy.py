"""`echoforge privacy train | filter | audit`: the re-identification model, its threshold τ, the privacy filter
of synthetic hearts and the memorisation audit of generated videos (seed-systems §5).

    echoforge privacy train --data outputs/latents/dynamic --out outputs/privacy/dynamic
    echoforge privacy filter --model outputs/privacy/dynamic/reid --data outputs/latents/dynamic \\
        --candidates outputs/hearts/dynamic --out outputs/hearts/dynamic_kept
    echoforge privacy audit --model models:/echo-reid-dynamic@current --data outputs/latents/dynamic \\
        --samples outputs/samples/dynamic --out metrics/memorisation_dynamic.json

`train` trains through the one trainer (section `train_reid:`), then calibrates τ (section `privacy:`) into the
model folder `OUT/reid` (the folder `--model` takes); it is logged to the MLflow experiment `echo-reid` and
registered as `echo-reid-<dataset>` with the alias `@current`.
"""

from __future__ import annotations

from pathlib import Path

import typer

EXPERIMENT = "echo-reid"
SECTION = "train_reid"
PRIVACY_SECTION = "privacy"
ALIAS = "current"


def registered_name(dataset: str) -> str:
    return f"echo-reid-{dataset}"


def train(
    data: list[Path] = typer.Option(..., "--data", help="Latent store folder (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output folder: checkpoints/, train_summary.json, reid/ "
                                               "(the model folder with privacy.json)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name for the registry "
                                       "(default: the first store's folder name)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml: `train_reid:`, `privacy:`."),
    assignments: list[str] = typer.Option([], "--set", help="Override a train_reid key: dotted.key=value."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Overrides optim.max_steps."),
    seed: int | None = typer.Option(None, "--seed", help="Overrides train_reid.seed."),
    resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint folder."),
    track: bool = typer.Option(True, "--track/--no-track", help="Log to MLflow and register."),
) -> None:
    """Train the re-identification net on TRAIN pairs, calibrate τ on held-out frames, register it."""
    from echo_core.training.reid import ReidTrainConfig
    from pipelines.commands.train import resolve_section

    name = dataset or data[0].name
    cfg = resolve_section(ReidTrainConfig, SECTION, params, assignments, max_steps=max_steps, seed=seed)
    privacy = _privacy_config(params)
    if not track:
        _train_and_calibrate(cfg, privacy, data, out, resume)
        return
    from pipelines.commands.train import tracked_run
    from pipelines.registry import log_model_folder
    from pipelines.tracking import lineage_tags

    tags = {**lineage_tags(cfg, data), "dataset": name, "variant": cfg.variant}
    config = {"data": [str(d) for d in data], **cfg.model_dump(mode="json"),
              "privacy": privacy.model_dump(mode="json")}
    with tracked_run(EXPERIMENT, f"reid-{name}", tags, cfg, out, resume, config, SECTION) as tracker:
        folder, record = _train_and_calibrate(cfg, privacy, data, out, resume, tracker)
        tracker.log_metrics({"privacy/tau": record["tau"], "privacy/heldout_frames":
                             record["counts"]["heldout_frames"]})
        tracker.flush(timeout=300)
        info = log_model_folder(folder, name="reid", registered_model_name=registered_name(name), alias=ALIAS,
                                tags={**tags, "tau": f"{record['tau']:.6f}", "vae_sha256": record["vae_sha256"]})
    typer.echo(f"registered {info.name} version {info.version} as models:/{info.name}@{ALIAS}")


def _privacy_config(params: Path):
    from echo_core.config import load_params, load_section
    from echo_core.privacy.calibrate import PrivacyConfig

    has_section = params.is_file() and PRIVACY_SECTION in load_params(params)
    return load_section(PrivacyConfig, PRIVACY_SECTION, params) if has_section else PrivacyConfig()


def _train_and_calibrate(cfg, privacy, data: list[Path], out: Path, resume: str | None, tracker=None):
    from echo_core.privacy.calibrate import calibrate
    from echo_core.training.reid import train_reid

    result = train_reid(cfg, data, out, tracker=tracker, resume=resume)
    record = calibrate(result.folder, data, privacy)
    auc = _auc_text(result.folder)
    typer.echo(f"trained {result.step} steps; held-out pair AUC {auc}; τ = {record['tau']:.4f} "
               f"(p{privacy.percentile:g} of {record['counts']['heldout_frames']} held-out frames); "
               f"model at {result.folder}")
    return result.folder, record


def _auc_text(folder: Path) -> str:
    from echo_core.models.reid import read_reid_meta

    auc = read_reid_meta(folder).get("heldout_auc") or {}
    low, high = auc.get("ci_low"), auc.get("ci_high")
    return f"{auc.get('value', float('nan')):.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def filter_command(
    model: str = typer.Option(..., "--model", help="Re-identification folder or models:/echo-reid-<ds>@current."),
    data: Path = typer.Option(..., "--data", help="The real latent store the model was calibrated on."),
    candidates: Path = typer.Option(..., "--candidates", help="Heart folder (latents/*.safetensors)."),
    out: Path = typer.Option(..., "--out", help="Kept hearts (a heart folder) + privacy_scores.csv + "
                                               "privacy_hist.png; replaced whole."),
    track: bool = typer.Option(True, "--track/--no-track", help="Log the scores and histogram to MLflow."),
) -> None:
    """Keep only the candidate hearts whose max correlation to every real TRAIN frame is below τ."""
    from echo_core.privacy.filter import HIST_FILE, SCORES_FILE, filter_hearts
    from pipelines.registry import resolve_model_folder

    summary = filter_hearts(resolve_model_folder(model), data, candidates, out)
    typer.echo(f"kept {summary['kept']} of {summary['candidates']} candidate hearts (τ = {summary['tau']:.4f}, "
               f"{summary['rejected']} rejected); {out}")
    if track:
        from pipelines.tracking import start_run

        with start_run(EXPERIMENT, run_name=f"privacy-filter-{candidates.name}",
                       tags={"model": model, "candidates": str(candidates), "kind": "filter"}) as tracker:
            tracker.log_metrics({"filter/candidates": summary["candidates"], "filter/kept": summary["kept"],
                                 "filter/rejected_share": summary["rejected_share"], "filter/tau": summary["tau"]})
            tracker.log_artifact(out / HIST_FILE, "privacy")
            tracker.log_artifact(out / SCORES_FILE, "privacy")


def audit(
    model: str = typer.Option(..., "--model", help="Re-identification folder or models:/echo-reid-<ds>@current."),
    data: Path = typer.Option(..., "--data", help="The real latent store the model was calibrated on."),
    samples: Path = typer.Option(..., "--samples", help="Latent store, `echoforge sample` output with "
                                                       "safetensors/, or heart folder."),
    out: Path | None = typer.Option(None, "--out", help="Write the audit as JSON here."),
    frames: int | None = typer.Option(None, "--frames", min=1, help="Frames per item (default: as calibrated)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Memorisation audit: the share of generated items whose frames re-identify a training video."""
    from echo_core.privacy.audit import audit as run_audit
    from echo_core.utils.atomic import write_json_atomic
    from pipelines.registry import resolve_model_folder

    result = run_audit(resolve_model_folder(model), data, samples, frames_per_item=frames, seed=seed)
    share = result["memorised_share"]
    ci = f" [{share['ci_low']:.3f}, {share['ci_high']:.3f}]" if share.get("ci_low") is not None else ""
    control = result["heldout_real_share"]
    typer.echo(f"{result['memorised']} of {result['items']} items re-identify a training video: "
               f"{share['value']:.3f}{ci} (τ = {result['tau']:.4f}; unseen real items: "
               + (f"{control:.3f})" if control is not None else "n/a)"))
    if out is not None:
        write_json_atomic(out, result)


def register(app: typer.Typer) -> None:
    """Add `train`, `filter` and `audit` to the `privacy` group."""
    app.command("train")(train)
    app.command("filter")(filter_command)
    app.command("audit")(audit)
