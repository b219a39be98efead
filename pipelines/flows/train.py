"""Prefect flow `train`: launch LVDM training under `accelerate launch`, stream its logs, return the run id.

Training runs as a subprocess (one or many processes, per the accelerate profile), never inside the flow's
own interpreter: accelerate needs to own process start-up, and a crash of the trainer must not take the
worker down. Rank 0 prints `MLFLOW_RUN_ID=<id>`; the flow returns that id. Run it directly:
    python -m pipelines.flows.train --data outputs/latents/dynamic --out outputs/lvdm --profile cpu-2proc
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from prefect import flow

from echo_core.errors import EchoForgeError, TrackingError, UsageError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "infra" / "accelerate"
RUN_ID_LINE = re.compile(r"^MLFLOW_RUN_ID=(\w+)\s*$")
TAIL_LINES = 40


class TrainingFailed(EchoForgeError):
    """The training subprocess exited non-zero (its log tail is in the message)."""


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


def stream_command(cmd: Sequence[str], logger: logging.Logger | logging.LoggerAdapter) -> str:
    """Run `cmd`, log each output line as it arrives, return the MLflow run id it printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    run_id = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=env) as proc:
        for line in proc.stdout:
            line = line.rstrip("\n")
            logger.info(line)
            tail.append(line)
            if match := RUN_ID_LINE.match(line):
                run_id = match.group(1)
    if proc.returncode != 0:
        raise TrainingFailed(f"training exited with code {proc.returncode}; last lines:\n" + "\n".join(tail),
                             fix="see the flow log for the full output; resume with --resume latest")
    if run_id is None:
        raise TrackingError("training finished but printed no MLFLOW_RUN_ID line",
                            fix="do not pass --no-tracking to the train flow")
    return run_id


def local_gpus(profile: str) -> int:
    """Cards one machine's training processes occupy: its process count, capped by the visible GPUs
    (0 on a CPU machine, where the MULTI_GPU profiles fall back to gloo)."""
    import torch
    import yaml

    cfg = yaml.safe_load((PROFILES_DIR / f"{profile}.yaml").read_text(encoding="utf-8"))
    per_machine = max(1, int(cfg.get("num_processes", 1)) // max(1, int(cfg.get("num_machines", 1))))
    return 0 if cfg.get("use_cpu") else min(per_machine, torch.cuda.device_count())


def _logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:  # called as `train.fn(...)` outside a flow run
        return logging.getLogger("echoforge.flows.train")


@flow(name="train")
def train(data: list[str], out: str, params_path: str = "params.yaml", profile: str = "cpu-2proc",
          extra_args: list[str] | None = None, main_process_port: int | None = None) -> str:
    """Train the LVDM with the accelerate `profile` (infra/accelerate/<profile>.yaml); return the MLflow
    run id. `extra_args` go to `echoforge train lvdm` (e.g. ["--resume", "latest", "--max-steps", "100"])."""
    cmd = build_command(data, out, params=params_path, profile=profile, extra_args=extra_args or (),
                        main_process_port=main_process_port)
    from pipelines.ops.concurrency import gpu_slot

    logger = _logger()
    cards = local_gpus(profile)
    logger.info("launching on %d GPU slot(s): %s", cards, " ".join(cmd))
    with gpu_slot(occupy=cards):  # no other GPU job shares these cards while training runs
        return stream_command(cmd, logger)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="latent store folder (repeatable)")
    parser.add_argument("--out", required=True, help="training output folder")
    parser.add_argument("--params", default="params.yaml", help="params.yaml with a train_lvdm section")
    parser.add_argument("--profile", default="cpu-2proc", choices=profiles(), help="accelerate profile")
    args, extra = parser.parse_known_args(argv)
    print(train(args.data, args.out, params_path=args.params, profile=args.profile, extra_args=extra))


if __name__ == "__main__":
    main()
