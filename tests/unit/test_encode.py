"""Latent store + batched resumable encoder: contract, skip/resume, bad input, legacy import, kill -9."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from support.latent_data import make_prepared_dataset

from echo_core.errors import DataError, WeightsError
from echo_core.latents.encode import EncodeConfig, encode_dataset, video_seed
from echo_core.latents.store import (
    import_reference_latents,
    read_latents,
    read_manifest,
    write_latents,
)
from echo_core.models.vae import build_vae, fingerprint_vae, load_vae
from echo_core.utils.prefetch import prefetch

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vae(vae_folder):
    return load_vae(vae_folder)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("data") / "ds", num_videos=5, frames=(8, 12, 16))


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "Latents").iterdir())}


def _encode(vae, dataset, out, **cfg):
    model, info = vae
    return encode_dataset(model, dataset, out, info, EncodeConfig(**{"batch_frames": 10, **cfg}))


def test_store_follows_the_contract(vae, dataset, tmp_path):
    report = _encode(vae, dataset, tmp_path)
    assert report.encoded == [f"video_{i:03d}" for i in range(5)] and not report.failed
    with safe_open(str(tmp_path / "Latents" / "video_001.safetensors"), framework="pt") as f:
        assert list(f.keys()) == ["latents"]
        meta = f.metadata()
        x = f.get_tensor("latents")
    assert x.shape == (12, 4, 14, 14) and x.dtype == torch.float16
    assert {"fps", "source_sha256", "scaling_factor", "mode"} <= meta.keys()
    assert (float(meta["fps"]), meta["mode"], float(meta["scaling_factor"])) == (32.0, "mean", 0.5)
    manifest = read_manifest(tmp_path)
    assert manifest["vae"]["sha256"] == vae[1].weights_sha256 and manifest["vae"]["scaling_factor"] == 0.5
    assert (manifest["mode"], manifest["dtype"], manifest["gray"]) == ("mean", "float16", True)
    assert manifest["counts"] == {"videos": 5, "frames": 8 + 12 + 16 + 8 + 12, "failed": 0}
    assert manifest["source"]["sha256"] and manifest["latent_shape"] == [4, 14, 14]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "FileList.csv"), pd.read_csv(dataset / "FileList.csv"))


def test_latents_are_the_scaled_posterior_mean(vae, dataset, tmp_path):
    from echo_core.data.video import read_video
    from echo_core.models.vae import frames_to_input

    _encode(vae, dataset, tmp_path, dtype="float32")
    frames, _ = read_video(dataset / "Videos" / "video_000.avi")
    with torch.inference_mode():
        expected = vae[0].encode(frames_to_input(frames)).latent_dist.mean * 0.5
    got, _ = read_latents(tmp_path / "Latents" / "video_000.safetensors")
    assert torch.allclose(got, expected, atol=1e-5)


def test_rerun_skips_finished_videos_and_rewrites_identical_files(vae, dataset, tmp_path):
    _encode(vae, dataset, tmp_path)
    before = {**_digests(tmp_path), "manifest": (tmp_path / "manifest.json").read_bytes()}
    report = _encode(vae, dataset, tmp_path)
    assert report.encoded == [] and len(report.skipped) == 5 and report.frames_encoded == 0
    assert {**_digests(tmp_path), "manifest": (tmp_path / "manifest.json").read_bytes()} == before
    assert len(_encode(vae, dataset, tmp_path, dtype="float32").encoded) == 5  # other settings: redone


def test_resumed_run_gives_byte_identical_latents_and_cleans_temps(vae, dataset, tmp_path):
    _encode(vae, dataset, tmp_path / "full")
    _encode(vae, dataset, tmp_path / "part")
    for name in ("video_001", "video_003"):  # as if killed before these were written
        (tmp_path / "part" / "Latents" / f"{name}.safetensors").unlink()
    stale = tmp_path / "part" / "Latents" / ".video_001.abc123.tmp.safetensors"
    stale.write_bytes(b"half a file")
    report = _encode(vae, dataset, tmp_path / "part")
    assert report.encoded == ["video_001", "video_003"]
    assert not stale.exists()
    assert _digests(tmp_path / "part") == _digests(tmp_path / "full")


def test_sample_mode_is_seeded_per_video(vae, dataset, tmp_path):
    _encode(vae, dataset, tmp_path / "a", mode="sample", seed=7, dtype="float32")
    _encode(vae, dataset, tmp_path / "b", mode="sample", seed=7, dtype="float32", batch_frames=3)
    _encode(vae, dataset, tmp_path / "mean", dtype="float32")
    a, meta = read_latents(tmp_path / "a" / "Latents" / "video_002.safetensors")
    b, _ = read_latents(tmp_path / "b" / "Latents" / "video_002.safetensors")
    mean, _ = read_latents(tmp_path / "mean" / "Latents" / "video_002.safetensors")
    assert meta.mode == "sample" and meta.seed == 7
    assert torch.allclose(a, b, atol=1e-5)  # independent of how frames were batched
    assert not torch.allclose(a, mean, atol=1e-3)
    assert video_seed(7, "video_002") != video_seed(7, "video_003")


def test_bad_video_is_excluded_named_and_leaves_no_file(vae, dataset, tmp_path):
    ds = tmp_path / "ds"
    make_prepared_dataset(ds, num_videos=3, frames=(8,))
    (ds / "Videos" / "video_001.avi").write_bytes(b"not a video at all")
    report = _encode(vae, ds, tmp_path / "out")
    assert list(report.failed) == ["video_001"] and "video_001.avi" in report.failed["video_001"]
    assert not (tmp_path / "out" / "Latents" / "video_001.safetensors").exists()
    assert list(pd.read_csv(tmp_path / "out" / "FileList.csv")["FileName"]) == ["video_000", "video_002"]
    assert "video_001" in read_manifest(tmp_path / "out")["failed"]
    with pytest.raises(DataError, match="video_001"):
        _encode(vae, ds, tmp_path / "strict", fail_on_error=True)
    assert not (tmp_path / "strict" / "Latents" / "video_001.safetensors").exists()
    assert not list((tmp_path / "strict" / "Latents").glob(".*tmp*"))


def test_mismatched_vae_fails_before_any_work(dataset, tmp_path):
    wrong = build_vae("tiny", latent_channels=8)
    with pytest.raises(WeightsError, match="latent_channels 8"):
        encode_dataset(wrong, dataset, tmp_path, fingerprint_vae(wrong))
    assert not any(tmp_path.iterdir())


def test_reference_latents_import_with_weights_only(tmp_path):
    src = tmp_path / "ref"
    (src / "Latents").mkdir(parents=True)
    x = torch.randn(6, 4, 14, 14)
    torch.save(x, src / "Latents" / "a.pt")
    torch.save({"not": "a tensor"}, src / "Latents" / "c.pt")
    pd.DataFrame({"FileName": ["a", "b"], "FPS": [50.0, 32.0], "Split": ["TRAIN", "VAL"]}).to_csv(
        src / "FileList.csv", index=False)
    manifest = import_reference_latents(src, tmp_path / "store")
    got, meta = read_latents(tmp_path / "store" / "Latents" / "a.safetensors")
    assert torch.equal(got, x) and meta.mode == "sample" and meta.fps == 50.0
    assert manifest["failed"] == {"b": f"missing {src / 'Latents' / 'b.pt'}"}
    assert list(pd.read_csv(tmp_path / "store" / "FileList.csv")["FileName"]) == ["a"]
    pd.DataFrame({"FileName": ["c"]}).to_csv(src / "FileList.csv", index=False)
    with pytest.raises(DataError, match="c.pt"):
        import_reference_latents(src, tmp_path / "store2")


def test_latent_file_round_trips_metadata(tmp_path):
    from echo_core.latents.store import LatentMeta

    meta = LatentMeta(fps=29.97, source_sha256="ab", scaling_factor=0.18215, mode="mean", vae_sha256="cd")
    write_latents(tmp_path / "x.safetensors", torch.ones(2, 4, 14, 14), meta, torch.float32)
    x, back = read_latents(tmp_path / "x.safetensors")
    assert back == meta and x.dtype == torch.float32


def test_cli_reports_a_mismatched_vae_in_one_line(tmp_path, dataset, monkeypatch, capsys):
    from pipelines.cli import main

    build_vae("tiny", latent_channels=8).save_pretrained(tmp_path / "bad")
    monkeypatch.setattr(sys, "argv", ["echoforge", "latents", "encode", "--vae", str(tmp_path / "bad"),
                                      "--dataset", str(dataset), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "latent_channels 8" in err and "Traceback" not in err


def _cli(vae_folder: Path, dataset: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([str(REPO / ".venv" / "bin" / "echoforge"), "latents", "encode", "--vae", str(vae_folder),
                             "--dataset", str(dataset), "--out", str(out), "--batch-frames", "8",
                             "--mode", "sample", "--seed", "3"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finished(latents: Path) -> list[Path]:
    """Completed latent files; `.<name>.*.tmp.safetensors` is a write in flight, not a finished video."""
    return [p for p in latents.glob("*.safetensors") if not p.name.startswith(".")]


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(vae_folder, tmp_path):
    ds = make_prepared_dataset(tmp_path / "ds", num_videos=10, frames=(16, 24, 32))
    assert _cli(vae_folder, ds, tmp_path / "full").wait(timeout=300) == 0
    proc = _cli(vae_folder, ds, tmp_path / "killed")
    latents = tmp_path / "killed" / "Latents"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not _finished(latents):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_finished(latents))
    assert 1 <= done_before < 10, "the kill must land mid-run"
    assert not (tmp_path / "killed" / "manifest.json").exists()
    rerun = _cli(vae_folder, ds, tmp_path / "killed")
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output
    assert f"skipped {done_before}" in output
    assert _digests(tmp_path / "killed") == _digests(tmp_path / "full")
    assert not list((tmp_path / "killed").rglob(".*tmp*"))
    assert json.loads((tmp_path / "killed" / "manifest.json").read_text()) == json.loads(
        (tmp_path / "full" / "manifest.json").read_text())


def test_cli_import_reference_writes_a_store(tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    (tmp_path / "ref" / "Latents").mkdir(parents=True)
    torch.save(torch.randn(3, 4, 14, 14), tmp_path / "ref" / "Latents" / "v1.pt")
    pd.DataFrame({"FileName": ["v1"], "FPS": [32.0]}).to_csv(tmp_path / "ref" / "FileList.csv", index=False)
    result = CliRunner().invoke(app, ["latents", "import-reference", str(tmp_path / "ref"), "--out",
                                      str(tmp_path / "store"), "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    assert "imported 1 videos" in result.output
    x, meta = read_latents(tmp_path / "store" / "Latents" / "v1.safetensors")
    assert x.dtype == torch.float16 and meta.scaling_factor == 0.18215


def test_prefetch_yields_in_order_and_reraises_the_producer_error():
    """The decode thread of the encoder: order kept, a producer failure surfaces in the consumer."""
    assert list(prefetch(range(10), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetch(failing(), depth=1):
            got.append(item)
    assert got == [1]


def test_prefetch_stops_its_thread_when_the_consumer_leaves_early():
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    items = prefetch(endless(), depth=2, name="test-prefetch")
    assert next(items) == 0
    items.close()  # what leaving a for loop early does
    assert not any(t.name == "test-prefetch" for t in threading.enumerate())
    assert len(produced) <= 4  # at most the queue depth (+ the item in hand) was made ahead

