"""The folder evaluator end to end on a small real phantom project: the EF judge file, the controls table
(the evaluator judged by its own controls) and `echoforge evaluate samples` exit codes and errors.

One module fixture builds 32 dynamic phantoms (TRAIN 24 / VAL 4 / TEST 4, 64 frames at 50 fps), prepares
them, writes the 16-frame reference set, fits the EF judge and runs the controls once, all through the CLI.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from echo_core.data.filelist import read_filelist, write_filelist
from echo_core.data.jobs import locate
from echo_core.data.video import read_video
from echo_core.evaluation.judge_file import JUDGE_FILE, load_ef_judge

# the project fixture takes ~50-70 s on 2 shared cores (it judges six control folders): its tests are slow;
# the bad-input tests need no project and run in the fast suite
slow = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DS = "dynamic"
BOUNDS = {"fd_fallback_ratio": 1.5, "fvd16_fallback_ratio": 1.5, "ef_adherence_mae": 8.0}
CAUGHT_BY = {"motionless": "fvd16_fallback_ratio", "shuffled": "fvd16_fallback_ratio",
             "blurred": "fd_fallback_ratio", "noisy": "fd_fallback_ratio", "ef_permuted": "ef_adherence_mae"}
HELDOUT = 8  # VAL 4 + TEST 4 of 32


def _write_params(path: Path, **assess_overrides) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["evaluate"]["sample"]["num_frames"] = 40  # 1.25 s at 32 fps: one heart cycle for the EF judge
    params["evaluate"]["assess"] = {"resamples": 200,
                                    "bounds": {f"{DS}/{k}": {"max": v} for k, v in BOUNDS.items()},
                                    **assess_overrides}
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def _cli(*args: str):
    from pipelines.cli import app

    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def _samples(folder: Path, params: Path, out_root: Path, out: Path):
    return _cli("samples", "--samples", folder, "--dataset", DS, "--params", params, "--out-root", out_root,
                "--out", out)


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The real entry point (typed errors → one message, no traceback): (exit code, stdout + stderr)."""
    from pipelines.cli import main

    monkeypatch.setattr(sys, "argv", ["echoforge", "evaluate", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The phantom project, judged once; every test of the module runs inside its one-thread limits."""
    import torch
    from threadpoolctl import threadpool_limits

    # on 2 shared cores a 2-thread OpenBLAS spin-waits: the bootstrap's small SVDs run ~9x slower
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield _build_project(tmp_path_factory.mktemp("assess"))
    torch.set_num_threads(torch_threads)


def _build_project(root: Path) -> SimpleNamespace:
    from echo_core.data.phantom.datasets import generate_dataset
    from echo_core.data.prepare import prepare_dataset
    from echo_core.data.reference import build_reference

    out = root / "outputs"
    prepared, reference = out / "prepared" / DS, out / "reference" / DS
    generate_dataset(DS, root / "raw", num_videos=32, seed=0, fps=50.0, num_frames=64)
    prepare_dataset(DS, root / "raw", prepared)
    params = _write_params(root / "params.yaml")
    ref = yaml.safe_load(params.read_text(encoding="utf-8"))["reference"]
    build_reference(prepared, reference, frames=16, fps=ref["fps"], size=ref["size"], seed=ref["seed"])
    common = ("--dataset", DS, "--out-root", out, "--params", params)
    judge = _cli("judge", *common, "--metrics-dir", root / "metrics")
    assert judge.exit_code == 0, judge.output
    controls = _cli("controls", *common, "--metrics-dir", root / "metrics")
    return SimpleNamespace(root=root, out=out, prepared=prepared, reference=reference, params=params,
                           controls_run=controls, controls=out / "controls" / DS,
                           judge_file=out / "judges" / DS / JUDGE_FILE,
                           table=json.loads((root / "metrics" / "controls" / f"{DS}.json").read_text("utf-8")))


# ------------------------------------------------------------------------------------------ 1. judge file


@slow
def test_judge_file_carries_its_held_out_competence_and_round_trips(project):
    record = json.loads(project.judge_file.read_text(encoding="utf-8"))
    comp = record["competence"]
    df = read_filelist(project.prepared / "FileList.csv")
    held = df[df["Split"].astype(str).str.upper().isin(["VAL", "TEST"])]
    assert len(held) == HELDOUT and comp["n"] == HELDOUT and len(record["heldout"]) == HELDOUT
    assert comp["n_train"] + comp["train_unmeasured"] == len(df) - HELDOUT
    for name in ("r2", "mae"):
        assert np.isfinite([comp[name], comp[f"{name}_ci_low"], comp[f"{name}_ci_high"]]).all()
        assert comp[f"{name}_ci_low"] <= comp[name] <= comp[f"{name}_ci_high"], name
    assert comp["bar_r2"] == 0.8  # the params default, passed through
    assert comp["competent"] is (comp["r2"] >= comp["bar_r2"] and comp["unmeasured"] <= 0.1 * comp["n"])
    assert comp["competent"], comp  # a 32-video phantom set is well within the pixel judge's reach

    rows = record["heldout"]
    pred, truth = np.array([r["predicted"] for r in rows], float), np.array([r["EF"] for r in rows], float)
    assert comp["mae"] == pytest.approx(np.abs(pred - truth).mean())
    assert comp["r2"] == pytest.approx(1 - np.square(truth - pred).sum() / np.square(truth - truth.mean()).sum())

    loaded = load_ef_judge(project.judge_file)
    assert loaded.judge.to_dict() == record["judge"] and loaded.competence == comp
    for row in rows:
        frames, fps = read_video(locate(project.prepared, row["FileName"], "test"), gray=True, size=112)
        assert loaded.predict_one(frames, fps) == pytest.approx(row["predicted"], rel=1e-9, abs=1e-9)


# ------------------------------------------------------------------------------------------ 2. controls


@slow
def test_controls_table_positive_passes_and_each_negative_fails_on_its_metric(project):
    assert project.controls_run.exit_code == 0, project.controls_run.output
    table = project.table
    rows = {r["control"]: r for r in table["controls"]}
    assert set(rows) == {"positive", *CAUGHT_BY}  # no class column: class_permuted does not apply
    assert table["bounds"] == {k: {"min": None, "max": v} for k, v in BOUNDS.items()}
    positive = rows["positive"]
    assert positive["verdict"] == "pass" and positive["failing_metrics"] == [], positive["reasons"]
    for name, metric in CAUGHT_BY.items():
        row = rows[name]
        assert row["expected"] == "fail" and row["verdict"] == "fail", (name, row["reasons"])
        assert metric in row["failing_metrics"], (name, row["failing_metrics"], row["reasons"])
    for row in rows.values():
        assert row["as_expected"] and row["n_videos"] == HELDOUT, row["control"]
    assert table["evaluator_ok"] is True and table["not_as_expected"] == []
    png = project.root / "metrics" / "controls" / f"{DS}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


# ------------------------------------------------------------------------------------------ 3. samples CLI


@slow
def test_samples_on_the_positive_control_pass_with_metrics_and_cis(project, tmp_path):
    result = _samples(project.controls / "positive", project.params, project.out, tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert payload["verdict"] == "pass" and payload["failures"] == [] and payload["n_videos"] == HELDOUT
    assert set(BOUNDS) <= set(payload["metrics"])
    for name, est in payload["metrics"].items():
        assert est["n"] == HELDOUT, name
        if name in BOUNDS:
            assert est["ci_low"] <= est["ci_high"] and est["value"] <= BOUNDS[name], (name, est)
    # the same folder, code and seed as the controls run: the same numbers
    positive = next(r for r in project.table["controls"] if r["control"] == "positive")
    assert payload["metrics"] == positive["metrics"]


@slow
def test_samples_on_the_motionless_control_fail_naming_metric_and_bound(project, tmp_path):
    result = _samples(project.controls / "motionless", project.params, project.out, tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip().startswith("- fvd16_fallback_ratio")]
    assert lines and "> max 1.5" in lines[0], result.output
    payload = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert payload["verdict"] == "fail" and any("fvd16_fallback_ratio" in f for f in payload["failures"])


@slow
def test_a_judge_below_its_bar_makes_ef_adherence_inconclusive_never_pass(project, tmp_path):
    out2 = tmp_path / "outputs"
    for sub in ("prepared", "reference"):
        (out2 / sub).mkdir(parents=True)
        (out2 / sub / DS).symlink_to(project.out / sub / DS, target_is_directory=True)
    params = _write_params(tmp_path / "params.yaml", ef_judge_min_r2=1.01)
    fitted = _cli("judge", "--dataset", DS, "--out-root", out2, "--params", params, "--metrics-dir", tmp_path / "m")
    assert fitted.exit_code == 0, fitted.output
    comp = json.loads((out2 / "judges" / DS / JUDGE_FILE).read_text(encoding="utf-8"))["competence"]
    first = json.loads(project.judge_file.read_text(encoding="utf-8"))["competence"]
    assert comp["bar_r2"] == 1.01 and comp["competent"] is False and comp["r2"] == first["r2"]

    result = _samples(project.controls / "positive", params, out2, tmp_path / "r.json")
    assert result.exit_code == 3, result.output
    payload = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    verdicts = {v["name"]: v for v in payload["verdicts"]}
    assert payload["verdict"] == "inconclusive" and payload["failures"] == []
    assert verdicts["ef_adherence_mae"]["verdict"] == "inconclusive"
    assert "competence bar" in verdicts["ef_adherence_mae"]["reason"]
    assert "BELOW its bar" in result.output


# ------------------------------------------------------------------------------------------ 4. too few videos


@slow
@pytest.mark.parametrize("control", ["positive", "motionless"])
def test_fewer_videos_than_min_videos_is_inconclusive(project, tmp_path, control):
    folder = tmp_path / control
    shutil.copytree(project.controls / control, folder)
    write_filelist(read_filelist(folder / "FileList.csv").head(3), folder / "FileList.csv")
    result = _samples(folder, project.params, project.out, tmp_path / "r.json")
    assert result.exit_code == 3, result.output  # a spoiled folder too: 3 videos cannot fail or pass
    payload = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert payload["verdict"] == "inconclusive" and payload["n_videos"] == 3
    assert any("min_videos 8" in r for r in payload["inconclusive"]), payload["inconclusive"]


# ------------------------------------------------------------------------------------------ 5-6. bad input


def test_a_folder_without_filelist_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "jpg").mkdir()
    params = _write_params(tmp_path / "params.yaml")
    code, text = _main(monkeypatch, capsys, "samples", "--samples", tmp_path, "--dataset", DS,
                       "--params", params, "--out-root", tmp_path / "outputs")
    assert code != 0 and str(tmp_path / "FileList.csv") in text and "Traceback" not in text


def test_a_row_without_its_jpg_folder_is_an_error_naming_the_folder(tmp_path, monkeypatch, capsys):
    from echo_core.data.video import write_jpg_tree

    folder, names = tmp_path / "samples", [f"s{i}" for i in range(HELDOUT)]
    folder.mkdir()
    write_filelist(pd.DataFrame({"FileName": names, "EF": 50.0, "FPS": 32.0}), folder / "FileList.csv")
    for name in names[:-1]:  # every row but the last has its frames
        write_jpg_tree(folder / "jpg" / name, np.zeros((4, 16, 16), np.uint8))
    params = _write_params(tmp_path / "params.yaml")
    code, text = _main(monkeypatch, capsys, "samples", "--samples", folder, "--dataset", DS,
                       "--params", params, "--out-root", tmp_path / "outputs", "--out", tmp_path / "r.json")
    assert code != 0 and str(folder / "jpg" / names[-1]) in text and "Traceback" not in text
    assert not (tmp_path / "r.json").exists()


def test_an_unknown_assess_key_is_rejected_naming_it(tmp_path, monkeypatch, capsys):
    params = _write_params(tmp_path / "params.yaml", resampels=300)
    code, text = _main(monkeypatch, capsys, "samples", "--samples", tmp_path, "--dataset", DS,
                       "--params", params, "--out-root", tmp_path / "outputs")
    assert code == 2 and "assess.resampels" in text and "Traceback" not in text
