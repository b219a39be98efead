"""One torch intra-op thread for a block: on 2 shared cores a second OpenMP thread spin-waits, and small convs
and SVDs run many times slower. Restores the previous count even when the block raises."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
