"""The `evaluate` flow end to end on tiny real parts: a registered tiny LVDM (real diffusers UNet + VAE),
tiny prepared datasets (real PyAV videos), a real reference set, latent stores, real MLflow sqlite and a
real Prefect server (test harness). Then the promotion gate on what the flow tagged."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.evaluate_data import METRICS, write_evaluation_dataset, write_evaluation_params
from support.tiny_lvdm import make_bundle
from typer.testing import CliRunner

from echo_core.data.filelist import read_filelist
from echo_core.metrics.api import FALLBACK_METRIC_NAMES

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "echo-lvdm-evaluate-test"
MODEL_CLS = "echo-lvdm-evaluate-test-cls"


def _register(bundle: Path, name: str) -> str:
    from pipelines.registry import log_model_folder
    from pipelines.tracking import start_run

    with start_run("evaluate-test-models"):
        return log_model_folder(bundle, name="lvdm", registered_model_name=name, alias="candidate").version


def _gate(path: Path, ratio_max: float, require_verdict: bool = False) -> Path:
    path.write_text(yaml.safe_dump({"promotion": {
        "require_verdict": require_verdict,
        "metric_thresholds": {"toy/fvd16_fallback_ratio": {"max": ratio_max}, "toy/ef_adherence_mae": {"max": 1e6}},
        "require_metrics": ["toy/fvd16_fallback_ratio", "toy/ef_adherence_mae"]}}))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalproj")
    write_evaluation_dataset(root / "outputs", "toy")
    write_evaluation_dataset(root / "outputs", "toycls", classes=True)
    write_evaluation_params(root / "params.yaml", ("toy", "toycls"))
    return root


def _version_tags(name: str, version: str) -> dict[str, str]:
    from pipelines.registry import get_model_version

    return get_model_version(name, version).tags


def _champion(name: str) -> str | None:
    from pipelines.registry import current_champion

    return current_champion(name)


def test_evaluate_flow_tags_version_and_gate_moves_champion(project: Path, monkeypatch):
    from support.servers import prefect_api

    from pipelines.cli import app
    from pipelines.flows.end_to_end import promote_version
    from pipelines.flows.evaluate import evaluate, sample_for_evaluation
    from pipelines.registry import PromotionError, version_of_run

    monkeypatch.chdir(project)  # model downloads and MLflow staging go under the project, not the repo
    bundle = make_bundle(project / "bundle")
    v1, v2 = _register(bundle, MODEL), _register(bundle, MODEL)
    runner = CliRunner()
    with prefect_api():
        first = evaluate(MODEL, v1, None, "params.yaml", "outputs", "metrics")
        v1_files = json.loads((project / "metrics" / "evaluate.json").read_text())
        cli = runner.invoke(app, ["evaluate", "run", "--model", MODEL, "--version", "candidate"])  # = v2
    assert cli.exit_code == 0, cli.output

    per_dataset = json.loads((project / "metrics" / "toy" / "metrics.json").read_text())
    assert first["version"] == v1 and first["datasets"]["toy"]["condition"] == "ef"
    assert v1_files == first["metrics"] and all(k.startswith("toy/") for k in v1_files)
    assert set(per_dataset["protocol"]["metrics"]) == set(METRICS) <= FALLBACK_METRIC_NAMES
    names = {k.removeprefix("toy/") for k in v1_files}
    assert all(n.startswith(tuple(METRICS)) or n.startswith("ef_") for n in names)  # no exact metric names
    assert {"fvd16_fallback_ratio", "fvd16_fallback_real_baseline", "ef_adherence_mae"} <= names
    assert "fd_fallback_ratio" not in names  # evaluate.ratio_metrics
    assert per_dataset["model"] == {"name": MODEL, "version": v2}  # the CLI's evaluation wrote the files last
    for plot in ("loss_curve.csv", "ef_predictions.csv"):
        assert (project / "metrics" / "plots" / "toy" / plot).is_file()

    # v2's samples replaced v1's (another version); asking again reuses them without loading the model
    params = json.loads((project / "outputs" / "samples" / "toy" / "generation_params.json").read_text())
    assert params["model"]["id"] == f"{MODEL}/{v2}" and first["datasets"]["toy"]["samples"]["generated"] == 4
    again = sample_for_evaluation(MODEL, v2, None, "params.yaml", "outputs")
    assert again["toy"]["state"] == "complete" and again["toy"]["generated"] == 0
    train = read_filelist(project / "outputs" / "latents" / "toy" / "FileList.csv").query("Split == 'TRAIN'")
    assert params["conditioning_files"] == sorted(f"{n}.safetensors" for n in train["FileName"])  # no TEST leak

    tags = _version_tags(MODEL, v1)
    v1_metrics = {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}
    assert v1_metrics == pytest.approx(first["metrics"]) and set(v1_metrics) == set(first["metrics"])
    assert tags["evaluation_run_id"] == first["run_id"]
    import mlflow

    run = mlflow.get_run(first["run_id"])
    assert run.data.tags["model_version"] == v1 and run.data.tags["model_name"] == MODEL
    assert run.data.metrics["toy/fvd16_fallback_ratio"] == pytest.approx(v1_metrics["toy/fvd16_fallback_ratio"])

    ratio = max(v1_metrics["toy/fvd16_fallback_ratio"],
                float(_version_tags(MODEL, v2)["metric.toy/fvd16_fallback_ratio"]))
    loose, strict = _gate(project / "loose.yaml", ratio * 2), _gate(project / "strict.yaml", ratio / 1000)

    def promote(version: str, gate: Path):
        return runner.invoke(app, ["registry", "promote", "--model", MODEL, "--version", version,
                                   "--params", str(gate)])

    # the verdict the flow recorded: 4 samples are fewer than evaluate.assess.min_videos, so nothing is judged
    # and the verdict is inconclusive, which a verdict gate never promotes
    assert tags["verdict.toy"] == "inconclusive" and "min_videos" in tags["verdict_reasons.toy"]
    assessment = json.loads((project / "metrics" / "toy" / "assessment.json").read_text())
    assert assessment["verdict"] == "inconclusive" and assessment["n_videos"] == 4
    by_verdict = promote(v1, _gate(project / "verdict.yaml", ratio * 2, require_verdict=True))
    assert isinstance(by_verdict.exception, PromotionError) and "toy: verdict inconclusive" in str(by_verdict.exception)
    assert _champion(MODEL) is None

    assert promote(v1, loose).exit_code == 0 and _champion(MODEL) == v1
    refused = promote(v2, strict)
    assert isinstance(refused.exception, PromotionError)
    assert "toy/fvd16_fallback_ratio" in str(refused.exception) and _champion(MODEL) == v1  # did not move
    decision = promote_version.fn(MODEL, v2, str(strict))  # the end_to_end flow's step: an outcome, not a crash
    assert decision["promoted"] is False and "fvd16_fallback_ratio" in decision["reason"] and _champion(MODEL) == v1
    assert promote(v2, loose).exit_code == 0 and _champion(MODEL) == v2
    assert version_of_run(MODEL, run.data.tags["model_run_id"]) == v1


def test_class_model_gets_classification_and_confusion_matrix(project: Path, monkeypatch):
    """The plain function (no Prefect): a class-conditioned version on a CardiacNet-like dataset."""
    from pipelines.flows.evaluate import run_evaluation

    monkeypatch.chdir(project)
    version = _register(make_bundle(project / "bundle_cls", kind="class_id"), MODEL_CLS)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"].update(metrics={"metrics": ["fvd16_fallback"], "allow_fewer": True}, ratio_metrics=None)
    (project / "params_cls.yaml").write_text(yaml.safe_dump(params))
    result = run_evaluation(MODEL_CLS, version, ["toycls"], "params_cls.yaml", "outputs", "metrics_cls")

    assert result["datasets"]["toycls"]["condition"] == "class_id"
    samples = read_filelist(project / "outputs" / "samples" / "toycls" / "FileList.csv")
    assert set(samples["CondType"]) == {"class_id"} and set(samples["class_id"]) == {0, 1}
    metrics = result["metrics"]
    assert 0.0 <= metrics["toycls/cls_accuracy"] <= 1.0 and "toycls/ef_adherence_mae" not in metrics
    assert "toycls/fvd16_fallback_ratio" in metrics
    confusion = pd.read_csv(project / "metrics_cls" / "plots" / "toycls" / "confusion_matrix.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and set(confusion["actual"]) == {"ASD", "Non-ASD"}
    curve = pd.read_csv(project / "metrics_cls" / "plots" / "toycls" / "loss_curve.csv")
    assert list(curve.columns) == ["epoch", "synthetic_train_loss", "synthetic_val_loss"]
    assert (project / "outputs" / "evaluation" / "toycls" / "classification" / "confusion_matrix.png").is_file()
