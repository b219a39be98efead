"""MLflow model registry adapter: register folders, resolve `models:/` URIs, version tags, aliases, the
`champion` alias behind the promotion gate (with its history), and listing.

With pipelines/tracking.py the only module that talks to `MlflowClient`; CLI commands and flows call these
functions. The gate's decision itself is pure (echo_core.evaluation.gate); this module only reads what it
needs (a version's `metric.<name>` tags and run metrics) and moves aliases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from echo_core.errors import EchoForgeError, TrackingError
from echo_core.evaluation.gate import PromotionConfig, gate_failures
from pipelines.tracking import tracking_uri

FOLDER_MODEL_CODE = Path(__file__).parent / "serving" / "folder_model.py"
METRIC_TAG = "metric."  # a version's evaluation values, one tag per metric: what the gate reads
VERDICT_TAG = "verdict."  # verdict.<dataset> = pass | fail | inconclusive (evaluate.assess, with CIs)
REASONS_TAG = "verdict_reasons."  # verdict_reasons.<dataset> = why (each failing metric, its CI and bound)
CHAMPION = "champion"
HISTORY_TAG = "champion_history"  # registered-model tag: JSON list of former champions, newest last
LINEAGE_TAGS = ("git_commit", "data_dvc_hash", "source_version", "config_hash")


class PromotionError(EchoForgeError):
    """A version failed the promotion gate, or there is no champion to return to (exit code 1)."""


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    uri: str
    run_id: str | None


def _client():
    # Lazy: `import mlflow` costs ~2-4 s and the CLI must start fast.
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri())


# -- registering ----------------------------------------------------------------------------------------
def log_model_folder(folder: str | Path, *, name: str, registered_model_name: str, alias: str | None = None,
                     tags: dict[str, str] | None = None, python_model_file: str | Path | None = None,
                     pip_requirements: list[str] | None = None) -> ModelVersionInfo:
    """Log `folder` as the artifact `model_dir` of a models-from-code pyfunc in the active run and register it."""
    import mlflow

    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(python_model_file or FOLDER_MODEL_CODE),
        artifacts={"model_dir": str(folder)},
        pip_requirements=pip_requirements or default_requirements(),
        registered_model_name=registered_model_name,
    )
    version = str(info.registered_model_version)
    tag_version(registered_model_name, version, tags or {}, alias)
    return ModelVersionInfo(registered_model_name, version, f"models:/{registered_model_name}/{version}",
                            mlflow.active_run().info.run_id if mlflow.active_run() else None)


def default_requirements() -> list[str]:
    """pip pins of what a registered pyfunc needs at serving time (the versions installed here)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "diffusers", "safetensors", "pandas", "numpy")]


def tag_version(name: str, version: str, tags: dict[str, Any], alias: str | None = None) -> None:
    """Set `tags` on a version (values as strings) and point `alias` at it when given."""
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    if alias:
        client.set_registered_model_alias(name, alias, version)


