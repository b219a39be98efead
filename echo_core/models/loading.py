"""Thread-safe `from_pretrained`.

diffusers and transformers build models inside accelerate's `init_empty_weights`, which patches
`torch.nn.Module.register_parameter` for the whole process and restores it on exit. Two threads loading at
once (two shards on a thread task runner) interleave patch and restore, and the patch can stay in place:
every module built afterwards lives on the `meta` device ("Cannot copy out of meta tensor"). Measured: 4
threads loading the tiny VAE leaked it on the first try. One lock per process serialises the loads.
"""

from __future__ import annotations

import threading
from typing import Any

_LOAD_LOCK = threading.RLock()


def load_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """`cls.from_pretrained(*args, **kwargs)`, one load at a time in this process."""
    with _LOAD_LOCK:
        return cls.from_pretrained(*args, **kwargs)
