"""LatentClipDataset over tiny real latent stores (safetensors files + FileList.csv written here)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from echo_core.config import validate_config
from echo_core.errors import DataError
from echo_core.latents.clips import LatentClipDataset, LatentDatasetConfig, clip_indices
from echo_core.models.conditioning import NULL_EF_SCALAR, ConditionEncoder, ConditioningConfig

C, H = 4, 14


def _write_store(root: Path, videos: dict[str, int], fps: float, extra: dict[str, list], *,
                 skip: tuple[str, ...] = (), split: str = "TRAIN") -> Path:
    """Each latent frame t is filled with the value t, so a clip's values reveal which frames it holds."""
    (root / "Latents").mkdir(parents=True)
    for name, frames in videos.items():
        if name in skip:
            continue
        latents = torch.arange(frames, dtype=torch.float16).reshape(-1, 1, 1, 1).expand(frames, C, H, H)
        save_file({"latents": latents.contiguous()}, str(root / "Latents" / f"{name}.safetensors"),
                  metadata={"fps": str(fps)})
    pd.DataFrame({"FileName": list(videos), "FPS": fps, "NumberOfFrames": list(videos.values()),
                  "Split": split, **extra}).to_csv(root / "FileList.csv", index=False)
    return root


@pytest.fixture()
def dynamic(tmp_path) -> Path:
    return _write_store(tmp_path / "dynamic", {"a": 200, "b": 150, "short": 20}, 64.0,
                        {"EF": [55.0, 30.0, 60.0]})


@pytest.fixture()
def cardiacnet(tmp_path) -> Path:
    return _write_store(tmp_path / "cardiacnet", {"c0": 80, "c1": 90}, 32.0,
                        {"class_id": [0, 2], "class_name": ["Atrial Septal Defect", "Normal"]})


def _frame_values(video: torch.Tensor, padding: int) -> list[int]:
    return video[0, :padding, 0, 0].round().int().tolist()


def test_item_contract_and_fps_resampling(dynamic):
    ds = LatentClipDataset([dynamic], "train", num_frames=16, target_fps=32, seed=0)
    item = ds[0]
    assert item["video"].shape == (C, 16, H, H) and item["video"].dtype == torch.float32
    assert item["cond_frame"].shape == (C, H, H) and item["cond_frame"].dtype == torch.float32
    assert (item["padding"], item["fps"], item["dataset"], item["file_name"]) == (16, 32.0, "dynamic", "a")
    assert item["ef"] == pytest.approx(0.55) and item["has_ef"] and item["class_id"] == -1
    assert item["text"] == "An echocardiography video with Left Ventricular Ejection Fraction 55%"
    values = _frame_values(item["video"], 16)
    assert np.all(np.diff(values) == 2)  # 64 fps → 32 fps takes every second frame


def test_random_phase_window_and_cond_frame_come_from_the_clip(dynamic):
    ds = LatentClipDataset([dynamic], "TRAIN", num_frames=16, target_fps=32, seed=1)
    phases, starts = set(), set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        values = _frame_values(item["video"], 16)
        phases.add(values[0] % 2)
        starts.add(values[0])
        assert int(item["cond_frame"][0, 0, 0]) in values  # drawn from the clip (not the whole video)
    assert phases == {0, 1} and len(starts) > 3
    first = LatentClipDataset([dynamic], "TRAIN", num_frames=16, target_fps=32, seed=1, cond_frame="clip_first")
    item = first[1]
    assert int(item["cond_frame"][0, 0, 0]) == _frame_values(item["video"], 16)[0]


def test_video_random_reproduces_the_reference_rule(dynamic):
    ds = LatentClipDataset([dynamic], "TRAIN", num_frames=8, target_fps=32, seed=2, cond_frame="video_random")
    outside = 0
    for epoch in range(10):
        ds.set_epoch(epoch)
        item = ds[0]
        outside += int(item["cond_frame"][0, 0, 0]) not in _frame_values(item["video"], 8)
    assert outside > 0


def test_items_are_deterministic_per_seed_epoch_index_and_resumable(dynamic):
    a = LatentClipDataset([dynamic], "TRAIN", num_frames=16, seed=5)
    b = LatentClipDataset([dynamic], "TRAIN", num_frames=16, seed=5)
    b.set_epoch(3)
    a.set_epoch(3)
    _ = [a[i] for i in range(len(a))]  # reading other items first changes nothing: no shared RNG state
    assert torch.equal(a[1]["video"], b[1]["video"]) and torch.equal(a[1]["cond_frame"], b[1]["cond_frame"])
    views = set()
    for seed in (5, 6, 7):
        c = LatentClipDataset([dynamic], "TRAIN", num_frames=16, seed=seed)
        c.set_epoch(3)
        views.add(tuple(_frame_values(c[0]["video"], 16)))
    assert len(views) > 1


