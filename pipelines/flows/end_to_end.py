"""Prefect flow `end_to_end`: preprocess → encode → train → evaluate → promote, each step the existing flow
(as a subflow) or registry call, so this file only wires paths and ids. Run it:
    echoforge flow end-to-end --vae models:/echo-vae@candidate --train-dataset dynamic

A refused promotion is an outcome, not a failure: the flow completes and reports the gate's reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from echo_core.config import load_section
from echo_core.evaluation.gate import PromotionConfig
from pipelines.flows.encode import encode
from pipelines.flows.evaluate import evaluate
from pipelines.flows.preprocess import preprocess
from pipelines.flows.train import train
from pipelines.registry import PromotionError, promote, version_of_run


@task(name="promote")
def promote_version(model: str, version: str, params_path: str) -> dict[str, Any]:
    """The promotion gate of params.yaml `promotion:`: {"promoted": bool, "reason": its failures when refused}."""
    try:
        promote(model, version, load_section(PromotionConfig, "promotion", params_path))
    except PromotionError as exc:
        return {"promoted": False, "reason": str(exc)}
    return {"promoted": True, "reason": ""}


@flow(name="end_to_end", log_prints=True)
def end_to_end(vae: str = "models:/echo-vae@candidate", datasets: list[str] | None = None,
               train_datasets: list[str] | None = None, params_path: str = "params.yaml",
               out_root: str = "outputs", metrics_dir: str = "metrics", profile: str = "cpu-2proc",
               train_args: list[str] | None = None, model: str = "echo-lvdm") -> dict[str, Any]:
    """Prepare `datasets` (default: all in params.yaml), encode them with `vae`, train on `train_datasets`
    (default: the same), evaluate the new version on `evaluate.datasets`, and promote it if it passes."""
    prepared = preprocess(datasets, params_path, out_root)
    encode(vae, list(prepared), params_path, out_root)
    root = Path(out_root)
    run_id = train([str(root / "latents" / name) for name in train_datasets or list(prepared)],
                   str(root / "lvdm"), params_path, profile, train_args)
    version = version_of_run(model, run_id)  # pinned by number: `candidate` may move meanwhile
    evaluation = evaluate(model, version, None, params_path, out_root, metrics_dir, vae)
    decision = promote_version(model, version, params_path)
    print(f"{model} version {version}: " + ("promoted to champion" if decision["promoted"] else decision["reason"]))
    return {"model": model, "version": version, "train_run_id": run_id, "evaluation_run_id": evaluation["run_id"],
            "metrics": evaluation["metrics"], **decision}
