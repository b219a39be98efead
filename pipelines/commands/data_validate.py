"""`echoforge data validate`: judge a dataset folder (FileList.csv + Videos/) with its GX suite.

Exit codes: 0 valid (or, with --quarantine, valid once the bad rows are set aside); 1 invalid (bad rows,
missing column, non-UTF-8 FileList, ...); 2 usage error (unknown kind, no such folder, no FileList.csv).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

KINDS_HELP = "dynamic, pediatric (also pediatric-a4c / pediatric-psax) or cardiacnet"


def register(app: typer.Typer) -> None:
    """Add `validate` to the `data` group."""
    app.command("validate")(validate)


def validate(
    directory: Path = typer.Argument(..., help="Dataset folder holding FileList.csv and Videos/."),
    kind: str = typer.Option(..., "--kind", help=f"Dataset kind: {KINDS_HELP}."),
    prepared: bool = typer.Option(False, "--prepared", help="Check the prepared schema (TRAIN/VAL/TEST, 112x112)."),
    expected_size: int | None = typer.Option(
        None, "--expected-size", help="Required frame height = width in pixels; 0 = not checked. "
        "Default: 112 for prepared data and EchoNet, not checked for raw CardiacNet."),
    quarantine: bool = typer.Option(False, "--quarantine", help="Set rows that fail aside in a quarantine "
                                    "CSV (for `data prepare --exclude`) and exit 0 if the rest is valid."),
    quarantine_out: Path | None = typer.Option(None, "--quarantine-out", help="Quarantine CSV (FileName,row,reasons). "
                                               "Default: quarantine.csv next to the report."),
    report: Path | None = typer.Option(None, "--report", help="JSON report. Default: "
                                       "outputs/validation/<kind>-<DIR name>(-prepared)/report.json."),
    docs: Path | None = typer.Option(None, "--docs", help="GX Data Docs folder (index.html). "
                                     "Default: data_docs/ next to the report."),
    show_rows: int = typer.Option(5, "--show-rows", min=0, help="Offending rows printed per expectation."),
    workers: int = typer.Option(4, "--workers", min=1, help="Threads probing videos."),
) -> None:
    """Validate a dataset with Great Expectations: FileList values, splits, and every video (exists, decodes,
    fps, frames, size). Writes a JSON report and GX Data Docs; prints one line per failing expectation."""
    from pipelines.validation import (
        default_frame_size,
        default_output_dir,
        format_report,
        validate_dataset,
        write_quarantine,
    )

    size = default_frame_size(kind, prepared) if expected_size is None else (expected_size or None)
    report_path = report or default_output_dir(kind, directory, prepared) / "report.json"
    result = validate_dataset(kind, directory, prepared=prepared, expected_size=size,
                              docs_dir=docs or report_path.parent / "data_docs", report_path=report_path,
                              quarantine=quarantine, workers=workers)
    typer.echo(format_report(result, show_rows=show_rows))
    if quarantine:
        path = quarantine_out or report_path.parent / "quarantine.csv"
        write_quarantine(result, path)
        _print_quarantine(result, path)
    elif quarantine_out:  # the pipeline always hands prepare a (here empty) exclude list
        write_quarantine(result, quarantine_out, quarantined=False)
    sys.exit(0 if result.success else 1)  # SystemExit, not typer.Exit: main() runs click non-standalone


def _print_quarantine(result, path: Path) -> None:
    """What was set aside, and why; dataset-level failures cannot be."""
    for name, reasons in result.bad_rows.items():
        typer.echo(f"quarantined FileName={name}: {'; '.join(reasons)}")
    typer.echo(f"quarantined {len(result.bad_row_numbers)} of {result.num_rows} rows -> {path}")
    if result.dataset_failures:
        typer.echo("dataset-level failures cannot be quarantined; fix them first (see FAIL lines above)")
