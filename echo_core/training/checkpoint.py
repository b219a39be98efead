"""Checkpoint folders: `root/checkpoint-<step>/`, written atomically, pruned to a total limit.

The content of a checkpoint is the trainer's business (accelerate `save_state` + a small JSON); this
module only guarantees that a checkpoint folder either exists complete or not at all, so `--resume
latest` never picks up a half-written one after a kill -9.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from echo_core.errors import UsageError

_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, sorted by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resolve_resume(root: str | os.PathLike, resume: str | None) -> Path | None:
    """`None` → fresh start; "latest" → newest complete checkpoint (or None); else an explicit folder."""
    if resume is None or resume == "":
        return None
    if resume == "latest":
        return latest_checkpoint(root)
    path = Path(resume)
    if not path.is_dir():
        raise UsageError(f"checkpoint folder not found: {path}", fix="pass --resume latest or an existing checkpoint-N")
    return path


@contextlib.contextmanager
def checkpoint_writer(root: str | os.PathLike, step: int, *, is_main: bool = True) -> Iterator[Path]:
    """Yield a temp folder every rank writes into; the main rank renames it to `checkpoint-<step>`.

    The temp name is deterministic so all ranks of a distributed run write into the same folder; the
    caller must synchronise ranks (e.g. `accelerator.wait_for_everyone()`) before leaving the block.
    """
    root = Path(root)
    tmp = root / f".checkpoint-{step}.tmp"
    final = root / f"checkpoint-{step}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    yield tmp
    if is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


def prune_checkpoints(root: str | os.PathLike, keep: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep` (and stale temp folders); return deleted."""
    root = Path(root)
    deleted = []
    found = list_checkpoints(root)
    for _, path in found[: max(0, len(found) - keep)] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
    newest = found[-1][0] if found else -1
    for tmp in root.glob(".checkpoint-*.tmp") if root.is_dir() else []:
        step = int(tmp.name.split("-")[1].split(".")[0])
        if step <= newest:
            shutil.rmtree(tmp, ignore_errors=True)
    return deleted
