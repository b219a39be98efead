"""MLflow tracking adapter: runs, params, buffered metrics, artifacts, lineage tags (the model registry is
pipelines/registry.py).

With pipelines/registry.py the only module that talks to `MlflowClient`. echo_core sees it through the
`echo_core.tracking.Tracker` protocol. Metrics, params, tags and artifacts are queued and sent by a
background thread, so a tracking server that is down or restarting never stalls or kills training: calls
are retried until they are accepted, and `close()` waits (bounded) for the queue to drain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from echo_core.errors import TrackingError
from echo_core.utils.hashing import config_hash, sha256_tree

log = logging.getLogger("echoforge.tracking")

_PARAM_MAX = 6000  # MLflow 3 param value limit (chars)


def _mlflow():
    # Lazy: `import mlflow` costs ~2-4 s and the CLI must start fast.
    import mlflow

    return mlflow


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")


def ensure_experiment(name: str) -> str:
    """Create the experiment if needed, with artifacts next to a sqlite store (inside the project)."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → {'a.b': 'value'} with values cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_PARAM_MAX]
    return flat


class MlflowTracker:
    """Tracker bound to one MLflow run; nothing it does blocks training on the server.

    Every call is queued and sent, in order, by one background thread: params, tags, dicts and artifacts
    as an ordered queue of operations, metrics as a buffer sent in batches. A send that fails because the
    server is down or restarting stays queued and is retried every `flush_interval` seconds, so an outage
    loses nothing; a request the server rejects for good (e.g. a param changed within a run) is dropped
    with a warning instead of blocking the queue. Artifacts are staged (hard links, else copies) when
    logged, so the caller may delete or prune the originals before the upload happens. `close()` waits
    (bounded) for everything to arrive.
    """

    def __init__(self, run_id: str, *, flush_interval: float = 2.0, staging_dir: str | Path | None = None):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri())
        self._ops: deque[_Op] = deque()
        self._buffer: list[Any] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._interval = flush_interval
        self._warned = False
        self.dropped: list[str] = []  # operations the server rejected for good (logged as warnings)
        self._staging = Path(staging_dir or Path.cwd() / "mlruns" / ".staging") / run_id
        self._thread = threading.Thread(target=self._flush_loop, name="mlflow-tracker", daemon=True)
        self._thread.start()

    # -- Tracker protocol -------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            chunk = items[start:start + 100]
            self._enqueue("log_params", lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            self._buffer.extend(Metric(k, float(v), now, step or 0) for k, v in metrics.items())

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        staged = self._stage(Path(path))
        if staged.is_dir():
            call = lambda: self.client.log_artifacts(self.run_id, str(staged), artifact_path)  # noqa: E731
        else:
            call = lambda: self.client.log_artifact(self.run_id, str(staged), artifact_path)  # noqa: E731
        self._enqueue(f"log_artifact {path}", call, cleanup=lambda: shutil.rmtree(staged.parent, ignore_errors=True))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._enqueue("set_tags", lambda: self.client.log_batch(self.run_id, tags=items))

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self._enqueue(f"log_dict {artifact_file}", lambda: self.client.log_dict(self.run_id, obj, artifact_file))

    # -- delivery -----------------------------------------------------------------------------------
    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything queued so far has been delivered; True if that happened within `timeout`."""
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            self._wake.set()
            time.sleep(0.05)
        return True

    def close(self, timeout: float = 120.0) -> None:
        drained = self.flush(timeout)
        left = self.pending()
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)
        shutil.rmtree(self._staging, ignore_errors=True)
        if not drained:
            raise TrackingError(
                f"could not deliver {left} queued MLflow calls/metrics to {tracking_uri()} in {timeout:.0f}s",
                fix="check that the MLflow tracking server is up; the run's checkpoints are intact",
            )

    def pending(self) -> int:
        """Operations + metric points not yet delivered (in-flight ones included)."""
        with self._lock:
            return len(self._ops) + len(self._buffer)

    def _enqueue(self, label: str, call: Callable[[], Any], cleanup: Callable[[], Any] | None = None) -> None:
        with self._lock:
            self._ops.append(_Op(label, call, cleanup))
        self._wake.set()

    def _stage(self, path: Path) -> Path:
        """A private snapshot of `path` (hard links when possible) that lives until it is uploaded."""
        if not path.exists():
            raise TrackingError(f"cannot log artifact {path}: it does not exist")
        dst = self._staging / uuid.uuid4().hex / path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, dst, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(path), str(dst))
        return dst

    def _flush_loop(self) -> None:
        while not self._stop:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._send_pending()

    def _send_pending(self) -> None:
        """Send queued operations, then metric batches, in order; stop at the first transient failure."""
        while True:
            with self._lock:
                op = self._ops[0] if self._ops else None
            if op is None:
                break
            if not self._attempt(op.label, op.call):
                return
            with self._lock:
                self._ops.popleft()
            if op.cleanup is not None:
                op.cleanup()
        while True:
            with self._lock:
                batch = self._buffer[:900]
            if not batch:
                return
            call = lambda batch=batch: self.client.log_batch(self.run_id, metrics=batch)  # noqa: E731
            if not self._attempt(f"log_metrics ({len(batch)} points)", call):
                return
            with self._lock:
                del self._buffer[: len(batch)]

    def _attempt(self, label: str, call: Callable[[], Any]) -> bool:
        """True when the call is done with (delivered, or rejected for good); False to retry later."""
        try:
            call()
        except Exception as exc:
            if _is_permanent(exc):
                log.warning("MLflow rejected %s, dropping it: %s", label, exc)
                self.dropped.append(label)
                return True
            if not self._warned:
                log.warning("MLflow unreachable (%s); queueing calls and retrying", type(exc).__name__)
                self._warned = True
            return False
        if self._warned:
            log.info("MLflow reachable again; sending queued calls")
            self._warned = False
        return True


@dataclass(frozen=True)
class _Op:
    label: str
    call: Callable[[], Any]
    cleanup: Callable[[], Any] | None = None


_PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                    "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED"}


def _is_permanent(exc: Exception) -> bool:
    """A rejection that retrying cannot fix (vs. connection errors, timeouts, 5xx while restarting)."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return True
    return getattr(exc, "error_code", None) in _PERMANENT_CODES


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not supported
        shutil.copy2(src, dst)
    return dst


OWNER_TAG = "echoforge.owner"  # host:pid:start-time of the process that holds the run open


def process_owner(pid: int | None = None) -> str:
    import psutil

    proc = psutil.Process(pid or os.getpid())
    return f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.2f}"


