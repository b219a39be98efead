"""Prefect server, work pool, worker and deployments for this project (infra/prefect/prefect.yaml).

    echoforge ops prefect-server                  # prefect server start --host 127.0.0.1 --port 4200
    echoforge ops prefect-setup --gpus 1          # work pool `echoforge`, limit `gpu`, zombie automation
    echoforge ops worker                          # prefect worker start --pool echoforge --type process
    echoforge ops deploy                          # prefect deploy --all --prefect-file infra/prefect/prefect.yaml
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

POOL = "echoforge"
PREFECT_FILE = Path("infra") / "prefect" / "prefect.yaml"
ZOMBIE_AUTOMATION = "echoforge-crash-zombie-flow-runs"
# Prefect's minimum; its default (180 s) would let a dead machine's run look alive for minutes.
HEARTBEAT_SECONDS = 30
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def prefect_exe() -> str:
    """The `prefect` next to this interpreter (the project's venv), whatever PATH says."""
    return str(Path(sys.executable).with_name("prefect"))


def server_command(host: str = "127.0.0.1", port: int = 4200) -> list[str]:
    return [prefect_exe(), "server", "start", "--host", host, "--port", str(port)]


def worker_command(pool: str = POOL, limit: int | None = None, name: str | None = None) -> list[str]:
    cmd = [prefect_exe(), "worker", "start", "--pool", pool, "--type", "process"]
    if limit:
        cmd += ["--limit", str(limit)]
    if name:
        cmd += ["--name", name]
    return cmd


def worker_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: flow runs it starts inherit it, so they send heartbeats every 30 s
    (unless the environment already chose a frequency)."""
    env = dict(os.environ if env is None else env)
    env.setdefault(HEARTBEAT_ENV, str(HEARTBEAT_SECONDS))
    return env


def deploy_command(prefect_file: str | Path = PREFECT_FILE, names: Sequence[str] = ()) -> list[str]:
    """`prefect deploy` of every deployment in `prefect_file` (or only `names`, e.g. 'preprocess/phantom')."""
    cmd = [prefect_exe(), "deploy", "--prefect-file", str(prefect_file), "--no-prompt"]
    if names:
        for name in names:
            cmd += ["--name", name]
    else:
        cmd.append("--all")
    return cmd


def ensure_work_pool(name: str = POOL) -> str:
    """Create the process work pool `name` if it does not exist. Returns what it did."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
            return f"work pool {name!r} exists (type {pool.type})"
        except ObjectNotFound:
            pass
        template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
        return f"created process work pool {name!r}"


def zombie_automation(within_s: int):
    """Prefect's zombie detection: a flow run that stops sending heartbeats for `within_s` is marked Crashed
    (then `prefect flow-run retry` resumes it; our stages skip finished work)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    ended = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=f"Mark a flow run Crashed when no heartbeat arrived for {within_s} s (its machine died).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.heartbeat", *ended},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=within_s)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {within_s} s: the worker or its machine died")],
    )


def ensure_zombie_automation(within_s: int) -> str:
    """Create (or replace) the zombie automation; within_s = 0 removes it. Returns what it did."""
    from prefect.automations import Automation

    if 0 < within_s <= HEARTBEAT_SECONDS:
        from echo_core.errors import ConfigError

        raise ConfigError(f"--zombie-after {within_s} must exceed the {HEARTBEAT_SECONDS} s heartbeat",
                          fix="use e.g. --zombie-after 90 (three missed heartbeats)")
    try:
        Automation.read(name=ZOMBIE_AUTOMATION).delete()
        replaced = True
    except ValueError:  # not found
        replaced = False
    if within_s == 0:
        return f"zombie automation {ZOMBIE_AUTOMATION!r} " + ("removed" if replaced else "not present")
    zombie_automation(within_s).create()
    return (f"{'replaced' if replaced else 'created'} automation {ZOMBIE_AUTOMATION!r}: flow runs silent for "
            f"{within_s} s are marked Crashed (workers send heartbeats every {HEARTBEAT_SECONDS} s)")