def register_run_artifacts(name: str, run_id: str, artifact_path: str, tags: dict[str, Any]) -> str:
    """Register the artifact folder `artifact_path` of a finished run as a new version of `name` (created if
    missing), with `tags`; → the version number. For records that are no pyfunc model (a judge file)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    mv = client.create_model_version(name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()})
    return str(mv.version)


def versions_tagged(name: str, key: str, value: str) -> list[str]:
    """Version numbers of `name` whose tag `key` equals `value`, oldest first ([] if `name` is not registered)."""
    found = _client().search_model_versions(f"name='{name}' and tags.`{key}` = '{value}'")
    return sorted((str(mv.version) for mv in found), key=int)


# -- resolving ------------------------------------------------------------------------------------------
def get_model_version(name: str, alias_or_version: str):
    """The registry ModelVersion of `name` by number or alias; a TrackingError that names the fix if none."""
    client = _client()
    try:
        if alias_or_version.isdigit():
            return client.get_model_version(name, alias_or_version)
        return client.get_model_version_by_alias(name, alias_or_version)
    except Exception as exc:
        raise TrackingError(
            f"model '{name}' has no version/alias '{alias_or_version}' in {tracking_uri()} ({type(exc).__name__})",
            fix=f"list versions with `echoforge registry list --model {name}`",
        ) from None


def version_of_uri(uri: str):
    """The registry ModelVersion behind `models:/name@alias` or `models:/name/3`."""
    name, sep, ref = uri.removeprefix("models:/").partition("@")
    if not sep:
        name, _, ref = name.partition("/")
    return get_model_version(name, ref)


def version_of_run(model: str, run_id: str) -> str:
    """The version a training run registered (pinned by number: `candidate` may move meanwhile)."""
    versions = _client().search_model_versions(f"name='{model}' and run_id='{run_id}'")
    if not versions:
        raise TrackingError(f"training run {run_id} registered no version of {model}",
                            fix="train with registration on (the default of `echoforge train lvdm`)")
    return str(max(int(v.version) for v in versions))


def resolve_model_folder(uri_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Local folder for `models:/name@alias`, `models:/name/3`, or an existing local folder."""
    text = str(uri_or_path)
    if not text.startswith("models:/"):
        path = Path(text)
        if not path.is_dir():
            raise TrackingError(f"model folder not found: {path}", fix="pass a folder or models:/<name>@<alias>")
        return path
    mv = version_of_uri(text)
    name = mv.name
    # Keyed on the store and the version's source too: a reset DB or another tracking server re-uses
    # version numbers, and a cache keyed on the number alone would hand back stale weights.
    key = hashlib.sha256(f"{tracking_uri()}|{mv.source}|{mv.run_id}".encode()).hexdigest()[:12]
    dst = Path(cache_dir or Path.cwd() / "mlruns" / "downloads") / f"{name}-v{mv.version}-{key}"
    if not (dst / "MLmodel").is_file():
        _download_atomic(f"models:/{name}/{mv.version}", dst)
    refuse_pickles(dst, text)  # also a cache filled before this check existed
    return _artifact_dir(dst, "model_dir", text)


# Files that unpickle objects when loaded (pickle, joblib, torch .pt/.pth/.bin/.ckpt): the platform's model folders
# hold safetensors, JSON/YAML, images and MLflow's metadata only, so a version that holds one is refused before
# anything reads it (a tampered or foreign registry entry cannot run code on load).
PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".ckpt"}
PICKLE_MAGIC = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))


def refuse_pickles(folder: Path, label: str) -> None:
    """Raise if `folder` holds a pickle (by suffix, or by a pickle protocol header under any name)."""
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and _is_pickle(p))
    if found:
        raise TrackingError(f"{label} holds files that would unpickle objects on load: {', '.join(found[:5])}"
                            f"{f' and {len(found) - 5} more' if len(found) > 5 else ''}; refused",
                            fix="register weights as safetensors (the platform never loads pickles from the "
                                "registry); delete this version if you did not put them there")


