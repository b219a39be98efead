"""Evaluation benchmark: wall time of the whole `evaluate` flow at demo scale, and of each of its steps.

    .venv/bin/python benchmarks/evaluate.py --model models:/echo-lvdm@candidate --vae outputs/vae/vae
    .venv/bin/python benchmarks/evaluate.py --model outputs/lvdm/unet_ema --vae outputs/vae/vae --prefect
    .venv/bin/python benchmarks/evaluate.py --tiny          # a tiny random EF model (smoke run)

The project's registry and outputs are never written: the model folder is registered in a throw-away MLflow
store inside a sandbox folder, whose outputs/{prepared,reference,latents} link to the project's. The flow
runs twice with params.yaml: cold (sampling included) and warm (the samples are reused; metrics and
downstream only). `--prefect` runs the Prefect flow (temporary server start-up included in the cold time)
instead of the same steps as plain calls. Writes benchmarks/results/evaluate.json (machine, load average,
the evaluate/sample/downstream params, per-step seconds, the metrics).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_MODEL = "echo-lvdm-bench"


def timed_steps(times: dict[str, float]) -> Callable[[Callable], Callable]:
    """A `run_evaluation` step wrapper that adds each step's wall time to `times` (summed over datasets)."""

    def step(fn: Callable) -> Callable:
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[fn.__name__] = times.get(fn.__name__, 0.0) + time.perf_counter() - start
        return run

    return step


def source_folder(args, sandbox: Path) -> Path:
    """The model folder to benchmark: a tiny random bundle, or the given folder / models:/ URI (resolved in
    the project's registry, before the sandbox's store is switched on)."""
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))  # tests/support/: the tiny model builders
        from support.tiny_lvdm import make_bundle

        return make_bundle(sandbox / "tiny")
    from pipelines.registry import resolve_model_folder

    return resolve_model_folder(args.model).resolve()


def prepare_sandbox(sandbox: Path, datasets: list[str], params: Path) -> None:
    for name in datasets:
        for kind in ("prepared", "reference", "latents"):
            (sandbox / "outputs" / kind).mkdir(parents=True, exist_ok=True)
            (sandbox / "outputs" / kind / name).symlink_to(ROOT / "outputs" / kind / name)
    shutil.copyfile(params, sandbox / "params.yaml")


def run_once(args, version: str, vae: str | None) -> tuple[float, dict[str, float], dict]:
    from pipelines.flows.evaluate import evaluate, run_evaluation

    times: dict[str, float] = {}
    start = time.perf_counter()
    if args.prefect:
        result = evaluate(BENCH_MODEL, version, args.dataset, "params.yaml", "outputs", "metrics", vae)
    else:
        result = run_evaluation(BENCH_MODEL, version, args.dataset, "params.yaml", "outputs", "metrics", vae,
                                step=timed_steps(times))
    return time.perf_counter() - start, times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/echo-lvdm@candidate", help="models:/ URI or LVDM folder")
    parser.add_argument("--vae", default=None, help="VAE folder for a bare LVDM folder (absolute or project path)")
    parser.add_argument("--tiny", action="store_true", help="benchmark a tiny random EF bundle instead")
    parser.add_argument("--dataset", action="append", help="default: params.yaml evaluate.datasets")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--prefect", action="store_true", help="run the Prefect flow (server start-up included)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "evaluate.json")
    args = parser.parse_args()

    from echo_core.config import load_params
    from echo_core.evaluation.config import EvaluateConfig, dataset_names
    from echo_core.metrics.api import library_versions
    from echo_core.utils.atomic import write_json_atomic

    params = load_params(args.params)
    datasets = dataset_names(args.params, EvaluateConfig.model_validate(params.get("evaluate") or {}), args.dataset)
    vae = str((ROOT / args.vae).resolve()) if args.vae else None
    with tempfile.TemporaryDirectory(prefix=".evaluate-bench-", dir=ROOT / "benchmarks") as tmp:
        sandbox = Path(tmp)
        folder = source_folder(args, sandbox)
        prepare_sandbox(sandbox, datasets, args.params)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{sandbox / 'mlflow.db'}"
        os.chdir(sandbox)
        from pipelines.registry import log_model_folder
        from pipelines.tracking import start_run

        with start_run("evaluate-bench"):
            version = log_model_folder(folder, name="lvdm", registered_model_name=BENCH_MODEL).version
        load_before = os.getloadavg()
        cold, cold_steps, result = run_once(args, version, vae)
        warm, warm_steps, _ = run_once(args, version, vae)
        os.chdir(ROOT)
    record = {
        "model": "tiny random EF bundle" if args.tiny else args.model, "datasets": datasets,
        "mode": "prefect flow" if args.prefect else "plain steps",
        "cold_seconds": round(cold, 2), "warm_seconds": round(warm, 2),
        **({} if args.prefect else {"cold_steps": {k: round(v, 2) for k, v in cold_steps.items()},
                                    "warm_steps": {k: round(v, 2) for k, v in warm_steps.items()}}),
        "params": {k: params.get(k) for k in ("evaluate", "sample", "downstream")},
        "metrics": result["metrics"],
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": library_versions(),
    }
    write_json_atomic(args.out, record)
    print(f"evaluation of {record['model']} on {', '.join(datasets)}: cold {cold:.1f} s, warm {warm:.1f} s "
          f"{record.get('cold_steps', '')}; written to {args.out}")


if __name__ == "__main__":
    main()
