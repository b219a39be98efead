"""The one trainer and its generic pieces (LR schedule, EMA, resumable data order, trajectory check), driven
by a task that is not the LVDM: a 2-layer regression net on random tensors (no video, no diffusion, no
conditioning), trained, checkpointed and resumed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from echo_core.config import StrictModel, validate_config
from echo_core.errors import ConfigError, DataError
from echo_core.training.checkpoint import CheckpointConfig, compatible_checkpoint, trajectory_hash
from echo_core.training.data_order import ResumableSampler
from echo_core.training.ema import EMA, EmaConfig, ema_decay
from echo_core.training.optim import OptimConfig, build_optimizer, build_scheduler, lr_multiplier
from echo_core.training.task import TrainTask
from echo_core.training.trainer import train, weights_digest

torch.set_num_threads(2)


# ---------------------------------------------------------------- a tiny non-LVDM task


class RegressionConfig(StrictModel):
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-2, warmup_steps=1, batch_size=4,
                                                                   max_steps=6))
    ema: EmaConfig = Field(default_factory=lambda: EmaConfig(decay=0.9))
    checkpoint: CheckpointConfig = Field(default_factory=lambda: CheckpointConfig(every=2, total_limit=2))
    seed: int = 5
    deterministic: bool = False
    num_workers: int = 0
    log_every: int = 1
    input_noise: float = 0.1


class RandomPairs(Dataset):
    """y = sum(x) + 1 on fixed random x: {"x": (4,), "y": (1,)} per item."""

    def __init__(self, n: int = 16):
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.x[i].sum(0, keepdim=True) + 1.0}


class RegressionTask(TrainTask):
    name = "regression"
    export_dir = "regressor"
    items_name = "pairs"

    def __init__(self, cfg: RegressionConfig, previews: list[int] | None = None):
        super().__init__(cfg)
        self.previews = previews
        self.preview_every = 3 if previews is not None else None

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def train_dataset(self) -> Dataset:
        return RandomPairs()

    def loss(self, model, batch, generator):
        noise = torch.randn(batch["x"].shape, generator=generator) * self.config.input_noise  # exercises the RNG
        return nn.functional.mse_loss(model(batch["x"] + noise), batch["y"])

    def preview(self, model, step, out_dir, tracker):
        assert not model.training
        self.previews.append(step)

    def export(self, model, folder: Path, dtype, step):
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(dtype).contiguous() for k, v in model.state_dict().items()},
                  str(folder / "model.safetensors"))
        return folder


def _final(out: Path) -> tuple[str, dict]:
    weights = load_file(str(out / "regressor" / "model.safetensors"))
    return weights_digest(weights), json.loads((out / "ranks" / "rank-0.json").read_text())


def test_a_non_lvdm_task_trains_checkpoints_and_resumes_bit_identically(tmp_path):
    previews: list[int] = []
    full = train(RegressionTask(RegressionConfig(), previews), tmp_path / "full")
    assert full.step == 6 and full.folder == tmp_path / "full" / "regressor" and previews == [3, 6]
    summary = json.loads((tmp_path / "full" / "train_summary.json").read_text())
    assert summary["history"]["last_loss"][-1] < summary["history"]["first_loss"][0]
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert (tmp_path / "full" / "checkpoints" / "checkpoint-6" / "ema_export" / "model.safetensors").is_file()

    interrupted = RegressionConfig()
    interrupted.optim.max_steps = 4  # stops after checkpoint-4; raising max_steps continues the trajectory
    train(RegressionTask(interrupted), tmp_path / "resumed")
    resumed = train(RegressionTask(RegressionConfig()), tmp_path / "resumed", resume="latest")
    assert resumed.step == 6
    (digest_a, ranks_a), (digest_b, ranks_b) = _final(tmp_path / "full"), _final(tmp_path / "resumed")
    assert digest_a == digest_b
    assert ranks_a["weights_sha256"] == ranks_b["weights_sha256"] and ranks_a["ema_sha256"] == ranks_b["ema_sha256"]


def test_resume_latest_never_continues_a_run_made_with_other_hyper_parameters(tmp_path):
    """`dvc repro` after a params change keeps persisted checkpoints: they must be set aside, not resumed."""
    cfg = RegressionConfig()
    ckpt = tmp_path / "checkpoints" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"trajectory_hash": trajectory_hash(cfg), "step": 10}))
    assert compatible_checkpoint(ckpt, cfg.model_copy(deep=True), latest=True) == ckpt
    longer = cfg.model_copy(deep=True)
    longer.optim.max_steps += 100  # raising max_steps continues the same trajectory
    assert compatible_checkpoint(ckpt, longer, latest=True) == ckpt

    changed = cfg.model_copy(deep=True)
    changed.optim.lr *= 2
    assert compatible_checkpoint(ckpt, changed, latest=False) == ckpt  # an explicit folder is honoured
    assert compatible_checkpoint(ckpt, changed, latest=True) is None
    assert not ckpt.exists()
    assert list((tmp_path / "checkpoints").glob("stale-*/checkpoint-10"))


# ---------------------------------------------------------------- LR schedule


def test_warmup_is_linear_in_optimizer_steps_and_starts_above_zero():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, max_steps=10)
    assert [lr_multiplier(s, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = OptimConfig(lr=1.0, warmup_steps=2, max_steps=10, schedule="cosine")
    values = [lr_multiplier(s, cosine) for s in range(10)]
    assert values[:2] == [0.5, 1.0] and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(values[1:], values[2:], strict=False))


def test_scheduler_steps_once_per_optimizer_step():
    cfg = OptimConfig(lr=0.1, warmup_steps=4, max_steps=10)
    param = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([param], cfg)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(5):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])


def test_cosine_needs_room_after_warmup():
    with pytest.raises(ConfigError, match="warmup_steps < max_steps"):
        validate_config(OptimConfig, {"schedule": "cosine", "warmup_steps": 10, "max_steps": 10})


def test_ema_export_interval_must_fall_on_checkpoints():
    with pytest.raises(ConfigError, match="multiple of every"):
        validate_config(CheckpointConfig, {"every": 2, "ema_every": 3})


# ---------------------------------------------------------------- EMA


def test_ema_decay_warmup_schedules_and_ceiling():
    inv = EmaConfig(decay=0.999, warmup="inv_gamma", inv_gamma=1.0, power=1.0)
    assert ema_decay(inv, 0) == 0.0 and ema_decay(inv, 1) == pytest.approx(0.5)
    assert ema_decay(inv, 10**9) == 0.999
    lin = EmaConfig(decay=0.9, warmup="linear", warmup_steps=10)
    assert [ema_decay(lin, n) for n in (0, 5, 10, 50)] == pytest.approx([0.0, 0.45, 0.9, 0.9])
    assert ema_decay(EmaConfig(decay=0.5, warmup="none"), 0) == 0.5


def test_ema_tracks_weights_swaps_exactly_and_round_trips(tmp_path):
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, EmaConfig(decay=0.5, warmup="none"))
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.shadow["weight"], start + 0.5)
    trained = net.weight.detach().clone()
    with ema.applied_to(net):
        torch.testing.assert_close(net.weight, start + 0.5)
    assert torch.equal(net.weight, trained)  # bit-exact restore
    ema.save(tmp_path / "ema.safetensors")
    other = EMA(torch.nn.Linear(3, 2), EmaConfig())
    other.load(tmp_path / "ema.safetensors")
    assert other.num_updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])


# ---------------------------------------------------------------- data position


def test_sampler_shards_ranks_disjointly_and_resumes_mid_epoch():
    ranks = [ResumableSampler(10, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    epoch0 = [s.epoch_indices(0) for s in ranks]
    assert len(epoch0[0]) == len(epoch0[1]) == 4 and not set(epoch0[0]) & set(epoch0[1])  # 2 items dropped
    assert epoch0[0] != ranks[0].epoch_indices(1)  # a new order each epoch
    sampler = ranks[0]
    sampler.advance()
    restored = ResumableSampler(10, 2, seed=1, rank=0, world_size=2)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == epoch0[0][2:] and len(restored) == 2
    with pytest.raises(DataError, match="cannot fill one global batch"):
        ResumableSampler(3, 2, seed=0, world_size=2)
