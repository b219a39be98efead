"""`echoforge synth build` end to end with real tiny parts: an LIDM and a re-identification net trained through
the one trainer, the real privacy filter, a tiny LVDM bundle, and the real GX validation of the result."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from support.heart_data import tiny_lidm_section
from support.privacy_data import tiny_reid_section, write_reid_store
from support.threads import one_torch_thread
from support.tiny_lvdm import make_bundle
from typer.testing import CliRunner

from echo_core.errors import DataError, UsageError
from echo_core.privacy.calibrate import PrivacyConfig, calibrate
from echo_core.training.lidm import LidmTrainConfig, train_lidm
from echo_core.training.reid import ReidTrainConfig, train_reid
from pipelines.cli import app
from pipelines.validation.report import format_report
from pipelines.validation.validate import validate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SYNTH = {"kind": "dynamic", "num_frames": 8, "ef": "uniform", "ef_range": [30, 60], "splits": "TRAIN=2,VAL=1,TEST=1",
         "sample": {"sampler": "ddim", "steps": 2, "batch_size": 4}}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    with one_torch_thread():
        root = tmp_path_factory.mktemp("synth")
        store = write_reid_store(root / "store")
        lidm = train_lidm(LidmTrainConfig.model_validate(tiny_lidm_section(
            conditioning={"class_id": False}, optim={"lr": 2e-3, "warmup_steps": 2, "batch_size": 8, "max_steps": 10})),
            [store], root / "lidm").folder
        # a briefly trained re-identification net: the filter's decisions are tested in test_privacy.py
        reid_cfg = tiny_reid_section(optim={"lr": 1e-3, "warmup_steps": 5, "batch_size": 32, "max_steps": 40},
                                     checkpoint={"every": 40, "total_limit": 1})
        reid = train_reid(ReidTrainConfig(**reid_cfg), [store], root / "privacy").folder
        calibrate(reid, [store], PrivacyConfig(frames_per_video=4))
        (root / "params.yaml").write_text(yaml.safe_dump({"synth": {"dynamic": SYNTH},
                                                          "sample_lidm": {"sampler": "euler", "steps": 4}}))
        yield {"root": root, "store": store, "lidm": lidm, "reid": reid, "bundle": make_bundle(root / "lvdm")}


def _build(parts, *extra: str):
    args = ["synth", "build", "--dataset", "dynamic", "--num-videos", "4", "--data", str(parts["store"]),
            "--reid", str(parts["reid"]), "--lidm", str(parts["lidm"]), "--lvdm", str(parts["bundle"]),
            "--out", str(parts["root"] / "synthetic"), "--params", str(parts["root"] / "params.yaml"), *extra]
    return CliRunner().invoke(app, args)


def test_a_fully_synthetic_dataset_passes_validation_and_every_heart_passed_the_filter(parts, monkeypatch):
    monkeypatch.chdir(parts["root"])
    result = _build(parts)
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = parts["root"] / "synthetic"
    report = validate_dataset("dynamic", out, docs_dir=parts["root"] / "docs", report_path=parts["root"] / "r.json")
    assert report.success and report.num_rows == 4, format_report(report)
    table = pd.read_csv(out / "FileList.csv")
    assert table["Split"].value_counts().to_dict() == {"TRAIN": 2, "VAL": 1, "TEST": 1}
    assert table["EF"].between(30, 60).all() and (table["NumberOfFrames"] == 8).all()
    scores = pd.read_csv(out / "privacy_scores.csv")
    kept = scores[scores["kept"].astype(bool)]
    assert set(table["Heart"]) <= set(kept["FileName"])  # every video's heart passed the filter
    assert (kept["max_correlation"] < kept["tau"]).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["synthetic"] and manifest["models"]["reid"] == str(parts["reid"])

    # a rerun reuses every finished step and writes the same dataset
    before = {p.name: p.read_bytes() for p in (out / "Videos").iterdir()}
    again = _build(parts)
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert {p.name: p.read_bytes() for p in (out / "Videos").iterdir()} == before
    assert pd.read_csv(out / "FileList.csv").equals(table)


def test_a_split_spec_that_does_not_add_up_fails_before_any_compute(parts, monkeypatch):
    monkeypatch.chdir(parts["root"])
    result = _build(parts, "--splits", "TRAIN=2,VAL=1", "--out", str(parts["root"] / "bad"))
    assert isinstance(result.exception, UsageError) and "add up to 3" in str(result.exception)
    assert not (parts["root"] / "bad").exists() and not (parts["root"] / "bad.work").exists()


def test_the_synthesize_flow_runs_the_build_as_tasks_and_validates_the_dataset(parts, monkeypatch):
    """The same build as a Prefect flow (`synthesize`, deployed as synthesize/dynamic) on a real server: each
    step is its own task run, the result is GX-validated, and the dataset equals the CLI's bit for bit."""
    from prefect import get_client
    from prefect.logging.configuration import setup_logging
    from support.servers import prefect_api

    from pipelines.flows.synthesize import synthesize

    setup_logging(incremental=False)  # Prefect's console handler may hold an earlier CliRunner's closed stream

    monkeypatch.chdir(parts["root"])
    root = parts["root"] / "flow"
    (root / "latents").mkdir(parents=True)
    (root / "latents" / "dynamic").symlink_to(parts["store"])
    with prefect_api():
        state = synthesize(num_videos=4, out_root=str(root), lvdm=str(parts["bundle"]), lidm=str(parts["lidm"]),
                           reid=str(parts["reid"]), params_path=str(parts["root"] / "params.yaml"), return_state=True)
        result = state.result()
        with get_client(sync_client=True) as client:
            tasks = client.read_task_runs()
            names = {t.name.rsplit("-", 1)[0] for t in tasks if t.flow_run_id == state.state_details.flow_run_id}
    assert names == {"hearts", "videos", "assemble", "validate"}
    assert result["videos"] == 4 and result["success"] and result["splits"] == {"TRAIN": 2, "VAL": 1, "TEST": 1}
    built = root / "synthetic" / "dynamic"
    cli = parts["root"] / "synthetic"  # the CLI's build (the first test's, or made here)
    assert cli.is_dir() or _build(parts).exit_code == 0
    assert {p.name: p.read_bytes() for p in (built / "Videos").iterdir()} == \
        {p.name: p.read_bytes() for p in (cli / "Videos").iterdir()}


def test_an_unreadable_ef_judge_fails_before_any_compute(parts, monkeypatch):
    monkeypatch.chdir(parts["root"])
    missing = parts["root"] / "no_judge.json"
    result = _build(parts, "--ef-judge", str(missing), "--out", str(parts["root"] / "bad"))
    assert isinstance(result.exception, DataError) and str(missing) in str(result.exception)
    assert not (parts["root"] / "bad").exists() and not (parts["root"] / "bad.work").exists()
