"""Thread-safe `from_pretrained`.

diffusers and transformers build models inside accelerate's `init_empty_weights`, which patches
`torch.nn.Module.register_parameter` for the whole process and restores it on exit. Two threads loading at
once (two shards on a thread task runner) interleave patch and restore, and the patch can stay in place:
every module built afterwards lives on the `meta` device ("Cannot copy out of meta tensor"). Measured: 4
threads loading the tiny VAE leaked it on the first try. One lock per process serialises the loads.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from echo_core.errors import WeightsError

_LOAD_LOCK = threading.RLock()


def load_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """`cls.from_pretrained(*args, **kwargs)`, one load at a time in this process."""
    with _LOAD_LOCK:
        return cls.from_pretrained(*args, **kwargs)


def read_folder_meta(folder: str | os.PathLike, file_name: str, expected_format: str, *, what: str,
                     fix: str) -> dict[str, Any]:
    """The JSON that makes `folder` a model folder of `expected_format`; a WeightsError naming the folder
    (and `fix`) when the file is missing or describes another format."""
    path = Path(folder) / file_name
    if not path.is_file():
        raise WeightsError(f"{folder} is not {what} folder (no {file_name})", fix=fix)
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != expected_format:
        raise WeightsError(f"{path} has format {meta.get('format')!r}, expected {expected_format!r}", fix=fix)
    return meta
