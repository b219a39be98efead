"""`accelerate launch` command lines for the profiles of infra/accelerate/, and the GPUs a profile occupies.

Used by the train flow (which runs the command) and by the accelerate dry run (which only parses it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from echo_core.errors import UsageError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "infra" / "accelerate"


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def build_command(data: Sequence[str], out: str, *, params: str = "params.yaml", profile: str = "cpu-2proc",
                  extra_args: Sequence[str] = (), main_process_port: int | None = None) -> list[str]:
    """The `accelerate launch --config_file infra/accelerate/<profile>.yaml -m pipelines.cli train lvdm ...`
    command line (as a list)."""
    config = PROFILES_DIR / f"{profile}.yaml"
    if not config.is_file():
        raise UsageError(f"unknown accelerate profile {profile!r}", fix=f"use one of {profiles()}")
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--config_file", str(config)]
    if main_process_port is not None:
        cmd += ["--main_process_port", str(main_process_port)]
    cmd += ["-m", "pipelines.cli", "train", "lvdm", "--out", str(out), "--params", str(params)]
    for folder in data:
        cmd += ["--data", str(folder)]
    return [*cmd, *extra_args]


def local_gpus(profile: str) -> int:
    """Cards one machine's training processes occupy: its process count, capped by the visible GPUs
    (0 on a CPU machine, where the MULTI_GPU profiles fall back to gloo)."""
    import torch
    import yaml

    cfg = yaml.safe_load((PROFILES_DIR / f"{profile}.yaml").read_text(encoding="utf-8"))
    per_machine = max(1, int(cfg.get("num_processes", 1)) // max(1, int(cfg.get("num_machines", 1))))
    return 0 if cfg.get("use_cpu") else min(per_machine, torch.cuda.device_count())
