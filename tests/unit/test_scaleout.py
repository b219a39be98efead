"""Pure parts of scale-out: contiguous shards, the shard count the environment implies, the GPU slots a
training profile occupies, the zombie-run automation's definition (its effect is tested for real in
tests/integration/test_faults.py)."""

from __future__ import annotations

import pytest

from echo_core.errors import ConfigError
from echo_core.utils.shards import contiguous_shards
from pipelines.ops.scaleout import shard_count


@pytest.mark.parametrize(("n", "k", "align"), [(10, 3, 1), (10, 3, 4), (2, 5, 1), (9, 2, 4), (100, 7, 8),
                                              (1, 1, 1), (64, 4, 16)])
def test_shards_cover_every_item_once_in_order_on_batch_boundaries(n, k, align):
    shards = contiguous_shards(n, k, align)
    assert [i for r in shards for i in r] == list(range(n))
    assert 1 <= len(shards) <= k and all(len(r) for r in shards)
    assert all(r.start % align == 0 for r in shards)  # the sequential path's batches, unchanged
    sizes = [len(r) for r in shards[:-1]]
    assert not sizes or max(sizes) - min(sizes) <= align  # balanced to within one batch


def test_no_items_means_no_shards_and_bad_counts_are_refused():
    assert contiguous_shards(0, 4) == []
    with pytest.raises(ValueError, match="n_shards"):
        contiguous_shards(5, 0)


@pytest.mark.parametrize(("requested", "env", "expected"), [
    (None, {}, 1),  # default set-up: no fan-out
    (3, {}, 3),
    (None, {"ECHOFORGE_TASK_RUNNER": "process", "ECHOFORGE_TASK_WORKERS": "4"}, 4),
    (None, {"ECHOFORGE_DASK_ADDRESS": "tcp://10.0.0.5:8786", "ECHOFORGE_TASK_WORKERS": "8"}, 8),
    (2, {"ECHOFORGE_TASK_RUNNER": "dask", "ECHOFORGE_TASK_WORKERS": "8"}, 2),
])
def test_shard_count_follows_the_request_then_the_environment(requested, env, expected):
    assert shard_count(requested, env) == expected


def test_shard_count_rejects_zero():
    with pytest.raises(ConfigError, match="shards=0"):
        shard_count(0, {})


@pytest.mark.parametrize(("profile", "gpus", "expected"), [
    ("cpu-1proc", 8, 0), ("cpu-2proc", 0, 0), ("gpu-1", 1, 1), ("multi-gpu", 8, 8), ("multi-gpu", 4, 4),
    ("multi-node", 8, 8),  # 16 processes over 2 machines: 8 cards on this one
])
def test_training_holds_one_gpu_slot_per_local_card(monkeypatch, profile, gpus, expected):
    import torch

    from pipelines.ops.launch import local_gpus

    # No GPU exists on this machine: the visible-card count is the one thing stood in for.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert local_gpus(profile) == expected


def test_zombie_automation_crashes_runs_that_stop_sending_heartbeats():
    from prefect.client.schemas.objects import StateType
    from prefect.events.schemas.automations import Posture

    from pipelines.ops.prefect_setup import HEARTBEAT_SECONDS, ensure_zombie_automation, zombie_automation

    automation = zombie_automation(90)
    trigger, (action,) = automation.trigger, automation.actions
    assert trigger.posture == Posture.Proactive and trigger.within.total_seconds() == 90
    assert trigger.after == {"prefect.flow-run.heartbeat"} and "prefect.flow-run.Completed" in trigger.expect
    assert trigger.for_each == {"prefect.resource.id"} and action.state == StateType.CRASHED
    with pytest.raises(ConfigError, match="must exceed"):
        ensure_zombie_automation(HEARTBEAT_SECONDS)  # would crash healthy runs between two heartbeats


def test_workers_send_heartbeats_every_30_s_unless_told_otherwise():
    from pipelines.ops.prefect_setup import HEARTBEAT_ENV, worker_env

    assert worker_env({})[HEARTBEAT_ENV] == "30"
    assert worker_env({HEARTBEAT_ENV: "60"})[HEARTBEAT_ENV] == "60"


def test_concurrent_model_loads_in_threads_leave_torch_on_real_devices(tmp_path):
    """Shards on a thread runner load models at the same time; accelerate's init_empty_weights patch (made
    by from_pretrained) must not stay behind, or every later module is built on the meta device."""
    import threading

    import torch

    from echo_core.models.vae import build_vae, load_vae

    build_vae("tiny").save_pretrained(tmp_path / "vae")
    for _ in range(3):
        threads = [threading.Thread(target=load_vae, args=(tmp_path / "vae",)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
