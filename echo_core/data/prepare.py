"""Dataset preparation: a raw dataset folder -> a prepared folder (harmonised FileList.csv, videos, manifest).

The dispatcher over the planners: `PLANNERS[kind]` turns the params.yaml `prepare:` section into one
planner's arguments; the staging engine (jobs.py) does the rest. An orchestrator fans out per video:

    plan = plan_prepare(kind, src, dst, config=cfg, exclude=names)
    staging = open_staging(plan.dst)
    report = finalize(plan, [run_job(job, staging) for job in plan.jobs])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from echo_core.config import StrictModel
from echo_core.data.cardiacnet import CardiacNetConfig, plan_cardiacnet
from echo_core.data.echonet import plan_dynamic, plan_pediatric
from echo_core.data.jobs import Plan, Report, finalize, open_staging, run_jobs
from echo_core.errors import DataError, UsageError


class PrepareConfig(StrictModel):
    """params.yaml `prepare:` section."""

    seed: int = 42  # CardiacNet patient split (the other kinds keep their published splits)
    link: bool = False  # hardlink instead of copying Dynamic/Pediatric videos (same filesystem only)
    cardiacnet: CardiacNetConfig = CardiacNetConfig()


Planner = Callable[[Path, Path, PrepareConfig, Iterable[str]], Plan]

# kind -> planner(src, dst, config, exclude); each passes on only the settings its planner uses.
PLANNERS: dict[str, Planner] = {
    "dynamic": lambda src, dst, cfg, exclude: plan_dynamic(src, dst, link=cfg.link, exclude=exclude),
    "pediatric-a4c": lambda src, dst, cfg, exclude: plan_pediatric(src, dst, view="A4C", link=cfg.link,
                                                                   exclude=exclude),
    "pediatric-psax": lambda src, dst, cfg, exclude: plan_pediatric(src, dst, view="PSAX", link=cfg.link,
                                                                    exclude=exclude),
    "cardiacnet": lambda src, dst, cfg, exclude: plan_cardiacnet(src, dst, config=cfg.cardiacnet,
                                                                 seed=cfg.seed, exclude=exclude),
}


def plan_prepare(kind: str, src: str | os.PathLike, dst: str | os.PathLike, *,
                 config: PrepareConfig | None = None, exclude: Iterable[str] = ()) -> Plan:
    """Plan any kind of `PLANNERS`; an unknown kind is a UsageError naming the valid ones."""
    if kind not in PLANNERS:
        raise UsageError(f"unknown prepare kind {kind!r}", fix=f"use one of: {', '.join(PLANNERS)}")
    return PLANNERS[kind](Path(src), Path(dst), config or PrepareConfig(), exclude)


def prepare_dataset(kind: str, src: str | os.PathLike, dst: str | os.PathLike, *,
                    exclude: Iterable[str] = (), workers: int = 1, seed: int | None = None,
                    config: PrepareConfig | None = None, pool: str = "thread") -> Report:
    """Plan, convert every video (resuming a crashed run), finalize. `seed` overrides `config.seed`;
    `workers`/`pool` as in `run_jobs`."""
    config = config or PrepareConfig()
    if seed is not None:
        config = config.model_copy(update={"seed": seed})
    plan = plan_prepare(kind, src, dst, config=config, exclude=exclude)
    if not plan.jobs:
        raise DataError(f"nothing to prepare in {plan.src}: every row is excluded or the dataset is empty",
                        fix="check the source folder and the --exclude list")
    staging = open_staging(plan.dst)
    results = run_jobs(plan.jobs, staging, workers=workers, desc=f"prepare {kind}", pool=pool)
    return finalize(plan, results)
