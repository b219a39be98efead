"""The production profile for real: a throwaway PostgreSQL cluster on 127.0.0.1, `echoforge ops mlflow-server
--env-file …` on it with proxied artifacts (a server-side folder; S3 is not available here), and the platform's
own path through it: `echoforge train lvdm` → `registry build-serving` → `evaluate run` → `registry promote` →
`mlflow models serve -m models:/echo-lvdm@champion`. Clients only ever get the http:// tracking URI.

Skipped, with the exact reason, when the PostgreSQL server binaries (Debian: `apt-get install postgresql`)
or the `psycopg2` driver (`pip install psycopg2-binary`) are missing.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml
from support.evaluate_data import write_evaluation_dataset, write_evaluation_params
from support.lvdm_data import tiny_train_section
from support.servers import BIN, Processes, run_cli
from support.tiny_lvdm import make_vae_folder

from echo_core.data.video import probe_video
from pipelines.ops.processes import free_port, spawn, wait_http_ok

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MODEL = "echo-lvdm"
STEPS = 2


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
                    "`apt-get install postgresql` to run this test")
    return Path(found[-1]).parent


def _require_driver() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg2 driver is not installed in this environment (MLflow needs it for "
                    "postgresql:// stores): add psycopg2-binary to the dev dependencies")


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run the PostgreSQL server as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and `runuser` is missing: cannot start PostgreSQL as `postgres`")
    return [runuser, "-u", "postgres", "--"]


@contextlib.contextmanager
def postgres_cluster(bin_dir: Path):
    """initdb + pg_ctl start in a fresh world-traversable temp folder; stopped and removed on exit."""
    prefix = _as_postgres()
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="echoforge-pg-", dir="/tmp"))
    data, port = folder / "data", free_port()
    if prefix:
        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
    try:
        subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off"
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(folder / "pg.log"),
                        "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)
        yield port, folder
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30",
                        "stop"], capture_output=True, timeout=60)
        _kill_postmaster(data)
        shutil.rmtree(folder, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    """If `pg_ctl stop` did not work, stop the postmaster by the PID it recorded."""
    pid_file = data / "postmaster.pid"
    if pid_file.is_file():
        with contextlib.suppress(ValueError, ProcessLookupError, IndexError):
            os.kill(int(pid_file.read_text().splitlines()[0]), 9)


@pytest.fixture(scope="module")
def pg_mlflow(tmp_path_factory):
    """One PostgreSQL cluster and one PostgreSQL-backed `mlflow server` (proxied artifacts) for the module."""
    bin_dir = _pg_bin()
    _require_driver()
    root = tmp_path_factory.mktemp("pg-server")
    with postgres_cluster(bin_dir) as (pg_port, _):
        subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "-tAc",
                        "CREATE DATABASE mlflow"], check=True, capture_output=True, timeout=60)
        env_file, mlflow_port = root / "production.env", free_port()
        env_file.write_text(f"MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/mlflow\n"
                            f"MLFLOW_ARTIFACTS_DESTINATION={root / 'artifacts'}\n"
                            f"MLFLOW_PORT={mlflow_port}\nMLFLOW_WORKERS=1\n")
        url = f"http://127.0.0.1:{mlflow_port}"
        procs = Processes()
        try:
            server = procs.add(spawn([str(BIN / "echoforge"), "ops", "mlflow-server", "--env-file", str(env_file)],
                                     name="mlflow-server", log_path=root / "server.log", cwd=root), grace=5)
            wait_http_ok(f"{url}/health", server, timeout=180)
            yield {"url": url, "pg_port": pg_port, "artifacts": root / "artifacts"}
        finally:
            procs.stop_all()


def _sql(pg_port: int, query: str, *args: str) -> list[tuple]:
    """Rows straight from the MLflow database, not through MLflow."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=pg_port, user="postgres",
                                             dbname="mlflow")) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall()


def test_mlflow_server_on_postgresql(pg_mlflow, tmp_path):
    run_id = _log_and_register(pg_mlflow["url"], tmp_path)
    port = pg_mlflow["pg_port"]
    assert _sql(port, "SELECT status FROM runs WHERE run_uuid = %s", run_id) == [("FINISHED",)]
    assert _sql(port, "SELECT alias FROM registered_model_aliases WHERE name = 'pg-model'") == [("candidate",)]
    assert any(pg_mlflow["artifacts"].rglob("note.txt"))  # proxied artifacts reached the server's store


def _log_and_register(url: str, tmp_path: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    exp = client.create_experiment("pg-profile")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id)
    client.create_registered_model("pg-model")
    version = client.create_model_version("pg-model", f"runs:/{run.info.run_id}/note.txt", run.info.run_id)
    client.set_registered_model_alias("pg-model", "candidate", version.version)
    assert client.get_metric_history(run.info.run_id, "loss")[0].value == 0.5
    return run.info.run_id


# ----------------------------------------------------------------------------- the platform's own path (#15 §3)

def _project(root: Path) -> Path:
    """outputs/{prepared,reference,latents}/toy (its 4×14×14 latents also train the LVDM), a tiny VAE and a
    params.yaml with seconds-long train_lvdm / evaluate sections, small serving caps and the real gate."""
    write_evaluation_dataset(root / "outputs", "toy")
    make_vae_folder(root / "outputs" / "vae" / "vae")
    params = yaml.safe_load(write_evaluation_params(root / "params.yaml", ("toy",)).read_text())
    params["train_lvdm"] = tiny_train_section(
        model={"name": "tiny", "latent_size": 14}, objective={"kind": "v_ddpm"},  # v_ddpm: evaluate samples with ddim
        optim={"lr": 2e-3, "warmup_steps": 1, "batch_size": 2, "max_steps": STEPS},
        checkpoint={"every": STEPS, "total_limit": 1})
    params["serving"] = {"max_frames": 8, "max_steps": 4, "default_frames": 4, "default_steps": 2}
    params["promotion"] = {"require_verdict": True, "metric_thresholds": {}, "require_metrics": []}  # = params.yaml
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "no-gate.yaml").write_text(yaml.safe_dump({"promotion": {"require_verdict": False}}))
    return root


