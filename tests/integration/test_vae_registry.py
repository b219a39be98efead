"""`echoforge vae train|import` → MLflow (real sqlite store) → `echo-vae` versions → `latents encode`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support.latent_data import make_prepared_dataset
from typer.testing import CliRunner

from echo_core.models.vae import build_vae
from echo_core.utils.hashing import sha256_file

pytestmark = pytest.mark.integration
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)  # model downloads land under ./mlruns: keep them per test


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("reg") / "ds", num_videos=3, frames=(8,),
                                 splits=("TRAIN", "VAL", "TEST"))


def _invoke(*args: str):
    from pipelines.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def _version(alias: str):
    from pipelines.registry import get_model_version

    return get_model_version("echo-vae", alias)


def _main_error(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from pipelines.cli import main

    monkeypatch.setattr(sys, "argv", ["echoforge", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def test_import_registers_the_folder_unchanged_and_encode_resolves_the_alias(dataset, tmp_path):
    folder = tmp_path / "published_vae"
    build_vae("tiny", scaling_factor=0.25).save_pretrained(folder)
    out = _invoke("vae", "import", folder, "--data", dataset, "--alias", "imported").output
    assert "scaling_factor 0.25" in out and "val_psnr" in out

    mv = _version("imported")
    assert mv.tags["source"] == "imported" and mv.tags["weights_sha256"] == sha256_file(folder / WEIGHTS)
    assert {"git_commit", "config_hash", "data_dvc_hash", "val_psnr"} <= mv.tags.keys()
    from pipelines.registry import resolve_model_folder

    local = resolve_model_folder("models:/echo-vae@imported")
    assert sha256_file(local / WEIGHTS) == sha256_file(folder / WEIGHTS)
    assert json.loads((local / "config.json").read_text())["scaling_factor"] == 0.25

    _invoke("latents", "encode", "--vae", "models:/echo-vae@imported", "--dataset", dataset, "--out",
            tmp_path / "latents", "--track")
    manifest = json.loads((tmp_path / "latents" / "manifest.json").read_text())
    assert manifest["vae"]["uri"] == "models:/echo-vae@imported" and manifest["vae"]["version"] == str(mv.version)
    assert manifest["vae"]["scaling_factor"] == 0.25 and manifest["counts"]["videos"] == 3


def test_import_rejects_missing_and_mismatched_folders(tmp_path, monkeypatch, capsys):
    code, err = _main_error(monkeypatch, capsys, "vae", "import", tmp_path / "nowhere")
    assert code == 1 and "VAE folder not found" in err and "Traceback" not in err

    build_vae("tiny").save_pretrained(tmp_path / "no_weights")
    (tmp_path / "no_weights" / WEIGHTS).unlink()
    code, err = _main_error(monkeypatch, capsys, "vae", "import", tmp_path / "no_weights")
    assert code == 1 and f"lacks {WEIGHTS}" in err

    build_vae("tiny", in_channels=1, out_channels=1).save_pretrained(tmp_path / "gray_vae")
    code, err = _main_error(monkeypatch, capsys, "vae", "import", tmp_path / "gray_vae")
    assert code == 1 and "channels in/out 1/1" in err and "fix:" in err

    code, err = _main_error(monkeypatch, capsys, "vae", "import", tmp_path / "gray_vae", "--resolution", "64")
    assert code == 1 and "64 px gives 8×8 latents" in err


def test_train_logs_val_psnr_registers_with_lineage_and_resumes_the_same_run(dataset, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("vae:\n  model: tiny\n  max_steps: 2\n  batch_size: 2\n  frame_every: 4\n"
                      "  checkpoint_every: 1\n  val_every: 2\n  val_max_frames: 2\n  scaling_sample_frames: 4\n")
    out = tmp_path / "vae_run"
    _invoke("vae", "train", "--data", dataset, "--out", out, "--params", params, "--alias", "candidate")
    mv = _version("candidate")
    assert mv.tags["source"] == "trained"
    assert {"git_commit", "config_hash", "data_dvc_hash", "val_psnr", "scaling_factor"} <= mv.tags.keys()

    from mlflow.tracking import MlflowClient

    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    run = MlflowClient().get_run(run_id)
    assert 0 < run.data.metrics["val_psnr"] < 100 and run.data.params["vae.max_steps"] == "2"
    artifacts = [a.path for a in MlflowClient().list_artifacts(run_id, "reconstructions")]
    assert artifacts == ["reconstructions/step-0000002.png"]

    _invoke("vae", "train", "--data", dataset, "--out", out, "--params", params, "--max-steps", "3",
            "--resume", "latest", "--no-register")
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == run_id  # same run continued
    assert MlflowClient().get_run(run_id).data.tags["resumed_from_step"] == "2"
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
