"""Prefect flow `train`: launch LVDM training under `accelerate launch`, stream its logs, return the run id.

Training runs as a subprocess (one or many processes, per the accelerate profile), never inside the flow's
own interpreter: accelerate needs to own process start-up, and a crash of the trainer must not take the
worker down. Rank 0 prints `MLFLOW_RUN_ID=<id>`; the flow returns that id. Run it:
    echoforge flow train --data outputs/latents/dynamic --out outputs/lvdm --profile cpu-2proc
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections import deque
from collections.abc import Sequence

from prefect import flow

from echo_core.errors import EchoForgeError, TrackingError
from pipelines.ops.launch import build_command, local_gpus

RUN_ID_LINE = re.compile(r"^MLFLOW_RUN_ID=(\w+)\s*$")
TAIL_LINES = 40


class TrainingFailed(EchoForgeError):
    """The training subprocess exited non-zero (its log tail is in the message)."""


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
