"""`echoforge flow preprocess | encode | train | sample | evaluate | end-to-end`: the one way to run a Prefect
flow from a shell, dvc.yaml or a script (the flow modules have no command line of their own)."""

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


# extra arguments after the known options go to `echoforge train lvdm` (e.g. --resume latest --max-steps 100)
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def train(
    ctx: typer.Context,
    data: list[str] = typer.Option(..., "--data", help="Latent store folder (repeatable)."),
    out: str = typer.Option(..., "--out", help="Training output folder."),
    params: str = typer.Option("params.yaml", "--params", help="params.yaml with a train_lvdm section."),
    profile: str = typer.Option("cpu-2proc", "--profile", help="Accelerate profile (infra/accelerate/<profile>.yaml)."),
) -> None:
    """Train the LVDM under `accelerate launch`; unknown options go to `echoforge train lvdm`. Prints the run id."""
    from pipelines.flows.train import train as flow

    typer.echo(flow(data, out, params_path=params, profile=profile, extra_args=list(ctx.args)))


def sample(
    model: str = typer.Option("models:/echo-lvdm@champion", "--model", help="Registered model URI or a folder."),
    out: str = typer.Option(..., "--out", help="Samples folder."),
    params: str = typer.Option("params.yaml", "--params", help="params.yaml with a `sample:` section."),
    conditioning: str | None = typer.Option(None, "--conditioning", help="Folder of conditioning latents."),
    vae: str | None = typer.Option(None, "--vae", help="VAE for a bare LVDM folder."),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log the samples to MLflow."),
    shards: int | None = typer.Option(None, "--shards", min=1, help="Sample shards (default: "
                                      "ECHOFORGE_TASK_WORKERS when the environment names a runner, else 1)."),
) -> None:
    """Generate synthetic videos from a registered model, resumable, in shards on the flow's task runner."""
    from pipelines.flows.sample import sample as flow

    flow(model, out, params, None, conditioning, vae, not no_track, shards)  # the flow prints its result


def synthesize(
    dataset: str = typer.Option("dynamic", "--dataset", help="Dataset name: its params.yaml section synth.<dataset>."),
    num_videos: int = typer.Option(8, "--num-videos", min=1, help="Videos in the synthetic dataset."),
    out_root: str = typer.Option("outputs", "--out-root", help="Reads latents/, privacy/; writes synthetic/<dataset>."),
    lvdm: str = typer.Option("models:/echo-lvdm@champion", "--lvdm", help="The LVDM bundle or models:/ URI."),
    lidm: str | None = typer.Option(None, "--lidm", help="Default: models:/echo-lidm@<dataset>."),
    reid: str | None = typer.Option(None, "--reid", help="Default: <out-root>/privacy/<dataset>/reid."),
    vae: str | None = typer.Option(None, "--vae", help="VAE for a bare LVDM folder."),
    splits: str | None = typer.Option(None, "--splits", help="TRAIN=…,VAL=…,TEST=… counts or ratios."),
    seed: int = typer.Option(0, "--seed"),
    params: str = typer.Option("params.yaml", "--params"),
) -> None:
    """A fully synthetic, privacy-checked dataset (LIDM → privacy filter → LVDM), then its GX validation."""
    from pipelines.flows.synthesize import synthesize as flow

    typer.echo(json.dumps(flow(dataset, num_videos, out_root, lvdm, lidm, reid, vae, splits, seed, params), indent=2))


def end_to_end(
    ctx: typer.Context,
    vae: str = typer.Option("models:/echo-vae@candidate", "--vae", help="Registered VAE URI or a folder."),
    dataset: list[str] | None = typer.Option(None, "--dataset", help="Dataset to prepare and encode (repeatable)."),
    train_dataset: list[str] | None = typer.Option(None, "--train-dataset",
                                                   help="Dataset whose latents to train on (repeatable)."),
    params: str = typer.Option("params.yaml", "--params"),
    out_root: str = typer.Option("outputs", "--out-root"),
    metrics_dir: str = typer.Option("metrics", "--metrics-dir"),
    profile: str = typer.Option("cpu-2proc", "--profile", help="Accelerate profile (infra/accelerate/)."),
) -> None:
    """Preprocess → encode → train → evaluate → promote; unknown options go to `echoforge train lvdm`."""
    from pipelines.flows.end_to_end import end_to_end as flow

    result = flow(vae, dataset, train_dataset, params, out_root, metrics_dir, profile, list(ctx.args))
    typer.echo(json.dumps(result, indent=2))


def register(app: typer.Typer) -> None:
    """Add every flow; `evaluate` is `echoforge evaluate run` (the same flow, the same options)."""
    from pipelines.commands.evaluate import run as evaluate

    app.command("preprocess")(preprocess)
    app.command("encode")(encode)
    app.command("train", context_settings=_PASS_THROUGH)(train)
    app.command("sample")(sample)
    app.command("evaluate")(evaluate)
    app.command("synthesize")(synthesize)
    app.command("end-to-end", context_settings=_PASS_THROUGH)(end_to_end)
