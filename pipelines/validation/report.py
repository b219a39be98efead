"""What a validation found, GX-free: `Failure`s, the `ValidationReport`, its text and its quarantine list.

Row numbers are FileList.csv line numbers (the header is line 1, the first video is row 2), so `row 7`
is line 7 in an editor or a spreadsheet.

Rows vs dataset: a failure that points at rows (bad EF, undecodable video, ...) can be quarantined; one
that does not (missing column, non-UTF-8 file, empty FileList, a bad row without a FileName) cannot.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from echo_core.data.facts import is_empty
from echo_core.utils.atomic import atomic_path


@dataclass(frozen=True)
class Failure:
    """One failing expectation. `rows`: (FileList.csv line, FileName, {column: offending value})."""

    expectation: str  # GX expectation type, e.g. "expect_column_values_to_be_between"
    column: str | None  # the GX column it ran on (None for column pairs and table-level checks)
    rows: list[tuple[int, str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    field: str = ""  # the FileList field (or "video") a user has to fix
    rule: str = ""  # what should hold, in words
    hint: str = ""  # how to fix it
    message: str = ""  # dataset-level failures: what is wrong, naming the file
    unexpected_count: int = 0

    @property
    def row_level(self) -> bool:
        """True when every offending row has a FileName, so the rows can be quarantined by name."""
        return bool(self.rows) and all(name for _, name, _ in self.rows)


@dataclass
class ValidationReport:
    kind: str
    root: Path
    filelist: Path
    success: bool
    failures: list[Failure]
    bad_rows: dict[str, list[str]]  # FileName -> reasons (row-level failures only)
    num_rows: int = 0
    prepared: bool = False
    expected_size: int | None = None
    quarantined: bool = False  # True: `success` is the verdict on the rows left after removing bad_rows
    expectations: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # every result, pass or fail
    report_path: Path | None = None
    docs_path: Path | None = None

    @property
    def dataset_failures(self) -> list[Failure]:
        return [f for f in self.failures if not f.row_level]

    @property
    def bad_row_numbers(self) -> dict[int, str]:
        """FileList.csv line -> FileName of every quarantinable row (a duplicated FileName: both lines)."""
        return dict(sorted((row, name) for f in self.failures if f.row_level for row, name, _ in f.rows))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = [asdict(f) for f in self.failures]
        data["row_numbering"] = "FileList.csv line numbers; the header is line 1"
        return data


def bad_rows_of(failures: list[Failure]) -> dict[str, list[str]]:
    """FileName -> reasons, over row-level failures (duplicates of one FileName share its entry)."""
    bad: dict[str, list[str]] = {}
    for f in failures:
        if not f.row_level:
            continue
        for _, name, values in f.rows:
            detail = " ".join(f"{k}={_show(v)}" for k, v in values.items())
            bad.setdefault(name, []).append(f"{f.rule}" + (f" ({detail})" if detail else ""))
    return bad


def write_quarantine(report: ValidationReport, path: str | os.PathLike, *, quarantined: bool = True) -> Path:
    """Write the quarantine list (FileName,row,reasons; one line per bad row), atomically.

    `data prepare --exclude` reads its FileName column; an empty list is a header-only file. With
    `quarantined=False` (validation ran without --quarantine) nothing is set aside: the list is empty,
    but the pipeline still gets the file it depends on.
    """
    rows = report.bad_row_numbers.items() if quarantined else ()
    frame = pd.DataFrame([{"FileName": name, "row": row, "reasons": "; ".join(report.bad_rows[name])}
                          for row, name in rows], columns=["FileName", "row", "reasons"])
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    return Path(path)


def format_report(report: ValidationReport, show_rows: int = 5) -> str:
    """Human summary: one line per failing expectation (expectation, field, file, offending rows) + fix."""
    lines = []
    for f in report.failures:
        head = f"FAIL {f.expectation} [{f.field or f.column}] {report.filelist}"
        if f.rows:
            shown = "; ".join(_row_text(r) for r in f.rows[:show_rows])
            more = f" (+{len(f.rows) - show_rows} more)" if len(f.rows) > show_rows else ""
            lines.append(f"{head}: {f.rule}; {len(f.rows)} row(s): {shown}{more}")
        else:
            lines.append(f"{head}: {f.message or f.rule}")
        if f.hint:
            lines.append(f"  fix: {f.hint}")
    verdict = "valid" if report.success else "INVALID"
    if report.quarantined and report.bad_rows:
        verdict += f" after setting aside {len(report.bad_row_numbers)} bad row(s)"
    lines.append(f"{report.kind} dataset {report.root}: {verdict} ({report.num_rows} rows, "
                 f"{len(report.failures)} failing expectation(s))")
    lines.append(f"report: {report.report_path}")
    lines.append(f"data docs: {report.docs_path}")
    return "\n".join(lines)


def _row_text(row: tuple[int, str, dict[str, Any]]) -> str:
    number, name, values = row
    return " ".join([f"row {number}", f"FileName={_show(name or None)}", *(f"{k}={_show(v)}" for k, v in
                                                                         values.items())])


def _show(value: Any) -> str:
    if is_empty(value):
        return "<empty>"
    text = str(value)
    return repr(text) if isinstance(value, str) and (not text.isprintable() or " " in text) else text
