"""The folder evaluator end to end on a small real phantom project: the EF judge file, the controls table
(the evaluator judged by its own controls) and `echoforge evaluate samples` exit codes and errors.

One module fixture builds 32 dynamic phantoms (TRAIN 24 / VAL 4 / TEST 4, 64 frames at 50 fps), prepares
them, writes the 16-frame reference set, fits the EF judge and runs the controls once, all through the CLI.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from support.threads import one_torch_thread
from typer.testing import CliRunner

from echo_core.data.filelist import read_filelist, write_filelist
from echo_core.data.jobs import locate
from echo_core.data.video import read_video
from echo_core.evaluation.judge_file import JUDGE_FILE, load_ef_judge
from echo_core.utils.hashing import sha256_file

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
    from threadpoolctl import threadpool_limits

    # on 2 shared cores a 2-thread OpenBLAS spin-waits: the bootstrap's small SVDs run ~9x slower
    with one_torch_thread():
        root = tmp_path_factory.mktemp("assess")
        with pytest.MonkeyPatch.context() as mp, threadpool_limits(1):
            # its own MLflow store, so the registry tests count only this module's judges and controls runs
            mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
            mp.chdir(root)  # MLflow's staging folder goes under the project, not the repository
            yield _build_project(root)


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
                           judge_output=judge.output, controls_run=controls, controls=out / "controls" / DS,
                           competence=json.loads((root / "metrics" / "judges" / f"{DS}.json").read_text("utf-8")),
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
    fitted = _cli("judge", "--dataset", DS, "--out-root", out2, "--params", params, "--metrics-dir", tmp_path / "m",
                  "--no-track")  # not registered: the registry tests below count this module's judges
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


# ------------------------------------------------------------------------------------------ 5. untrained version


def _echoforge(*args: str):
    from pipelines.cli import app

    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result


@slow
def test_an_untrained_version_fails_the_gate_on_every_bounded_metric(project, tmp_path):
    """The demo's LVDM config trained 2 steps (a model that learned nothing), sampled like the evaluate flow
    samples a version: the gate must refuse it, naming each metric, and never call it inconclusive."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.tiny_lvdm import make_vae_folder

    vae, latents, lvdm, samples = (tmp_path / n for n in ("vae", "latents", "lvdm", "samples"))
    make_vae_folder(vae)  # an untrained VAE as well: the whole version is untrained
    _echoforge("latents", "encode", "--vae", vae, "--dataset", project.prepared, "--out", latents)
    _echoforge("train", "lvdm", "--data", latents, "--out", lvdm, "--params", project.params, "--max-steps", 2,
               "--no-tracking", "--no-register")
    _echoforge("sample", "--model", lvdm / "unet_ema", "--vae", vae, "--out", samples, "--conditioning", latents,
               "--params", project.params, "--num-samples", HELDOUT, "--frames", 40, "--steps", 4,
               "--ef-range", 20, 80, "--formats", "jpg", "--no-track")
    result = _samples(samples, project.params, project.out, tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    payload = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    verdicts = {v["name"]: v["verdict"] for v in payload["verdicts"]}
    assert payload["verdict"] == "fail" and payload["inconclusive"] == []
    assert all(verdicts[name] == "fail" for name in BOUNDS), verdicts


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


# ------------------------------------------------------------------------------------------ 6. the MLflow record
# `echoforge evaluate judge` registers the EF judge with its held-out competence, `echoforge evaluate controls`
# logs its table, an evaluated version names the judge it used, `--no-track` touches no MLflow, and a tracking
# server that is down is said to be down (the fixture ran judge and controls tracked, into its own store).

JUDGE_MODEL = f"echo-ef-{DS}-judge"


def _rcli(root: Path, command: str, *extra: str, metrics: str = "metrics"):
    return _cli(command, "--dataset", DS, "--out-root", root / "outputs", "--params", root / "params.yaml",
                "--metrics-dir", root / metrics, *extra)


def _client():
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import tracking_uri

    return MlflowClient(tracking_uri())


def _runs(experiment: str) -> list:
    exp = _client().get_experiment_by_name(experiment)
    return [] if exp is None else _client().search_runs([exp.experiment_id])


@slow
def test_the_judge_is_registered_with_its_competence(project):
    from pipelines.registry import versions_tagged

    comp, sha = project.competence, sha256_file(project.judge_file)
    (mv,) = _client().search_model_versions(f"name='{JUDGE_MODEL}'")
    assert f"registered {JUDGE_MODEL} version {mv.version}" in project.judge_output
    assert mv.tags["sha256"] == sha and mv.tags["dataset"] == DS and mv.tags["n"] == str(comp["n"]) == "8"
    for key in ("r2", "r2_ci_low", "r2_ci_high", "mae", "mae_ci_low", "mae_ci_high", "bar_r2"):
        assert float(mv.tags[key]) == comp[key], key
    assert mv.tags["competent"] == str(comp["competent"]).lower()
    run = _client().get_run(mv.run_id)
    assert run.data.metrics["r2"] == comp["r2"] and run.data.metrics["competent"] == float(comp["competent"])
    assert run.data.metrics["mae_ci_high"] == comp["mae_ci_high"] and run.data.metrics["n"] == comp["n"]

    import mlflow

    got = Path(mlflow.artifacts.download_artifacts(f"models:/{JUDGE_MODEL}/{mv.version}",
                                                   dst_path=str(project.root / "download")))
    assert sorted(p.name for p in got.iterdir()) == [f"{DS}.json", JUDGE_FILE]
    assert sha256_file(got / JUDGE_FILE) == sha  # the registered version is the very file evaluations read

    again = _rcli(project.root, "judge")  # the same judge again: a new run, no second version
    assert again.exit_code == 0 and f"already registered as {JUDGE_MODEL} version {mv.version}" in again.output
    assert versions_tagged(JUDGE_MODEL, "sha256", sha) == [str(mv.version)] and len(_runs("echo-judges")) == 2


@slow
def test_the_controls_run_has_the_table_the_plot_and_every_estimate(project):
    (run,) = _runs("echo-controls")
    assert run.data.tags["controls_ok"] == str(project.table["evaluator_ok"]).lower()
    assert run.data.tags["not_as_expected"] == ", ".join(project.table["not_as_expected"])
    files = {f.path for f in _client().list_artifacts(run.info.run_id, "controls")}
    assert files == {f"controls/{DS}.json", f"controls/{DS}.png"}
    metrics, measured = run.data.metrics, 0
    for row in project.table["controls"]:
        assert metrics[f"{row['control']}/as_expected"] == float(row["as_expected"])
        for name, est in row["metrics"].items():
            if est["value"] is None:
                continue
            measured += 1
            for key, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"), ("n", "_n")):
                assert metrics[f"{row['control']}/{name}{suffix}"] == pytest.approx(est[key]), (row["control"], name)
    assert measured >= 3 * len(project.table["controls"])  # FD ratio, FVD ratio, EF adherence at least


@slow
def test_an_evaluated_version_names_the_judge_that_judged_it(project):
    from pipelines.judge_registry import record_judge_use
    from pipelines.registry import get_model_version, register_run_artifacts
    from pipelines.tracking import start_run

    with start_run("judge-use-test") as tracker:
        tracker.log_artifact(project.judge_file, "stand-in")  # any registered folder stands for an LVDM version
        run_id = tracker.run_id
    model = "echo-lvdm-judge-use-test"
    version = register_run_artifacts(model, run_id, "stand-in", {})
    value = record_judge_use(model, version, DS, project.judge_file)
    (judge_mv,) = _client().search_model_versions(f"name='{JUDGE_MODEL}'")
    sha, r2 = sha256_file(project.judge_file), project.competence["r2"]
    expected = f"{sha[:12]} r2={r2:.3f} {JUDGE_MODEL} v{judge_mv.version}"
    assert value == expected and get_model_version(model, version).tags == {f"judge.ef.{DS}": expected}
    assert record_judge_use(model, version, "cardiacnet", project.root / "none" / JUDGE_FILE) is None
    assert set(get_model_version(model, version).tags) == {f"judge.ef.{DS}"}


@slow
def test_no_track_touches_no_mlflow_and_still_writes_the_files(project, monkeypatch):
    store = project.root / "untouched" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    for command in ("judge", "controls"):
        result = _rcli(project.root, command, "--no-track", metrics="local")
        assert result.exit_code in (0, 1) and (result.exception is None or isinstance(result.exception, SystemExit))
        assert "MLflow" not in result.output and "registered" not in result.output, result.output
    assert not store.parent.exists()  # no store opened, so nothing logged anywhere
    assert json.loads((project.root / "local" / "judges" / f"{DS}.json").read_text("utf-8")) == project.competence
    for suffix in ("json", "png"):
        assert (project.root / "local" / "controls" / f"{DS}.{suffix}").stat().st_size > 0


@slow
def test_a_tracking_server_that_is_down_is_named_and_the_files_are_kept(project, monkeypatch, tmp_path):
    from echo_core.errors import TrackingError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once instead of after MLflow's backoff
    (tmp_path / "params.yaml").write_text((project.root / "params.yaml").read_text("utf-8"), encoding="utf-8")
    (tmp_path / "outputs" / "prepared").mkdir(parents=True)
    (tmp_path / "outputs" / "prepared" / DS).symlink_to(project.prepared)
    result = _rcli(tmp_path, "judge")
    assert isinstance(result.exception, TrackingError) and result.exception.exit_code == 1, result.output
    message = str(result.exception)
    assert f"http://127.0.0.1:{port}" in message and "the local result is written" in message
    assert "--no-track" in message  # the fix names the way to keep the result local only
    written = tmp_path / "outputs" / "judges" / DS / JUDGE_FILE
    assert str(written) in message and sha256_file(written) == sha256_file(project.judge_file)
