"""`echoforge latents encode | import-reference`: prepared dataset → latent store (see echo_core.latents.encode).

`--vae` takes `models:/echo-vae@<alias>`, `models:/echo-vae/<version>` or a local diffusers folder. Settings
come from `--params` (section `encode:`) with command-line flags taking precedence.
"""

from __future__ import annotations

from pathlib import Path

import typer

EXPERIMENT = "echo-latents"


def _overrides(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _resolve_vae(uri: str):
    """(vae, VaeInfo) for a registry URI or a folder; the info records the URI and registry version."""
    from echo_core.models.vae import load_vae
    from pipelines.registry import resolve_model_folder, version_of_uri

    folder = resolve_model_folder(uri)
    version = str(version_of_uri(uri).version) if uri.startswith("models:/") else None
    return load_vae(folder, uri=uri, version=version)


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def encode(
    vae: str = typer.Option(..., "--vae", help="models:/echo-vae@<alias>, models:/echo-vae/<n> or a folder."),
    dataset: Path = typer.Option(..., "--dataset", help="Prepared dataset folder (Videos/, FileList.csv)."),
    out: Path = typer.Option(..., "--out", help="Latent store folder (Latents/, FileList.csv, manifest.json)."),
    mode: str | None = typer.Option(None, "--mode", help="mean (default) | sample (the reference's draw)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float16 (default) | float32."),
    batch_frames: int | None = typer.Option(None, "--batch-frames", min=1, help="Frames per VAE batch."),
    fail_on_error: bool | None = typer.Option(None, "--fail-on-error/--exclude-bad",
                                              help="Stop at the first bad video instead of excluding it."),
    seed: int | None = typer.Option(None, "--seed", help="Noise seed for --mode sample."),
    params: Path | None = typer.Option(None, "--params", help="params.yaml; its `encode:` section is used."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]."),
    latent_size: int = typer.Option(14, "--latent-size", help="Latent h = w the LVDM expects (0: any)."),
    track: bool = typer.Option(False, "--track/--no-track", help="Log the run to MLflow (echo-latents)."),
) -> None:
    """Encode every video into per-video latents; resumable (finished videos are skipped) and idempotent."""
    from echo_core.config import load_section, validate_config
    from echo_core.latents.encode import EncodeConfig, encode_dataset

    overrides = _overrides(mode=mode, dtype=dtype, batch_frames=batch_frames, fail_on_error=fail_on_error,
                           seed=seed)
    cfg = load_section(EncodeConfig, "encode", params, overrides) if params \
        else validate_config(EncodeConfig, overrides, where="encode options")
    model, info = _resolve_vae(vae)
    kwargs = {"device": _device(device), "latent_size": latent_size or None}
    if track:
        from pipelines.tracking import start_run

        with start_run(EXPERIMENT, run_name=f"encode-{dataset.name}") as tracker:
            tracker.log_params({"encode": cfg.model_dump(mode="json"), "vae": info.as_dict(),
                                "dataset": str(dataset)})
            report = encode_dataset(model, dataset, out, info, cfg, tracker=tracker, **kwargs)
            tracker.log_artifact(out / "manifest.json")
    else:
        report = encode_dataset(model, dataset, out, info, cfg, **kwargs)
    for name, reason in report.failed.items():
        typer.secho(f"excluded {name}: {reason.splitlines()[0]}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"{out}: encoded {len(report.encoded)}, skipped {len(report.skipped)} (already done), "
               f"failed {len(report.failed)}; {report.frames_per_second:.1f} frames/s")


def import_reference(
    src: Path = typer.Argument(..., help="Reference latent folder: Latents/<name>.pt + FileList.csv."),
    out: Path = typer.Option(..., "--out", help="Latent store folder to write."),
    scaling_factor: float = typer.Option(0.18215, "--scaling-factor",
                                         help="The factor the reference latents were multiplied by."),
    dtype: str = typer.Option("float32", "--dtype", help="float16 | float32 (the reference stored float32)."),
) -> None:
    """Convert reference-system latents (`torch.load(weights_only=True)`) into the latent store format."""
    from echo_core.errors import UsageError
    from echo_core.latents.encode import DTYPES
    from echo_core.latents.store import import_reference_latents

    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    manifest = import_reference_latents(src, out, scaling_factor=scaling_factor, dtype=DTYPES[dtype])
    typer.echo(f"{out}: imported {manifest['counts']['videos']} videos, missing {manifest['counts']['failed']}")


def register(app: typer.Typer) -> None:
    """Add `encode` and `import-reference` to the `latents` group."""
    app.command("encode")(encode)
    app.command("import-reference")(import_reference)