def _owner_is_gone(owner: str) -> bool:
    """True only when the owner ran on THIS host and that process no longer exists (a pid reused by another
    process has another start time). Runs owned elsewhere cannot be judged from here and are left alone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        return process_owner(int(pid)) != owner
    except Exception:  # psutil.NoSuchProcess / AccessDenied: gone (or not ours to judge: AccessDenied is rare)
        return True


def is_orphaned(run) -> bool:
    """RUNNING with its owning process on this host gone (a run without an owner tag cannot be judged)."""
    owner = run.data.tags.get(OWNER_TAG, "")
    return bool(owner) and _owner_is_gone(owner)


def running_runs(client) -> list:
    """Every RUNNING run of every experiment of the store `client` talks to."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000)


def _end_if_orphaned(client, run) -> bool:
    if not is_orphaned(run):
        return False
    client.set_tag(run.info.run_id, "echoforge.orphaned", "owner process ended without closing the run")
    client.set_terminated(run.info.run_id, status="KILLED")
    return True


def close_orphaned_runs(exp_id: str, run_name: str | None, keep: str | None = None) -> list[str]:
    """A SIGKILLed stage leaves its run RUNNING forever (no `finally` runs). Before a stage opens its run, the
    earlier runs of the same name whose owning process is gone are ended as KILLED and tagged, so the
    registry never shows a run as live that nobody is writing (the re-run's own run carries the results)."""
    if not run_name:
        return []
    client = _mlflow().MlflowClient()
    query = f"attributes.status = 'RUNNING' and attributes.run_name = '{run_name}'"
    closed = [run.info.run_id for run in client.search_runs([exp_id], filter_string=query, max_results=200)
              if run.info.run_id != keep and _end_if_orphaned(client, run)]
    if closed:
        log.warning("ended %d orphaned RUNNING run(s) named %r as KILLED: %s", len(closed), run_name, closed)
    return closed


