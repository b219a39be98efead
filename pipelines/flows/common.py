"""Shared flow plumbing: retry policy, shard fan-out with progress (task runners: pipelines.ops.scaleout)."""

from __future__ import annotations

from collections.abc import Sequence

from echo_core.errors import EchoForgeError


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


def run_shards(shard_task, calls: Sequence[tuple], label: str) -> list:
    """Submit `shard_task(*call)` for every call to the flow's task runner; results in call order.

    Every shard runs to its end before the first error is re-raised, so a re-run only redoes what failed.
    """
    from prefect import get_run_logger

    futures = [shard_task.submit(*call) for call in calls]
    results, first_error = [], None
    for i, future in enumerate(futures, start=1):
        try:
            results.append(future.result())
        except Exception as exc:  # kept; re-raised once every shard has ended
            first_error = first_error or exc
        get_run_logger().info("%s: %d/%d shards done", label, i, len(futures))
    if first_error is not None:
        raise first_error
    return results