def test_short_videos_are_padded_with_a_mask_or_dropped_by_rule(dynamic):
    strict = LatentClipDataset([dynamic], "TRAIN", num_frames=32, target_fps=32)
    assert "short" not in set(strict.rows["file_name"]) and strict.report["too_short"] == 1
    loose = LatentClipDataset([dynamic], "TRAIN", num_frames=32, target_fps=32, min_duration_rule="any")
    item = loose[list(loose.rows["file_name"]).index("short")]
    assert item["padding"] == 10  # 20 frames at 64 fps → 10 at 32 fps
    assert item["video"].shape == (C, 32, H, H) and not item["video"][:, 10:].any()
    assert item["video"][:, 1:10].all()


def test_several_stores_share_one_condition_schema(dynamic, cardiacnet):
    ds = LatentClipDataset([dynamic, cardiacnet], "TRAIN", num_frames=16, conditions=("ef", "class_id", "text"))
    by_name = {name: ds[i] for i, name in enumerate(ds.rows["file_name"])}
    assert set(by_name) == {"a", "b", "c0", "c1"}
    c1 = by_name["c1"]
    assert (c1["has_ef"], c1["ef"], c1["class_id"], c1["dataset"]) == (False, 0.0, 2, "cardiacnet")
    assert c1["text"] == "An echocardiography video with Normal condition"
    assert by_name["b"]["class_id"] == -1 and by_name["b"]["has_ef"]


def test_missing_latent_files_are_reported_not_silently_dropped(tmp_path):
    root = _write_store(tmp_path / "dyn", {"a": 100, "gone": 100}, 32.0, {"EF": [50.0, 40.0]}, skip=("gone",))
    with pytest.warns(UserWarning, match="1 FileList row"):
        ds = LatentClipDataset([root], "TRAIN", num_frames=16)
    assert len(ds) == 1 and ds.missing_files == [str(root / "Latents" / "gone.safetensors")]
    assert ds.report["missing_files"] == 1


def test_empty_split_and_unprovided_conditions_raise_data_errors(dynamic, tmp_path):
    with pytest.raises(DataError, match=r"no usable TEST clips.*dynamic"):
        LatentClipDataset([dynamic], "TEST", num_frames=16)
    with pytest.raises(DataError, match="'class_id' is requested"):
        LatentClipDataset([dynamic], "TRAIN", num_frames=16, conditions=("class_id",))
    with pytest.raises(DataError, match="FileList.csv"):
        LatentClipDataset([tmp_path / "nowhere"], "TRAIN")
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"FileName": ["x"], "FPS": [32]}).to_csv(bad / "FileList.csv", index=False)
    with pytest.raises(DataError, match="NumberOfFrames"):
        LatentClipDataset([bad], "TRAIN")


def test_wrong_tensor_key_is_a_data_error(tmp_path):
    root = _write_store(tmp_path / "dyn", {"a": 64}, 32.0, {"EF": [50.0]}, skip=("a",))
    save_file({"video": torch.zeros(64, C, H, H)}, str(root / "Latents" / "a.safetensors"))
    with pytest.raises(DataError, match="no tensor 'latents'"):
        LatentClipDataset([root], "TRAIN", num_frames=16)[0]


def test_open_files_are_bounded_and_not_pickled(dynamic, cardiacnet):
    ds = LatentClipDataset([dynamic, cardiacnet], "TRAIN", num_frames=16, max_open_files=1)
    for i in range(len(ds)):
        ds[i]
        assert len(ds._handles) == 1
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers receive
    assert torch.equal(clone[0]["video"], ds[0]["video"])


def test_collated_batches_feed_the_condition_encoder(dynamic, cardiacnet):
    cfg = validate_config(LatentDatasetConfig, {"num_frames": 16, "target_fps": 32})
    ds = LatentClipDataset.from_config([cardiacnet, dynamic], "TRAIN", cfg, conditions=("ef",), seed=0)
    batch = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
    assert batch["video"].shape == (len(ds), C, 16, H, H) and batch["padding"].tolist() == [16] * len(ds)
    tokens = ConditionEncoder(validate_config(ConditioningConfig, {}))(batch)
    ef_rows = batch["has_ef"]
    assert tokens.shape == (len(ds), 1, 1)
    assert torch.all(tokens[~ef_rows] == NULL_EF_SCALAR)  # CardiacNet rows have no EF → null, not EF 0
    torch.testing.assert_close(tokens[ef_rows].flatten(), batch["ef"][ef_rows].float())


def test_clip_indices_stay_in_range_for_upsampling():
    rng = np.random.default_rng(0)
    idx = clip_indices(10, fps=16.0, target_fps=32.0, num_frames=64, rng=rng)
    assert len(idx) == 20 and idx.min() >= 0 and idx.max() <= 9 and np.all(np.diff(idx) >= 0)
