"""Checkpoint folders: `root/checkpoint-<step>/`, written atomically, pruned to a total limit, and only
resumed when they continue the same trajectory.

The content of a checkpoint is the trainer's business (accelerate `save_state` + a small JSON, see
`trainer.save_checkpoint`); this module guarantees that a checkpoint folder either exists complete or not
at all, so `--resume latest` never picks up a half-written one after a kill -9, and that `--resume latest`
never continues a trajectory made with other hyper-parameters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from echo_core.config import StrictModel
from echo_core.errors import UsageError
from echo_core.utils.hashing import config_hash

log = logging.getLogger("echoforge.train")

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
EXPORT_DIR = "ema_export"

_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointConfig(StrictModel):
    every: int = Field(1000, ge=1)  # optimizer steps; the last step is always checkpointed
    total_limit: int = Field(3, ge=1)
    ema_every: int | None = Field(None, ge=1)  # log the slim EMA export every N steps; None = every checkpoint

    @model_validator(mode="after")
    def _ema_on_checkpoints(self) -> CheckpointConfig:
        if self.ema_every is not None and self.ema_every % self.every:
            raise ValueError(f"ema_every ({self.ema_every}) must be a multiple of every ({self.every}): "
                             "the EMA export is written into a checkpoint")
        return self


# Options added after checkpoints existed: at these values they change nothing, so they stay out of the hash
# and a run checkpointed before they existed still resumes.
_LATER_OPTIONS_OFF = {("model", "ef_micro_condition"): False, ("conditioning", "frame_residual"): None}


def trajectory_hash(cfg: Any) -> str:
    """Hash of everything that shapes the weights' trajectory (not max_steps: raising it continues a run).
    `cfg`: a pydantic training config with an `optim` section."""
    data = cfg.model_dump(mode="json")
    data["optim"].pop("max_steps", None)
    for (section, key), off in _LATER_OPTIONS_OFF.items():
        if section in data and key in data[section] and data[section][key] == off:
            del data[section][key]
    return config_hash(data)


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


def compatible_checkpoint(checkpoint: Path | None, cfg: Any, *, latest: bool) -> Path | None:
    """`--resume latest` never continues a trajectory made with other hyper-parameters (e.g. `dvc repro`
    after a params change, with persisted checkpoints): those checkpoints are moved aside, kept, and the
    run starts fresh. An explicitly named checkpoint is honoured (fine-tuning) with a warning."""
    if checkpoint is None:
        return None
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:  # another rank already moved it aside as stale
        return None
    old = state.get("trajectory_hash")
    if old == trajectory_hash(cfg):
        return checkpoint
    if not latest:
        log.warning("resuming %s, written with other hyper-parameters (%s)", checkpoint, old)
        return checkpoint
    if int(os.environ.get("RANK", "0")) == 0:
        stale = checkpoint.parent / f"stale-{old or 'unknown'}"
        stale.mkdir(exist_ok=True)
        for folder in sorted(checkpoint.parent.glob("checkpoint-*")):
            os.replace(folder, stale / folder.name)
        log.warning("checkpoints in %s were made with other hyper-parameters: moved to %s, starting fresh",
                    checkpoint.parent, stale)
    return None
