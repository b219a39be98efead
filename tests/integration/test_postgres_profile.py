"""The production profile's backend for real: a throwaway PostgreSQL cluster on 127.0.0.1, and
`echoforge ops mlflow-server --env-file …` on it (artifacts in a local folder; S3 is not available here).

Skipped, with the exact reason, when the PostgreSQL server binaries (Debian: `apt-get install postgresql`)
or the `psycopg2` driver (`pip install psycopg2-binary`) are missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from support.servers import BIN, Processes

from pipelines.ops.processes import free_port, spawn, wait_http_ok

pytestmark = [pytest.mark.slow, pytest.mark.integration]


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


def test_mlflow_server_on_postgresql(tmp_path):
    bin_dir = _pg_bin()
    _require_driver()
    with postgres_cluster(bin_dir) as (port, _):
        psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc"]
        subprocess.run([*psql, "CREATE DATABASE mlflow"], check=True, capture_output=True, timeout=60)
        env_file, mlflow_port = tmp_path / "production.env", free_port()
        env_file.write_text(f"MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow\n"
                            f"MLFLOW_ARTIFACTS_DESTINATION={tmp_path / 'artifacts'}\n"
                            f"MLFLOW_PORT={mlflow_port}\nMLFLOW_WORKERS=1\n")
        url = f"http://127.0.0.1:{mlflow_port}"
        procs = Processes()
        try:
            server = procs.add(spawn([str(BIN / "echoforge"), "ops", "mlflow-server", "--env-file", str(env_file)],
                                     name="mlflow-server", log_path=tmp_path / "server.log", cwd=tmp_path), grace=5)
            wait_http_ok(f"{url}/health", server, timeout=180)
            run_id = _log_and_register(url, tmp_path)
        finally:
            procs.stop_all()
        rows = subprocess.run([*psql, f"SELECT status FROM runs WHERE run_uuid = '{run_id}'", "mlflow"],
                              check=True, capture_output=True, text=True, timeout=60).stdout.split()
        aliases = subprocess.run([*psql, "SELECT alias FROM registered_model_aliases", "mlflow"], check=True,
                                 capture_output=True, text=True, timeout=60).stdout.split()
    assert rows == ["FINISHED"] and aliases == ["candidate"]  # the runs and the registry live in PostgreSQL
    assert any((tmp_path / "artifacts").rglob("note.txt"))  # proxied artifacts reached the store


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
