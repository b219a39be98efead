"""GPU exclusivity: a Prefect global concurrency limit named `gpu`, one slot per card.

`echoforge ops prefect-setup --gpus N` creates the limit with N slots; GPU work holds one slot for its
whole duration (`with gpu_slot(): ...`), so two jobs never share a card. Where no limit exists (a CPU
machine, a laptop) `gpu_slot` does nothing: `strict=False` lets the work run unthrottled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

GPU_LIMIT = "gpu"


@contextlib.contextmanager
def gpu_slot(name: str = GPU_LIMIT, timeout_seconds: float | None = None, occupy: int = 1) -> Iterator[None]:
    """Hold `occupy` slots (cards) of the global concurrency limit `name`, waiting while they are taken;
    occupy=0 (a CPU-only job) holds nothing."""
    if occupy <= 0:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=occupy, timeout_seconds=timeout_seconds, strict=False):
        yield


def ensure_gpu_limit(slots: int, name: str = GPU_LIMIT) -> str:
    """Create or resize the global concurrency limit `name` to `slots` (0 deletes it). Returns what it did."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            current = None
        if slots <= 0:
            if current is not None:
                client.delete_global_concurrency_limit_by_name(name)
                return f"deleted global concurrency limit {name!r}"
            return f"no global concurrency limit {name!r} (GPU work runs unthrottled)"
        if current is None:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            return f"created global concurrency limit {name!r} with {slots} slot(s)"
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots, active=True))
        return f"global concurrency limit {name!r} set to {slots} slot(s)"