def close_orphaned_runs_everywhere() -> list[str]:
    """Every experiment's RUNNING runs whose owning process on this host is gone, ended as KILLED: for stages
    DVC restored from its run cache, which never open a run again (pipelines/ops/repro_sweep.py)."""
    client = _mlflow().MlflowClient(tracking_uri())
    return [f"{run.info.run_id} ({run.info.run_name})" for run in running_runs(client)
            if _end_if_orphaned(client, run)]


@contextlib.contextmanager
def start_run(experiment: str, run_name: str | None = None, tags: dict[str, str] | None = None,
              run_id: str | None = None) -> Iterator[MlflowTracker]:
    """Open (or re-open, for resume) a run; FINISHED on success, FAILED on error; metrics always flushed."""
    mlflow = _mlflow()
    exp_id = ensure_experiment(experiment)
    close_orphaned_runs(exp_id, run_name, keep=run_id)
    owned = {**(tags or {}), OWNER_TAG: process_owner()}
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, run_id=run_id, tags=owned) as run:
        tracker = MlflowTracker(run.info.run_id)
        try:
            yield tracker
        finally:
            tracker.close()


class PrefixedTracker:
    """One part's view of a shared run (e.g. one dataset of an evaluation): its metrics, params, tags and
    artefacts are namespaced under `prefix`."""

    def __init__(self, inner, prefix: str):
        self.inner, self.prefix = inner, prefix

    def log_params(self, params: dict[str, Any]) -> None:
        self.inner.log_params({self.prefix: params})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.inner.log_metrics({f"{self.prefix}/{k}": v for k, v in metrics.items()}, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, f"{self.prefix}/{artifact_path}" if artifact_path else self.prefix)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.inner.set_tags({f"{self.prefix}.{k}": v for k, v in tags.items()})


# -- lineage ------------------------------------------------------------------------------------------
def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_hash(path: str | Path) -> str:
    """DVC's md5 of `path` when DVC tracks it (dvc.lock outs or a .dvc file), else a content sha256."""
    path = Path(path)
    for lock in (Path("dvc.lock"), path.parent / f"{path.name}.dvc"):
        found = _md5_from_dvc_file(lock, path)
        if found:
            return f"md5:{found}"
    return f"sha256:{sha256_tree(path)}" if path.exists() else "missing"


def _md5_from_dvc_file(dvc_file: Path, target: Path) -> str | None:
    if not dvc_file.is_file():
        return None
    doc = yaml.safe_load(dvc_file.read_text()) or {}
    outs = list(doc.get("outs", []))
    for stage in (doc.get("stages") or {}).values():
        outs.extend(stage.get("outs", []))
    wanted = {target.as_posix().rstrip("/"), target.name}
    for out in outs:
        if str(out.get("path", "")).rstrip("/") in wanted and out.get("md5"):
            return str(out["md5"])
    return None


def lineage_tags(config: Any, data_paths: list[str | Path] | None = None) -> dict[str, str]:
    tags = {"git_commit": git_commit(), "config_hash": config_hash(config)}
    for i, p in enumerate(data_paths or []):
        tags["data_dvc_hash" if i == 0 else f"data_dvc_hash_{i}"] = data_hash(p)
    return tags
