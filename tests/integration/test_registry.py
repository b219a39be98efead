"""`echoforge registry promote | rollback | list` against a real MLflow sqlite registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from echo_core.errors import TrackingError
from pipelines.cli import app
from pipelines.registry import PromotionError

pytestmark = pytest.mark.integration
MODEL = "echo-lvdm-registry-test"
GATE = """promotion:
  metric_thresholds:
    fvd16_fallback: {max: 500.0}
    ef_adherence_mae: {max: 10.0}
  require_metrics: [fvd16_fallback, ef_adherence_mae]
"""


def _register_versions(tmp_path: Path, n: int) -> list[str]:
    from pipelines.registry import log_model_folder
    from pipelines.tracking import start_run

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with start_run("registry-test"):
        return [log_model_folder(folder, name="m", registered_model_name=MODEL).version for _ in range(n)]


def _tag_metrics(version: str, **metrics: float) -> None:
    from pipelines.registry import METRIC_TAG, tag_version

    tag_version(MODEL, version, {f"{METRIC_TAG}{name}": value for name, value in metrics.items()})


def test_promote_rollback_list(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(GATE)
    v1, v2, v3 = _register_versions(tmp_path, 3)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, ["registry", *args, "--model", MODEL])

    def promote(version: str):
        return runner.invoke(app, ["registry", "promote", "--model", MODEL, "--version", version,
                                   "--params", str(params)])

    refused = promote(v1)
    assert isinstance(refused.exception, PromotionError) and refused.exception.exit_code == 1
    assert "fvd16_fallback: missing" in str(refused.exception) and "ef_adherence_mae: missing" in str(refused.exception)

    _tag_metrics(v1, fvd16_fallback=100.0, ef_adherence_mae=5.0)
    _tag_metrics(v2, fvd16_fallback=200.0, ef_adherence_mae=6.0)
    _tag_metrics(v3, fvd16_fallback=900.0, ef_adherence_mae=6.0)
    for version in (v1, v2):
        ok = promote(version)
        assert ok.exit_code == 0, ok.output
    bad = promote(v3)
    assert isinstance(bad.exception, PromotionError) and "fvd16_fallback: 900 > max 500" in str(bad.exception)

    listing = run("list")
    assert f"v{v2}  aliases=champion" in listing.output and '"fvd16_fallback": 200.0' in listing.output
    assert f'champion_history: ["{v1}"]' in listing.output

    back = run("rollback")
    assert back.exit_code == 0 and f"-> version {v1}" in back.output
    assert f"v{v1}  aliases=champion" in run("list").output
    empty = run("rollback")
    assert isinstance(empty.exception, PromotionError) and "no previous champion" in str(empty.exception)


def test_a_version_holding_a_pickle_is_refused_before_anything_loads_it(tmp_path, monkeypatch):
    """#15 §5: registry folders are read as safetensors/JSON only; a pickle inside (by name, or a pickle
    header under an innocent name) is refused with the file named, and nothing is left in the cache."""
    import pickle

    from pipelines.registry import log_model_folder, resolve_model_folder
    from pipelines.tracking import start_run

    monkeypatch.chdir(tmp_path)
    versions = {}
    for name, payload in {"clean": None, "suffix": ("extra.pkl", b"not even a pickle"),
                          "magic": ("weights.safetensors", pickle.dumps({"a": 1}, protocol=4))}.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        if payload:
            (folder / payload[0]).write_bytes(payload[1])
        with start_run("registry-test"):
            versions[name] = log_model_folder(folder, name="m", registered_model_name=f"{MODEL}-pickle").uri
    assert (resolve_model_folder(versions["clean"]) / "config.json").is_file()
    for name, bad in (("suffix", "extra.pkl"), ("magic", "weights.safetensors")):
        with pytest.raises(TrackingError, match=rf"unpickle objects on load: .*{bad}"):
            resolve_model_folder(versions[name])
    cached = sorted(p.name for p in (tmp_path / "mlruns" / "downloads").iterdir())
    assert len(cached) == 1 and not any(p.name.startswith(".") for p in (tmp_path / "mlruns" / "downloads").iterdir())
