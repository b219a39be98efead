"""The LVDM training task: config, a short real training run on tiny real latent stores with a tiny real
diffusers SVD UNet, and the model-folder round trip (resume and 2 processes: tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from support.lvdm_data import tiny_train_section, write_latent_store

from echo_core.config import validate_config
from echo_core.errors import ConfigError
from echo_core.models.lvdm import LvdmNet, LvdmSpec, build_lvdm_net, read_lvdm_spec
from echo_core.tracking import NullTracker
from echo_core.training.checkpoint import trajectory_hash
from echo_core.training.lvdm import FINAL_DIR, LvdmTrainConfig, train_lvdm
from echo_core.training.trainer import weights_digest

torch.set_num_threads(2)


class RecordingTracker(NullTracker):
    """NullTracker that remembers what was logged (the real MLflow tracker is tested in integration)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[tuple[str, str | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path, artifact_path=None) -> None:
        assert Path(path).exists()
        self.artifacts.append((str(path), artifact_path))


def test_config_rejects_typos_and_bad_ema_interval():
    with pytest.raises(ConfigError, match="drop_conditionning"):
        validate_config(LvdmTrainConfig, tiny_train_section(conditioning={"drop_conditionning": 0.1}))
    with pytest.raises(ConfigError, match="multiple of every"):
        validate_config(LvdmTrainConfig, tiny_train_section(checkpoint={"every": 2, "ema_every": 3}))


def test_trajectory_hash_is_stable_so_existing_checkpoints_stay_resumable():
    """Pinned: a change here means every persisted `--resume latest` checkpoint is set aside as stale."""
    assert trajectory_hash(validate_config(LvdmTrainConfig, tiny_train_section())) == "1c1b7521ce5ddbb7"


def test_folder_round_trip_keeps_weights_spec_and_the_full_training_config(tmp_path):
    cfg = validate_config(LvdmTrainConfig, tiny_train_section(
        conditioning={"types": ["class_id"], "num_classes": 2, "dim": 8}))
    torch.manual_seed(0)
    net = build_lvdm_net(cfg)
    folder = net.save_pretrained(tmp_path / "lvdm", step=7)
    meta = json.loads((folder / "lvdm_config.json").read_text())
    assert meta["train"] == cfg.model_dump(mode="json") and meta["step"] == 7  # lineage: optim, ema, seed, ...
    loaded = LvdmNet.from_pretrained(folder)
    assert not loaded.training and loaded.spec == read_lvdm_spec(folder)
    assert loaded.spec == LvdmSpec.from_train_dump(cfg.model_dump(mode="json"))
    assert weights_digest(loaded.state_dict()) == weights_digest(net.state_dict())


@pytest.mark.slow
def test_train_logs_validates_and_exports_the_ema_model(tmp_path):
    store = write_latent_store(tmp_path / "store")
    section = tiny_train_section(
        conditioning={"types": ["class_id"], "num_classes": 2, "dim": 8, "p_cond": 0.5, "p_frame": 0.2},
        optim={"lr": 2e-3, "warmup_steps": 2, "batch_size": 2, "max_steps": 4, "grad_accum": 2},
        validation={"every": 2, "num_samples": 2, "steps": 2, "guidance_scale": 2.0},
        checkpoint={"every": 2, "total_limit": 1, "ema_every": 2})
    cfg = validate_config(LvdmTrainConfig, section)
    tracker = RecordingTracker()
    result = train_lvdm(cfg, [store], tmp_path / "a", tracker=tracker)

    assert [step for step, _ in tracker.metrics] == [1, 2, 3, 4]
    assert set(tracker.metrics[0][1]) == {"train/loss", "train/lr", "train/grad_norm", "train/clips_per_s"}
    assert [m["train/lr"] for _, m in tracker.metrics] == pytest.approx([1e-3, 2e-3, 2e-3, 2e-3])
    logged = {artifact_path for _, artifact_path in tracker.artifacts}
    assert logged == {"validation", "ema/step-0000002", "ema/step-0000004"}
    assert sorted(p.name for p in (tmp_path / "a" / "validation").iterdir()) == ["step-0000002.gif",
                                                                                  "step-0000004.gif"]
    assert [p.name for p in (tmp_path / "a" / "checkpoints").iterdir()] == ["checkpoint-4"]  # pruned to 1

    net = LvdmNet.from_pretrained(result.folder)
    assert net.spec == LvdmSpec.from_train_dump(cfg.model_dump(mode="json")) and result.folder.name == FINAL_DIR
    meta = json.loads((result.folder / "lvdm_config.json").read_text())
    assert meta["step"] == 4 and meta["objective"]["kind"] == "rectified_flow"
    assert meta["train"] == cfg.model_dump(mode="json")
    slim = tmp_path / "a" / "checkpoints" / "checkpoint-4" / "ema_export"
    with safe_open(str(slim / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}  # noqa: SIM118  (slim export)
    assert read_lvdm_spec(slim) == net.spec

    assert json.loads((tmp_path / "a" / "ranks" / "rank-0.json").read_text())["world_size"] == 1
