"""The LIDM: end-diastolic frames from tracings, a real tiny UNet2DModel trained through the one trainer and
the CLI (MLflow run + `echo-lidm@<dataset>`), class-conditioned sampling that draws each class's pattern,
seeds, resume, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from support.heart_data import VAE_SHA, class_pattern, tiny_lidm_section, write_heart_store
from support.threads import one_torch_thread
from typer.testing import CliRunner

from echo_core.errors import DataError, UsageError, WeightsError
from echo_core.generation.hearts import heart_path, list_hearts, read_heart, write_heart
from echo_core.generation.lidm_sample import HeartRequest, sample_hearts
from echo_core.latents.frames import HeartFrameDataset, ed_frames
from echo_core.models.lidm import LidmNet, read_lidm_meta
from pipelines.cli import app

pytestmark = pytest.mark.slow
TRAIN_STEPS = 60


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The heart store and an LIDM trained on it by `echoforge lidm train` into the module's own store."""
    with one_torch_thread():
        root = tmp_path_factory.mktemp("lidm")
        store = write_heart_store(root / "store")
        (root / "params.yaml").write_text(yaml.safe_dump({"train_lidm_toy": tiny_lidm_section(
            optim={"lr": 2e-3, "warmup_steps": 5, "batch_size": 8, "max_steps": TRAIN_STEPS})}))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
            mp.chdir(root)
            result = CliRunner().invoke(app, ["lidm", "train", "--data", str(store), "--out", "out", "--dataset", "toy",
                                              "--tracings", str(store / "VolumeTracings.csv")])
            assert result.exit_code == 0, result.output + repr(result.exception)
            yield root


def test_ed_frames_pick_the_larger_ventricle_for_chords_and_outlines(tmp_path):
    chords = write_heart_store(tmp_path / "store", n_train=2, n_val=0)
    assert ed_frames(chords / "VolumeTracings.csv") == {"v0": 3, "v1": 3}  # frame 3 has the wider disks
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    rows = [{"FileName": "p", "X": x * s, "Y": y * s, "Frame": f} for f, s in ((7, 2.0), (9, 1.0)) for x, y in square]
    pd.DataFrame(rows).to_csv(tmp_path / "ped.csv", index=False)
    assert ed_frames(tmp_path / "ped.csv") == {"p": 7}
    with pytest.raises(DataError, match="does not exist"):
        ed_frames(tmp_path / "missing.csv")


def test_heart_frames_are_the_traced_ed_frame_else_a_seeded_random_frame(tmp_path):
    store = write_heart_store(tmp_path / "store", n_train=6, n_val=1)
    traced = HeartFrameDataset([store], ed={"v0": 3}, seed=5)
    assert len(traced) == 6 and traced.traced_fraction == pytest.approx(1 / 6)
    assert {traced.frame_index(0) for _ in range(3)} == {3}
    first = [traced.frame_index(i) for i in range(1, 6)]
    assert first == [HeartFrameDataset([store], seed=5).frame_index(i) for i in range(1, 6)]  # seeded
    draws = set()
    for epoch in range(8):
        traced.set_epoch(epoch)
        draws.add(traced.frame_index(1))
    assert len(draws) > 1  # a new frame each epoch for an untraced video
    item = traced[0]
    assert item["latent"].shape == (4, 14, 14) and item["class_id"].item() == 0


