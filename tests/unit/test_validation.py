"""pipelines/validation: the suites (pure), reading the FileList (no GX) and real GX runs."""

from __future__ import annotations

import contextlib
import json

import pandas as pd
import pytest
from support.corpus import break_ef_out_of_range, break_non_utf8, make_fixture_dataset, read_raw, write_raw

from echo_core.errors import UsageError
from pipelines.validation import (
    build_rules,
    default_frame_size,
    format_report,
    validate_dataset,
    write_quarantine,
)
from pipelines.validation import validate as validate_module


def _by(rules, expectation, column):
    """Rules of one expectation type on one GX column (pair rules: on their field name)."""
    return [r for r in rules if r.expectation == expectation and r.kwargs.get("column", r.field) == column]


def _validate(root, tmp_path, **kwargs):
    out = tmp_path / "validation"
    return validate_dataset(kwargs.pop("kind", "dynamic"), root, docs_dir=out / "docs",
                            report_path=out / "report.json", **kwargs)


# ------------------------------------------------------------------------------------------- pure


def test_suites_follow_the_dataset_kind():
    dynamic = build_rules("dynamic", ["FileName", "EF", "ESV", "EDV", "Split"], expected_size=112)
    assert _by(dynamic, "ExpectColumnValuesToBeBetween", "EF")[0].kwargs == {
        "column": "EF", "min_value": 0, "max_value": 100}
    assert _by(dynamic, "ExpectColumnPairValuesAToBeGreaterThanB", "ESV/EDV")[0].kwargs["column_A"] == "EDV"
    assert _by(dynamic, "ExpectColumnValuesToBeInSet", "Split")[0].kwargs["value_set"] == ["TRAIN", "VAL", "TEST"]
    assert [r.kwargs["value_set"] for r in dynamic if r.kwargs.get("column") == "video_size"] == [["112x112"]]
    # ESV/EDV may be empty in EchoNet-Dynamic; EF may not
    not_null = {r.field for r in dynamic if r.expectation == "ExpectColumnValuesToNotBeNull"}
    assert {"EF", "FileName", "Split"} <= not_null and not {"ESV", "EDV"} & not_null

    pediatric = build_rules("pediatric-a4c", ["FileName", "EF", "Split"])
    assert _by(pediatric, "ExpectColumnValuesToBeInSet", "Split")[0].kwargs["value_set"] == list(range(10))
    prepared = build_rules("pediatric", ["FileName", "EF", "Split", "Fold"], prepared=True)
    assert _by(prepared, "ExpectColumnValuesToBeInSet", "Split")[0].kwargs["value_set"] == ["TRAIN", "VAL", "TEST"]

    cardiacnet = build_rules("cardiacnet", ["FileName", "class_id", "class_name"], expected_size=None)
    pairs = _by(cardiacnet, "ExpectColumnPairValuesToBeInSet", "class_id/class_name")[0].kwargs["value_pairs_set"]
    assert [0, "ASD"] in pairs and [3, "PAH"] in pairs and len(pairs) == 4
    assert not [r for r in cardiacnet if r.field == "EF" or r.kwargs.get("column") == "video_size"]
    assert default_frame_size("cardiacnet", prepared=False) is None
    assert default_frame_size("cardiacnet", prepared=True) == default_frame_size("dynamic", False) == 112


@pytest.mark.parametrize("edit, field, hint", [
    (lambda df: df.drop(columns=["EF"]), "EF", "the file must have columns: FileName, EF, ESV"),
    (lambda df: df.drop(columns=["EF", "ESV"]), "EF, ESV", "the file must have columns: FileName, EF, ESV"),
    (lambda df: df.rename(columns={"EF": " ef"}), "EF", "rename ' ef' -> 'EF'"),
])
def test_missing_columns_are_named_from_the_header_without_a_gx_run(edit, field, hint, tmp_path, monkeypatch):
    root = make_fixture_dataset(tmp_path / "ds", num_videos=2)
    write_raw(root, edit(read_raw(root)))
    runs = []

    @contextlib.contextmanager
    def no_gx(suite_name, rules, docs_dir):  # documents nothing, records any validation it is asked for
        yield lambda name, table: runs.append(name)

    monkeypatch.setattr(validate_module, "gx_session", no_gx)
    report = _validate(root, tmp_path)
    assert runs == [] and not report.success and report.num_rows == 0
    [failure] = report.failures
    assert (failure.expectation, failure.field, failure.column) == ("read_filelist", field, field)
    assert failure.message == f"FileList {root / 'FileList.csv'} is missing column(s) {field}"
    assert failure.hint.startswith(hint) and not failure.row_level


