"""`echoforge registry promote | rollback | list | build-serving`: the `champion` alias behind a metric gate.

- promote: moves `champion` to a version only if its evaluation metrics pass `promotion:` in params.yaml
  (metrics are read from the version's `metric.<name>` tags, then its run's metrics); the previous
  champion is pushed onto the registered model's `champion_history` tag (a JSON list of versions).
- rollback: pops `champion_history` and points `champion` back at that version.
- list: versions, aliases, metrics and lineage tags.
- build-serving: registers an LVDM folder + a VAE as a new `echo-lvdm` version whose pyfunc serves videos.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.errors import EchoForgeError

CHAMPION = "champion"
HISTORY_TAG = "champion_history"


class PromotionError(EchoForgeError):
    """A version failed the promotion gate (exit code 1)."""


class Threshold(StrictModel):
    min: float | None = None
    max: float | None = None


class PromotionConfig(StrictModel):
    """`promotion:` in params.yaml."""

    metric_thresholds: dict[str, Threshold] = Field(default_factory=dict)
    require_metrics: list[str] = Field(default_factory=list)


def gate_failures(metrics: dict[str, float], gate: PromotionConfig) -> list[str]:
    """Every reason `metrics` fail the gate (empty = pass); a missing metric fails when required or bounded."""
    failures = [f"{name}: missing" for name in gate.require_metrics if name not in metrics]
    for name, bound in gate.metric_thresholds.items():
        if name not in metrics:
            if name not in gate.require_metrics:
                failures.append(f"{name}: missing")
            continue
        value = metrics[name]
        if bound.max is not None and not value <= bound.max:
            failures.append(f"{name}: {value:.6g} > max {bound.max:g}")
        if bound.min is not None and not value >= bound.min:
            failures.append(f"{name}: {value:.6g} < min {bound.min:g}")
    return failures


def version_metrics(client, mv) -> dict[str, float]:
    """`metric.<name>` version tags, completed by the latest metrics of the version's run."""
    metrics = {}
    if mv.run_id:
        with contextlib.suppress(Exception):  # a deleted run: the tags alone must then carry the metrics
            metrics.update(client.get_run(mv.run_id).data.metrics)
    for key, value in (mv.tags or {}).items():
        if key.startswith("metric."):
            try:
                metrics[key.removeprefix("metric.")] = float(value)
            except ValueError:
                continue
    return metrics


def _client():
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import tracking_uri

    return MlflowClient(tracking_uri())


def _history(client, model: str) -> list[str]:
    tags = client.get_registered_model(model).tags or {}
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _current_champion(client, model: str) -> str | None:
    aliases = client.get_registered_model(model).aliases or {}
    return str(aliases[CHAMPION]) if CHAMPION in aliases else None


def promote(model: str = typer.Option("echo-lvdm", "--model", help="Registered model name."),
            version: str = typer.Option(..., "--version", help="Version to promote."),
            params: Path = typer.Option(Path("params.yaml"), "--params",
                                        help="params.yaml with a `promotion:` section.")) -> None:
    """Point `champion` at VERSION if its metrics pass the gate in params.yaml `promotion:`."""
    from echo_core.config import load_section
    from pipelines.tracking import get_model_version

    gate = load_section(PromotionConfig, "promotion", params)
    mv = get_model_version(model, version)
    client = _client()
    failures = gate_failures(version_metrics(client, mv), gate)
    if failures:
        raise PromotionError(f"{model} version {mv.version} fails the promotion gate: " + "; ".join(failures),
                             fix="evaluate this version (`echoforge evaluate ...`) or promote a better one")
    previous = _current_champion(client, model)
    if previous == str(mv.version):
        typer.echo(f"{model} version {mv.version} is already {CHAMPION}")
        return
    if previous is not None:
        history = _history(client, model) + [previous]
        client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_alias(model, CHAMPION, mv.version)
    typer.echo(f"{model}@{CHAMPION} -> version {mv.version}" + (f" (was {previous})" if previous else ""))


def rollback(model: str = typer.Option("echo-lvdm", "--model", help="Registered model name.")) -> None:
    """Point `champion` back at the previous champion."""
    client = _client()
    history = _history(client, model)
    if not history:
        raise PromotionError(f"{model} has no previous {CHAMPION} to return to",
                             fix=f"promote a version with `echoforge registry promote --model {model} --version V`")
    previous, current = history[-1], _current_champion(client, model)
    client.set_registered_model_alias(model, CHAMPION, previous)
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(history[:-1]))
    typer.echo(f"{model}@{CHAMPION} -> version {previous} (was {current})")


def list_versions(model: str = typer.Option("echo-lvdm", "--model", help="Registered model name.")) -> None:
    """Versions with their aliases, metrics and lineage (git commit, data hash, source)."""
    client = _client()
    rm = client.get_registered_model(model)
    by_version: dict[str, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    versions = sorted(client.search_model_versions(f"name='{model}'"), key=lambda m: int(m.version))
    for mv in versions:
        metrics = version_metrics(client, mv)
        tags = mv.tags or {}
        lineage = {k: tags[k] for k in ("git_commit", "data_dvc_hash", "source_version", "config_hash") if k in tags}
        typer.echo(f"v{mv.version}  aliases={','.join(sorted(by_version.get(str(mv.version), []))) or '-'}  "
                   f"run={mv.run_id}  metrics={json.dumps({k: round(v, 6) for k, v in sorted(metrics.items())})}  "
                   f"lineage={json.dumps(lineage)}")
    typer.echo(f"{HISTORY_TAG}: {(rm.tags or {}).get(HISTORY_TAG, '[]')}")


def build_serving(lvdm: str = typer.Option(..., "--lvdm", help="LVDM folder or models:/echo-lvdm@<alias>."),
                  vae: str = typer.Option(..., "--vae", help="VAE folder or models:/echo-vae@<alias>."),
                  alias: str = typer.Option("candidate", "--alias", help="Alias for the new version ('' for none)."),
                  params: Path = typer.Option(Path("params.yaml"), "--params",
                                              help="params.yaml; its `serving:` section sets the caps.")) -> None:
    """Register LVDM + VAE as a serving version of echo-lvdm (the pyfunc that `mlflow models serve` runs)."""
    from echo_core.config import load_params, load_section
    from echo_core.generation.requests import ServingLimits
    from pipelines.serving.register import register_serving_model
    from pipelines.tracking import git_commit, resolve_model_folder

    limits = load_section(ServingLimits, "serving", params) if params.is_file() and "serving" in load_params(params) \
        else ServingLimits()
    tags = {"git_commit": git_commit(), "source_version": lvdm, "vae_source": vae}
    if lvdm.startswith("models:/"):
        from pipelines.tracking import version_of_uri

        source = version_of_uri(lvdm)
        tags.update({k: v for k, v in (source.tags or {}).items() if k in ("data_dvc_hash", "config_hash")})
    info = register_serving_model(resolve_model_folder(lvdm), resolve_model_folder(vae), alias=alias or None,
                                  tags=tags, limits=limits)
    typer.echo(f"registered {info.name} version {info.version} (serving pyfunc)"
               + (f" as models:/{info.name}@{alias}" if alias else ""))


def register(app: typer.Typer) -> None:
    """Add promote, rollback, list and build-serving to the `registry` group."""
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("list")(list_versions)
    app.command("build-serving")(build_serving)
