"""Bad input: every corpus defect is caught, named and quarantinable; accepted quirks pass.

Most cases run in-process through `validate_dataset` (GX imported once); the CLI contract (exit codes,
message naming file / row / field, no traceback) is checked by subprocess on a few representative cases,
and so is the hand-off to `data prepare` (a broken dataset fails cleanly; `--exclude` the quarantine works).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.corpus import CASES, QUIRKS, make_case, make_fixture_dataset

from echo_core.data.filelist import read_filelist
from echo_core.data.phantom.datasets import generate_dataset
from echo_core.data.prepare import prepare_dataset
from echo_core.errors import UsageError
from pipelines.validation import format_report, validate_dataset

pytestmark = pytest.mark.integration

ECHOFORGE = str(Path(sys.executable).parent / "echoforge")


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """One small valid dynamic dataset; every case works on a copy of it."""
    return make_fixture_dataset(tmp_path_factory.mktemp("base") / "EchoNet-Dynamic", num_videos=6)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([ECHOFORGE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def validate_cli(root: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("data", "validate", "--kind", "dynamic", str(root), "--report",
                   str(tmp_path / "validation" / "report.json"), *extra, cwd=tmp_path)


# ------------------------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_every_defect_is_caught_and_row_defects_are_quarantinable(case, base, tmp_path):
    root, [file_name] = make_case(base, tmp_path / case.name, case)
    out = tmp_path / "validation"
    report = validate_dataset("dynamic", root, quarantine=True, docs_dir=out / "docs",
                              report_path=out / "report.json")
    assert report.failures, f"{case.name} was not caught"
    assert case.field in {f.field for f in report.failures}, format_report(report)
    if case.row_level:
        # the broken row is named, set aside alone, and GX finds the remaining rows valid
        assert all(file_name in [name for _, name, _ in f.rows] for f in report.failures)
        assert list(report.bad_rows) == [file_name]
        assert report.success, format_report(report)
    else:
        assert not report.success and report.bad_rows == {}
        assert str(root / "FileList.csv") in report.failures[0].message


@pytest.mark.parametrize("quirk", QUIRKS.values(), ids=list(QUIRKS))
def test_accepted_quirks_validate(quirk, base, tmp_path):
    root, _ = make_case(base, tmp_path / quirk.name, quirk)
    out = tmp_path / "validation"
    report = validate_dataset("dynamic", root, docs_dir=out / "docs", report_path=out / "report.json")
    assert report.success and report.failures == [], format_report(report)


# ------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("name, field, shows", [
    ("ef_out_of_range", "[EF]", "EF=140.0"),
    ("truncated_video", "[video]", "truncated"),
])
def test_cli_names_file_row_and_field(name, field, shows, base, tmp_path):
    root, [file_name] = make_case(base, tmp_path / name, CASES[name])
    proc = validate_cli(root, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("FAIL"))
    assert str(root / "FileList.csv") in line and field in line and shows in line
    assert f"row 3 FileName={file_name}" in line
    assert (tmp_path / "validation" / "report.json").is_file()
    assert (tmp_path / "validation" / "data_docs" / "index.html").is_file()


def test_cli_non_utf8_filelist_fails_clearly(base, tmp_path):
    root, _ = make_case(base, tmp_path / "latin1", CASES["non_utf8"])
    proc = validate_cli(root, tmp_path, "--quarantine")  # quarantine cannot rescue a dataset-level failure
    assert proc.returncode == 1
    assert "is not UTF-8" in proc.stdout and "(line 3)" in proc.stdout and str(root / "FileList.csv") in proc.stdout


def test_cli_usage_errors_exit_2(tmp_path):
    (tmp_path / "not-a-dataset").mkdir()
    cases = {"unknown dataset kind": ("--kind", "echonet", str(tmp_path)),
             "dataset folder not found": ("--kind", "dynamic", str(tmp_path / "missing")),
             "has no FileList.csv": ("--kind", "dynamic", str(tmp_path / "not-a-dataset"))}
    for message, args in cases.items():
        proc = run_cli("data", "validate", *args, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_cli_accepts_every_quirk_at_once(base, tmp_path):
    root, _ = make_case(base, tmp_path / "quirky", *QUIRKS.values())
    assert b"\r\n" in (root / "FileList.csv").read_bytes()
    proc = validate_cli(root, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid (6 rows" in proc.stdout


@pytest.mark.slow
def test_quarantine_then_prepare_with_exclude(base, tmp_path):
    """The whole hand-off: prepare refuses the broken dataset and leaves nothing; validate --quarantine lists
    the row; prepare --exclude that list succeeds without it."""
    root, [file_name] = make_case(base, tmp_path / "raw", CASES["unreadable_video"])
    prepared = tmp_path / "prepared" / "dynamic"

    proc = run_cli("data", "prepare", "--kind", "dynamic", str(root), "--out", str(prepared), cwd=tmp_path)
    assert proc.returncode != 0 and file_name in proc.stderr
    assert not prepared.exists()

    quarantine = tmp_path / "quarantine.csv"
    proc = validate_cli(root, tmp_path, "--quarantine", "--quarantine-out", str(quarantine))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"quarantined FileName={file_name}" in proc.stdout and "quarantined 1 of 6 rows" in proc.stdout

    proc = run_cli("data", "prepare", "--kind", "dynamic", str(root), "--out", str(prepared), "--exclude",
                   str(quarantine), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = set(read_filelist(prepared / "FileList.csv")["FileName"])
    assert len(names) == 5 and file_name not in names
    out = tmp_path / "validation-prepared"
    report = validate_dataset("dynamic", prepared, prepared=True, docs_dir=out / "docs",
                              report_path=out / "report.json")
    assert report.success, format_report(report)


def test_phantom_datasets_validate(tmp_path):
    """The generator's raw layout and the preparation's output both satisfy the suites."""
    raw = generate_dataset("dynamic", tmp_path / "dynamic", num_videos=3, seed=0)
    report = validate_dataset("dynamic", raw, docs_dir=tmp_path / "v1", report_path=tmp_path / "v1.json")
    assert report.success, format_report(report)

    nifti = generate_dataset("cardiacnet", tmp_path / "cardiacnet", num_videos=4, seed=0)
    with pytest.raises(UsageError, match="has no FileList.csv") as info:
        validate_dataset("cardiacnet", nifti, docs_dir=tmp_path / "v2", report_path=tmp_path / "v2.json")
    assert "data prepare --kind cardiacnet" in str(info.value)
    prepared = tmp_path / "prepared-cardiacnet"
    prepare_dataset("cardiacnet", nifti, prepared)
    report = validate_dataset("cardiacnet", prepared, prepared=True, docs_dir=tmp_path / "v3",
                              report_path=tmp_path / "v3.json")
    assert report.success and report.num_rows >= 4, format_report(report)