def test_unknown_kind_and_non_dataset_folders_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset kind"):
        build_rules("echonet", [])
    with pytest.raises(UsageError, match="not found"):
        _validate(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no FileList.csv"):
        _validate(tmp_path / "empty", tmp_path)


# ------------------------------------------------------------------------------------------- real GX


def test_valid_dataset_passes_and_writes_report_and_data_docs(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", num_videos=4)
    report = _validate(root, tmp_path)
    assert report.success and report.failures == [] and report.num_rows == 4
    saved = json.loads(report.report_path.read_text())
    assert saved["success"] is True and saved["kind"] == "dynamic"
    checked = {(e["field"], e["rule"]) for e in saved["expectations"] if e["success"]}
    assert ("EF", "EF is a percentage in [0, 100]") in checked and ("video", "the video decodes completely") in checked
    assert report.docs_path == tmp_path / "validation" / "docs" / "index.html"
    assert "dynamic" in report.docs_path.read_text()  # the suite is listed on the index page
    assert not list((tmp_path / "validation").glob(".*tmp*"))  # docs were swapped in, no temp left


def test_bad_row_is_reported_with_row_file_name_and_field(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", num_videos=4)
    name = break_ef_out_of_range(root)
    report = _validate(root, tmp_path)
    assert not report.success
    [failure] = report.failures
    assert (failure.expectation, failure.field, failure.rows) == (
        "expect_column_values_to_be_between", "EF", [(3, name, {"EF": 140.0})])
    text = format_report(report)
    assert f"row 3 FileName={name} EF=140.0" in text and str(root / "FileList.csv") in text and "fix:" in text
    saved = json.loads(report.report_path.read_text())
    assert saved["failures"][0]["rows"] == [[3, name, {"EF": 140.0}]]

    quarantine = write_quarantine(report, tmp_path / "q.csv")
    listed = pd.read_csv(quarantine)
    assert listed["FileName"].tolist() == [name] and listed["row"].tolist() == [3]
    assert "EF" in listed["reasons"][0]


def test_quarantine_verdict_is_gx_on_the_remaining_rows(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", num_videos=4)
    name = break_ef_out_of_range(root)
    report = _validate(root, tmp_path, quarantine=True)
    assert report.success and list(report.bad_rows) == [name] and report.failures
    assert "after setting aside 1 bad row(s)" in format_report(report)


def test_unreadable_filelist_is_a_dataset_failure_with_docs(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", num_videos=2)
    break_non_utf8(root)
    report = _validate(root, tmp_path, quarantine=True)
    assert not report.success and report.bad_rows == {}
    [failure] = report.dataset_failures
    assert "not UTF-8" in failure.message and str(root / "FileList.csv") in failure.message
    assert report.docs_path.is_file()  # the suite is documented even when nothing could be validated


def test_cardiacnet_class_map_and_raw_pediatric_folds(tmp_path):
    cardiac = make_fixture_dataset(tmp_path / "cardiac", kind="cardiacnet", num_videos=4)
    df = read_raw(cardiac)
    df.loc[1, "class_name"] = "PAH"  # class_id 1 is Non-ASD in the fixed map
    write_raw(cardiac, df)
    report = _validate(cardiac, tmp_path / "c", kind="cardiacnet")
    assert [(f.field, [r[1] for r in f.rows]) for f in report.failures] == [
        ("class_id/class_name", [df.loc[1, "FileName"]])]

    pediatric = make_fixture_dataset(tmp_path / "ped", kind="pediatric", num_videos=4)
    df = read_raw(pediatric)
    df.loc[1, "Split"], df.loc[2, "Split"] = "TRAIN", "12"  # raw pediatric holds folds 0-9
    write_raw(pediatric, df)
    report = _validate(pediatric, tmp_path / "p", kind="pediatric")
    assert sorted((f.rule, f.rows[0][0]) for f in report.failures) == [
        ("Split is an integer", 3), ("raw EchoNet-Pediatric Split is a fold 0-9", 4)]
