"""Dataset preparation (Dynamic, Pediatric): harmonised FileList, verified frame facts, idempotence,
resume by content hash, atomic output, exclusion, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from echo_core.data.filelist import read_filelist
from echo_core.data.jobs import open_staging, read_exclude, run_job, staging_dir
from echo_core.data.prepare import PLANNERS, PrepareConfig, plan_prepare, prepare_dataset
from echo_core.data.video import probe_video, write_video
from echo_core.errors import DataError, UsageError, VideoReadError
from echo_core.utils.hashing import sha256_file, sha256_tree

FPS = (25.0, 50.0, 30.0, 25.0, 50.0, 30.0)


def _clip(seed: int, frames: int, size: int = 32) -> np.ndarray:
    """Smooth moving blob (MJPEG-friendly), (T, H, W) uint8."""
    yy, xx = np.mgrid[:size, :size]
    t = np.arange(frames)[:, None, None]
    cx = size / 2 + (size / 4) * np.sin(t / 3 + seed)
    return (40 + 180 * np.exp(-((xx - cx) ** 2 + (yy - size / 2) ** 2) / 40)).astype(np.uint8)


def _write_videos(videos: Path, n: int) -> list[tuple[str, int, float]]:
    videos.mkdir(parents=True)
    facts = []
    for i in range(n):
        frames = 12 + 3 * i
        write_video(videos / f"v{i}.avi", _clip(i, frames), FPS[i])
        facts.append((f"v{i}", frames, FPS[i]))
    return facts


@pytest.fixture
def raw_pediatric(tmp_path: Path) -> Path:
    """Raw EchoNet-Pediatric view folder: FileName with .avi, Split = fold, per-point tracings."""
    root = tmp_path / "raw_ped"
    facts = _write_videos(root / "Videos", 6)
    folds = [0, 7, 8, 9, 3, 9]
    pd.DataFrame({
        "FileName": [f"{name}.avi" for name, _, _ in facts], "EF": [55.0, 61.5, 40.0, 70.0, 58.0, 62.0],
        "Sex": ["F", "M", "F", "M", "F", "M"], "Age": [3, 7, 12, 1, 15, 9], "Split": folds,
    }).to_csv(root / "FileList.csv", index=False)
    pd.DataFrame({"FileName": ["v0.avi", "v0.avi", "v5.avi"], "X": [1.0, 2.0, 3.0], "Y": [4.0, 5.0, 6.0],
                  "Frame": [0, 0, 5]}).to_csv(root / "VolumeTracings.csv", index=False)
    return root


@pytest.fixture
def raw_dynamic(tmp_path: Path) -> Path:
    """Raw EchoNet-Dynamic folder whose frame facts are stale (FPS 0, wrong counts) on purpose."""
    root = tmp_path / "raw_dyn"
    facts = _write_videos(root / "Videos", 4)
    pd.DataFrame({
        "FileName": [name for name, _, _ in facts], "EF": [55.0, 60.0, 35.0, 65.0], "ESV": [20.0, 21, 22, 23],
        "EDV": [50.0, 51, 52, 53], "FrameHeight": [112] * 4, "FrameWidth": [112] * 4, "FPS": [0, 50, 50, 50],
        "NumberOfFrames": [1, 2, 3, 4], "Split": ["TRAIN", "TRAIN", "VAL", "TEST"], "Extra": ["a", "b", "c", "d"],
    }).to_csv(root / "FileList.csv", index=False)
    pd.DataFrame({"FileName": ["v1.avi", "v3.avi"], "X1": [1.0, 2.0], "Y1": [1.0, 2.0], "X2": [3.0, 4.0],
                  "Y2": [3.0, 4.0], "Frame": [0, 1]}).to_csv(root / "VolumeTracings.csv", index=False)
    return root


def _assert_facts_match_probe(dst: Path) -> pd.DataFrame:
    df = read_filelist(dst / "FileList.csv")
    for row in df.itertuples():
        info = probe_video(dst / "Videos" / f"{row.FileName}.avi", count=True)
        measured = (info.height, info.width, info.num_frames, info.fps)
        assert (row.FrameHeight, row.FrameWidth, row.NumberOfFrames, row.FPS) == measured
    return df


def test_dynamic_harmonised_filelist_with_verified_facts(raw_dynamic: Path, tmp_path: Path):
    dst = tmp_path / "prepared"
    report = prepare_dataset("dynamic", raw_dynamic, dst)
    df = _assert_facts_match_probe(dst)
    assert list(df.columns) == ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS",
                                "NumberOfFrames", "Split", "Extra"]
    assert df["FPS"].tolist() == [25.0, 50.0, 30.0, 25.0]  # stale FileList values replaced by the real ones
    assert df["NumberOfFrames"].tolist() == [12, 15, 18, 21]
    assert df["Split"].tolist() == ["TRAIN", "TRAIN", "VAL", "TEST"] and df["Extra"].tolist() == list("abcd")
    for i in range(4):  # a copy, byte for byte
        assert sha256_file(dst / "Videos" / f"v{i}.avi") == sha256_file(raw_dynamic / "Videos" / f"v{i}.avi")
    tracings = pd.read_csv(dst / "VolumeTracings.csv")
    assert tracings["FileName"].tolist() == ["v1", "v3"]  # harmonised like the FileList
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["kind"] == "dynamic" and manifest["count"] == 4 == report.count
    assert manifest["source"]["path"] == str(raw_dynamic.absolute()) and len(manifest["source"]["sha256"]) == 64
    without_manifest = shutil.copytree(dst, tmp_path / "copy", ignore=shutil.ignore_patterns("manifest.json"))
    assert manifest["sha256"] == report.sha256 == sha256_tree(without_manifest)
    assert manifest["code_version"]["echoforge"] and manifest["params"] == {"link": False}
    assert not staging_dir(dst).exists()


def test_pediatric_splits_folds_view_and_facts(raw_pediatric: Path, tmp_path: Path):
    dst = tmp_path / "a4c"
    prepare_dataset("pediatric-a4c", raw_pediatric, dst)
    df = _assert_facts_match_probe(dst)
    assert df["FileName"].tolist() == [f"v{i}" for i in range(6)]
    assert df["Fold"].tolist() == [0, 7, 8, 9, 3, 9]
    assert df["Split"].tolist() == ["TRAIN", "TRAIN", "VAL", "TEST", "TRAIN", "TEST"]
    assert (df["View"] == "A4C").all()
    assert list(df.columns)[:7] == ["FileName", "EF", "Sex", "Age", "Split", "Fold", "View"]
    assert read_filelist(dst / "FileList.csv", "pediatric", prepared=True) is not None  # prepared schema
    assert pd.read_csv(dst / "VolumeTracings.csv")["FileName"].tolist() == ["v0", "v0", "v5"]


def test_pediatric_is_idempotent(raw_pediatric: Path, tmp_path: Path):
    once = prepare_dataset("pediatric-psax", raw_pediatric, tmp_path / "once")
    twice = prepare_dataset("pediatric-psax", tmp_path / "once", tmp_path / "twice")
    assert once.sha256 == twice.sha256
    for name in ("FileList.csv", "VolumeTracings.csv"):
        assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "twice" / name).read_bytes()
    assert sha256_tree(tmp_path / "once" / "Videos") == sha256_tree(tmp_path / "twice" / "Videos")


def test_pediatric_refuses_hand_edited_split(raw_pediatric: Path, tmp_path: Path):
    prepare_dataset("pediatric-a4c", raw_pediatric, tmp_path / "once")
    fl = tmp_path / "once" / "FileList.csv"
    df = pd.read_csv(fl)
    df.loc[2, "Split"] = "TRAIN"  # fold 8 says VAL
    df.to_csv(fl, index=False)
    with pytest.raises(DataError, match=r"line 4 \(FileName 'v2'\).*disagrees with Fold"):
        prepare_dataset("pediatric-a4c", tmp_path / "once", tmp_path / "twice")


def test_pediatric_refuses_a_folder_of_the_other_view(raw_pediatric: Path, tmp_path: Path):
    prepare_dataset("pediatric-a4c", raw_pediatric, tmp_path / "a4c")
    with pytest.raises(DataError, match=r"field View: 'A4C', but preparing as PSAX"):
        prepare_dataset("pediatric-psax", tmp_path / "a4c", tmp_path / "psax")


def test_raw_data_never_modified(raw_pediatric: Path, raw_dynamic: Path, tmp_path: Path):
    before = sha256_tree(raw_pediatric), sha256_tree(raw_dynamic)
    prepare_dataset("pediatric-a4c", raw_pediatric, tmp_path / "a")
    prepare_dataset("dynamic", raw_dynamic, tmp_path / "b", config=PrepareConfig(link=True))
    assert (sha256_tree(raw_pediatric), sha256_tree(raw_dynamic)) == before
    assert os.path.samefile(tmp_path / "b" / "Videos" / "v0.avi", raw_dynamic / "Videos" / "v0.avi")
    with pytest.raises(UsageError, match="never modified in place"):
        prepare_dataset("dynamic", raw_dynamic, raw_dynamic / "prepared")


def test_missing_video_is_an_error_naming_row_and_nothing_is_written(raw_pediatric: Path, tmp_path: Path):
    (raw_pediatric / "Videos" / "v3.avi").unlink()
    dst = tmp_path / "out"
    with pytest.raises(DataError, match=r"FileList.csv line 5 \(FileName 'v3'\).*v3.avi"):
        prepare_dataset("pediatric-a4c", raw_pediatric, dst)
    assert not dst.exists()


def test_unreadable_video_fails_and_old_output_is_untouched(raw_pediatric: Path, tmp_path: Path):
    dst = tmp_path / "out"
    prepare_dataset("pediatric-a4c", raw_pediatric, dst)
    old = sha256_tree(dst)
    (raw_pediatric / "Videos" / "v4.avi").write_bytes(b"not a video at all")
    with pytest.raises(VideoReadError, match=r"line 6 \(FileName 'v4'\)"):
        prepare_dataset("pediatric-a4c", raw_pediatric, dst)
    assert sha256_tree(dst) == old
    assert staging_dir(dst).is_dir()  # kept for resume after the fix


def test_exclude_list_is_honoured_and_reported(raw_pediatric: Path, tmp_path: Path):
    quarantine = tmp_path / "quarantine.csv"
    pd.DataFrame({"FileName": ["v1.avi", "v4", "ghost"], "reason": ["x", "y", "z"]}).to_csv(quarantine, index=False)
    names = read_exclude(quarantine)
    assert names == {"v1", "v4", "ghost"}
    (raw_pediatric / "Videos" / "v4.avi").write_bytes(b"broken, but excluded")
    dst = tmp_path / "out"
    report = prepare_dataset("pediatric-a4c", raw_pediatric, dst, exclude=names)
    df = read_filelist(dst / "FileList.csv")
    assert df["FileName"].tolist() == ["v0", "v2", "v3", "v5"]
    assert sorted(p.stem for p in (dst / "Videos").iterdir()) == ["v0", "v2", "v3", "v5"]
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["excluded"] == {"count": 2, "file_names": ["v1", "v4"], "not_in_filelist": ["ghost"]}
    assert "ghost" in report.summary()


def test_resume_reuses_staged_work_and_gives_identical_output(raw_pediatric: Path, tmp_path: Path):
    fresh = prepare_dataset("pediatric-a4c", raw_pediatric, tmp_path / "fresh")
    dst = tmp_path / "resumed"
    plan = plan_prepare("pediatric-a4c", raw_pediatric, dst)
    staging = open_staging(plan.dst)
    half = [run_job(job, staging) for job in plan.jobs[:3]]  # ... then the process was killed
    assert not any(r["reused"] for r in half) and not dst.exists()
    (staging / "Videos" / ".v5.crash.tmp.avi").write_bytes(b"half-written by a killed writer")
    (staging / "Videos" / "stale_from_old_plan.avi").write_bytes(b"x")
    report = prepare_dataset("pediatric-a4c", raw_pediatric, dst)
    assert report.reused == 3
    assert report.sha256 == fresh.sha256
    assert sorted(p.name for p in (dst / "Videos").iterdir()) == [f"v{i}.avi" for i in range(6)]
    assert not staging_dir(dst).exists()


def test_resume_redoes_jobs_whose_source_content_changed(raw_pediatric: Path, tmp_path: Path):
    dst = tmp_path / "out"
    plan = plan_prepare("pediatric-a4c", raw_pediatric, dst)
    staging = open_staging(plan.dst)
    first = run_job(plan.jobs[0], staging)
    assert run_job(plan.jobs[0], staging)["reused"]
    write_video(raw_pediatric / "Videos" / "v0.avi", _clip(9, 20), 25.0)  # new content, same name
    again = run_job(plan.jobs[0], staging)
    assert not again["reused"] and again["row"]["NumberOfFrames"] == 20 != first["row"]["NumberOfFrames"]
    assert again["source_sha256"] != first["source_sha256"]


def test_unknown_kind_is_an_error_naming_the_planners(raw_dynamic: Path, tmp_path: Path):
    from pipelines.commands.data_prepare import PrepareKind

    assert list(PLANNERS) == ["dynamic", "pediatric-a4c", "pediatric-psax", "cardiacnet"]
    assert [k.value for k in PrepareKind] == list(PLANNERS)  # the CLI's choices (kept import-free for speed)
    with pytest.raises(UsageError, match="unknown prepare kind 'echonet-lvh'") as err:
        prepare_dataset("echonet-lvh", raw_dynamic, tmp_path / "out")
    assert err.value.fix == "use one of: dynamic, pediatric-a4c, pediatric-psax, cardiacnet"
    assert not (tmp_path / "out").exists() and not staging_dir(tmp_path / "out").exists()


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_pooled_workers_give_the_same_output(raw_dynamic: Path, tmp_path: Path, pool: str):
    one = prepare_dataset("dynamic", raw_dynamic, tmp_path / "one")
    two = prepare_dataset("dynamic", raw_dynamic, tmp_path / "two", workers=2, pool=pool)
    assert one.sha256 == two.sha256


def test_process_pool_error_names_the_row_and_keeps_the_old_output(raw_pediatric: Path, tmp_path: Path):
    dst = tmp_path / "out"
    prepare_dataset("pediatric-a4c", raw_pediatric, dst, workers=2, pool="process")
    old = sha256_tree(dst)
    (raw_pediatric / "Videos" / "v4.avi").write_bytes(b"not a video at all")
    with pytest.raises(VideoReadError, match=r"line 6 \(FileName 'v4'\)") as err:
        prepare_dataset("pediatric-a4c", raw_pediatric, dst, workers=2, pool="process")
    assert err.value.fix  # the fix travels back from the worker process
    assert sha256_tree(dst) == old


def _die(job, out):
    os.kill(os.getpid(), signal.SIGKILL)  # a worker killed mid-video (OOM killer, kill -9)


def test_a_dead_worker_process_is_a_clear_error_not_a_traceback(tmp_path: Path):
    from echo_core.data.jobs import Job, run_jobs

    source = tmp_path / "src.bin"
    source.write_bytes(b"x")
    jobs = [Job(op=_die, file_name=f"v{i}", source=str(source), output=f"v{i}.bin", row={}, params={},
                where=f"row {i}") for i in range(2)]
    with pytest.raises(DataError, match="a worker process died") as err:
        run_jobs(jobs, open_staging(tmp_path / "out"), workers=2, pool="process", desc="prepare test")
    assert "re-run the same command" in err.value.fix


def test_unknown_pool_is_a_usage_error(raw_dynamic: Path, tmp_path: Path):
    with pytest.raises(UsageError, match="unknown pool 'gpu'"):
        prepare_dataset("dynamic", raw_dynamic, tmp_path / "out", workers=2, pool="gpu")


def test_cli_prepare_and_reference_params(raw_pediatric: Path, tmp_path: Path):
    from pipelines.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  seed: 3\n  link: true\n")
    dst = tmp_path / "cli_out"
    result = CliRunner().invoke(app, ["data", "prepare", "--kind", "pediatric-a4c", str(raw_pediatric),
                                      "--out", str(dst), "--params", str(params), "--workers", "2",
                                      "--pool", "process"])
    assert result.exit_code == 0, result.output
    assert "6 videos" in result.output
    assert json.loads((dst / "manifest.json").read_text())["params"] == {"link": True}


def test_cli_error_is_one_line_without_traceback(raw_pediatric: Path, tmp_path: Path):
    (raw_pediatric / "Videos" / "v2.avi").unlink()
    proc = subprocess.run([sys.executable, "-c", "from pipelines.cli import main; main()", "data", "prepare",
                           "--kind", "pediatric-a4c", str(raw_pediatric), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "FileName 'v2'" in proc.stderr
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ on phantom datasets


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory):
    from echo_core.data.phantom.datasets import generate_dataset

    root = tmp_path_factory.mktemp("phantom")
    return lambda kind: generate_dataset(kind, root / kind, num_videos=6, seed=0, num_frames=20)


def test_phantom_dynamic(phantom, tmp_path: Path):
    raw = phantom("dynamic")
    before = sha256_tree(raw)
    prepare_dataset("dynamic", raw, tmp_path / "dyn")
    df = _assert_facts_match_probe(tmp_path / "dyn")
    raw_df = pd.read_csv(raw / "FileList.csv")
    assert list(df.columns) == list(raw_df.columns)
    assert df["Split"].tolist() == raw_df["Split"].tolist() and df["EF"].tolist() == raw_df["EF"].tolist()
    tracings = pd.read_csv(tmp_path / "dyn" / "VolumeTracings.csv")
    assert set(tracings["FileName"]) == set(df["FileName"])  # ".avi" removed, as in the FileList
    assert sha256_tree(raw) == before


@pytest.mark.parametrize("kind", ["pediatric-a4c", "pediatric-psax"])
def test_phantom_pediatric_and_idempotence(phantom, tmp_path: Path, kind: str):
    raw = phantom(kind)
    once = prepare_dataset(kind, raw, tmp_path / "once")
    df = _assert_facts_match_probe(tmp_path / "once")
    folds = pd.read_csv(raw / "FileList.csv")["Split"]
    assert df["Fold"].tolist() == folds.tolist()
    assert df["Split"].tolist() == ["TRAIN" if f <= 7 else "VAL" if f == 8 else "TEST" for f in folds]
    assert not df["FileName"].str.endswith(".avi").any()
    assert (df["View"] == kind.split("-")[1].upper()).all()
    twice = prepare_dataset(kind, tmp_path / "once", tmp_path / "twice")
    assert twice.sha256 == once.sha256
    assert (tmp_path / "once" / "FileList.csv").read_bytes() == (tmp_path / "twice" / "FileList.csv").read_bytes()
