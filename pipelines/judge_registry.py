"""The evaluator's record in MLflow: each fitted EF judge as a registered version, each controls table as a run.

The judge itself stays a file that every evaluation reads from outputs/judges/<ds>/ (DVC tracks it); the
registry is its record: which judges were fitted, their held-out real competence (R², MAE with CIs, N, the
bar), and, through a tag on every evaluated LVDM version, which judge that evaluation used (matched by the
judge file's sha256). One registered model per dataset, `echo-ef-<ds>-judge`: a judge only ever scores its
own dataset, so its versions are successive judges of one thing, and their R² are comparable.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from echo_core.errors import TrackingError
from echo_core.utils.hashing import sha256_file
from pipelines.tracking import tracking_uri

JUDGE_EXPERIMENT = "echo-judges"
CONTROLS_EXPERIMENT = "echo-controls"
JUDGE_ARTIFACTS = "judge"  # the run's artifact folder registered as the version: judge file + competence JSON
USED_JUDGE_TAG = "judge.ef."  # judge.ef.<ds> on an evaluated version: "<sha256[:12]> r2=0.981 echo-ef-<ds>-judge v2"
COMPETENCE_KEYS = ("r2", "r2_ci_low", "r2_ci_high", "mae", "mae_ci_low", "mae_ci_high", "n", "bar_r2", "unmeasured")


def judge_model_name(dataset: str) -> str:
    return f"echo-ef-{dataset}-judge"


@contextlib.contextmanager
def reporting_unreachable(what: str, written: list[Path]) -> Iterator[None]:
    """Turn an MLflow failure inside the block into one TrackingError that says the local files are safe."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, TrackingError) as exc:
        raise TrackingError(
            f"{what} could not be logged to MLflow at {tracking_uri()} ({type(exc).__name__}: {str(exc)[:300]}); "
            f"the local result is written: {', '.join(map(str, written))}",
            fix="start the tracking server (`echoforge ops mlflow-server`) or point MLFLOW_TRACKING_URI at it, "
                "then re-run the command; or pass --no-track to keep the result local only",
        ) from None


# -------------------------------------------------------------------------------------------- EF judge


def competence_record(competence: dict[str, Any]) -> dict[str, float]:
    """The competence numbers of a judge file as MLflow metrics (`competent` as 0/1; NaN where unknown)."""
    numbers = {k: math.nan if competence.get(k) is None else float(competence[k]) for k in COMPETENCE_KEYS}
    return {**numbers, "competent": float(bool(competence["competent"]))}


def register_judge(dataset: str, judge_file: Path, competence_file: Path, prepared: Path) -> tuple[str, bool]:
    """Log one run (competence metrics, the judge file and its competence JSON) and register its artifact folder
    as a version of `echo-ef-<ds>-judge` tagged with the competence and the file's sha256. A judge already
    registered with the same sha256 is not registered twice. → (version, whether it is new)."""
    from pipelines.registry import register_run_artifacts, versions_tagged
    from pipelines.tracking import data_hash, git_commit, start_run

    competence = json.loads(Path(judge_file).read_text(encoding="utf-8"))["competence"]
    sha, name = sha256_file(judge_file), judge_model_name(dataset)
    tags = {"dataset": dataset, "sha256": sha, "judge": str(competence.get("judge", "")),
            "git_commit": git_commit(), "data_dvc_hash": data_hash(prepared)}
    with start_run(JUDGE_EXPERIMENT, run_name=f"ef-judge-{dataset}", tags=tags) as tracker:
        tracker.log_metrics(competence_record(competence))
        for path in (judge_file, competence_file):
            tracker.log_artifact(path, JUDGE_ARTIFACTS)
        run_id = tracker.run_id
    # registered after the run closed: by then its artifacts have arrived, so the version's source is complete
    existing = versions_tagged(name, "sha256", sha)
    if existing:
        return existing[-1], False
    version_tags = {**tags, **{k: competence[k] for k in COMPETENCE_KEYS if competence.get(k) is not None},
                    "competent": str(bool(competence["competent"])).lower()}
    return register_run_artifacts(name, run_id, JUDGE_ARTIFACTS, version_tags), True


def record_judge_use(model: str, version: str, dataset: str, judge_file: Path) -> str | None:
    """Tag `judge.ef.<ds>` on the evaluated version: the judge file's sha256 prefix, its held-out R² and the
    registered judge version of that sha256. None, nothing tagged, where the dataset has no EF judge."""
    from pipelines.registry import tag_version, versions_tagged

    if not Path(judge_file).is_file():
        return None
    sha, name = sha256_file(judge_file), judge_model_name(dataset)
    r2 = json.loads(Path(judge_file).read_text(encoding="utf-8"))["competence"].get("r2")
    found = versions_tagged(name, "sha256", sha)
    registered = f"{name} v{found[-1]}" if found else "not registered"
    value = f"{sha[:12]} r2={math.nan if r2 is None else float(r2):.3f} {registered}"
    tag_version(model, version, {f"{USED_JUDGE_TAG}{dataset}": value})
    return value


# -------------------------------------------------------------------------------------------- controls


def control_metrics(table: dict[str, Any]) -> dict[str, float]:
    """<control>/<metric>{,_ci_low,_ci_high,_n} of every measured metric, and <control>/as_expected as 0/1."""
    from echo_core.evaluation.assess import flat_estimates

    metrics = {}
    for row in table["controls"]:
        control = row["control"]
        metrics.update({f"{control}/{k.removeprefix('gate/')}": v for k, v in flat_estimates(row).items()})
        metrics[f"{control}/as_expected"] = float(row["as_expected"])
    return metrics


def log_controls(dataset: str, table: dict[str, Any], table_file: Path, plot_file: Path) -> str:
    """One run of experiment `echo-controls`: the table and its plot, per-control metrics, and the tag
    `controls_ok` (every control got its expected verdict). → the run id."""
    from pipelines.tracking import git_commit, start_run

    tags = {"dataset": dataset, "controls_ok": str(bool(table["evaluator_ok"])).lower(),
            "not_as_expected": ", ".join(table["not_as_expected"]), "git_commit": git_commit()}
    with start_run(CONTROLS_EXPERIMENT, run_name=f"controls-{dataset}", tags=tags) as tracker:
        tracker.log_params({"bounds": table["bounds"], "frames": table["frames"], "fps": table["fps"]})
        tracker.log_metrics(control_metrics(table))
        for path in (table_file, plot_file):
            tracker.log_artifact(path, "controls")
        return tracker.run_id
