"""Shared flow plumbing: task runners for per-video fan-out, retry policy, progress reporting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from echo_core.errors import EchoForgeError


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


def retry_transient_only(task, task_run, state) -> bool:
    """Retry IO hiccups (OSError, timeouts); never retry a user-caused error, it would fail the same way."""
    try:
        state.result()
    except EchoForgeError:
        return False
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False


def gather_with_progress(futures: Sequence[Any], label: str, on_progress: Callable[[int, int], None]) -> list:
    """Wait for every future in order, reporting progress; the first user error is re-raised as is."""
    results = []
    for i, future in enumerate(futures, start=1):
        results.append(future.result())
        on_progress(i, len(futures))
    return results
