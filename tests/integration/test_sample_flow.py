"""The Prefect `sample` flow (Prefect test harness) on a tiny model registered in a temp MLflow sqlite store:
resolves `models:/echo-lvdm@candidate`, writes videos + FileList.csv, and a re-run skips finished samples."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.tiny_lvdm import WINDOW, make_lvdm_folder, make_vae_folder

from echo_core.data.video import probe_video

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL_URI = "models:/echo-lvdm@candidate"
SAMPLE = {"num_samples": 2, "batch_size": 2, "seed": 1, "sampler": "ddim", "steps": 2, "num_frames": WINDOW,
          "formats": ["mp4"], "device": "cpu", "conditions": {"ef_range": [20, 80]}}


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny LVDM + VAE registered as echo-lvdm with alias `candidate`, in a store private to this test."""
    from pipelines.serving.register import register_serving_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (tmp_path / "mlruns").mkdir()
    return register_serving_model(make_lvdm_folder(tmp_path / "lvdm"), make_vae_folder(tmp_path / "vae"),
                                  alias="candidate", tags={"data_dvc_hash": "md5:test"})


def test_sample_flow_generates_then_skips(tmp_path: Path, registered):
    from support.servers import prefect_api

    from pipelines.flows.sample import sample

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"sample": SAMPLE}))
    out = tmp_path / "outputs" / "samples" / "flow"
    with prefect_api():
        first = sample(MODEL_URI, str(out), str(params))
        written = {p.name: p.stat().st_mtime_ns for p in (out / "mp4").iterdir()}
        second = sample(MODEL_URI, str(out), str(params))

    assert (first["generated"], first["skipped"]) == (2, 0)
    assert (second["generated"], second["skipped"]) == (0, 2)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "mp4").iterdir()} == written  # nothing rewritten
    record = json.loads((out / "generation_params.json").read_text())
    assert record["model"]["uri"] == MODEL_URI
    assert record["model"]["id"] == f"echo-lvdm/{registered.version}" and record["status"] == "complete"
    filelist = pd.read_csv(out / "FileList.csv")
    assert list(filelist["FileName"]) == ["sample_000000", "sample_000001"]
    assert set(filelist["Split"]) == {"GENERATED"}
    for _, row in filelist.iterrows():
        info = probe_video(out / "mp4" / f"{row['FileName']}.mp4", count=True)
        assert row["FPS"] == pytest.approx(info.fps) and row["NumberOfFrames"] == info.num_frames == WINDOW
    assert first["fps"] == pytest.approx(filelist["FPS"].iloc[0])
