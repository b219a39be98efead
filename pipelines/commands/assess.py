"""`echoforge evaluate samples | controls | judge`: judge any folder of videos, evaluate the evaluator, fit the
EF judge.

- samples: every configured metric of a samples folder (the layout `echoforge sample` writes) with its CI,
  against the dataset's reference set and judges; exit 0 pass, 1 fail, 3 inconclusive.
- controls: the positive and negative controls of a dataset's held-out real videos, each judged like
  samples; writes metrics/controls/<ds>.json and a plot, logs them to MLflow (experiment `echo-controls`,
  tag `controls_ok`); exit 1 when a control comes out otherwise.
- judge: fits the dataset's EF judge on real TRAIN videos and scores it on held-out real videos; logs it to
  MLflow (experiment `echo-judges`) and registers it as a version of `echo-ef-<ds>-judge` with its competence.

`--no-track` keeps controls and judge local. A tracking server that is down fails the command (exit 1) after
the local files are written, saying so: the registry record is part of the stage's job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

SamplesOpt = Annotated[Path, typer.Option("--samples", help="Folder with FileList.csv and jpg/<FileName>/")]
DatasetOpt = Annotated[str, typer.Option("--dataset", help="Dataset name (reference set and judges)")]
OutRootOpt = Annotated[Path, typer.Option("--out-root", help="Holds prepared/, reference/, judges/, controls/")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write the result JSON here")]
ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml with an evaluate.assess section")]
MetricsDirOpt = Annotated[Path, typer.Option("--metrics-dir", help="Where controls/<ds>.json and judges/ go")]
TrackOpt = Annotated[bool, typer.Option("--track/--no-track", help="Log to MLflow (and register the EF judge)")]


def _settings(params: Path):
    """(`evaluate.assess`, evaluation sample frames, reference fps) from params.yaml."""
    from echo_core.config import load_params
    from echo_core.evaluation.config import load_configs

    cfg, _, sample_section = load_configs(params)
    frames = int({**sample_section, **cfg.sample}.get("num_frames", 16))
    fps = float((load_params(params).get("reference") or {}).get("fps", 32.0))
    return cfg.assess, frames, fps


def _print(result: dict) -> None:
    for name, est in result["metrics"].items():
        typer.echo(f"  {name:>24} = {est['value']:.4g}  [{est['ci_low']:.4g}, {est['ci_high']:.4g}]  N={est['n']}"
                   if est["value"] is not None else f"  {name:>24} = n/a")
    for judge in result.get("judges", {}).values():
        if "accuracy" in judge:
            _print_class_judge(judge)
            continue
        typer.echo(f"  judge {judge['name']}: held-out real R² {judge.get('r2', float('nan')):.3f} "
                   f"[{judge.get('r2_ci_low', float('nan')):.3f}, {judge.get('r2_ci_high', float('nan')):.3f}], "
                   f"MAE {judge.get('mae', float('nan')):.2f}, N={judge.get('n')}, "
                   f"{'competent' if judge.get('competent') else 'BELOW its bar'}")
    for reason in result["failures"] + result["inconclusive"]:
        typer.echo(f"  - {reason}")


def _print_class_judge(judge: dict) -> None:
    nan = float("nan")
    typer.echo(f"  judge class: held-out real accuracy {judge['accuracy']:.3f} "
               f"[{judge.get('accuracy_ci_low', nan):.3f}, {judge.get('accuracy_ci_high', nan):.3f}], "
               f"macro AUC {judge.get('auc', nan):.3f}, N={judge.get('n')}, "
               f"{'competent' if judge.get('competent') else 'BELOW its bar'}")


def samples(samples: SamplesOpt, dataset: DatasetOpt, params: ParamsOpt = Path("params.yaml"),
            out: OutOpt = None, out_root: OutRootOpt = Path("outputs"),
            exit_zero: bool = typer.Option(False, "--exit-zero", help="Exit 0 whatever the verdict (it is in "
                                           "--out): for a DAG stage that records the verdict")) -> None:
    """Judge a folder of generated videos: metrics with CIs and a verdict (exit 0 pass, 1 fail, 3 inconclusive)."""
    from echo_core.evaluation.assess import assess_samples
    from echo_core.utils.atomic import write_json_atomic

    cfg, _, _ = _settings(params)
    result = assess_samples(samples, out_root, dataset, cfg)
    payload = result.to_dict()
    if out is not None:
        write_json_atomic(out, payload)
    typer.echo(f"{samples}: {payload['verdict'].upper()} ({payload['n_videos']} videos, dataset {dataset})")
    _print(payload)
    raise typer.Exit(0 if exit_zero else result.exit_code)


def controls(dataset: DatasetOpt, params: ParamsOpt = Path("params.yaml"), out_root: OutRootOpt = Path("outputs"),
             metrics_dir: MetricsDirOpt = Path("metrics"), track: TrackOpt = True) -> None:
    """Judge the positive and negative controls of a dataset's held-out real videos (exit 1 if one misbehaves)."""
    from echo_core.evaluation.assess import dataset_bounds
    from echo_core.evaluation.class_judge_file import dataset_class_judge
    from echo_core.evaluation.control_run import plot_controls, run_controls
    from echo_core.evaluation.judge_file import dataset_judge
    from echo_core.utils.atomic import write_json_atomic

    cfg, frames, fps = _settings(params)
    table = run_controls(out_root / "prepared" / dataset, out_root / "reference" / dataset,
                         out_root / "controls" / dataset, dataset, dataset_bounds(cfg.bounds, dataset), cfg,
                         frames=frames, fps=fps, judge=dataset_judge(out_root, dataset),
                         class_judge=dataset_class_judge(out_root, dataset),
                         progress=lambda name: typer.echo(f"control {name} ..."))
    table_file, plot_file = metrics_dir / "controls" / f"{dataset}.json", metrics_dir / "controls" / f"{dataset}.png"
    write_json_atomic(table_file, table)
    plot_controls(table, plot_file)
    for row in table["controls"]:
        mark = "ok " if row["as_expected"] else "BAD"
        typer.echo(f"{mark} {row['control']:>14}: {row['verdict']:<12} (expected {row['expected']}; failing: "
                   f"{', '.join(row['failing_metrics']) or '-'})")
    typer.echo(json.dumps({"evaluator_ok": table["evaluator_ok"], "not_as_expected": table["not_as_expected"]}))
    if track:
        from pipelines.judge_registry import log_controls, reporting_unreachable

        with reporting_unreachable(f"the controls table of {dataset}", [table_file, plot_file]):
            typer.echo(f"MLflow run {log_controls(dataset, table, table_file, plot_file)} (experiment echo-controls)")
    raise typer.Exit(0 if table["evaluator_ok"] else 1)


