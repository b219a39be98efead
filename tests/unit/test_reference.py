"""Reference sets (StyleGAN-V jpg trees) and jpg export: layout, duration rule, any N, seeded selection,
resampling to 32 fps, resume, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from echo_core.data.export import export_jpg
from echo_core.data.jobs import open_staging, run_job
from echo_core.data.reference import ReferenceConfig, build_reference, plan_reference, select
from echo_core.data.video import write_video
from echo_core.errors import DataError
from echo_core.utils.hashing import sha256_tree

# name, split, fps, frames -> duration; with 16 frames at 32 fps the rule is duration >= 0.5 s
VIDEOS = [
    ("a_long", "TRAIN", 50.0, 60),  # 1.2 s
    ("b_exact", "TRAIN", 32.0, 16),  # 0.5 s: eligible (boundary is inclusive)
    ("c_short", "TRAIN", 25.0, 12),  # 0.48 s: too short
    ("d_val", "VAL", 50.0, 60),  # not TRAIN
    ("e_64fps", "TRAIN", 64.0, 40),  # 0.625 s; frame i has intensity 6*i to check resampling
    ("f_long", "TRAIN", 30.0, 45),  # 1.5 s
    ("g_test", "TEST", 30.0, 45),
]


def _frames(n: int) -> np.ndarray:
    """Frame i is a flat gray image of intensity 6*i (easy to identify after JPEG/MJPEG)."""
    return np.repeat((6 * np.arange(n, dtype=np.uint8))[:, None, None], 24 * 24, axis=1).reshape(n, 24, 24)


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    root = tmp_path / "prepared"
    (root / "Videos").mkdir(parents=True)
    for name, _, fps, n in VIDEOS:
        write_video(root / "Videos" / f"{name}.avi", _frames(n), fps)
    pd.DataFrame([{"FileName": name, "EF": 50.0, "FrameHeight": 24, "FrameWidth": 24, "FPS": fps,
                   "NumberOfFrames": n, "Split": split} for name, split, fps, n in VIDEOS]
                 ).to_csv(root / "FileList.csv", index=False)
    return root


def _tree(dst: Path) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted(dst.iterdir()) if d.is_dir()}


def test_layout_counts_and_duration_rule(prepared: Path, tmp_path: Path):
    dst = tmp_path / "ref16"
    report = build_reference(prepared, dst, frames=16)
    tree = _tree(dst)
    assert list(tree) == ["a_long", "b_exact", "e_64fps", "f_long"]  # TRAIN and >= 0.5 s, sorted
    assert all(files == [f"{i:04d}.jpg" for i in range(16)] for files in tree.values())
    assert sorted(p.name for p in dst.iterdir() if p.is_file()) == ["manifest.json"]
    assert all(len(p.relative_to(dst).parts) == 2 for p in dst.rglob("*.jpg"))  # depth exactly 2
    with Image.open(dst / "a_long" / "0000.jpg") as im:
        assert (im.mode, im.size) == ("RGB", (112, 112))
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["notes"]["videos"] == list(tree) and manifest["count"] == 4 == report.count
    assert manifest["notes"]["eligible"] == 4 and manifest["params"]["frames"] == 16
    assert manifest["params"]["seed"] == 42
    assert len(manifest["sha256"]) == 64 and not report.warnings


def test_frames_are_resampled_to_32_fps(prepared: Path, tmp_path: Path):
    dst = tmp_path / "ref"
    build_reference(prepared, dst, frames=16, max_videos=None, size=24)
    got = [np.asarray(Image.open(dst / "e_64fps" / f"{i:04d}.jpg"))[..., 0].mean() for i in range(16)]
    assert np.allclose(got, 6 * 2 * np.arange(16), atol=3)  # 64 fps -> every other frame


@pytest.mark.parametrize("frames", [1, 7, 20])
def test_any_number_of_frames(prepared: Path, tmp_path: Path, frames: int):
    dst = tmp_path / f"ref{frames}"
    build_reference(prepared, dst, frames=frames, size=24)
    eligible = {n for n, s, fps, k in VIDEOS if s == "TRAIN" and k / fps >= frames / 32}
    assert set(_tree(dst)) == eligible
    assert all(len(files) == frames for files in _tree(dst).values())


def test_seeded_selection_and_warning_when_too_few(prepared: Path, tmp_path: Path):
    names = [f"v{i:02d}" for i in range(20)]
    assert select(names, 5, seed=3) == select(reversed(names), 5, seed=3)  # input order is irrelevant
    assert select(names, 5, seed=3) == sorted(select(names, 5, seed=3))
    assert len({tuple(select(names, 5, seed=s)) for s in range(5)}) > 1
    one = build_reference(prepared, tmp_path / "one", frames=16, max_videos=2, seed=7, size=24)
    two = build_reference(prepared, tmp_path / "two", frames=16, max_videos=2, seed=7, size=24)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two") and one.sha256 == two.sha256
    many = build_reference(prepared, tmp_path / "many", frames=16, max_videos=50, size=24)
    assert many.count == 4 and "only 4 TRAIN videos" in many.warnings[0]
    assert json.loads((tmp_path / "many" / "manifest.json").read_text())["warnings"] == many.warnings


def test_no_eligible_video_is_an_error(prepared: Path, tmp_path: Path):
    with pytest.raises(DataError, match="no TRAIN video .* lasts 1000 frames"):
        build_reference(prepared, tmp_path / "x", frames=1000)
    assert not (tmp_path / "x").exists()


def test_resume_reuses_clips(prepared: Path, tmp_path: Path):
    dst = tmp_path / "ref"
    plan = plan_reference(prepared, dst, config=ReferenceConfig(frames=16, size=24))
    staging = open_staging(plan.dst)
    run_job(plan.jobs[0], staging)
    report = build_reference(prepared, dst, frames=16, size=24)
    assert report.reused == 1 and report.count == 4


def test_export_jpg_layout_and_filelist(prepared: Path, tmp_path: Path):
    dst = tmp_path / "jpg"
    report = export_jpg(prepared, dst, splits=["VAL", "TEST"], size=16, fps=25.0)
    assert _tree(dst) == {"d_val": [f"{i:04d}.jpg" for i in range(30)],  # 1.2 s at 25 fps
                          "g_test": [f"{i:04d}.jpg" for i in range(38)]}  # 1.5 s at 25 fps
    df = pd.read_csv(dst / "FileList.csv")
    assert df["FileName"].tolist() == ["d_val", "g_test"] and (df["FPS"] == 25.0).all()
    assert df["NumberOfFrames"].tolist() == [30, 38] and (df["FrameHeight"] == 16).all()
    assert report.count == 2 == json.loads((dst / "manifest.json").read_text())["count"]
    with Image.open(dst / "d_val" / "0000.jpg") as im:
        assert (im.mode, im.size) == ("RGB", (16, 16))


def test_cli_reference_and_export(prepared: Path, tmp_path: Path):
    from pipelines.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("reference:\n  fps: 32.0\n  size: 24\n  seed: 1\n")
    runner = CliRunner()
    result = runner.invoke(app, ["data", "reference", str(prepared), "--out", str(tmp_path / "r"),
                                 "--frames", "8", "--max-videos", "3", "--params", str(params)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["count"] == 3 and manifest["params"]["size"] == 24 and manifest["params"]["seed"] == 1
    result = runner.invoke(app, ["data", "export-jpg", str(prepared), "--out", str(tmp_path / "j"),
                                 "--split", "TEST"])
    assert result.exit_code == 0, result.output
    assert _tree(tmp_path / "j") == {"g_test": [f"{i:04d}.jpg" for i in range(45)]}


def test_reference_on_a_prepared_phantom(tmp_path: Path):
    from echo_core.data.phantom.datasets import generate_dataset
    from echo_core.data.prepare import prepare_dataset

    raw = generate_dataset("dynamic", tmp_path / "raw", num_videos=6, seed=1, num_frames=20, fps=50.0)
    prepare_dataset("dynamic", raw, tmp_path / "prepared")
    report = build_reference(tmp_path / "prepared", tmp_path / "ref", frames=12)  # 20 frames @50 fps = 0.4 s
    train = pd.read_csv(tmp_path / "prepared" / "FileList.csv").query("Split == 'TRAIN'")["FileName"]
    assert report.count == len(train) and set(_tree(tmp_path / "ref")) == set(train)
    assert all(len(files) == 12 for files in _tree(tmp_path / "ref").values())


def test_prepare_reference_and_export_share_one_manifest_schema(tmp_path: Path):
    """One schema for every staged output: same keys; `sha256` is the tree without the manifest."""
    from echo_core.data.phantom.datasets import generate_dataset
    from echo_core.data.prepare import prepare_dataset

    raw = generate_dataset("dynamic", tmp_path / "raw", num_videos=4, seed=2, num_frames=20, fps=32.0)
    reports = {"dynamic": prepare_dataset("dynamic", raw, tmp_path / "prepared")}
    reports["reference"] = build_reference(tmp_path / "prepared", tmp_path / "ref", frames=8, size=24)
    reports["jpg-export"] = export_jpg(tmp_path / "prepared", tmp_path / "jpg", size=24)
    keys = {"kind", "layout", "source", "params", "count", "excluded", "notes", "warnings", "code_version", "sha256"}
    for kind, report in reports.items():
        dst = Path(report.dst)
        manifest = json.loads((dst / "manifest.json").read_text())
        assert set(manifest) == keys and manifest == report.manifest and manifest["kind"] == kind
        assert set(manifest["source"]) == {"path", "sha256", "files"} and manifest["count"] == report.count
        bare = shutil.copytree(dst, tmp_path / f"bare-{kind}", ignore=shutil.ignore_patterns("manifest.json"))
        assert manifest["sha256"] == sha256_tree(bare)
