"""pipelines.ops without servers: MLflow launcher settings, the tolerant `dvc pull` step, accelerate profile
dry runs (accelerate's own parser), and the prefect.yaml entrypoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from echo_core.errors import ConfigError, DataError
from pipelines.ops.mlflow_server import is_loopback, read_env_file, resolve_config, server_command
from pipelines.ops.steps import dvc_pull

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ MLflow launcher


def test_mlflow_server_defaults_to_loopback_sqlite_under_mlruns_and_proxied_artifacts(tmp_path):
    cfg = resolve_config(tmp_path, {})
    cmd = server_command(cfg, mlflow_exe="mlflow")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and is_loopback(cfg.host)
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path / "mlruns" / "artifacts")


def test_mlflow_server_options_win_over_env_file_values(tmp_path):
    env_file = tmp_path / "prod.env"
    env_file.write_text("# production\nexport MLFLOW_BACKEND_STORE_URI='postgresql+psycopg2://u:p@db/mlflow'\n"
                        "MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/echo\nMLFLOW_PORT=5111\n\n")
    cfg = resolve_config(tmp_path, read_env_file(env_file), port=6000)
    assert cfg.backend_store_uri == "postgresql+psycopg2://u:p@db/mlflow"
    assert cfg.artifacts_destination == "s3://bucket/echo" and cfg.port == 6000


def test_env_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.env"
    bad.write_text("OK=1\nnot a setting\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_env_file(bad)


def test_production_example_is_a_valid_env_file():
    values = read_env_file(REPO / "infra" / "mlflow" / "production.env.example")
    assert values["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert values["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


# ---------------------------------------------------------------------------------------- dvc pull step


def _dvc(cwd: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True, timeout=120)


@pytest.fixture
def dvc_project(tmp_path, monkeypatch):
    """A DVC project (no git) with `raw/` tracked and a default local remote that is still empty."""
    project = tmp_path / "project"
    (project / "raw").mkdir(parents=True)
    (project / "raw" / "a.txt").write_text("echo")
    _dvc(project, "init", "--no-scm")
    _dvc(project, "add", "raw")
    _dvc(project, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    monkeypatch.chdir(project)
    return project


def test_dvc_pull_is_tolerant_of_an_empty_remote(dvc_project):
    import shutil

    shutil.rmtree(dvc_project / "raw")
    shutil.rmtree(dvc_project / ".dvc" / "cache")
    result = dvc_pull(["raw.dvc"])
    assert result["pulled"] is False and "continuing with the files already in the workspace" in result["reason"]
    with pytest.raises(DataError, match="dvc pull"):
        dvc_pull(["raw.dvc"], mode="required")


def test_dvc_pull_fetches_what_was_pushed(dvc_project):
    import shutil

    _dvc(dvc_project, "push")
    shutil.rmtree(dvc_project / "raw")
    shutil.rmtree(dvc_project / ".dvc" / "cache")
    assert dvc_pull(["raw.dvc"])["pulled"] is True
    assert (dvc_project / "raw" / "a.txt").read_text() == "echo"


def test_dvc_pull_skips_outside_a_dvc_project_and_when_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dvc_pull(mode="")["reason"].startswith("skipped: ") and "not a DVC project" in dvc_pull()["reason"]
    assert dvc_pull(mode="off") == {"pulled": False, "reason": "skipped: mode off (ECHOFORGE_DVC_PULL=off)"}
    with pytest.raises(ConfigError, match="mode"):
        dvc_pull(mode="sometimes")


# ------------------------------------------------------------------------------------- accelerate dry run


def test_multi_gpu_profile_parses_and_renders_the_launch():
    from pipelines.ops.accelerate_dry_run import launch_plan

    plan = launch_plan("multi-gpu", ["outputs/latents/dynamic"], "outputs/lvdm")
    assert plan.distributed_type == "MULTI_GPU" and plan.num_machines == 1
    assert plan.command[1:4] == ["launch", "--config_file", str(REPO / "infra" / "accelerate" / "multi-gpu.yaml")]
    assert plan.torchrun[:3] == ["torchrun", "--nproc_per_node", str(plan.num_processes)]


def test_multi_node_profile_renders_one_command_per_machine():
    from pipelines.ops.accelerate_dry_run import launch_plan

    plan = launch_plan("multi-node", ["outputs/latents/dynamic"], "outputs/lvdm", machine_rank=1,
                       main_process_ip="10.1.2.3")
    assert plan.num_machines == 2 and plan.machine_rank == 1
    assert plan.command[4:8] == ["--machine_rank", "1", "--main_process_ip", "10.1.2.3"]
    t = plan.torchrun
    assert t[t.index("--nnodes") + 1] == "2" and t[t.index("--node_rank") + 1] == "1"
    assert t[t.index("--master_addr") + 1] == "10.1.2.3"
    assert int(t[t.index("--nproc_per_node") + 1]) * 2 == plan.num_processes


def test_multi_node_profile_rejects_an_impossible_split():
    from pipelines.ops.accelerate_dry_run import launch_plan

    with pytest.raises(ConfigError, match="multiple of num_machines"):
        launch_plan("multi-node", ["x"], "y", num_processes=15)
    with pytest.raises(ConfigError, match="machine_rank 2"):
        launch_plan("multi-node", ["x"], "y", machine_rank=2)


# ------------------------------------------------------------------------------------------- prefect.yaml


def test_prefect_yaml_entrypoints_exist_and_name_their_flow():
    doc = yaml.safe_load((REPO / "infra" / "prefect" / "prefect.yaml").read_text())
    names = set()
    for d in doc["deployments"]:
        path, func = d["entrypoint"].split(":")
        source = (REPO / path).read_text()
        assert f"def {func}(" in source, d["entrypoint"]
        flow = Path(path).stem
        assert f'@flow(name="{flow}"' in source
        names.add(f"{flow}/{d['name']}")
        assert d["work_pool"]["name"] == "echoforge"
    assert {"preprocess/phantom", "encode/phantom", "train/lvdm", "sample/champion", "evaluate/candidate"} <= names
    steps = [next(iter(s)) for s in doc["pull"]]
    assert steps == ["prefect.deployments.steps.set_working_directory", "pipelines.ops.steps.dvc_pull"]