def _echoforge(*args: str) -> str:
    """An `echoforge` command in this process (the CLI's own code, without paying its imports again)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"echoforge {' '.join(args[:2])}: {result.exception!r}\n{result.output[-4000:]}"
    return result.output


def test_train_register_evaluate_promote_serve_on_postgresql(pg_mlflow, tmp_path, monkeypatch):
    """The DAG's train → register → evaluate → promote commands, then `mlflow models serve`, all over HTTP:
    training and serving as subprocesses (as dvc and users run them), the rest in-process to save imports."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from support.servers import prefect_api

    project, url, pg = _project(tmp_path / "project"), pg_mlflow["url"], pg_mlflow["pg_port"]
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the in-process commands, like the subprocesses, get the URL only
    mlflow.set_tracking_uri(url)  # the process-wide setting too (conftest re-points it at the environment after)
    train = run_cli([str(BIN / "echoforge"), "train", "lvdm", "--data", "outputs/latents/toy", "--out", "outputs/lvdm",
                     "--params", "params.yaml", "--vae", "outputs/vae/vae", "--no-register"],
                    {**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, cwd=project)
    assert train.returncode == 0, train.stdout[-4000:]
    run_id = next(line.split("=", 1)[1] for line in train.stdout.splitlines() if line.startswith("MLFLOW_RUN_ID="))
    _echoforge("registry", "build-serving", "--lvdm", "outputs/lvdm/unet_ema", "--vae", "outputs/vae/vae",
               "--train-run", "outputs/lvdm", "--alias", "candidate", "--params", "params.yaml",
               "--record", "outputs/serving/echo-lvdm.json")
    version = json.loads((project / "outputs" / "serving" / "echo-lvdm.json").read_text())["version"]
    with prefect_api():  # evaluate is a Prefect flow
        _echoforge("evaluate", "run", "--model", MODEL, "--version", "candidate", "--params", "params.yaml",
                   "--out-root", "outputs", "--metrics-dir", "metrics", "--vae", "outputs/vae/vae")
    refused = _echoforge("registry", "promote", "--model", MODEL, "--version", "candidate", "--params",
                         "params.yaml", "--refusal-ok")
    # 4 samples < evaluate.assess.min_videos: the verdict is inconclusive, which the real gate never promotes
    assert "NOT PROMOTED" in refused and "toy: verdict inconclusive" in refused

    assert _sql(pg, "SELECT status FROM runs WHERE run_uuid = %s", run_id) == [("FINISHED",)]
    assert (STEPS,) in _sql(pg, "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train/loss'", run_id)
    assert _sql(pg, "SELECT run_id FROM model_versions WHERE name = %s AND version = %s", MODEL, version) == [(run_id,)]
    tags = dict(_sql(pg, "SELECT key, value FROM model_version_tags WHERE name = %s AND version = %s", MODEL, version))
    assert tags["verdict.toy"] == "inconclusive" and "min_videos" in tags["verdict_reasons.toy"]
    assert float(tags["metric.toy/fvd16_fallback_ratio"]) > 0  # evaluate's metrics, recorded on the version
    assert _sql(pg, "SELECT status FROM runs WHERE run_uuid = %s", tags["evaluation_run_id"]) == [("FINISHED",)]
    assert _aliases(pg) == {"candidate": version}  # the refusal left no champion

    # promote has no force flag: the documented way to promote anyway is a gate that does not ask for a verdict
    _echoforge("registry", "promote", "--model", MODEL, "--version", "candidate", "--params", "no-gate.yaml")
    assert _aliases(pg) == {"candidate": version, "champion": version}

    # artifacts went through the proxy: the server's folder holds them, the client's project never had them
    assert MlflowClient(url).get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    assert any(pg_mlflow["artifacts"].rglob("MLmodel"))
    assert not (project / "mlruns" / "artifacts").exists()
    _serve_champion_once(url, tmp_path)


def _aliases(pg_port: int) -> dict[str, str]:
    return {alias: str(v) for alias, v in _sql(pg_port, "SELECT alias, version FROM registered_model_aliases "
                                                        "WHERE name = %s", MODEL)}


def _serve_champion_once(url: str, tmp_path: Path) -> None:
    """`mlflow models serve -m models:/echo-lvdm@champion` resolved through the PostgreSQL-backed server."""
    port = free_port()
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH (as it is in an activated venv)
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs = Processes()
    try:
        server = procs.add(spawn([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
                                  "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], name="serve",
                                 log_path=tmp_path / "serve.log", env=env, cwd=tmp_path), grace=10)
        wait_http_ok(f"http://127.0.0.1:{port}/ping", server, timeout=180)
        body = {"dataframe_records": [{"ef": 45.0}], "params": {"num_frames": 4, "num_inference_steps": 2, "seed": 3}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            row = json.loads(response.read())["predictions"][0]
    finally:
        procs.stop_all()
    video = tmp_path / "served.mp4"
    video.write_bytes(base64.b64decode(row["video"]))
    info = probe_video(video, count=True)
    assert (info.num_frames, info.height, info.width) == (4, 112, 112) and row["seed"] == 3
