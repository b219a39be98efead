"""Contiguous shards of an ordered work list, for fan-out over task runners (threads, processes, Dask)."""

from __future__ import annotations


def contiguous_shards(n_items: int, n_shards: int, align: int = 1) -> list[range]:
    """Split range(n_items) into at most `n_shards` contiguous, non-empty, near-equal ranges.

    Inner boundaries fall on multiples of `align`: with align = the batch size, every shard cuts the same
    batches the sequential path cuts, so batch-dependent numerics give identical results.
    """
    if n_shards < 1 or align < 1:
        raise ValueError(f"n_shards ({n_shards}) and align ({align}) must be >= 1")
    units = -(-n_items // align)  # ceil: the last unit may be short
    n = min(n_shards, units)
    bounds = [min(n_items, (units * k // n) * align) for k in range(n + 1)] if n else [0]
    return [range(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]
