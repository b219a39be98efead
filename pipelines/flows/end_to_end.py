"""Prefect flow `end_to_end`: preprocess → encode → train → evaluate → promote, each step the existing flow
(as a subflow) or command, so this file only wires paths and ids. Run it directly:
    python -m pipelines.flows.end_to_end --vae models:/echo-vae@candidate --train-dataset dynamic

A refused promotion is an outcome, not a failure: the flow completes and reports the gate's reasons.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow, task

from pipelines.flows.encode import encode
from pipelines.flows.evaluate import evaluate
from pipelines.flows.preprocess import preprocess
from pipelines.flows.train import train


def version_of_run(model: str, run_id: str) -> str:
    """The version the training run registered (pinned by number: `candidate` may move meanwhile)."""
    from mlflow.tracking import MlflowClient

    from echo_core.errors import TrackingError
    from pipelines.tracking import tracking_uri

    versions = MlflowClient(tracking_uri()).search_model_versions(f"name='{model}' and run_id='{run_id}'")
    if not versions:
        raise TrackingError(f"training run {run_id} registered no version of {model}",
                            fix="train with registration on (the default of `echoforge train lvdm`)")
    return str(max(int(v.version) for v in versions))


@task(name="promote")
def promote_version(model: str, version: str, params_path: str) -> dict[str, Any]:
    """`echoforge registry promote`: {"promoted": bool, "reason": the gate's failures when refused}."""
    from pipelines.commands.registry import PromotionError, promote

    try:
        promote(model=model, version=version, params=Path(params_path))
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
    version = version_of_run(model, run_id)
    evaluation = evaluate(model, version, None, params_path, out_root, metrics_dir, vae)
    decision = promote_version(model, version, params_path)
    print(f"{model} version {version}: " + ("promoted to champion" if decision["promoted"] else decision["reason"]))
    return {"model": model, "version": version, "train_run_id": run_id, "evaluation_run_id": evaluation["run_id"],
            "metrics": evaluation["metrics"], **decision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="models:/echo-vae@candidate")
    parser.add_argument("--dataset", action="append", help="dataset to prepare and encode (repeatable)")
    parser.add_argument("--train-dataset", action="append", help="latent store to train on (repeatable)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-root", default="outputs")
    parser.add_argument("--metrics-dir", default="metrics")
    parser.add_argument("--profile", default="cpu-2proc", help="accelerate profile (infra/accelerate/)")
    args, train_args = parser.parse_known_args()
    print(json.dumps(end_to_end(args.vae, args.dataset, args.train_dataset, args.params, args.out_root,
                                args.metrics_dir, args.profile, train_args), indent=2))


if __name__ == "__main__":
    main()