def judge(dataset: DatasetOpt, out_root: OutRootOpt = Path("outputs"), metrics_dir: MetricsDirOpt = Path("metrics"),
          params: ParamsOpt = Path("params.yaml"), track: TrackOpt = True) -> None:
    """Fit the dataset's judge (EF, or class for a class_id dataset) on real TRAIN videos; score it on held-out
    real videos (VAL + TEST); register the EF judge."""
    from echo_core.evaluation.class_judge_file import judge_kind
    from echo_core.evaluation.judge_file import JUDGE_FILE, fit_ef_judge
    from echo_core.utils.atomic import write_json_atomic

    cfg, _, _ = _settings(params)
    prepared = out_root / "prepared" / dataset
    if judge_kind(prepared) == "class":
        return _class_judge(dataset, prepared, out_root, metrics_dir, cfg)
    record = fit_ef_judge(prepared, bar=cfg.ef_judge_min_r2, seed=cfg.seed, resamples=cfg.resamples)
    judge_file, competence_file = out_root / "judges" / dataset / JUDGE_FILE, metrics_dir / "judges" / f"{dataset}.json"
    write_json_atomic(judge_file, record)
    write_json_atomic(competence_file, record["competence"])
    typer.echo(json.dumps(record["competence"], indent=2))
    if track:
        from pipelines.judge_registry import judge_model_name, register_judge, reporting_unreachable

        with reporting_unreachable(f"the EF judge of {dataset}", [judge_file, competence_file]):
            version, new = register_judge(dataset, judge_file, competence_file, prepared)
        typer.echo(f"{'registered' if new else 'already registered as'} {judge_model_name(dataset)} version {version}")


def _class_judge(dataset: str, prepared: Path, out_root: Path, metrics_dir: Path, cfg) -> None:
    """The class judge of a class_id dataset (CardiacNet): its file and competence; not registered in MLflow."""
    from echo_core.evaluation.class_judge_file import CLASS_JUDGE_FILE, fit_class_judge
    from echo_core.utils.atomic import write_json_atomic

    record = fit_class_judge(prepared, bar=cfg.class_judge_min_accuracy, seed=cfg.seed, resamples=cfg.resamples)
    write_json_atomic(out_root / "judges" / dataset / CLASS_JUDGE_FILE, record)
    write_json_atomic(metrics_dir / "judges" / f"{dataset}.json", record["competence"])
    typer.echo(json.dumps(record["competence"], indent=2))


def register(app: typer.Typer) -> None:
    app.command("samples")(samples)
    app.command("controls")(controls)
    app.command("judge")(judge)
