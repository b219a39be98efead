"""The re-identification net, τ and the privacy filter: a small net trained for real through the one trainer on
a store whose videos each carry their own identity, then the filter's three behaviours (copies of training
hearts rejected, another frame of a training video recognised, new hearts kept), the audit, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from support.privacy_data import SPLITS, tiny_reid_section, video, write_hearts, write_reid_store
from support.threads import one_torch_thread

from echo_core.errors import DataError, WeightsError
from echo_core.models.reid import REID_CONFIG_FILE, build_reid_net, normalise_frames
from echo_core.privacy.audit import audit
from echo_core.privacy.calibrate import PRIVACY_FILE, PrivacyConfig, calibrate, max_correlation
from echo_core.privacy.filter import filter_hearts
from echo_core.tracking import NullTracker
from echo_core.training.reid import ReidTrainConfig, train_reid

K = 4  # embedded frames per video: 0, 3, 6, 9 of 10
NOT_EMBEDDED = 5
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reid(tmp_path_factory) -> dict:
    """A small re-id net trained 300 CPU steps through `train_reid`, calibrated with k = 4 (~40 s)."""
    with one_torch_thread():
        root = tmp_path_factory.mktemp("reid")
        store = write_reid_store(root / "store")
        tracker = NullTracker()
        result = train_reid(ReidTrainConfig(**tiny_reid_section()), [store], root / "run", tracker=tracker)
        record = calibrate(result.folder, [store], PrivacyConfig(frames_per_video=K))
    return {"root": root, "store": store, "model": result.folder, "tracker": tracker, "record": record}


def _filter(reid: dict, name: str, hearts: dict[str, np.ndarray]) -> tuple[dict, pd.DataFrame, Path]:
    out = reid["root"] / f"out_{name}"
    summary = filter_hearts(reid["model"], reid["store"], write_hearts(reid["root"] / name, hearts), out)
    return summary, pd.read_csv(out / "privacy_scores.csv"), out


def test_heldout_auc_is_recorded_with_the_model_and_the_tracker(reid):
    heldout = json.loads((reid["model"] / REID_CONFIG_FILE).read_text())["heldout_auc"]
    assert heldout["value"] > 0.8
    assert heldout["ci_low"] <= heldout["value"] <= heldout["ci_high"]
    assert heldout["videos"] == SPLITS["VAL"] + SPLITS["TEST"]
    assert reid["tracker"].last_metrics["heldout/pair_auc"] == pytest.approx(heldout["value"])


def test_calibration_records_tau_counts_and_the_vae(reid):
    record = json.loads((reid["model"] / PRIVACY_FILE).read_text())
    assert record["tau"] == pytest.approx(np.percentile(record["heldout_scores"], 95))
    assert record["counts"] == {"train_videos": SPLITS["TRAIN"], "train_frames": SPLITS["TRAIN"] * K,
                                "heldout_videos": 12, "heldout_frames": 12 * K}
    assert record["vae_sha256"] == "cd" * 32
    assert 0.05 <= record["heldout_video_flag_rate"] <= 0.5  # any of K frames at or above the p95 of frames


def test_copies_of_training_hearts_are_rejected(reid):
    summary, scores, out = _filter(reid, "copies", {f"copy{i}": video(i)[0] for i in range(6)})
    assert summary["kept"] == 0 and not scores["kept"].any()
    assert scores["nearest_real"].tolist() == [f"v{i}" for i in range(6)]
    assert (scores["max_correlation"] > 0.999).all()
    assert pd.read_csv(out / "FileList.csv").empty


def test_another_frame_of_a_training_video_is_recognised(reid):
    assert NOT_EMBEDDED not in {0, 3, 6, 9}
    n = SPLITS["TRAIN"]
    _, scores, _ = _filter(reid, "other_frame", {f"f{i}": video(i)[NOT_EMBEDDED] for i in range(n)})
    assert (~scores["kept"]).mean() >= 0.9
    own_video = "v" + scores["FileName"].str.removeprefix("f")  # rows come sorted by FileName
    assert (scores["nearest_real"] == own_video).mean() >= 0.9


def test_new_hearts_are_mostly_kept_and_the_output_is_a_heart_folder(reid):
    hearts = {f"new{i:02d}": video(1000 + i)[i % 10] for i in range(30)}
    summary, scores, out = _filter(reid, "new", hearts)
    assert summary["kept"] / summary["candidates"] >= 0.8
    kept = scores.loc[scores["kept"], "FileName"].tolist()
    assert list(scores.columns) == ["FileName", "nearest_real", "max_correlation", "tau", "kept"]
    assert (scores["tau"] == reid["record"]["tau"]).all()
    assert pd.read_csv(out / "FileList.csv")["FileName"].tolist() == kept
    assert sorted(p.stem for p in (out / "latents").glob("*.safetensors")) == sorted(kept)
    name = kept[0]
    assert (out / "latents" / f"{name}.safetensors").read_bytes() == \
        (reid["root"] / "new" / "latents" / f"{name}.safetensors").read_bytes()
    assert (out / "privacy_hist.png").stat().st_size > 1000


def test_audit_flags_videos_that_copy_training_videos(reid, tmp_path):
    samples = tmp_path / "samples" / "Latents"
    samples.mkdir(parents=True)
    for i in range(3):  # copies of training videos, then never-seen identities
        shutil.copyfile(reid["store"] / "Latents" / f"v{i}.safetensors", samples / f"copy{i}.safetensors")
    for i in range(9):
        save_file({"latents": torch.from_numpy(video(2000 + i))}, str(samples / f"new{i}.safetensors"))
    result = audit(reid["model"], reid["store"], samples.parent, resamples=200)
    assert {f["FileName"] for f in result["flagged"]} >= {"copy0", "copy1", "copy2"}
    new_flagged = (result["memorised"] - 3) / 9
    assert result["items"] == 12 and new_flagged <= 0.5
    assert 0 < result["heldout_real_share"] <= 0.5  # the rule's rate on unseen real videos
    share = result["memorised_share"]
    assert share["ci_low"] <= share["value"] == result["memorised"] / 12 <= share["ci_high"]


def test_chunked_max_correlation_equals_the_full_matrix():
    rng = np.random.default_rng(0)
    queries, keys = rng.standard_normal((23, 9)), rng.standard_normal((31, 9))
    best, where = max_correlation(torch.tensor(queries), torch.tensor(keys), chunk=7)
    full = np.corrcoef(queries, keys)[:23, 23:]
    np.testing.assert_allclose(best, full.max(axis=1), atol=1e-5)
    np.testing.assert_array_equal(where, full.argmax(axis=1))


def test_each_frame_is_normalised_on_its_own():
    """Bug 14: the same latent gets the same embedding whatever it is batched with, at any affine scale."""
    net = build_reid_net("small").eval()
    x = torch.randn(1, 4, 14, 14)
    with torch.no_grad():
        alone, batched = net.embed(x), net.embed(torch.cat([x, 50 * torch.randn(1, 4, 14, 14)]))[:1]
        scaled = net.embed(3 * x + 2)
    torch.testing.assert_close(alone, batched)
    torch.testing.assert_close(alone, scaled, atol=1e-5, rtol=1e-4)
    normed = normalise_frames(x)
    assert normed.min() == pytest.approx(-1) and normed.max() == pytest.approx(1)


def test_variants_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="unknown re-identification variant"):
        build_reid_net("resnet9000")
    small = build_reid_net("small")
    assert sum(p.numel() for p in small.parameters()) < 300_000
    a, b = torch.randn(2, 4, 14, 14), torch.randn(2, 4, 14, 14)
    assert build_reid_net("reference").eval()(a, b).shape == (2,)
    from echo_core.models.reid import ReidNet

    small.eval().save_pretrained(tmp_path / "m", step=3, vae_sha256="ab")
    torch.testing.assert_close(ReidNet.from_pretrained(tmp_path / "m")(a, b), small(a, b))


# ---------------------------------------------------------------- bad input: clear errors, nothing written


def test_wrong_latent_shape_names_the_file(reid, tmp_path):
    hearts = write_hearts(tmp_path / "hearts", {"ok": video(1000)[0]})
    bad = hearts / "latents" / "bad.safetensors"
    save_file({"latent": torch.zeros(4, 16, 16)}, str(bad))
    with pytest.raises(DataError, match=r"bad\.safetensors has shape \(4, 16, 16\)"):
        filter_hearts(reid["model"], reid["store"], hearts, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_model_for_another_vae_is_refused_naming_both_hashes(reid, tmp_path):
    hearts = write_hearts(tmp_path / "hearts", {"h": video(1000)[0]}, vae_sha="ef" * 32)
    with pytest.raises(WeightsError, match="ef" * 32 + r".*" + "cd" * 32):
        filter_hearts(reid["model"], reid["store"], hearts, tmp_path / "out")
    other_store = tmp_path / "other_store"
    other_store.mkdir()
    (other_store / "manifest.json").write_text(json.dumps({"vae": {"sha256": "01" * 32}}))
    good = write_hearts(tmp_path / "good", {"h": video(1000)[0]})
    with pytest.raises(WeightsError, match="01" * 32):
        filter_hearts(reid["model"], other_store, good, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_candidate_folder_is_an_error(reid, tmp_path):
    (tmp_path / "empty" / "latents").mkdir(parents=True)
    with pytest.raises(DataError, match="has no latents"):
        filter_hearts(reid["model"], reid["store"], tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tau_file_is_a_one_line_cli_error(reid, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(reid["model"], model)
    (model / PRIVACY_FILE).unlink()
    hearts = write_hearts(tmp_path / "hearts", {"h": video(1000)[0]})
    with pytest.raises(DataError, match="no privacy.json"):
        filter_hearts(model, reid["store"], hearts, tmp_path / "out")
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "privacy", "filter", "--model", str(model),
                          "--data", str(reid["store"]), "--candidates", str(hearts), "--out", str(tmp_path / "out"),
                          "--no-track"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    assert f"error: {model} has no privacy.json" in out.stderr and "fix:" in out.stderr
    assert not (tmp_path / "out").exists()
