"""Dataset validation with Great Expectations: the only module in the project that imports GX.

echo_core computes facts, GX judges them. The table handed to GX is FileList.csv (numeric columns parsed)
plus, per row, facts that echo_core measures on the row's video (`video_exists`, `video_decodes`,
`video_frames`, `video_fps`, `video_height`, `video_width`, ...) and `file_name_safe` (from
`safe_member`). One ExpectationSuite per dataset kind says what a valid dataset is; a Checkpoint runs it
and writes GX Data Docs (HTML) every time.

Outputs (all atomic). Default folder: `<project>/outputs/validation/<kind>-<DIR name>[-prepared]/`, where
<project> is the folder holding params.yaml + dvc.yaml (else the CWD); outside `data/`, which data.dvc tracks.
- `report.json`  verdict, every expectation's result, offending rows (row, FileName, values), bad rows.
- `data_docs/index.html`  GX Data Docs: the suite and this run's validation result(s).
- `quarantine.csv` (with quarantine on)  FileName,row,reasons: the rows `data prepare --exclude` skips.

Row numbers are FileList.csv line numbers (the header is line 1, the first video is row 2), so `row 7`
is line 7 in an editor or a spreadsheet.

Rows vs dataset: a failure that points at rows (bad EF, undecodable video, ...) can be quarantined; one
that does not (missing column, non-UTF-8 file, empty FileList, a bad row without a FileName) cannot.

GX costs 4-8 s to import, so it is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from echo_core.data.filelist import (
    CARDIACNET_CLASSES,
    PREPARED_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
    DatasetKind,
    dataset_kind,
    read_filelist,
    resolve_video,
    safe_member,
)
from echo_core.data.video import probe_video
from echo_core.errors import DataError, UsageError
from echo_core.utils.atomic import atomic_dir, atomic_path, write_json_atomic
from echo_core.utils.progress import progress

FILELIST = "FileList.csv"
PREPARED_FRAME_SIZE = 112
# EchoNet videos are published at 112x112; raw CardiacNet keeps each scanner's size until preparation.
RAW_FRAME_SIZE = {DatasetKind.DYNAMIC: 112, DatasetKind.PEDIATRIC: 112, DatasetKind.CARDIACNET: None}
NULLABLE = {"ESV", "EDV"}  # EchoNet-Dynamic leaves volumes empty for some studies
PEDIATRIC_FOLDS = tuple(range(10))
VIDEO_FACTS = ("file_name_safe", "video_exists", "video_decodes", "video_error", "video_path",
               "video_frames", "video_fps", "video_height", "video_width", "video_size", "video_channels")
# fact column `<col>__number`: True = parses as the schema's number type, False = does not, None = empty
NUMBER_SUFFIX = "__number"
FIX_QUARANTINE = "or re-run with --quarantine to set the row(s) aside (then `data prepare --exclude`)"


# ------------------------------------------------------------------------------------------------ results


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


# ------------------------------------------------------------------------------------------------ defaults


def default_frame_size(kind: str | DatasetKind, prepared: bool) -> int | None:
    """Expected frame height = width: 112 for prepared data and EchoNet; None (unchecked), raw CardiacNet."""
    return PREPARED_FRAME_SIZE if prepared else RAW_FRAME_SIZE[dataset_kind(kind)]


def default_output_dir(kind: str, root: str | os.PathLike, prepared: bool = False) -> Path:
    """`<project>/outputs/validation/<kind>-<DIR name>[-prepared]` (kept out of the DVC-tracked data/)."""
    from pipelines.settings import project_root

    name = f"{kind}-{Path(root).resolve().name}" + ("-prepared" if prepared else "")
    return project_root() / "outputs" / "validation" / name


# ------------------------------------------------------------------------------------------------ facts


def video_facts(root: Path, file_name: Any) -> dict[str, Any]:
    """What echo_core can say about one row's video; the GX suite decides whether it is acceptable.

    Facts that do not apply stay None (GX skips nulls), so each broken row fails exactly one expectation:
    an unsafe FileName is not looked up, a missing file is not decoded, an undecodable file has no size.
    """
    facts: dict[str, Any] = dict.fromkeys(VIDEO_FACTS)
    if _is_empty(file_name):
        return facts  # reported by the FileName not-null expectation
    name = str(file_name)
    try:
        safe_member(root, name)
    except DataError as exc:
        return {**facts, "file_name_safe": False, "video_error": _first_line(exc)}
    facts["file_name_safe"] = True
    try:
        path = resolve_video(root, name)
    except DataError as exc:
        return {**facts, "video_exists": False, "video_error": _first_line(exc)}
    facts.update(video_exists=True, video_path=_relative(path, root))
    try:
        # count=True decodes every frame: a truncated file with an intact header fails here, not in training
        info = probe_video(path, count=True)
    except DataError as exc:
        return {**facts, "video_decodes": False, "video_error": _first_line(exc)}
    return {**facts, "video_decodes": True, "video_frames": info.num_frames, "video_fps": info.fps,
            "video_height": info.height, "video_width": info.width, "video_size": f"{info.width}x{info.height}",
            "video_channels": info.channels}


def probe_videos(root: Path, file_names: pd.Series, workers: int = 4) -> pd.DataFrame:
    """video_facts for every row (PyAV decodes outside the GIL, so threads overlap), in row order."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = list(progress(pool.map(partial(video_facts, root), file_names), total=len(file_names),
                             desc="probe videos"))
    facts = pd.DataFrame(rows, columns=list(VIDEO_FACTS), index=file_names.index)
    for column in ("file_name_safe", "video_exists", "video_decodes"):
        facts[column] = facts[column].astype(object)  # keep None (not applicable) apart from False
    for column in ("video_frames", "video_fps", "video_height", "video_width", "video_channels"):
        facts[column] = pd.to_numeric(facts[column]).astype(float)  # None -> NaN, skipped by range checks
    return facts


