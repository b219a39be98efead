"""`echoforge flow …`: run the Prefect flows from the CLI (same as `python -m pipelines.flows.<name>`)."""

from __future__ import annotations

import json

import typer


def preprocess(
    dataset: list[str] | None = typer.Option(None, "--dataset", help="Dataset name from params.yaml (repeatable)."),
    params: str = typer.Option("params.yaml", "--params", help="params.yaml with datasets / prepare / reference."),
    out_root: str = typer.Option("outputs", "--out-root", help="Where validation/, prepared/, reference/ go."),
    quarantine: bool = typer.Option(False, "--quarantine", help="Set failing rows aside instead of failing."),
) -> None:
    """Validate (GX) → prepare → reference, fanned out per video with retries; resumable."""
    from pipelines.flows.preprocess import preprocess as flow

    typer.echo(json.dumps(flow(dataset, params, out_root, quarantine), indent=2))




def encode(
    vae: str = typer.Option("models:/echo-vae@candidate", "--vae", help="Registered VAE URI or a folder."),
    dataset: list[str] | None = typer.Option(None, "--dataset", help="Dataset name from params.yaml (repeatable)."),
    params: str = typer.Option("params.yaml", "--params"),
    out_root: str = typer.Option("outputs", "--out-root", help="Reads <out-root>/prepared, writes /latents."),
    shards: int | None = typer.Option(None, "--shards", min=1, help="Row shards per dataset, run on the task "
                                      "runner ECHOFORGE_TASK_RUNNER names (default: its worker count, else 1)."),
) -> None:
    """Encode prepared datasets with the registered VAE (resumable), optionally in parallel shards."""
    from pipelines.flows.encode import encode as flow

    typer.echo(json.dumps(flow(vae, dataset, params, out_root, shards), indent=2))


def register(app: typer.Typer) -> None:
    app.command("preprocess")(preprocess)
    app.command("encode")(encode)
