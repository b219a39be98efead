"""LVDM training pieces (LR schedule, EMA, resumable sampler, basic sampler) and a short real training run
on tiny real latent stores with a tiny real diffusers SVD UNet (resume and 2 processes: tests/integration).

`write_latent_store` / `tiny_train_section` are shared with tests/integration/test_train_*.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from echo_core.config import validate_config
from echo_core.diffusion import basic_sampler
from echo_core.diffusion.objectives import DDPMObjectiveConfig, FlowObjectiveConfig, build_objective
from echo_core.errors import ConfigError, DataError
from echo_core.tracking import NullTracker
from echo_core.training.ema import EMA, EmaConfig, ema_decay
from echo_core.training.loop import (
    FINAL_DIR,
    LvdmTrainConfig,
    ResumableSampler,
    load_lvdm_folder,
    train_lvdm,
)
from echo_core.training.optim import OptimConfig, build_optimizer, build_scheduler, lr_multiplier

torch.set_num_threads(2)

LATENT = 6  # latent h = w (tiny: the UNet sees 8×8 after the 1-px replicate pad)


def write_latent_store(root: Path, *, n_train: int = 4, n_val: int = 2, frames: int = 12, fps: float = 32.0,
                       amplitude: float = 1.0) -> Path:
    """A latent store of smooth travelling waves (learnable): Latents/v<i>.safetensors (T, 4, 6, 6) +
    FileList.csv with EF, class_id/class_name and TRAIN/VAL splits."""
    (root / "Latents").mkdir(parents=True)
    yy, xx = np.mgrid[:LATENT, :LATENT] / LATENT
    t = np.arange(frames)[:, None, None]
    rows = []
    for i in range(n_train + n_val):
        wave = amplitude * np.sin(2 * np.pi * (xx[None] + 0.1 * i) + t / 4.0)
        latents = np.stack([wave, -wave, 0.5 * wave, np.cos(yy[None] + t / 3.0) + 0 * wave], axis=1)
        save_file({"latents": torch.from_numpy(latents.astype(np.float32))},
                  str(root / "Latents" / f"v{i}.safetensors"))
        rows.append({"FileName": f"v{i}", "FPS": fps, "NumberOfFrames": frames, "EF": 30.0 + 5 * i,
                     "class_id": i % 2, "class_name": ["ASD", "Normal"][i % 2],
                     "Split": "TRAIN" if i < n_train else "VAL"})
    pd.DataFrame(rows).to_csv(root / "FileList.csv", index=False)
    return root


def tiny_train_section(**changes: Any) -> dict[str, Any]:
    """A `train_lvdm:` section for a seconds-long CPU run (top-level keys of `changes` replace the defaults)."""
    section = {
        "model": {"name": "tiny", "latent_size": LATENT},
        "conditioning": {"types": ["ef"], "dim": 1, "p_cond": 0.2},
        "objective": {"kind": "rectified_flow"},
        "dataset": {"num_frames": 8, "target_fps": 32.0},
        "optim": {"lr": 2e-3, "warmup_steps": 2, "batch_size": 2, "max_steps": 6},
        "ema": {"decay": 0.99},
        "checkpoint": {"every": 2, "total_limit": 2},
        "validation": {"every": None},
        "deterministic": True,
        "num_workers": 0,
        "seed": 3,
    }
    return {**section, **changes}


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
    assert len(epoch0[0]) == len(epoch0[1]) == 4 and not set(epoch0[0]) & set(epoch0[1])  # 2 clips dropped
    assert epoch0[0] != ranks[0].epoch_indices(1)  # a new order each epoch
    sampler = ranks[0]
    sampler.advance()
    restored = ResumableSampler(10, 2, seed=1, rank=0, world_size=2)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == epoch0[0][2:] and len(restored) == 2
    with pytest.raises(DataError, match="cannot fill one global batch"):
        ResumableSampler(3, 2, seed=0, world_size=2)


# ---------------------------------------------------------------- basic sampler


@pytest.mark.parametrize("kind", ["rectified_flow", "v_ddpm"])
def test_basic_sampler_reaches_the_data_with_an_exact_model(kind):
    objective = build_objective(FlowObjectiveConfig() if kind == "rectified_flow" else DDPMObjectiveConfig())
    noise = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    target = torch.full_like(noise, 0.5)

    def oracle(x, t):
        """The exact prediction when the data is always `target`."""
        if kind == "rectified_flow":
            return (x - target) / (t / objective.time_scale).reshape(-1, 1, 1, 1, 1)
        alpha_bar = objective.scheduler.alphas_cumprod[t.long()].reshape(-1, 1, 1, 1, 1)
        eps = (x - alpha_bar.sqrt() * target) / (1 - alpha_bar).sqrt()
        return objective.training_target(target, eps, t.long())[1]

    seen = []
    out = basic_sampler.sample(oracle, noise, objective, 4, callback=lambda info: seen.append(info["i"]))
    assert seen == [0, 1, 2, 3]
    torch.testing.assert_close(out, target, atol=2e-3, rtol=0)


# ---------------------------------------------------------------- a real (tiny) run


def test_config_rejects_typos_and_bad_ema_interval():
    with pytest.raises(ConfigError, match="drop_conditionning"):
        validate_config(LvdmTrainConfig, tiny_train_section(conditioning={"drop_conditionning": 0.1}))
    with pytest.raises(ConfigError, match="multiple of every"):
        validate_config(LvdmTrainConfig, tiny_train_section(checkpoint={"every": 2, "ema_every": 3}))


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

    net, loaded_cfg, _ = load_lvdm_folder(result.folder)
    assert loaded_cfg == cfg and result.folder.name == FINAL_DIR
    meta = json.loads((result.folder / "lvdm_config.json").read_text())
    assert meta["step"] == 4 and meta["objective"]["kind"] == "rectified_flow"
    slim = tmp_path / "a" / "checkpoints" / "checkpoint-4" / "ema_export"
    with safe_open(str(slim / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()}  # noqa: SIM118 == {torch.float16}  # slim fp16 export
    assert load_lvdm_folder(slim)[1] == cfg

    assert json.loads((tmp_path / "a" / "ranks" / "rank-0.json").read_text())["world_size"] == 1


def test_resume_latest_never_continues_a_run_made_with_other_hyper_parameters(tmp_path):
    """`dvc repro` after a params change keeps persisted checkpoints: they must be set aside, not resumed."""
    import json

    from echo_core.training.loop import LvdmTrainConfig, _compatible, trajectory_hash

    cfg = LvdmTrainConfig()
    ckpt = tmp_path / "checkpoints" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"trajectory_hash": trajectory_hash(cfg), "step": 10}))
    assert _compatible(ckpt, cfg.model_copy(update={"seed": cfg.seed}), latest=True) == ckpt
    longer = cfg.model_copy(deep=True)
    longer.optim.max_steps += 100  # raising max_steps continues the same trajectory
    assert _compatible(ckpt, longer, latest=True) == ckpt

    changed = cfg.model_copy(deep=True)
    changed.optim.lr *= 2
    assert _compatible(ckpt, changed, latest=False) == ckpt  # an explicit folder is honoured
    assert _compatible(ckpt, changed, latest=True) is None
    assert not ckpt.exists()
    assert list((tmp_path / "checkpoints").glob("stale-*/checkpoint-10"))
