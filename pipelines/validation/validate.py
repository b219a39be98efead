"""`validate_dataset`: read the FileList, measure its facts, let the GX suite judge them, write the report.

Outputs (all atomic). Default folder: `<project>/outputs/validation/<kind>-<DIR name>[-prepared]/`, where
<project> is the folder holding params.yaml + dvc.yaml (else the CWD); outside `data/`, which data.dvc tracks.
- `report.json`  verdict, every expectation's result, offending rows (row, FileName, values), bad rows.
- `data_docs/index.html`  GX Data Docs: the suite and this run's validation result(s).
- `quarantine.csv` (written by `write_quarantine`)  FileName,row,reasons: the rows `data prepare --exclude`
  skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from echo_core.data.facts import build_table, first_line, missing_columns, probe_videos
from echo_core.data.filelist import DatasetKind, dataset_kind, read_filelist
from echo_core.errors import DataError, UsageError
from echo_core.utils.atomic import write_json_atomic
from pipelines.validation.gx import collect_failures, gx_session, summarize
from pipelines.validation.report import Failure, ValidationReport, bad_rows_of
from pipelines.validation.rules import build_rules, schema_for

FILELIST = "FileList.csv"


def default_output_dir(kind: str, root: str | os.PathLike, prepared: bool = False) -> Path:
    """`<project>/outputs/validation/<kind>-<DIR name>[-prepared]` (kept out of the DVC-tracked data/)."""
    from pipelines.settings import project_root

    name = f"{kind}-{Path(root).resolve().name}" + ("-prepared" if prepared else "")
    return project_root() / "outputs" / "validation" / name


def validate_dataset(kind: str | DatasetKind, root: str | os.PathLike, *, prepared: bool = False,
                     expected_size: int | None = 112, docs_dir: str | os.PathLike | None = None,
                     report_path: str | os.PathLike | None = None, quarantine: bool = False,
                     workers: int = 4) -> ValidationReport:
    """Validate `root/FileList.csv` and its videos against the suite of `kind`; write report.json + Data Docs.

    `expected_size`: required frame height = width (None: not checked). With `quarantine`, rows failing
    row-level expectations are set aside (`report.bad_rows`) and the verdict is GX's on the remaining rows.
    Raises UsageError when `root` is not a dataset folder; everything else ends up in the report.
    """
    kind_name = kind.value if isinstance(kind, DatasetKind) else str(kind)
    root, schema_kind = Path(root), dataset_kind(kind)
    filelist = _check_dataset_dir(root)
    out = default_output_dir(kind_name, root, prepared)
    docs_dir = Path(docs_dir) if docs_dir else out / "data_docs"
    report_path = Path(report_path) if report_path else out / "report.json"
    report = ValidationReport(kind_name, root, filelist, False, [], {}, prepared=prepared,
                              expected_size=expected_size, quarantined=quarantine)
    raw = read_rows(report, schema_kind)
    if raw is None:
        rules = build_rules(schema_kind, [], prepared=prepared, expected_size=expected_size)
        with gx_session(kind_name, rules, docs_dir):
            pass  # nothing to validate; the docs still show the suite
    else:
        _judge(report, raw, schema_kind, docs_dir, workers)
    return _finish(report, docs_dir, report_path)


def read_rows(report: ValidationReport, kind: DatasetKind) -> pd.DataFrame | None:
    """The FileList's rows, or None after recording the dataset-level failure that stops validation.

    Structure comes first: encoding and CSV syntax, then the header against the schema's required
    columns, so a missing column is known from the data before any video is probed or GX is run.
    """
    missing: list[str] = []
    try:
        raw = read_filelist(report.filelist)  # no kind: encoding and CSV syntax only
        missing = missing_columns(raw.columns, schema_for(kind, report.prepared))
        if missing:  # read_filelist's schema check words the failure (with its near-miss rename hint)
            read_filelist(report.filelist, kind, prepared=report.prepared)
    except DataError as exc:
        named = ", ".join(missing) or None
        report.failures = [Failure("read_filelist", named, message=first_line(exc), hint=exc.fix or "",
                                   field=named or "FileList")]
        return None
    return raw.reset_index(drop=True)


def _judge(report: ValidationReport, raw: pd.DataFrame, kind: DatasetKind, docs_dir: Path,
           workers: int) -> None:
    """Probe videos, run the suite on all rows (and, quarantining, on the rows left), fill `report`."""
    schema = schema_for(kind, report.prepared)
    names = raw["FileName"] if "FileName" in raw.columns else pd.Series([None] * len(raw), dtype=object)
    facts = probe_videos(report.root, names, workers)
    table = build_table(raw, facts, schema)
    rules = build_rules(kind, list(raw.columns), prepared=report.prepared, expected_size=report.expected_size)
    report.num_rows = len(raw)
    with gx_session(report.kind, rules, docs_dir) as validate:
        result = validate("all_rows", table)
        report.failures = collect_failures(result, raw, facts, report.filelist)
        report.expectations = summarize(result)
        report.bad_rows = bad_rows_of(report.failures)
        report.success = result.success
        if report.quarantined and not report.success and not report.dataset_failures:
            # GX stays the judge of what is left: the verdict is a second validation, not an assumption
            kept = table[~table["FileName"].isin(list(report.bad_rows))]
            report.success = validate("after_quarantine", kept).success


def _finish(report: ValidationReport, docs_dir: Path, report_path: Path) -> ValidationReport:
    report.docs_path = docs_dir / "index.html"
    report.report_path = report_path
    write_json_atomic(report_path, report.to_dict())
    return report


def _check_dataset_dir(root: Path) -> Path:
    if not root.is_dir():
        raise UsageError(f"dataset folder not found: {root}", fix="pass the folder that holds FileList.csv")
    filelist = root / FILELIST
    if not filelist.is_file():
        fix = f"pass the folder that holds {FILELIST} and Videos/"
        if any(root.glob("CardiacNet-*")):  # the Kaggle NIfTI layout has no FileList until preparation
            fix = "raw CardiacNet (NIfTI folders) has no FileList: run `echoforge data prepare --kind cardiacnet`, " \
                  "then validate the prepared folder with --prepared"
        raise UsageError(f"{root} is not a dataset folder: it has no {FILELIST}", fix=fix)
    return filelist