def _is_pickle(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with path.open("rb") as handle:
        return handle.read(2) in PICKLE_MAGIC


def _download_atomic(uri: str, dst: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
        refuse_pickles(tmp, uri)  # never cached: the temp folder goes in `finally`
        try:
            os.replace(tmp, dst)
        except OSError:
            # another process (a parallel shard) finished the same download first: its copy is complete
            if not (dst / "MLmodel").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _artifact_dir(model_root: Path, key: str, label: str) -> Path:
    """Where the pyfunc artifact `key` lives inside a downloaded model (MLmodel records the path)."""
    mlmodel = yaml.safe_load((model_root / "MLmodel").read_text())
    rel = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get(key, {}).get("path")
    if not rel or not (model_root / rel).exists():
        raise TrackingError(f"{label} has no '{key}' artifact", fix="re-register the model")
    return model_root / rel


# -- metric tags ----------------------------------------------------------------------------------------
def set_metric_tags(name: str, version: str, metrics: dict[str, float], run_id: str) -> None:
    """Replace the version's `metric.*` tags with these values (stale ones would fool the gate) and record
    the evaluation run they come from."""
    client = _client()
    old = client.get_model_version(name, version).tags or {}
    for key in old:
        if key.startswith(METRIC_TAG) and key.removeprefix(METRIC_TAG) not in metrics:
            client.delete_model_version_tag(name, version, key)
    for metric, value in metrics.items():
        client.set_model_version_tag(name, version, f"{METRIC_TAG}{metric}", repr(value))
    client.set_model_version_tag(name, version, "evaluation_run_id", run_id)


def set_verdict_tags(name: str, version: str, verdicts: dict[str, tuple[str, str]]) -> None:
    """Replace the version's verdict tags with these ({dataset: (verdict, reasons)})."""
    client = _client()
    for key in client.get_model_version(name, version).tags or {}:
        if key.startswith((VERDICT_TAG, REASONS_TAG)):
            client.delete_model_version_tag(name, version, key)
    for ds, (verdict, reasons) in verdicts.items():
        client.set_model_version_tag(name, version, f"{VERDICT_TAG}{ds}", verdict)
        client.set_model_version_tag(name, version, f"{REASONS_TAG}{ds}", reasons[:4900])  # tag values cap at 5000


def version_verdicts(mv) -> dict[str, tuple[str, str]]:
    tags = mv.tags or {}
    return {k.removeprefix(VERDICT_TAG): (v, tags.get(f"{REASONS_TAG}{k.removeprefix(VERDICT_TAG)}", ""))
            for k, v in tags.items() if k.startswith(VERDICT_TAG)}


def version_metrics(mv) -> dict[str, float]:
    """`metric.<name>` version tags, completed by the latest metrics of the version's run."""
    metrics = {}
    if mv.run_id:
        with contextlib.suppress(Exception):  # a deleted run: the tags alone must then carry the metrics
            metrics.update(_client().get_run(mv.run_id).data.metrics)
    for key, value in (mv.tags or {}).items():
        if key.startswith(METRIC_TAG):
            try:
                metrics[key.removeprefix(METRIC_TAG)] = float(value)
            except ValueError:
                continue
    return metrics


# -- champion -------------------------------------------------------------------------------------------
def champion_history(model: str) -> list[str]:
    """Former champions of `model`, oldest first."""
    tags = _client().get_registered_model(model).tags or {}
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def current_champion(model: str) -> str | None:
    aliases = _client().get_registered_model(model).aliases or {}
    return str(aliases[CHAMPION]) if CHAMPION in aliases else None


def promote(model: str, version: str, gate: PromotionConfig) -> tuple[str, str | None]:
    """Point `champion` at `version` (number or alias) if its metrics pass `gate`; the previous champion is
    pushed onto the history. → (promoted version number, previous champion); PromotionError if it fails."""
    mv = get_model_version(model, version)
    failures = gate_failures(version_metrics(mv), gate, version_verdicts(mv))
    if failures:
        raise PromotionError(f"{model} version {mv.version} fails the promotion gate: " + "; ".join(failures),
                             fix="evaluate this version (`echoforge evaluate ...`) or promote a better one")
    previous = current_champion(model)
    if previous == str(mv.version):
        return str(mv.version), previous
    client = _client()
    if previous is not None:
        client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(champion_history(model) + [previous]))
    client.set_registered_model_alias(model, CHAMPION, mv.version)
    return str(mv.version), previous


def rollback(model: str) -> tuple[str, str | None]:
    """Point `champion` back at the previous champion → (that version, the one it replaced)."""
    history = champion_history(model)
    if not history:
        raise PromotionError(f"{model} has no previous {CHAMPION} to return to",
                             fix=f"promote a version with `echoforge registry promote --model {model} --version V`")
    previous, current = history[-1], current_champion(model)
    client = _client()
    client.set_registered_model_alias(model, CHAMPION, previous)
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(history[:-1]))
    return previous, current


# -- listing --------------------------------------------------------------------------------------------
def list_versions(model: str) -> tuple[list[dict[str, Any]], str]:
    """([{"version", "aliases", "run_id", "metrics", "lineage"} per version, by number], the raw history tag)."""
    client = _client()
    rm = client.get_registered_model(model)
    by_version: dict[str, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for mv in sorted(client.search_model_versions(f"name='{model}'"), key=lambda m: int(m.version)):
        tags = mv.tags or {}
        rows.append({"version": str(mv.version), "aliases": sorted(by_version.get(str(mv.version), [])),
                     "run_id": mv.run_id, "metrics": version_metrics(mv),
                     "lineage": {k: tags[k] for k in LINEAGE_TAGS if k in tags}})
    return rows, (rm.tags or {}).get(HISTORY_TAG, "[]")