def number_facts(raw: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """Parsed numeric columns (NaN when empty or not a number) + `<col>__number` parse facts."""
    out = pd.DataFrame(index=raw.index)
    for column, dtype in schema.items():
        if dtype not in ("int", "float") or column not in raw.columns:
            continue
        values = pd.to_numeric(raw[column], errors="coerce").astype(float)
        ok = values.notna() & (values.map(_is_integral) if dtype == "int" else True)
        empty = raw[column].map(_is_empty)
        out[column] = values
        out[column + NUMBER_SUFFIX] = pd.Series(ok, index=raw.index, dtype=object).where(~empty, None)
    return out


def build_table(raw: pd.DataFrame, facts: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """The frame GX validates: schema columns (numbers parsed) + number facts + video facts."""
    numbers = number_facts(raw, schema)
    text = [c for c in schema if c in raw.columns and c not in numbers.columns]
    return pd.concat([raw[text].astype(object), numbers, facts], axis=1)


# ------------------------------------------------------------------------------------------------ the suite


@dataclass(frozen=True)
class Rule:
    """One expectation, GX-free: `expectation` is a class in `great_expectations.expectations`."""

    expectation: str
    kwargs: dict[str, Any]
    field: str  # the FileList field (or "video") shown to the user
    rule: str  # what must hold, in words (also the GX description shown in Data Docs)
    hint: str  # how to fix a failure
    show: tuple[str, ...] = ()  # raw/fact columns printed for each offending row


def build_rules(kind: str | DatasetKind, columns: list[str], *, prepared: bool = False,
                expected_size: int | None = None) -> list[Rule]:
    """The suite for one dataset kind. `columns` are those present (optional checks need their column)."""
    kind = dataset_kind(kind)
    schema = (PREPARED_COLUMNS if prepared else REQUIRED_COLUMNS)[kind]
    rules = [Rule("ExpectTableRowCountToBeBetween", {"min_value": 1}, "FileList", "the FileList has rows",
                  "add the dataset's rows to FileList.csv")]
    rules += [Rule("ExpectColumnToExist", {"column": c}, c, f"column {c} exists",
                   f"add the {c} column to FileList.csv") for c in schema]
    present = [c for c in schema if c in columns]
    rules += _type_rules(schema, present)
    rules += _file_name_rules() + _video_rules(expected_size)
    if "Split" in present:
        rules += _split_rules(kind, prepared)
    if "EF" in present:
        rules += _ef_rules(present)
    if {"class_id", "class_name"} <= set(present):
        rules += _class_rules()
    rules += _metadata_rules(present)
    return rules


def _type_rules(schema: dict[str, str], present: list[str]) -> list[Rule]:
    rules = []
    for c in present:
        kind_of = {"int": "an integer", "float": "a number"}.get(schema[c])
        if kind_of:
            fix = f"write {c} as {kind_of} in FileList.csv, {FIX_QUARANTINE}"
            is_number = {"column": c + NUMBER_SUFFIX, "value_set": [True]}
            rules.append(Rule("ExpectColumnValuesToBeInSet", is_number, c, f"{c} is {kind_of}", fix, (c,)))
        if c in NULLABLE:
            continue
        column = c + NUMBER_SUFFIX if kind_of else c  # parse facts keep empty apart from "not a number"
        rules.append(Rule("ExpectColumnValuesToNotBeNull", {"column": column}, c, f"{c} is not empty",
                          f"fill in {c} in FileList.csv, {FIX_QUARANTINE}", (c,)))
    return rules


def _file_name_rules() -> list[Rule]:
    return [
        Rule("ExpectColumnValuesToBeUnique", {"column": "FileName"}, "FileName", "FileName is unique",
             f"give each video one row (remove or rename the duplicate), {FIX_QUARANTINE}"),
        Rule("ExpectColumnValuesToBeInSet", {"column": "file_name_safe", "value_set": [True]}, "FileName",
             "FileName stays inside the dataset folder (no '..', no absolute path)",
             f"use the plain video name (e.g. 0X1A2B3C) in FileName, {FIX_QUARANTINE}", ("video_error",)),
    ]


def _video_rules(expected_size: int | None) -> list[Rule]:
    fix_file = f"replace the file (`dvc checkout` / re-export), {FIX_QUARANTINE}"
    rules = [
        Rule("ExpectColumnValuesToBeInSet", {"column": "video_exists", "value_set": [True]}, "video",
             "the row's video file exists under Videos/", f"add the video or fix FileName, {FIX_QUARANTINE}",
             ("video_error",)),
        Rule("ExpectColumnValuesToBeInSet", {"column": "video_decodes", "value_set": [True]}, "video",
             "the video decodes completely", fix_file, ("video_path", "video_error")),
        Rule("ExpectColumnValuesToBeBetween", {"column": "video_fps", "min_value": 0, "strict_min": True},
             "video", "the video's frame rate is > 0", fix_file, ("video_path", "video_fps")),
        Rule("ExpectColumnValuesToBeBetween", {"column": "video_frames", "min_value": 1}, "video",
             "the video has at least one frame", fix_file, ("video_path", "video_frames")),
    ]
    if expected_size:
        size = f"{expected_size}x{expected_size}"
        rules.append(Rule("ExpectColumnValuesToBeInSet", {"column": "video_size", "value_set": [size]}, "video",
                          f"video frames are {size} (width x height)",
                          f"resize the video to {size} (`echoforge data prepare` does) or pass --expected-size, "
                          f"{FIX_QUARANTINE}", ("video_path", "video_size")))
    return rules


def _split_rules(kind: DatasetKind, prepared: bool) -> list[Rule]:
    if kind is DatasetKind.PEDIATRIC and not prepared:
        allowed, rule = list(PEDIATRIC_FOLDS), "raw EchoNet-Pediatric Split is a fold 0-9"
        fix = f"use folds 0-9 (pass --prepared for a TRAIN/VAL/TEST file), {FIX_QUARANTINE}"
    else:
        allowed, rule = list(SPLITS), f"Split is one of {', '.join(SPLITS)}"
        fix = f"use {'/'.join(SPLITS)} (upper case), {FIX_QUARANTINE}"
    return [Rule("ExpectColumnValuesToBeInSet", {"column": "Split", "value_set": allowed}, "Split", rule, fix,
                 ("Split",))]


def _ef_rules(present: list[str]) -> list[Rule]:
    rules = [Rule("ExpectColumnValuesToBeBetween", {"column": "EF", "min_value": 0, "max_value": 100}, "EF",
                  "EF is a percentage in [0, 100]", f"correct EF (percent, not a fraction), {FIX_QUARANTINE}",
                  ("EF",))]
    if {"ESV", "EDV"} <= set(present):
        rules.append(Rule("ExpectColumnPairValuesAToBeGreaterThanB",
                          {"column_A": "EDV", "column_B": "ESV", "ignore_row_if": "either_value_is_missing"},
                          "ESV/EDV", "ESV < EDV where both are given",
                          f"check the volumes (columns swapped?), {FIX_QUARANTINE}", ("ESV", "EDV")))
    return rules


def _class_rules() -> list[Rule]:
    names = ", ".join(f"{i}={n}" for i, n in CARDIACNET_CLASSES.items())
    return [
        Rule("ExpectColumnValuesToBeInSet", {"column": "class_id", "value_set": list(CARDIACNET_CLASSES)},
             "class_id", f"class_id is one of {names}", f"use the fixed class map {names}, {FIX_QUARANTINE}",
             ("class_id",)),
        Rule("ExpectColumnPairValuesToBeInSet",
             {"column_A": "class_id", "column_B": "class_name", "ignore_row_if": "either_value_is_missing",
              "value_pairs_set": [[i, n] for i, n in CARDIACNET_CLASSES.items()]},
             "class_id/class_name", f"class_id and class_name agree ({names})",
             f"fix class_id or class_name to the fixed map, {FIX_QUARANTINE}", ("class_id", "class_name")),
    ]


def _metadata_rules(present: list[str]) -> list[Rule]:
    """FileList's own video metadata must be physical (the video facts are checked separately)."""
    bounds = {"FPS": {"min_value": 0, "strict_min": True}, "NumberOfFrames": {"min_value": 1},
              "FrameHeight": {"min_value": 1}, "FrameWidth": {"min_value": 1}}
    return [Rule("ExpectColumnValuesToBeBetween", {"column": c, **b}, c, f"{c} is positive",
                 f"re-measure {c} from the video (`echoforge data prepare` does), {FIX_QUARANTINE}", (c,))
            for c, b in bounds.items() if c in present]


# ------------------------------------------------------------------------------------------------ GX


def _import_gx():
    """`great_expectations`, imported quietly: it logs internals at INFO while importing ("Skipping
    registering function ..."), which the CLI's INFO logging would print by the hundred."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations

    return great_expectations


def _gx_context(docs_dir: Path):
    """Ephemeral (in-memory) context whose only Data Docs site is `docs_dir`; no progress bars, no analytics.

    The default ephemeral site goes to a system temp folder; replacing it keeps every write in the project.
    """
    gx = _import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {"class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False),
                               data_docs_sites={"local": site})
    return gx.get_context(mode="ephemeral", project_config=config)


def _gx_suite(context, name: str, rules: list[Rule]):
    gx = _import_gx()
    gxe = gx.expectations

    expectations = [getattr(gxe, r.expectation)(**r.kwargs, description=r.rule,
                                                 meta={"field": r.field, "hint": r.hint, "show": list(r.show)})
                    for r in rules]
    # one add for the whole suite: suite.add_expectation() re-serialises the stored suite every time
    return context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))


@contextlib.contextmanager
def gx_session(suite_name: str, rules: list[Rule], docs_dir: Path) -> Iterator[Callable[..., Any]]:
    """Yield `validate(name, table) -> GX ValidationResult` (one Checkpoint per table); on exit, write
    Data Docs for the suite and every result to `docs_dir`.

    Docs are built in a temp folder and swapped in, so a crash never leaves half a site; a session that
    validates nothing still documents the suite.
    """
    gx = _import_gx()
    from great_expectations.core.run_identifier import RunIdentifier

    with atomic_dir(docs_dir) as tmp:
        context = _gx_context(tmp)
        suite = _gx_suite(context, suite_name, rules)
        batch = (context.data_sources.add_pandas("echoforge").add_dataframe_asset("FileList")
                 .add_batch_definition_whole_dataframe("all_rows"))

        def validate(name: str, table: pd.DataFrame):
            definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch,
                                                                                    suite=suite))
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"{suite_name}-{name}", validation_definitions=[definition],
                result_format={"result_format": "COMPLETE"}))
            run = checkpoint.run(batch_parameters={"dataframe": table}, run_id=RunIdentifier(run_name=name))
            return next(iter(run.run_results.values()))

        yield validate
        context.build_data_docs()


def collect_failures(result, raw: pd.DataFrame, facts: pd.DataFrame, filelist: Path) -> list[Failure]:
    """GX result -> Failures; offending rows show the raw FileList values (as the user wrote them)."""
    shown = pd.concat([raw, facts.drop(columns=[c for c in facts.columns if c in raw.columns])], axis=1)
    failures = []
    for er in result.results:
        if er.success:
            continue
        config = er.expectation_config
        meta, res = config.meta or {}, er.result or {}
        indexes = res.get("unexpected_index_list") or []
        rows = [_offending_row(shown, i, meta.get("show", [])) for i in indexes]
        message = ""
        if er.exception_info and er.exception_info.get("raised_exception"):
            message = f"GX could not evaluate it: {er.exception_info.get('exception_message')}"
        elif not rows:
            message = f"{filelist}: {config.description or config.type}"
        failures.append(Failure(config.type, config.kwargs.get("column"), rows, meta.get("field", ""),
                                config.description or "", meta.get("hint", ""), message,
                                int(res.get("unexpected_count") or len(rows))))
    return failures


def summarize(result) -> list[dict[str, Any]]:
    """One line per expectation of a GX result: what was checked and whether it held."""
    return [{"expectation": er.expectation_config.type, "column": er.expectation_config.kwargs.get("column"),
             "field": (er.expectation_config.meta or {}).get("field", ""),
             "rule": er.expectation_config.description or "", "success": bool(er.success),
             "unexpected_count": int((er.result or {}).get("unexpected_count") or 0)} for er in result.results]


def _offending_row(shown: pd.DataFrame, index: int, columns: list[str]) -> tuple[int, str, dict[str, Any]]:
    row = shown.loc[index]
    name = "" if _is_empty(row.get("FileName")) else str(row["FileName"])
    return int(index) + 2, name, {c: _plain(row.get(c)) for c in columns}


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


# ------------------------------------------------------------------------------------------------ entry


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
    try:
        raw = read_filelist(filelist, schema_kind, prepared=prepared).reset_index(drop=True)
    except DataError as exc:  # structure (encoding, columns) is a dataset-level failure, not a crash
        column = _missing_column(exc)
        report.failures = [Failure("read_filelist", column, message=_first_line(exc), hint=exc.fix or "",
                                   field=column or "FileList")]
        rules = build_rules(schema_kind, [], prepared=prepared, expected_size=expected_size)
        with gx_session(kind_name, rules, docs_dir):
            pass  # nothing to validate; the docs still show the suite
        return _finish(report, docs_dir, report_path)
    _judge(report, raw, schema_kind, docs_dir, workers)
    return _finish(report, docs_dir, report_path)


def _judge(report: ValidationReport, raw: pd.DataFrame, kind: DatasetKind, docs_dir: Path,
           workers: int) -> None:
    """Probe videos, run the suite on all rows (and, quarantining, on the rows left), fill `report`."""
    schema = (PREPARED_COLUMNS if report.prepared else REQUIRED_COLUMNS)[kind]
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


# ------------------------------------------------------------------------------------------------ text


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


# ------------------------------------------------------------------------------------------------ helpers


def _is_empty(value: Any) -> bool:
    """None, NaN, pd.NA or a blank string: a cell with nothing in it."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _is_integral(value: float) -> bool:
    return not math.isnan(value) and float(value).is_integer()


def _plain(value: Any) -> Any:
    """JSON-friendly scalar (numpy -> Python, NaN -> None)."""
    if _is_empty(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _show(value: Any) -> str:
    if _is_empty(value):
        return "<empty>"
    text = str(value)
    return repr(text) if isinstance(value, str) and (not text.isprintable() or " " in text) else text


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _missing_column(exc: DataError) -> str | None:
    text = _first_line(exc)
    marker = "missing column(s) "
    return text.split(marker, 1)[1] if marker in text else None
