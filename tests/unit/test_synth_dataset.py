"""Synthetic dataset assembly: split specs, conditions, and an EchoNet-format folder that the real GX
validation accepts unchanged (Dynamic and CardiacNet), written atomically."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from echo_core.data.video import read_video, write_video
from echo_core.errors import DataError, UsageError
from echo_core.evaluation.judge_file import LoadedEfJudge
from echo_core.generation.synth_dataset import (
    SynthConfig,
    assemble_dataset,
    assign_splits,
    split_counts,
    video_conditions,
)
from echo_core.models.judges import PixelEfJudge
from pipelines.validation.report import format_report
from pipelines.validation.validate import validate_dataset


def test_split_counts_take_counts_or_ratios_and_refuse_specs_that_do_not_add_up():
    assert split_counts("TRAIN=8,VAL=1,TEST=1", 10) == {"TRAIN": 8, "VAL": 1, "TEST": 1}
    assert split_counts("TRAIN=0.8,VAL=0.1,TEST=0.1", 7) == {"TRAIN": 5, "VAL": 1, "TEST": 1}  # largest remainder
    assert sum(split_counts("train=0.34,val=0.33,test=0.33", 100).values()) == 100
    for spec, words in (("TRAIN=8,VAL=1", "add up to 9"), ("TRAIN=0.5,VAL=0.1", "add up to 0.6"),
                        ("TRAIN=8,HOLDOUT=2", "unknown split"), ("TRAIN:8", "not SPLIT=VALUE")):
        with pytest.raises(UsageError, match=words):
            split_counts(spec, 10)
    labels = assign_splits(10, {"TRAIN": 8, "VAL": 1, "TEST": 1}, seed=0)
    assert sorted(labels) == sorted(["TRAIN"] * 8 + ["VAL", "TEST"]) and labels == assign_splits(10, {
        "TRAIN": 8, "VAL": 1, "TEST": 1}, seed=0)


def test_conditions_are_uniform_real_or_the_hearts_class():
    hearts = pd.DataFrame({"FileName": ["h0", "h1", "h2"], "Seed": [0, 1, 2], "class_id": [2, 0, 1]})
    uniform = video_conditions(hearts[["FileName", "Seed"]], SynthConfig(kind="dynamic", ef_range=(30, 40)), 0)
    assert list(uniform.columns) == ["ef"] and uniform["ef"].between(30, 40).all()
    real = video_conditions(hearts[["FileName", "Seed"]], SynthConfig(kind="dynamic", ef="real"), 0, [55.0, 60.0])
    assert set(real["ef"]) <= {55.0, 60.0}
    classes = video_conditions(hearts, SynthConfig(kind="cardiacnet", ef="none"), 0)
    assert classes.to_dict("list") == {"class_id": [2, 0, 1]}
    with pytest.raises(DataError, match="real TRAIN EFs"):
        video_conditions(hearts, SynthConfig(kind="dynamic", ef="real"), 0, [])
    with pytest.raises(UsageError, match="needs a condition"):
        video_conditions(hearts[["FileName", "Seed"]], SynthConfig(kind="dynamic", ef="none"), 0)


def _samples(root, fmt: str, n: int, **extra) -> None:
    """What `generate_samples` leaves: <fmt>/sample_<i>.<fmt> + its FileList (read-back video facts)."""
    (root / fmt).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        write_video(root / fmt / f"sample_{i:06d}.{fmt}", rng.integers(0, 255, (12, 112, 112), dtype=np.uint8), 32.0)
    rows = {"FileName": [f"sample_{i:06d}" for i in range(n)], "Seed": list(range(n)), "FrameHeight": 112,
            "FrameWidth": 112, "FPS": 32.0, "NumberOfFrames": 12, **extra}
    pd.DataFrame(rows).to_csv(root / "FileList.csv", index=False)


@pytest.mark.parametrize("kind", ["dynamic", "cardiacnet"])
def test_the_assembled_dataset_passes_the_real_validation_unchanged(kind, tmp_path):
    n, fmt = 10, "avi" if kind == "dynamic" else "mp4"
    extra = {"EF": [20.0 + 5 * i for i in range(n)]} if kind == "dynamic" else {"class_id": [i % 4 for i in range(n)]}
    _samples(tmp_path / "samples", fmt, n, **extra)
    hearts = pd.DataFrame({"FileName": [f"heart_{i:06d}" for i in range(n)], "Seed": list(range(n))})
    (tmp_path / "scores.csv").write_text("FileName,nearest_real,max_correlation,tau,kept\n")
    cfg = SynthConfig(kind=kind, splits="TRAIN=8,VAL=1,TEST=1", ef="uniform" if kind == "dynamic" else "none")
    out = tmp_path / "synthetic"
    judge = LoadedEfJudge({"judge": PixelEfJudge().to_dict(), "competence": {"r2": 0.5, "n": 12}})
    table = assemble_dataset(tmp_path / "samples", hearts, tmp_path / "scores.csv", out, cfg, seed=1,
                             manifest={"synthetic": True}, judge=judge)
    if kind == "dynamic":  # the judge's reading of each written video, beside the requested EF
        read = [judge.predict_one(*read_video(out / "Videos" / f"{n}.avi", gray=True, size=112))
                for n in table["FileName"]]
        np.testing.assert_array_equal(pd.read_csv(out / "FileList.csv")["EF_measured"], read)
        assert json.loads((out / "manifest.json").read_text())["ef_judge"] == {"r2": 0.5, "n": 12}
    else:  # no EF, no EF judge column
        assert "EF_measured" not in pd.read_csv(out / "FileList.csv")
    assert sorted(p.name for p in (out / "Videos").iterdir()) == [f"synth_{i:06d}.{fmt}" for i in range(n)]
    assert table["Split"].value_counts().to_dict() == {"TRAIN": 8, "VAL": 1, "TEST": 1}
    assert table["Heart"].tolist() == hearts["FileName"].tolist()
    assert json.loads((out / "manifest.json").read_text())["counts"] == {"TRAIN": 8, "VAL": 1, "TEST": 1}
    report = validate_dataset(kind, out, docs_dir=tmp_path / "docs", report_path=tmp_path / "report.json")
    assert report.success and report.num_rows == n, format_report(report)


def test_a_sample_folder_that_does_not_match_the_hearts_leaves_nothing(tmp_path):
    _samples(tmp_path / "samples", "avi", 2, EF=[30.0, 40.0])
    hearts = pd.DataFrame({"FileName": ["h0", "h1", "h2"], "Seed": [0, 1, 2]})
    with pytest.raises(DataError, match="2 videos for 3 hearts"):
        assemble_dataset(tmp_path / "samples", hearts, tmp_path / "x.csv", tmp_path / "out",
                         SynthConfig(kind="dynamic"), seed=0, manifest={})
    assert not (tmp_path / "out").exists()
