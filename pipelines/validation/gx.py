"""The Great Expectations adapter: the only module in the project that imports GX.

`gx_session` turns the rule catalogue into an ExpectationSuite, runs one Checkpoint per fact table and
writes GX Data Docs (HTML); `collect_failures` and `summarize` turn a GX result back into plain records.
GX costs 4-8 s to import, so it is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from echo_core.data.facts import is_empty, plain
from echo_core.utils.atomic import atomic_dir
from pipelines.validation.report import Failure
from pipelines.validation.rules import Rule


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
    name = "" if is_empty(row.get("FileName")) else str(row["FileName"])
    return int(index) + 2, name, {c: plain(row.get(c)) for c in columns}
