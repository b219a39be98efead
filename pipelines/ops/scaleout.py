"""Where per-video fan-out runs, chosen by the environment (a deployment's `job_variables.env`, a shell).

    ECHOFORGE_TASK_RUNNER   thread (default) | process | dask
    ECHOFORGE_TASK_WORKERS  pool size for thread/process, and for a temporary Dask LocalCluster
    ECHOFORGE_DASK_ADDRESS  scheduler of an existing Dask cluster (tcp://host:8786); alone, it implies dask

Shards: flows that cut their work into shards (encode, sample, metric feature extraction) take a
`shards` parameter; left unset it is 1 on a default set-up and ECHOFORGE_TASK_WORKERS once the environment
names a runner, so pointing a deployment at a Dask cluster is enough to spread the work over it.

Flows decorate with `task_runner=runner_from_env()`; the decision is made when the flow module is
imported, i.e. in the flow-run process, after the deployment's environment is in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from echo_core.errors import ConfigError

RUNNER_ENV = "ECHOFORGE_TASK_RUNNER"
WORKERS_ENV = "ECHOFORGE_TASK_WORKERS"
DASK_ADDRESS_ENV = "ECHOFORGE_DASK_ADDRESS"
RUNNER_KINDS = ("thread", "process", "dask")


def task_runner(kind: str = "thread", workers: int = 2, address: str | None = None):
    """Bounded pool for per-video fan-out: thread | process | dask (LocalCluster, or `address`)."""
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    raise ValueError(f"unknown task runner {kind!r}: use thread, process or dask")


def runner_settings(env: Mapping[str, str] | None = None, default: str = "thread", workers: int = 2,
                    ) -> tuple[str, int, str | None]:
    """(kind, workers, dask address) from `env` (os.environ by default), validated."""
    env = os.environ if env is None else env
    address = env.get(DASK_ADDRESS_ENV, "").strip() or None
    kind = env.get(RUNNER_ENV, "").strip().lower() or ("dask" if address else default)
    if kind not in RUNNER_KINDS:
        raise ConfigError(f"{RUNNER_ENV}={kind!r} is not one of {RUNNER_KINDS}",
                          fix=f"set {RUNNER_ENV} to thread, process or dask")
    raw = env.get(WORKERS_ENV, "").strip() or str(workers)
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{WORKERS_ENV}={raw!r} is not a positive integer", fix=f"e.g. {WORKERS_ENV}=4")
    if address and kind != "dask":
        raise ConfigError(f"{DASK_ADDRESS_ENV} is set but {RUNNER_ENV}={kind}",
                          fix=f"unset {DASK_ADDRESS_ENV}, or set {RUNNER_ENV}=dask")
    return kind, int(raw), address


def runner_from_env(default: str = "thread", workers: int = 2, env: Mapping[str, str] | None = None):
    """The Prefect task runner the environment asks for (see the module docstring)."""
    kind, n, address = runner_settings(env, default, workers)
    return task_runner(kind, n, address)


def shard_count(requested: int | None = None, env: Mapping[str, str] | None = None) -> int:
    """Shards to cut work into: `requested`, else the pool size when the environment names a runner, else 1."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"shards={requested} must be >= 1", fix="pass shards=1 for no fan-out")
        return requested
    env = os.environ if env is None else env
    named = env.get(RUNNER_ENV, "").strip() or env.get(DASK_ADDRESS_ENV, "").strip()
    return runner_settings(env)[1] if named else 1
