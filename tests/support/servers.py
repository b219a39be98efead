"""Real servers for integration tests: `prefect server`, `mlflow server`, Prefect workers, on loopback.

Everything started here is registered with a `Processes` registry whose `stop_all()` the test calls in a
`finally`: each process is stopped by PID as a process group, descendants included (a Prefect worker's
flow runs live in sessions of their own); workers get a short grace and then SIGKILL (stack.md §3d:
`prefect worker` may ignore SIGTERM). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from echo_core.data.phantom.datasets import generate_dataset
from pipelines.ops.mlflow_server import MlflowServerConfig, check_auth_settings, prepare_local_store, server_command
from pipelines.ops.prefect_setup import POOL, worker_command, worker_env
from pipelines.ops.processes import ManagedProcess, free_port, spawn, wait_http_ok
from support import REPO_ROOT

BIN = Path(sys.executable).parent
# Faster pick-up than the production defaults (10-15 s polls), so tests stay short.
FAST_WORKER = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
               "PREFECT_WORKER_HEARTBEAT_SECONDS": "5"}


@dataclass
class Processes:
    """Every process a test started, stopped together (workers first, servers last)."""

    started: list[tuple[ManagedProcess, float]] = field(default_factory=list)

    def add(self, proc: ManagedProcess, grace: float) -> ManagedProcess:
        self.started.append((proc, grace))
        return proc

    def stop_all(self) -> None:
        errors = []
        for proc, grace in reversed(self.started):
            try:
                proc.stop(grace=grace)
            except Exception as exc:  # keep stopping the others; report at the end
                errors.append(f"{proc.name}: {exc}")
        self.started.clear()
        assert not errors, errors


@dataclass
class PrefectServer:
    home: Path
    port: int
    proc: ManagedProcess

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for clients, workers and CLI calls talking to this server."""
        return {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", **extra}


def start_prefect_server(procs: Processes, home: Path, port: int | None = None,
                         extra_env: Mapping[str, str] | None = None) -> PrefectServer:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME (sqlite); healthy on return."""
    port = port or free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_API_URL": "", **(extra_env or {})}
    proc = procs.add(spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                           name="prefect-server", log_path=home / f"server-{port}.log", env=env), grace=20)
    wait_http_ok(f"http://127.0.0.1:{port}/api/health", proc, timeout=180)
    return PrefectServer(home, port, proc)


def restart_prefect_server(procs: Processes, server: PrefectServer, down_s: float = 0.0) -> PrefectServer:
    """Stop the server, stay down `down_s` seconds, start it again on the same port and database."""
    server.proc.stop(grace=20)
    time.sleep(down_s)
    return start_prefect_server(procs, server.home, server.port)


def start_worker(procs: Processes, server: PrefectServer, log: Path, pool: str = POOL,
                 env: Mapping[str, str] | None = None) -> ManagedProcess:
    """A process worker for `pool`; the flow runs it starts are killed with it on stop (grace 5 s, then KILL)."""
    full_env = worker_env(server.env(**FAST_WORKER, **(env or {})))
    proc = procs.add(spawn(worker_command(pool), name="prefect-worker", log_path=log, env=full_env,
                           cwd=REPO_ROOT), grace=5)
    wait_for(lambda: "started!" in proc.log_tail(20000) or not proc.alive(), timeout=120, what="worker start")
    assert proc.alive(), proc.log_tail()
    return proc


def start_mlflow_server(procs: Processes, root: Path, port: int | None = None, *, auth: bool = False,
                        extra_env: Mapping[str, str] | None = None) -> tuple[ManagedProcess, str]:
    """The project's launcher configuration: sqlite under <root>/mlruns, proxied artifacts, 127.0.0.1."""
    cfg = MlflowServerConfig(backend_store_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
                             artifacts_destination=str(root / "mlruns" / "artifacts"), port=port or free_port(),
                             workers=1, auth=auth)  # 4 uvicorn workers (the default) are slow to start on 2 cores
    env = {**os.environ, **(extra_env or {})}
    check_auth_settings(cfg, env)
    prepare_local_store(cfg)
    proc = procs.add(spawn(server_command(cfg), name="mlflow-server", log_path=root / f"mlflow-{cfg.port}.log",
                           cwd=root, env=env), grace=5)
    wait_http_ok(f"{cfg.url}/health", proc, timeout=180)
    return proc, cfg.url


def run_cli(cmd: Sequence[str], env: Mapping[str, str], timeout: float = 300, cwd: Path = REPO_ROOT,
            ) -> subprocess.CompletedProcess:
    """Run a short CLI command to completion (bounded); its process group is killed on timeout."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate(timeout=30)
        raise AssertionError(f"{' '.join(cmd[:4])} timed out after {timeout}s:\n{out[-4000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def setup_and_deploy(env: Mapping[str, str], setup_args: Sequence[str], names: Sequence[str] = ()) -> str:
    """`echoforge ops prefect-setup <setup_args>` then `echoforge ops deploy` (all, or `names`) against the server
    in `env`; asserts both succeeded and returns prefect-setup's output."""
    setup = run_cli([str(BIN / "echoforge"), "ops", "prefect-setup", *setup_args], env, timeout=120)
    assert setup.returncode == 0, setup.stdout
    deploy = run_cli([str(BIN / "echoforge"), "ops", "deploy", *(a for n in names for a in ("--name", n))], env,
                     timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-4000:]
    return setup.stdout


def run_deployment(server: PrefectServer, name: str, params: Mapping[str, Any], timeout: int = 300,
                   extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """`prefect deployment run NAME --params JSON --watch` (exit 0 only when the run completed)."""
    cmd = [str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(dict(params)), "--watch",
           "--watch-timeout", str(timeout), *extra]
    return run_cli(cmd, server.env(), timeout=timeout + 60)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll `condition` until truthy (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def drain_prefect_workers() -> None:
    """Flush this process's Prefect event/log workers while their server is still up.

    The workers are per-process singletons: left holding events for a server the test then stops, they
    make the next `prefect_test_harness` hang in its own drain (seen in the full suite)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        with contextlib.suppress(RuntimeError, TypeError):  # never started in this process
            worker.drain_all(timeout=30)


@contextlib.contextmanager
def prefect_client(server: PrefectServer) -> Iterator[Any]:
    """A sync Prefect client of this test process, talking to `server` (settings restored on exit)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
        yield client


@dataclass
class DaskStack:
    """A 2-worker LocalCluster behind a real Prefect server: `runner` for `flow.with_options(task_runner=…)`."""

    runner: Any
    address: str
    stream: Any  # distributed TaskStreamPlugin on the scheduler

    def workers(self, key_part: str = "") -> set[str]:
        """Worker addresses that ran a task whose key contains `key_part`."""
        return {event["worker"] for event in self.stream.buffer if key_part in str(event["key"])}


_SHARED = Processes()
_SHARED_PREFECT: list[PrefectServer] = []


def shared_prefect_server() -> PrefectServer:
    """One real `prefect server` per test process (xdist worker), started on first use and stopped by
    `stop_shared_servers` at the end of the session. Each start costs ~18 s of 2 cores, and ten test files
    need a server only to report flow and task states to: one start per worker instead of one per file."""
    if not _SHARED_PREFECT:
        home = Path(os.environ["PREFECT_HOME"]).parent / f"shared-prefect-{os.getpid()}"
        _SHARED_PREFECT.append(start_prefect_server(_SHARED, home))
    return _SHARED_PREFECT[0]


def stop_shared_servers() -> None:
    _SHARED_PREFECT.clear()
    _SHARED.stop_all()


@contextlib.contextmanager
def prefect_api() -> Iterator[PrefectServer]:
    """What `prefect_test_harness` gives a test (flows run against a real, temporary Prefect server), on the
    shared server: this process's Prefect settings point at it inside the block; its event and log workers
    are drained before the block ends. Flow runs are found by id, so the shared database isolates tests."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = shared_prefect_server()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        try:
            yield server
        finally:
            drain_prefect_workers()


@contextlib.contextmanager
def dask_behind_prefect(monkeypatch, worker_env: Mapping[str, str] | None = None) -> Iterator[DaskStack]:
    """The shared `prefect server` and a real dask.distributed LocalCluster (2 worker processes, 1 thread
    each) whose workers report task states to it; the body runs with PREFECT_API_URL set. The cluster is
    stopped on exit, after Prefect's event/log workers are drained."""
    from distributed import LocalCluster
    from distributed.diagnostics.task_stream import TaskStreamPlugin

    from pipelines.ops.scaleout import task_runner

    cluster = None
    try:
        with prefect_api() as server:
            monkeypatch.setenv("PREFECT_API_URL", server.api_url)  # worker processes inherit the environment
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, env=dict(worker_env or {}))
            stream = TaskStreamPlugin(cluster.scheduler)
            cluster.scheduler.add_plugin(stream)
            yield DaskStack(task_runner("dask", address=cluster.scheduler_address), cluster.scheduler_address,
                            stream)
    finally:
        if cluster is not None:
            cluster.close(timeout=30)


def write_project(root: Path, num_videos: int = 3, seed: int = 3) -> Path:
    """A tiny phantom EchoNet-Dynamic set and a params.yaml pointing at it (absolute paths); returns params."""
    generate_dataset("dynamic", root / "raw" / "dynamic", num_videos=num_videos, seed=seed)
    params = {
        "raw_datasets": {"dynamic": {"kind": "dynamic", "validate_kind": "dynamic",
                                     "raw": str(root / "raw" / "dynamic")}},
        "cardiacnet_raw": str(root / "raw" / "cardiacnet"),
        "datasets": {"dynamic": {"validate_kind": "dynamic", "reference_frames": 8}},
        "prepare": {"seed": 42}, "reference": {"fps": 32.0, "seed": 42},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"
