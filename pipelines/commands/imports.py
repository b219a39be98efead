"""`echoforge lvdm import | lidm import | privacy import`: bring the reference systems' released models in.

    echoforge lvdm import models/lvdm --vae models:/echo-vae@candidate --out outputs/imported/lvdm
    echoforge lidm import models/lidm_dynamic --vae outputs/vae/vae --out outputs/imported/lidm_dynamic
    echoforge privacy import models/reidentification_dynamic --vae outputs/vae/vae \\
        --data outputs/latents/dynamic --out outputs/imported/reid_dynamic

Each checks the folder against our architecture (naming every mismatch), converts it into our own folder
format (`echo_core.models.import_diffusion`, `import_reid`), and registers it like its training command does:
`echo-lvdm` (the servable bundle with the VAE), `echo-lidm@<dataset>`, `echo-reid-<dataset>@current` (after
calibrating τ on our latent store). Provenance: the folder's metadata `source` and the version's tags
(source=imported, source_path, sha256 of each weight file, the VAE's sha256), the reference config as an artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pipelines.commands import lidm as lidm_commands
from pipelines.commands import privacy as privacy_commands
from pipelines.commands import train as train_commands

ARCHITECTURES = ("reference", "tiny")


def _architecture(value: str) -> str:
    if value not in ARCHITECTURES:
        raise typer.BadParameter(f"{value!r}: choose one of {', '.join(ARCHITECTURES)}")
    return value


def _conditioning(value: str | None) -> str | None:
    if value not in (None, "ef", "class_id", "text"):
        raise typer.BadParameter(f"{value!r}: choose one of ef, class_id, text")
    return value


def _vae(uri: str) -> tuple[Path, dict[str, Any]]:
    """(folder, {sha256, scaling_factor, uri}) of the VAE whose latents the imported model works on."""
    from echo_core.models.vae import check_vae_matches, load_vae
    from pipelines.registry import resolve_model_folder

    folder = resolve_model_folder(uri)
    vae, info = load_vae(folder)
    check_vae_matches(vae, where=f"--vae {uri}")
    return folder, {"sha256": info.weights_sha256, "scaling_factor": info.scaling_factor, "uri": uri}


def _tags(source: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    from echo_core.utils.hashing import config_hash
    from pipelines.tracking import git_commit

    files = {f"weights_sha256/{name}": sha for name, sha in source["weights_sha256"].items()}
    return {"source": "imported", "source_path": source["source_path"], "vae_sha256": source["vae"]["sha256"],
            "vae_source": str(source["vae"].get("uri", "")), "git_commit": git_commit(),
            "config_hash": config_hash(source["reference_config"]), **files, **extra}


def _log_source(tracker, folder: Path, config_file: str, source: dict[str, Any]) -> None:
    tracker.log_params({"source_path": source["source_path"], "vae_sha256": source["vae"]["sha256"]})
    tracker.log_artifact(folder / config_file, "reference")


def lvdm_import(
    folder: Path = typer.Argument(..., help="Released LVDM folder: config.json, diffusion_pytorch_model."
                                            "safetensors, config.yaml."),
    out: Path = typer.Option(..., "--out", help="Our LVDM folder to write (replaced whole)."),
    vae: str = typer.Option(..., "--vae", help="The VAE folder or models:/echo-vae@alias whose latents it models."),
    config: str = typer.Option("reference", "--config", callback=_architecture, help="UNet size: reference | tiny."),
    conditioning: str | None = typer.Option(None, "--conditioning", callback=_conditioning,
                                            help="ef | class_id | text (default: read from config.yaml; "
                                                 "only ef can be represented)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml; its `serving:` limits."),
    alias: str = typer.Option("candidate", "--alias", help="Alias for the new version ('' for none)."),
) -> None:
    """Check a released EchoNet-Synthetic LVDM, convert it to our folder, register it as `echo-lvdm`."""
    from echo_core.models.import_diffusion import import_lvdm
    from echo_core.models.imports import REFERENCE_CONFIG
    from pipelines.tracking import start_run

    _, vae_info = _vae(vae)
    source = import_lvdm(folder, out, model_name=config, vae=vae_info, conditioning=conditioning)
    tags = _tags(source, {"objective": "v_ddpm", "conditioning": "ef"})
    with start_run(train_commands.EXPERIMENT, run_name="import", tags=tags) as tracker:
        _log_source(tracker, folder, REFERENCE_CONFIG, source)
        tracker.flush()
        train_commands._register(out, tags, alias or None, vae, params)  # as `train lvdm --vae`
    typer.echo(f"imported {folder} as {out}")


def lidm_import(
    folder: Path = typer.Argument(..., help="Released LIDM folder (models/lidm_<dataset>)."),
    out: Path = typer.Option(..., "--out", help="Our LIDM folder to write (replaced whole)."),
    vae: str = typer.Option(..., "--vae", help="The VAE folder or models:/echo-vae@alias whose latents it models."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name for the registry alias (default: "
                                       "the folder name without 'lidm_')."),
    config: str = typer.Option("reference", "--config", callback=_architecture, help="UNet size: reference | tiny."),
) -> None:
    """Check a released EchoNet-Synthetic LIDM, convert it to our folder, register it as `echo-lidm@<dataset>`."""
    from echo_core.models.import_diffusion import import_lidm
    from echo_core.models.imports import REFERENCE_CONFIG
    from pipelines.registry import log_model_folder
    from pipelines.tracking import start_run

    name = dataset or folder.name.removeprefix("lidm_")
    _, vae_info = _vae(vae)
    source = import_lidm(folder, out, model_name=config, vae=vae_info)
    tags = _tags(source, {"dataset": name, "objective": "v_ddpm", "conditioning": "none"})
    with start_run(lidm_commands.EXPERIMENT, run_name=f"import-{name}", tags=tags) as tracker:
        _log_source(tracker, folder, REFERENCE_CONFIG, source)
        tracker.flush()
        info = log_model_folder(out, name="lidm", registered_model_name=lidm_commands.REGISTERED_NAME,
                                alias=name, tags=tags)
    typer.echo(f"imported {folder} as {out}; registered {info.name} version {info.version} as "
               f"models:/{info.name}@{name}")


def privacy_import(
    folder: Path = typer.Argument(..., help="Released re-identification folder (models/reidentification_<ds>: "
                                            "config.json + <name>_best_network.pth)."),
    data: list[Path] = typer.Option(..., "--data", help="Our latent store(s) to calibrate τ on (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Our re-identification folder to write, with privacy.json."),
    vae: str = typer.Option(..., "--vae", help="The VAE folder or models:/echo-vae@alias whose latents it embeds."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name for the registry (default: the "
                                       "folder name without 'reidentification_')."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml; its `privacy:` section."),
) -> None:
    """Check a released re-identification net, convert it, calibrate τ on our latents, register
    `echo-reid-<dataset>@current`."""
    from echo_core.models.import_reid import CONFIG_FILE, import_reid
    from pipelines.registry import log_model_folder
    from pipelines.tracking import start_run

    name = dataset or folder.name.removeprefix("reidentification_")
    _, vae_info = _vae(vae)
    privacy = privacy_commands._privacy_config(params)  # the same τ calibration as `privacy train`
    source, record = import_reid(folder, out, roots=data, vae=vae_info, privacy=privacy)
    tags = _tags(source, {"dataset": name, "variant": "resnet50-bn", "tau": f"{record['tau']:.6f}"})
    with start_run(privacy_commands.EXPERIMENT, run_name=f"import-{name}", tags=tags) as tracker:
        _log_source(tracker, folder, CONFIG_FILE, source)
        tracker.log_metrics({"privacy/tau": record["tau"], "privacy/heldout_frames":
                             record["counts"]["heldout_frames"]})
        tracker.flush()
        info = log_model_folder(out, name="reid", registered_model_name=privacy_commands.registered_name(name),
                                alias=privacy_commands.ALIAS, tags=tags)
    typer.echo(f"imported {folder} as {out}: τ = {record['tau']:.4f} (p{privacy.percentile:g} of "
               f"{record['counts']['heldout_frames']} held-out frames); registered {info.name} version "
               f"{info.version} as models:/{info.name}@{privacy_commands.ALIAS}")


def register_lvdm(app: typer.Typer) -> None:
    app.command("import")(lvdm_import)


def register_lidm(app: typer.Typer) -> None:
    app.command("import")(lidm_import)


def register_privacy(app: typer.Typer) -> None:
    app.command("import")(privacy_import)
