"""Prefect server, work pool, worker and deployments for this project (infra/prefect/prefect.yaml).

    echoforge ops prefect-server                  # prefect server start --host 127.0.0.1 --port 4200
    echoforge ops prefect-setup --gpus 1          # process work pool `echoforge` + global limit `gpu`
    echoforge ops worker                          # prefect worker start --pool echoforge --type process
    echoforge ops deploy                          # prefect deploy --all --prefect-file infra/prefect/prefect.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

POOL = "echoforge"
PREFECT_FILE = Path("infra") / "prefect" / "prefect.yaml"


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
