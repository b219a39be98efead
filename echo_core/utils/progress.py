"""Progress reporting: a tqdm bar on a terminal, plain periodic log lines otherwise (CI logs)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("echoforge")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", every: int = 10) -> Iterator[T]:
    """Iterate with a progress bar when stderr is a TTY, else log '<desc>: i/total' every `every` %."""
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True)
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    step = max(1, (total or 0) * every // 100)
    i = 0
    for i, item in enumerate(items, start=1):
        yield item
        if total and (i % step == 0 or i == total):
            log.info("%s: %d/%d", desc or "progress", i, total)
