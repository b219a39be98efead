"""Long-running servers and workers as process groups, stopped by PID with bounded waits.

Each process starts in its own session, so a stop reaches the children it spawned (uvicorn workers of
`mlflow server`). Some descendants start sessions of their own (a Prefect process worker runs each flow
run with `start_new_session=True`), so `stop()` also signals every descendant it finds by PID.
A Prefect worker may ignore SIGTERM for a long time (stack.md §3d): `stop(grace=...)` escalates to SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from echo_core.errors import EchoForgeError


class ProcessStartError(EchoForgeError):
    """A server or worker exited, or never became healthy, within its start-up deadline."""


@dataclass
class ManagedProcess:
    """A process started by `spawn`, in its own session; its output goes to `log_path`."""

    name: str
    popen: subprocess.Popen
    log_path: Path | None = None
    _seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def descendants(self) -> list[psutil.Process]:
        """Every live descendant (also those that left the process group); remembered for `stop`."""
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        self._seen.update({p.pid: p for p in found})
        return [p for p in self._seen.values() if p.is_running()]

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the group and all descendants; SIGKILL whatever is left after `grace` seconds."""
        family = self.descendants()
        self._signal_all(family, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        if grace > 0:
            _, alive = psutil.wait_procs([*family, *self._self_proc()], timeout=grace)
            if alive or self.alive():
                self._signal_all(self.descendants(), signal.SIGKILL)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired as exc:  # unkillable (D state): say so instead of hanging
            raise ProcessStartError(f"{self.name} (pid {self.pid}) did not exit after SIGKILL") from exc
        psutil.wait_procs(self.descendants(), timeout=10)

    def kill(self) -> None:
        """SIGKILL at once: a crash, as the fault tests need it."""
        self.stop(grace=0)

    def _self_proc(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self.pid)]
        except psutil.NoSuchProcess:
            return []

    def _signal_all(self, family: Sequence[psutil.Process], sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)


def spawn(cmd: Sequence[str], *, name: str, log_path: Path | None = None, env: Mapping[str, str] | None = None,
          cwd: str | Path | None = None) -> ManagedProcess:
    """Start `cmd` in a new session, stdout+stderr appended to `log_path` (or discarded)."""
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after the fork
    else:
        out = subprocess.DEVNULL
    try:
        popen = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)
    finally:
        if log_path is not None:
            out.close()
    return ManagedProcess(name, popen, log_path)


def wait_http_ok(url: str, proc: ManagedProcess | None = None, *, timeout: float = 120.0) -> None:
    """Poll `url` until it answers 2xx; fail early (with the log tail) if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise ProcessStartError(f"{proc.name} exited with code {proc.popen.returncode} before {url} "
                                    f"answered; log tail:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if 200 <= response.status < 300:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    tail = proc.log_tail() if proc is not None else ""
    raise ProcessStartError(f"{url} did not answer within {timeout:.0f}s; log tail:\n{tail}",
                            fix="check the log; raise the timeout on a loaded machine")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