def test_training_is_tracked_and_registered_per_dataset(project):
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    mv = client.get_model_version_by_alias("echo-lidm", "toy")
    assert mv.tags["dataset"] == "toy" and mv.tags["conditioning"] == "class_id"
    history = client.get_metric_history(mv.run_id, "train/loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == TRAIN_STEPS and sum(losses[-10:]) < 0.5 * sum(losses[:10])
    meta = read_lidm_meta(project / "out" / "unet_ema")
    assert meta["vae"]["sha256"] == VAE_SHA and meta["step"] == TRAIN_STEPS and meta["latent_shape"] == [4, 14, 14]
    # its model card: on the version (tags) and in the run (JSON + Markdown), saying the hearts need the filter
    assert mv.tags["card.intended_use"].startswith("research only") and mv.tags["card.conditioning"] == "class_id"
    assert "NOT privacy-checked" in mv.tags["card.privacy"]
    cards = {a.path for a in client.list_artifacts(mv.run_id, "model_card")}
    assert cards == {"model_card/model_card.json", "model_card/model_card.md"}


def test_class_conditioned_hearts_draw_their_class_and_the_swap_is_the_negative_control(project, tmp_path):
    net = LidmNet.from_pretrained(project / "out" / "unet_ema")
    request = HeartRequest(num_samples=8, seed=3, class_ids=[0, 1], guidance_scale=2.0, sampler="euler", steps=10)
    plan = sample_hearts(net, request, tmp_path / "hearts", vae_sha256=VAE_SHA)
    patterns = {k: torch.from_numpy(class_pattern(k)) for k in (0, 1)}
    for _, row in plan.iterrows():
        latent, meta = read_heart(heart_path(tmp_path / "hearts", row["FileName"]))
        own, other = (((latent - patterns[k]) ** 2).mean().item() for k in (row["class_id"], 1 - row["class_id"]))
        assert own < 1.0 < 4.0 < other, (row["FileName"], own, other)  # each heart is its class's pattern
        assert meta == {"seed": str(row["Seed"]), "vae_sha256": VAE_SHA, "class_id": str(row["class_id"])}
    written = pd.read_csv(tmp_path / "hearts" / "FileList.csv")
    assert list(written.columns) == ["FileName", "Seed", "class_id"] and len(written) == 8


def test_same_seed_same_heart_whatever_the_batch_and_a_rerun_resumes(project, tmp_path):
    net = LidmNet.from_pretrained(project / "out" / "unet_ema")
    common = dict(seed=11, class_ids=[1], sampler="euler", steps=4)
    sample_hearts(net, HeartRequest(num_samples=5, batch_size=5, **common), tmp_path / "a")
    sample_hearts(net, HeartRequest(num_samples=3, batch_size=2, **common), tmp_path / "b")
    first = _latents(tmp_path / "a")
    assert all(torch.allclose(first[name], latent, atol=1e-5) for name, latent in _latents(tmp_path / "b").items())
    # kill-and-rerun: a torn file and a missing one are regenerated, finished hearts are not rewritten
    files = list_hearts(tmp_path / "a")
    files[1].write_bytes(b"torn")
    files[2].unlink()
    kept_mtime = files[0].stat().st_mtime_ns
    sample_hearts(net, HeartRequest(num_samples=5, batch_size=5, **common), tmp_path / "a")
    again = _latents(tmp_path / "a")
    assert again.keys() == first.keys(), (again.keys(), first.keys())
    assert all(torch.allclose(first[k], again[k], atol=1e-5) for k in first)
    assert files[0].stat().st_mtime_ns == kept_mtime


def _latents(folder: Path) -> dict[str, torch.Tensor]:
    """Batch composition changes the last float bits of a conv, not the heart: compare with a tolerance."""
    return {p.name: read_heart(p)[0] for p in list_hearts(folder)}


def test_the_cli_samples_a_registered_version_and_refuses_bad_requests(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    monkeypatch.chdir(project)
    runner = CliRunner()
    ok = runner.invoke(app, ["lidm", "sample", "--model", "models:/echo-lidm@toy", "--num-samples", "2",
                             "--out", "cli_hearts", "--class-id", "1", "--steps", "2"])
    assert ok.exit_code == 0, ok.output + repr(ok.exception)
    assert [p.name for p in list_hearts(project / "cli_hearts")] == ["heart_000000.safetensors",
                                                                      "heart_000001.safetensors"]
    for args, error, words in (
        (["--class-id", "5"], UsageError, "outside"),
        (["--class-id", "0", "--sampler", "ddpm"], UsageError, "does not fit"),
    ):
        bad = runner.invoke(app, ["lidm", "sample", "--model", "out/unet_ema", "--num-samples", "1",
                                  "--out", "bad_hearts", *args])
        assert isinstance(bad.exception, error) and words in str(bad.exception), (args, bad.exception)
    assert not (project / "bad_hearts").exists()  # nothing partial


def test_bad_inputs_name_the_file_and_the_fix(project, tmp_path):
    with pytest.raises(WeightsError, match="not an LIDM folder"):
        LidmNet.from_pretrained(tmp_path)
    with pytest.raises(DataError, match=r"shape \(4, 8, 8\)"):
        write_heart(tmp_path / "x.safetensors", torch.zeros(4, 8, 8), {})
    with pytest.raises(DataError, match="no latents"):
        list_hearts(tmp_path)
    store = write_heart_store(tmp_path / "store", n_train=4, n_val=0)
    rows = pd.read_csv(store / "FileList.csv")
    rows.loc[2, "class_id"] = 7
    rows.to_csv(store / "FileList.csv", index=False)
    from echo_core.training.lidm import LidmTask, LidmTrainConfig

    task = LidmTask(LidmTrainConfig.model_validate(tiny_lidm_section()), [store])
    with pytest.raises(DataError, match="'v2' has class_id 7"):
        task.train_dataset()
    other = write_heart_store(tmp_path / "other", n_train=2, n_val=0)
    (other / "manifest.json").write_text(json.dumps({"vae": {"sha256": "cd" * 32, "scaling_factor": 1.0}}))
    with pytest.raises(DataError, match="different VAEs"):
        LidmTask(LidmTrainConfig.model_validate(tiny_lidm_section()), [store, other])


def test_an_unconditional_lidm_refuses_class_ids(tmp_path):
    from echo_core.models.lidm import LidmSpec, build_lidm_net

    net = build_lidm_net(LidmSpec.model_validate({"model": {"name": "tiny"}}))
    with pytest.raises(UsageError, match="unconditional"):
        sample_hearts(net, HeartRequest(num_samples=1, class_ids=[0]), tmp_path / "h")
    assert not Path(tmp_path / "h").exists()
