"""`echoforge synth evaluate`: the seed systems' downstream tables for a synthetic dataset (issue #13 §4).

    echoforge synth evaluate --dataset dynamic --synthetic outputs/synthetic/dynamic \\
        --real outputs/prepared/dynamic --out metrics/synthetic/dynamic

EF datasets (`synth.<dataset>.kind` dynamic or pediatric) get EchoNet-Synthetic's table: the EF regressor
trained on real TRAIN and on the synthetic set alone, tested on real TEST, beside the TRAIN-mean control.
CardiacNet gets EchoDream's table: the classifier trained on real / synthetic / mixed, tested on real TEST,
beside the class-prior control. Writes `downstream_table.{json,csv,png}` and `downstream_predictions.csv`
into `--out` and logs them to MLflow (experiment `echo-synthetic`, run `downstream-<dataset>`). Model
configs are `downstream.regression|classification` overridden by `synth_evaluate.regression|classification`
(see echo_core/downstream/tables.py for the protocol).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

EXPERIMENT = "echo-synthetic"
TABLE_OF_KIND = {"dynamic": "ef_regression", "pediatric": "ef_regression", "cardiacnet": "classification"}
TITLES = {"ef_regression": "EF regression on real TEST (EchoNet-Synthetic)",
          "classification": "Classification on real TEST (EchoDream)"}
LABEL_COLUMN = {"ef_regression": "EF", "classification": "class_id"}


def evaluate(
    dataset: str = typer.Option(..., "--dataset", help="Dataset name: its params.yaml section synth.<dataset>."),
    synthetic: Path = typer.Option(..., "--synthetic", help="The synthetic dataset (`echoforge synth build`)."),
    real: Path = typer.Option(..., "--real", help="The prepared real dataset (TRAIN/VAL/TEST in FileList.csv)."),
    out: Path = typer.Option(..., "--out", help="Folder for downstream_table.{json,csv,png}."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml: synth, downstream, "
                                "synth_evaluate."),
    seed: int | None = typer.Option(None, "--seed", help="Model seed (default: the config's)."),
    track: bool = typer.Option(True, "--track/--no-track", help="Log the table to MLflow (echo-synthetic)."),
) -> None:
    """Train on synthetic (and real, and both), test on real TEST: the seed systems' downstream tables."""
    from echo_core.downstream.data import REAL, SYNTHETIC, scan_video_folder

    table_kind, model_cfg, boot = _configs(dataset, params, seed)
    manifest = _check_folders(synthetic, real, table_kind)
    real_records = scan_video_folder(real, source=REAL)
    synthetic_records = scan_video_folder(synthetic, source=SYNTHETIC)
    extra = {"dataset": dataset, "synthetic": str(synthetic), "real": str(real), "synthetic_manifest": manifest}
    if not track:
        _run_table(table_kind, model_cfg, real_records, synthetic_records, boot, out, extra, None)
        return
    from pipelines.tracking import start_run

    with start_run(EXPERIMENT, run_name=f"downstream-{dataset}", tags=_tags(dataset, synthetic, manifest)) as tracker:
        tracker.log_params({"synth_evaluate": {"table": table_kind, "model": model_cfg.model_dump(),
                                               "bootstrap": boot.model_dump()}})
        _run_table(table_kind, model_cfg, real_records, synthetic_records, boot, out, extra, tracker)


def _configs(dataset: str, params: Path, seed: int | None):
    """(table kind, RegressionConfig | ClassificationConfig, BootstrapSettings) from params.yaml."""
    from echo_core.config import load_params, load_section, validate_config
    from echo_core.downstream.classification import ClassificationConfig
    from echo_core.downstream.regression import RegressionConfig
    from echo_core.downstream.tables import BootstrapSettings
    from echo_core.generation.synth_dataset import SynthConfig

    table_kind = TABLE_OF_KIND[load_section(SynthConfig, f"synth.{dataset}", params).kind]
    section = "regression" if table_kind == "ef_regression" else "classification"
    doc = load_params(params)
    ours = doc.get("synth_evaluate") or {}
    merged = {**(doc.get("downstream") or {}).get(section, {}), **(ours.get(section) or {})}
    if seed is not None:
        merged["seed"] = seed
    model = RegressionConfig if section == "regression" else ClassificationConfig
    model_cfg = validate_config(model, merged, where=f"{params}:downstream.{section} + synth_evaluate.{section}")
    boot = validate_config(BootstrapSettings, ours.get("bootstrap") or {}, where=f"{params}:synth_evaluate.bootstrap")
    return table_kind, model_cfg, boot


