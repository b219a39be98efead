"""The evaluation's pure parts (echo_core.evaluation): which condition a dataset gets, sample-folder reuse
decisions, the real-vs-real halves, flat metric names and the DVC plot tables (no model, no MLflow, no Prefect)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from support.latent_data import moving_blob

from echo_core.errors import ConfigError
from echo_core.evaluation.config import EvaluateConfig, load_configs, sample_config
from echo_core.evaluation.plan import condition_for, samples_state
from echo_core.evaluation.ratios import frechet_ratios, reference_halves, video_tree
from echo_core.evaluation.summary import classification_plots, flat_metrics, regression_plots
from echo_core.generation.generate import PARAMS_FILE, SampleConfig


def _reference(root: Path, videos: int, frames: int = 16, seed: int = 0) -> Path:
    """`videos` pulsing-blob videos of 32x32 jpg frames (+ the manifest a reference set carries)."""
    for v in range(videos):
        (root / f"video_{v:02d}").mkdir(parents=True)
        for t, frame in enumerate(moving_blob(frames, seed=100 * seed + v, size=32)):
            Image.fromarray(frame).save(root / f"video_{v:02d}" / f"{t:04d}.jpg")
    (root / "manifest.json").write_text("{}")  # what `echoforge data reference` writes next to the videos
    return root


def test_condition_follows_dataset_and_model():
    assert condition_for({"FileName", "EF", "Split"}, ("ef",)) == "ef"
    assert condition_for({"FileName", "EF", "Split"}, ("text",)) == "ef"  # a text model gets the EF prompt
    assert condition_for({"FileName", "class_id", "Split"}, ("ef", "class_id")) == "class_id"
    assert condition_for({"FileName", "class_id", "Split"}, ("ef",)) is None  # nothing in common: unconditional
    assert condition_for({"FileName", "EF"}, ("class_id",)) is None


def test_sample_config_layers_params_and_forces_needed_formats(tmp_path):
    cfg = EvaluateConfig(sample={"num_samples": 3, "formats": ["avi"]},
                         conditions={"class_id": {"class_ids": [2, 3]}})
    sample = sample_config({"num_samples": 99, "steps": 5, "formats": ["mp4"]}, cfg, "class_id")
    assert (sample.num_samples, sample.steps) == (3, 5)  # evaluate.sample wins over sample:
    assert sample.formats == ["avi", "jpg"]  # jpg for the metrics; avi already feeds the downstream reader
    assert sample.conditions.class_ids == [2, 3]
    assert sample_config({}, EvaluateConfig(), "ef").conditions.ef_range == (20.0, 80.0)
    assert sample_config({}, EvaluateConfig(), None).conditions.model_dump(exclude_none=True) == {}

    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {metrics: {metrics: [fd_fallback]}, typo: 1}\n")
    with pytest.raises(ConfigError, match="typo"):
        load_configs(params)
    params.write_text("evaluate: {metrics: {metrics: [fd_fallback, is_fallback]}, ratio_metrics: [is_fallback]}\n")
    with pytest.raises(ConfigError, match="ratio_metrics"):
        load_configs(params)
    params.write_text("sample: {steps: 4}\nevaluate: {sample: {num_sampels: 4}}\n")
    with pytest.raises(ConfigError, match="num_sampels"):
        load_configs(params)


def test_samples_state_reuse_resume_or_replace(tmp_path):
    cfg = SampleConfig(num_samples=2, steps=3, device="cpu")
    sources = ["a.safetensors", "b.safetensors"]
    assert samples_state(tmp_path, cfg, "m/1", sources) == "absent"

    def record(status: str, **config_changes) -> None:
        config = {**cfg.model_dump(mode="json"), **config_changes}
        (tmp_path / PARAMS_FILE).write_text(json.dumps({"config": config, "model": {"id": "m/1"},
                                                         "conditioning_files": sources, "status": status}))

    record("complete")
    assert samples_state(tmp_path, cfg, "m/1", sources) == "complete"
    record("complete", batch_size=64, device="cuda")  # settings that change no sample
    assert samples_state(tmp_path, cfg, "m/1", sources) == "complete"
    record("running")
    assert samples_state(tmp_path, cfg, "m/1", sources) == "partial"
    record("complete", steps=4)
    assert samples_state(tmp_path, cfg, "m/1", sources) == "stale"
    record("complete")
    assert samples_state(tmp_path, cfg, "m/2", sources) == "stale"  # another version
    assert samples_state(tmp_path, cfg, "m/1", sources[:1]) == "stale"  # other conditioning frames


def test_reference_halves_are_disjoint_seeded_and_clean(tmp_path):
    ref = _reference(tmp_path / "ref", videos=7)
    a, b = reference_halves(ref, tmp_path / "h1", seed=0)
    names_a, names_b = {p.name for p in a.iterdir()}, {p.name for p in b.iterdir()}
    assert (len(names_a), len(names_b)) == (4, 3) and not names_a & names_b
    assert names_a | names_b == {f"video_{v:02d}" for v in range(7)}  # manifest.json left out
    again, _ = reference_halves(ref, tmp_path / "h2", seed=0)
    assert {p.name for p in again.iterdir()} == names_a
    assert reference_halves(_reference(tmp_path / "small", videos=3), tmp_path / "h3", seed=0) is None
    tree = video_tree(ref, tmp_path / "tree")
    assert sorted(p.name for p in tree.iterdir()) == sorted(names_a | names_b)
    assert len(list((tree / "video_00").iterdir())) == 16


def test_frechet_ratio_is_about_one_for_real_and_large_for_noise(tmp_path):
    ref = _reference(tmp_path / "ref", videos=8, seed=1)
    same_kind = _reference(tmp_path / "more_real", videos=4, seed=2)
    (same_kind / "manifest.json").unlink()
    noise = tmp_path / "noise"
    rng = np.random.default_rng(3)
    for v in range(4):
        (noise / f"s{v}").mkdir(parents=True)
        for t in range(16):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(noise / f"s{v}" / f"{t:04d}.jpg")
    cfg = EvaluateConfig(metrics={"metrics": ["fd_fallback", "is_fallback"], "allow_fewer": True, "resolution": None})
    from echo_core.metrics.api import MetricsOptions

    options = MetricsOptions(allow_fewer=True, resolution=None)
    real = frechet_ratios(ref, same_kind, cfg, options, tmp_path)
    bad = frechet_ratios(ref, noise, cfg, options, tmp_path)
    assert set(real["values"]) == {"fd_fallback_ratio", "fd_fallback_real_baseline"}  # IS has no real side
    assert real["values"]["fd_fallback_real_baseline"] == bad["values"]["fd_fallback_real_baseline"]
    assert bad["values"]["fd_fallback_ratio"] > 3 * real["values"]["fd_fallback_ratio"]
    assert bad["baseline"]["n"]["fd_fallback"]["a"] == 4 * 16  # frames of half A


def test_flat_metrics_and_plot_tables():
    flat = flat_metrics({"dynamic": {"fd_fallback": 1.5, "ef_adherence_r2": math.nan}, "cardiacnet": {"cls_auc": 0.7}})
    assert flat == {"dynamic/fd_fallback": 1.5, "cardiacnet/cls_auc": 0.7}  # NaN is left out, never "nan"

    class Regression:
        history = pd.DataFrame({"model": ["synthetic", "synthetic", "real", "real"], "epoch": [0, 1, 0, 1],
                                "train_loss": [4.0, 3.0, 2.0, 1.0], "val_loss": [5.0, 4.0, 3.0, 2.0]})
        predictions = pd.DataFrame({"FileName": ["a"], "evaluation": ["adherence"], "true_ef": [50.0],
                                    "predicted_ef": [45.0]})

    plots = regression_plots(Regression())
    curve = plots["loss_curve.csv"]
    assert list(curve["epoch"]) == [0, 1] and list(curve["synthetic_train_loss"]) == [4.0, 3.0]
    assert list(curve["real_val_loss"]) == [3.0, 2.0]
    assert list(plots["ef_predictions.csv"].columns) == ["evaluation", "true_ef", "predicted_ef"]

    class Classification:
        history = pd.DataFrame({"fold": [0, 0, 1, 1], "epoch": [0, 1, 0, 1], "train_loss": [1.0, 0.5, 3.0, 1.5],
                                "val_loss": [2.0, 1.0, 2.0, 1.0]})
        predictions = pd.DataFrame({"FileName": ["x", "y"], "fold": [0, 0], "actual": ["ASD", "Non-ASD"],
                                    "predicted": ["ASD", "ASD"], "p_ASD": [0.9, 0.6], "p_Non-ASD": [0.1, 0.4]})

    plots = classification_plots(Classification(), "synthetic")
    assert list(plots["loss_curve.csv"]["synthetic_train_loss"]) == [2.0, 1.0]  # mean over folds
    assert list(plots["confusion_matrix.csv"].columns) == ["actual", "predicted"]
