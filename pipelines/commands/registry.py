"""`echoforge registry promote | rollback | list | build-serving`: the `champion` alias behind a metric gate.

- promote: moves `champion` to a version only if its evaluation metrics pass `promotion:` in params.yaml
  (metrics are read from the version's `metric.<name>` tags, then its run's metrics); the previous
  champion is pushed onto the registered model's `champion_history` tag (a JSON list of versions).
- rollback: pops `champion_history` and points `champion` back at that version.
- list: versions, aliases, metrics and lineage tags.
- build-serving: registers an LVDM folder + a VAE as a new `echo-lvdm` version whose pyfunc serves videos;
  with `--lidm DIR --reid DIR` it carries a heart generator (a request without a frame gets a privacy-checked
  synthetic heart). The DAG's `register` stage runs it once the LIDM and the re-identification net exist,
  inside the LVDM's training run (`--train-run`), so the version keeps that run's lineage and metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def promote(model: str = typer.Option("echo-lvdm", "--model", help="Registered model name."),
            version: str = typer.Option(..., "--version", help="Version to promote."),
            params: Path = typer.Option(Path("params.yaml"), "--params",
                                        help="params.yaml with a `promotion:` section."),
            refusal_ok: bool = typer.Option(False, "--refusal-ok", help="Exit 0 when the gate refuses (the "
                                            "refusal is printed, champion stays): for `dvc repro`, where a "
                                            "candidate that did not earn promotion is a result, not a crash.")
            ) -> None:
    """Point `champion` at VERSION if its verdicts and metrics pass the gate in params.yaml `promotion:`."""
    from echo_core.config import load_section
    from echo_core.evaluation.gate import PromotionConfig
    from pipelines import registry

    try:
        promoted, previous = registry.promote(model, version, load_section(PromotionConfig, "promotion", params))
    except registry.PromotionError as exc:
        if not refusal_ok:
            raise
        typer.echo(f"\n*** NOT PROMOTED: {exc}\n*** {model}@{registry.CHAMPION} stays at "
                   f"{registry.current_champion(model) or '(none)'}. See README 'When the gate refuses'.\n")
        return
    if previous == promoted:
        typer.echo(f"{model} version {promoted} is already {registry.CHAMPION}")
        return
    typer.echo(f"{model}@{registry.CHAMPION} -> version {promoted}" + (f" (was {previous})" if previous else ""))


def rollback(model: str = typer.Option("echo-lvdm", "--model", help="Registered model name.")) -> None:
    """Point `champion` back at the previous champion."""
    from pipelines import registry

    previous, current = registry.rollback(model)
    typer.echo(f"{model}@{registry.CHAMPION} -> version {previous} (was {current})")


def list_versions(model: str = typer.Option("echo-lvdm", "--model", help="Registered model name.")) -> None:
    """Versions with their aliases, metrics and lineage (git commit, data hash, source)."""
    from pipelines import registry

    rows, history = registry.list_versions(model)
    for row in rows:
        metrics = {k: round(v, 6) for k, v in sorted(row["metrics"].items())}
        typer.echo(f"v{row['version']}  aliases={','.join(row['aliases']) or '-'}  run={row['run_id']}  "
                   f"metrics={json.dumps(metrics)}  lineage={json.dumps(row['lineage'])}")
    typer.echo(f"{registry.HISTORY_TAG}: {history}")


def build_serving(lvdm: str = typer.Option(..., "--lvdm", help="LVDM folder or models:/echo-lvdm@<alias>."),
                  vae: str = typer.Option(..., "--vae", help="VAE folder or models:/echo-vae@<alias>."),
                  alias: str = typer.Option("candidate", "--alias", help="Alias for the new version ('' for none)."),
                  params: Path = typer.Option(Path("params.yaml"), "--params",
                                              help="params.yaml; its `serving:` section sets the caps."),
                  lidm: str | None = typer.Option(None, "--lidm", help="LIDM folder or models:/echo-lidm@<dataset>: "
                                                  "frameless requests get its synthetic hearts (needs --reid)."),
                  reid: str | None = typer.Option(None, "--reid", help="Calibrated re-identification folder or "
                                                  "models:/…: the privacy check of those hearts (needs --lidm)."),
                  train_run: Path | None = typer.Option(None, "--train-run", help="The LVDM's training OUT folder: "
                                                        "register inside its MLflow run (OUT/mlflow_run.json)."),
                  record: Path | None = typer.Option(None, "--record", help="Write the new version as JSON here "
                                                     "(a DVC out that the stages using it depend on).")) -> None:
    """Register LVDM + VAE (+ LIDM + re-id net) as a serving version of echo-lvdm (what `mlflow models serve` runs)."""
    from echo_core.errors import UsageError
    from echo_core.utils.atomic import write_json_atomic
    from pipelines.registry import resolve_model_folder
    from pipelines.serving.register import HeartSpec, load_serving_params, register_serving_model

    if (lidm is None) != (reid is None):
        raise UsageError("--lidm and --reid go together: a heart generator needs its privacy check",
                         fix="pass both (e.g. --lidm outputs/lidm/dynamic/unet_ema --reid outputs/privacy/dynamic/reid)"
                             " or neither")
    limits, heart_cfg = load_serving_params(params)
    hearts = HeartSpec(resolve_model_folder(lidm), resolve_model_folder(reid), heart_cfg) if lidm else None
    run_id, tags = _lineage(lvdm, vae, train_run)
    tags.update({"lidm_source": lidm, "reid_source": reid} if lidm else {})
    info = register_serving_model(resolve_model_folder(lvdm), resolve_model_folder(vae), alias=alias or None,
                                  tags=tags, limits=limits, hearts=hearts, run_id=run_id)
    if record:
        write_json_atomic(record, {"name": info.name, "version": info.version, "uri": info.uri, "alias": alias,
                                   "heart_generator": bool(hearts), "run_id": info.run_id})
    typer.echo(f"registered {info.name} version {info.version} (serving pyfunc"
               + (", synthetic hearts" if hearts else "") + ")" + (f" as models:/{info.name}@{alias}" if alias else ""))


def _lineage(lvdm: str, vae: str, train_run: Path | None) -> tuple[str | None, dict[str, str]]:
    """(the training run to register in, or None; the version's lineage tags)."""
    from echo_core.errors import UsageError
    from pipelines.commands.train import RUN_FILE
    from pipelines.registry import version_of_uri
    from pipelines.serving.register import training_run_tags
    from pipelines.tracking import git_commit

    tags = {"git_commit": git_commit(), "source_version": lvdm, "vae_source": vae}
    if train_run is not None:
        if not (train_run / RUN_FILE).is_file():
            raise UsageError(f"--train-run {train_run} has no {RUN_FILE}",
                             fix="pass the --out folder of a tracked `echoforge train lvdm` run")
        run_id = json.loads((train_run / RUN_FILE).read_text(encoding="utf-8"))["run_id"]
        return run_id, {**tags, **training_run_tags(run_id)}
    if lvdm.startswith("models:/"):
        source = version_of_uri(lvdm)
        tags.update({k: v for k, v in (source.tags or {}).items() if k in ("data_dvc_hash", "config_hash")})
    return None, tags


def register(app: typer.Typer) -> None:
    """Add promote, rollback, list and build-serving to the `registry` group."""
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("list")(list_versions)
    app.command("build-serving")(build_serving)