def _check_folders(synthetic: Path, real: Path, table_kind: str) -> dict[str, Any]:
    """Refuse folders the table cannot use, naming the file and the fix; returns the synthetic manifest."""
    import json

    import pandas as pd

    from echo_core.errors import DataError

    column = LABEL_COLUMN[table_kind]
    tables = {}
    for root, what, build in ((synthetic, "synthetic dataset", "echoforge synth build --out"),
                              (real, "real dataset", "echoforge data prepare --out")):
        csv = root / "FileList.csv"
        if not csv.is_file():
            raise DataError(f"the {what} {root} has no FileList.csv", fix=f"point at a folder written by `{build}`")
        tables[what] = df = pd.read_csv(csv, dtype=str)
        if column not in df.columns or df[column].isna().all():
            raise DataError(f"{csv} has no {column} values; the {table_kind} table needs them",
                            fix="use an EF dataset (dynamic, pediatric) for the EF table and a class dataset "
                                "(cardiacnet) for the classification table")
    splits = tables["real dataset"].get("Split", pd.Series(dtype=str)).str.strip().str.upper()
    if not (splits == "TEST").any():
        raise DataError(f"{real / 'FileList.csv'} has no TEST rows: the tables test on real TEST",
                        fix="prepare the real dataset with a TEST split (`echoforge data prepare`)")
    manifest = synthetic / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def _tags(dataset: str, synthetic: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """The dataset and the synthetic set's lineage (its models, commit, seed, real store)."""
    tags = {"dataset": dataset, "synthetic": str(synthetic)}
    for key, value in (manifest.get("models") or {}).items():
        tags[f"synthetic.models.{key}"] = str(value)
    for key in ("git_commit", "seed", "real_store", "kind"):
        if key in manifest:
            tags[f"synthetic.{key}"] = str(manifest[key])
    return tags


def _run_table(table_kind: str, model_cfg, real_records, synthetic_records, boot, out: Path,
               extra: dict[str, Any], tracker) -> None:
    from echo_core.downstream.tables import classification_table, ef_regression_table, write_table

    if table_kind == "ef_regression":
        table = ef_regression_table(model_cfg, real_records, synthetic_records, boot, progress=typer.echo,
                                    tracker=tracker)
    else:
        from pipelines.tracking import PrefixedTracker

        tracker_for = (lambda row: PrefixedTracker(tracker, f"rows/{row}")) if tracker is not None else None
        table = classification_table(model_cfg, real_records, synthetic_records, boot, progress=typer.echo,
                                     tracker_for=tracker_for, out_dir=out)
    paths = write_table(table, out, extra, TITLES[table_kind])
    _echo_table(table)
    if tracker is not None:
        tracker.log_metrics(_table_metrics(table))
        for path in paths:
            tracker.log_artifact(path, "downstream")


def _echo_table(table) -> None:
    for name, row in table.rows.items():
        cells = [f"{m} {_fmt(row['metrics'][m])}" for m in table.metrics]
        verdict = "control" if row["control"] else "beats control on " + (
            ", ".join(m for m, ok in row["beats_control"].items() if ok) or "nothing")
        typer.echo(f"{name:>12} (n test {row['n']['test']}): {'  '.join(cells)}  [{verdict}]")
    for warning in table.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


def _fmt(est: dict[str, Any]) -> str:
    def num(x):
        return "n/a" if x is None else f"{x:.3f}"

    return f"{num(est['value'])} [{num(est['ci_low'])}, {num(est['ci_high'])}]"


def _table_metrics(table) -> dict[str, float]:
    """<row>/<metric>{,_ci_low,_ci_high}, <row>/<metric>_improvement and <row>/<metric>_beats_control (0/1)."""
    metrics: dict[str, float] = {}
    for name, row in table.rows.items():
        for metric in table.metrics:
            est, gain = row["metrics"][metric], (row.get("improvement") or {}).get(metric)
            values = {metric: est["value"], f"{metric}_ci_low": est["ci_low"], f"{metric}_ci_high": est["ci_high"]}
            if gain is not None:
                values[f"{metric}_improvement"] = gain["value"]
                values[f"{metric}_beats_control"] = float(row["beats_control"][metric])
            metrics.update({f"{name}/{k}": v for k, v in values.items() if v is not None})
    return metrics


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
