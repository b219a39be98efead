"""echo_core.evaluation plan / ratios / summary on tiny inputs: no model, no MLflow, no Prefect."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from echo_core.errors import DataError
from echo_core.evaluation.config import DownstreamConfig
from echo_core.evaluation.plan import DatasetPlan, plan_dataset, train_conditioning
from echo_core.evaluation.ratios import ratio
from echo_core.evaluation.summary import classification_values, regression_values, run_downstream


def test_ratio_is_nan_without_a_usable_baseline():
    assert ratio(3.0, 2.0) == 1.5
    for baseline in (0.0, -1.0, math.inf, math.nan):
        assert math.isnan(ratio(3.0, baseline))


def test_plan_names_the_missing_folder_and_the_fix(tmp_path: Path):
    (tmp_path / "prepared" / "toy").mkdir(parents=True)
    with pytest.raises(DataError, match=r"(?s)reference folder .*toy.*dvc repro encode"):
        plan_dataset("toy", tmp_path, ("ef",))


def test_plan_condition_follows_the_filelist(tmp_path: Path):
    for kind in ("prepared", "reference", "latents"):
        (tmp_path / kind / "toy").mkdir(parents=True)
    pd.DataFrame({"FileName": ["a"], "EF": [55.0], "Split": ["TRAIN"]}).to_csv(
        tmp_path / "prepared" / "toy" / "FileList.csv", index=False)
    plan = plan_dataset("toy", tmp_path, ("ef",))
    assert plan.condition == "ef" and plan.samples == tmp_path / "samples" / "toy"
    assert plan_dataset("toy", tmp_path, ("class_id",)).condition is None


def test_train_conditioning_links_train_split_only(tmp_path: Path):
    latents = tmp_path / "latents"
    (latents / "Latents").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (latents / "Latents" / f"{name}.safetensors").write_bytes(b"x")
    pd.DataFrame({"FileName": ["c", "a", "b"], "Split": ["TRAIN", "train", "TEST"]}).to_csv(
        latents / "FileList.csv", index=False)
    with train_conditioning(latents, tmp_path / "scratch") as (folder, files):
        assert files == ["a.safetensors", "c.safetensors"]  # no TEST frame leaks into the downstream test
        assert sorted(p.name for p in folder.iterdir()) == files
    assert not folder.exists()
    pd.DataFrame({"FileName": ["b"], "Split": ["TEST"]}).to_csv(latents / "FileList.csv", index=False)
    with pytest.raises(DataError, match="TRAIN-split"), train_conditioning(latents, tmp_path / "scratch"):
        pass


def test_downstream_summaries():
    unconditional = DatasetPlan("toy", Path("p"), Path("r"), Path("l"), Path("s"), Path("d"), None)
    assert run_downstream(unconditional, DownstreamConfig(), threads=1) == {"values": {}, "report": None,
                                                                             "plots": {}}

    class Regression:
        synthetic_to_real, real_to_real, adherence = {"r2": 0.5, "mae": 4.0}, None, {"mae": 2.0}

    values = regression_values(Regression())
    assert values["ef_synthetic_to_real_r2"] == 0.5 and values["ef_adherence_mae"] == 2.0
    assert math.isnan(values["ef_real_to_real_r2"]) and math.isnan(values["ef_adherence_r2"])

    class Classification:
        summary = {"auc": {"mean": 0.75, "std": 0.1}, "accuracy": {"mean": 0.5, "std": 0.0}}

    assert classification_values(Classification()) == {"cls_auc": 0.75, "cls_accuracy": 0.5}
