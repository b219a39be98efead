"""Batch generation from a tiny real bundle: conditioning sources, every output format, FileList truth,
resume, and serving-request validation (without a server)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from support.tiny_lvdm import make_bundle

from echo_core.data.video import probe_video
from echo_core.errors import DataError, UsageError
from echo_core.generation.conditions import (
    ConditionsConfig,
    list_frame_sources,
    load_latent_frame,
    plan_samples,
    read_conditions_csv,
)
from echo_core.generation.default_frame import read_frame_png
from echo_core.generation.generate import SampleConfig, generate_samples
from echo_core.generation.pipeline import DEFAULT_FRAME_FILE, load_pipeline
from echo_core.generation.requests import ServingLimits, decode_frame_png, handle_request, parse_params
from echo_core.generation.writers import parse_formats
from echo_core.latents.store import LatentMeta, write_latents

torch.set_num_threads(2)
FAST = {"num_frames": 5, "steps": 1, "sampler": "ddim", "fps": 25.0, "device": "cpu"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def pipe(bundle):
    return load_pipeline(bundle)


def _latent_store(root: Path) -> Path:
    meta = LatentMeta(fps=25.0, source_sha256="x", scaling_factor=0.5, mode="mean")
    write_latents(root / "Latents" / "vid1.safetensors", torch.randn(6, 4, 14, 14), meta)
    (root / "Latents" / "notes.txt").write_text("stray file, ignored")
    return root


def _png_b64(frame: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_generation_outputs_filelist_and_resume(pipe, tmp_path):
    store = _latent_store(tmp_path / "store")
    cfg = SampleConfig(**FAST, num_samples=3, batch_size=2, seed=11,
                       formats=["mp4", "avi", "gif", "jpg", "png", "safetensors"],
                       conditions=ConditionsConfig(ef_range=(20, 80)))
    out = tmp_path / "out"
    report = generate_samples(pipe, cfg, out, conditioning=store, model={"id": "test"})
    assert (report.generated, report.skipped) == (3, 0)  # 1 conditioning file < batch size: cycled, no hang
    df = pd.read_csv(out / "FileList.csv")
    assert list(df["FileName"]) == ["sample_000000", "sample_000001", "sample_000002"]
    assert (df["FrameHeight"] == 112).all() and (df["FrameWidth"] == 112).all()
    assert (df["NumberOfFrames"] == 5).all() and (df["Split"] == "GENERATED").all()
    assert list(df["Seed"]) == [11, 12, 13] and (df["CondType"] == "ef").all()
    assert df["EF"].between(20, 80).all() and (df["ConditioningFile"] == "vid1.safetensors").all()
    assert df["FPS"].iloc[0] == pytest.approx(probe_video(out / "mp4" / "sample_000000.mp4").fps)
    assert probe_video(out / "avi" / "sample_000001.avi").fps == pytest.approx(25.0)
    assert sorted(p.name for p in (out / "jpg" / "sample_000002").iterdir()) == [f"{i:04d}.jpg" for i in range(5)]
    assert len(list((out / "png" / "sample_000000").glob("*.png"))) == 5
    params = json.loads((out / "generation_params.json").read_text())
    assert params["status"] == "complete" and [s["seed"] for s in params["samples"]] == [11, 12, 13]

    kept = (out / "mp4" / "sample_000000.mp4").stat().st_mtime_ns
    (out / "mp4" / "sample_000001.mp4").unlink()  # a crash lost one output
    again = generate_samples(pipe, cfg, out, conditioning=store, model={"id": "test"})
    assert (again.generated, again.skipped) == (1, 2)
    assert (out / "mp4" / "sample_000000.mp4").stat().st_mtime_ns == kept
    assert pd.read_csv(out / "FileList.csv").equals(df)

    with pytest.raises(UsageError, match="different parameters"):
        generate_samples(pipe, cfg.model_copy(update={"seed": 99}), out, conditioning=store, model={"id": "test"})


def test_same_seed_same_video_and_default_frame(pipe, bundle, tmp_path):
    cfg = SampleConfig(**FAST, num_samples=1, formats=["safetensors"], conditions=ConditionsConfig(ef=50))
    frame = read_frame_png(bundle / DEFAULT_FRAME_FILE)
    a = generate_samples(pipe, cfg, tmp_path / "a", default_frame=frame)
    b = generate_samples(pipe, cfg, tmp_path / "b", default_frame=frame)
    from safetensors.torch import load_file

    fa, fb = (load_file(str(r.out / "safetensors" / "sample_000000.safetensors"))["frames"] for r in (a, b))
    assert torch.equal(fa, fb) and fa.shape == (5, 112, 112)
    files = [r.out / "safetensors" / "sample_000000.safetensors" for r in (a, b)]
    assert files[0].read_bytes() == files[1].read_bytes()  # metadata header written in canonical order


def test_conditioning_sources(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    torch.save(torch.randn(4, 14, 14), ref / "lidm_0.pt")  # reference LIDM frame latent (C, h, w)
    torch.save(torch.randn(9, 4, 14, 14), ref / "video_1.pt")  # reference video latent (T, C, h, w)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(ref / "frame.png")
    refs = list_frame_sources(ref)
    assert [(r.path.name, r.kind) for r in refs] == [("frame.png", "image"), ("lidm_0.pt", "latent"),
                                                     ("video_1.pt", "latent")]
    assert load_latent_frame(ref / "lidm_0.pt", "first", 0).shape == (4, 14, 14)
    assert torch.equal(load_latent_frame(ref / "video_1.pt", "random", 5),
                       load_latent_frame(ref / "video_1.pt", "random", 5))
    csv = tmp_path / "conds.csv"
    csv.write_text("EF,class_id,text\n35,,\n,2,\n,,a prompt\n")
    specs = read_conditions_csv(csv)
    assert (specs[0].ef_percent, specs[1].class_id, specs[2].text) == (35.0, 2, "a prompt")
    plans = plan_samples(5, 100, ConditionsConfig(csv=str(csv)), refs)
    assert [p.spec for p in plans[3:]] == specs[:2] and plans[4].frame == refs[1]  # rows and files cycle
    ranged = ConditionsConfig(ef_range=(10, 90))
    assert [p.spec for p in plan_samples(4, 0, ranged, None)] == [p.spec for p in plan_samples(4, 0, ranged, None)]
    with pytest.raises(UsageError, match="output format"):
        parse_formats("mp4,webm")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "readme.txt").write_text("no frames here")
    with pytest.raises(DataError, match="no conditioning files"):
        list_frame_sources(stray)
    with pytest.raises(ValueError, match="one condition source"):
        ConditionsConfig(ef=40, prompts=["x"])


def test_serving_request_validation(pipe, bundle):
    limits = ServingLimits(max_frames=8, max_steps=4, default_frames=4, default_steps=2)
    for params, field in [({"num_frames": 0}, "num_frames"), ({"num_frames": 9}, "num_frames"),
                          ({"num_inference_steps": -1}, "num_inference_steps"), ({"sampler": "euler"}, "sampler"),
                          ({"output_format": "webm"}, "output_format")]:
        with pytest.raises(DataError, match=field):
            parse_params(params, pipe, limits)
    default = read_frame_png(bundle / DEFAULT_FRAME_FILE)
    bad_rows = [({"ef": [120.0]}, "outside"), ({"class_id": [1]}, "not class-conditioned"),
                ({"text": [""]}, "empty"), ({"ef": [50.0], "conditioning_frame": ["%%%"]}, "base64"),
                ({"ef": [50.0], "conditioning_frame": [_png_b64(np.zeros((64, 64), np.uint8))]}, "112x112")]
    for columns, message in bad_rows:
        with pytest.raises(DataError, match=message):
            handle_request(pipe, pd.DataFrame(columns), {"num_frames": 2}, limits, default)
    assert decode_frame_png(_png_b64(default), 112, "row 0").shape == (112, 112)
    ok = handle_request(pipe, pd.DataFrame({"ef": [40.0]}), {"num_frames": 3, "num_inference_steps": 1,
                                                              "output_format": "npy", "seed": 4}, limits, default)
    frames = np.load(io.BytesIO(base64.b64decode(ok["video"][0])))
    assert frames.shape == (3, 112, 112) and ok["seed"][0] == 4 and ok["cond_type"][0] == "ef"


def test_default_frame_command_rebuilds_the_shipped_png(tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["default-frame", str(tmp_path / "frame.png")])
    assert result.exit_code == 0, result.output
    shipped = Path(__file__).resolve().parents[2] / "pipelines" / "serving" / "default_frame.png"
    assert (tmp_path / "frame.png").read_bytes() == shipped.read_bytes()
