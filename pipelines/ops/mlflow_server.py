"""Launcher for the MLflow tracking server: sqlite under `mlruns/`, proxied artifacts, loopback by default.

    echoforge ops mlflow-server                       # http://127.0.0.1:5000, sqlite:///mlruns/mlflow.db
    echoforge ops mlflow-server --env-file infra/mlflow/production.env   # PostgreSQL + S3 (infra/mlflow/README.md)

The default store is the very database the embedded mode uses (`sqlite:///mlruns/mlflow.db`), so runs
logged before the server existed are served by it. `--serve-artifacts` makes clients upload artifacts
through the server (`mlflow-artifacts:/` URIs): they need no access to the artifact store themselves.
Settings, in order of precedence: command-line option, `--env-file`, environment, default.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from echo_core.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000


@dataclass(frozen=True)
class MlflowServerConfig:
    backend_store_uri: str
    artifacts_destination: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int | None = None
    auth: bool = False  # MLflow's basic-auth app (`--app-name basic-auth`): users, passwords, permissions

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def read_env_file(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines (`#` comments, blank lines and an optional `export ` prefix allowed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"env file not found: {path}", fix="copy infra/mlflow/production.env.example and edit it")
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{path} line {number}: expected KEY=VALUE, got {line!r}")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def resolve_config(root: Path, env: Mapping[str, str], *, host: str | None = None, port: int | None = None,
                   backend_store_uri: str | None = None, artifacts_destination: str | None = None,
                   workers: int | None = None, auth: bool = False) -> MlflowServerConfig:
    """Options win over `env` (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, ...), then defaults."""
    mlruns = root / "mlruns"
    return MlflowServerConfig(
        backend_store_uri=backend_store_uri or env.get("MLFLOW_BACKEND_STORE_URI")
        or f"sqlite:///{mlruns / 'mlflow.db'}",
        artifacts_destination=artifacts_destination or env.get("MLFLOW_ARTIFACTS_DESTINATION")
        or str(mlruns / "artifacts"),
        host=host or env.get("MLFLOW_HOST") or DEFAULT_HOST,
        port=int(port or env.get("MLFLOW_PORT") or DEFAULT_PORT),
        workers=workers or (int(env["MLFLOW_WORKERS"]) if env.get("MLFLOW_WORKERS") else None),
        auth=auth or env.get("MLFLOW_AUTH", "").lower() in ("basic", "basic-auth", "1", "true"),
    )


def server_command(cfg: MlflowServerConfig, mlflow_exe: str | None = None) -> list[str]:
    """The `mlflow server ...` argv for `cfg` (the executable next to this interpreter by default)."""
    exe = mlflow_exe or str(Path(sys.executable).with_name("mlflow"))
    cmd = [exe, "server", "--backend-store-uri", cfg.backend_store_uri, "--serve-artifacts",
           "--artifacts-destination", cfg.artifacts_destination, "--host", cfg.host, "--port", str(cfg.port)]
    if cfg.workers:
        cmd += ["--workers", str(cfg.workers)]
    if cfg.auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def check_auth_settings(cfg: MlflowServerConfig, env: Mapping[str, str]) -> None:
    """Basic auth needs its own config (users database, admin account): refuse to start without one rather
    than fall back to MLflow's packaged defaults (a sqlite file in the working directory)."""
    path = env.get("MLFLOW_AUTH_CONFIG_PATH")
    if cfg.auth and not (path and Path(path).is_file()):
        raise ConfigError(f"MLflow basic auth needs MLFLOW_AUTH_CONFIG_PATH (got {path!r})",
                          fix="copy infra/mlflow/basic_auth.ini.example, set its database_uri and admin_username, "
                              "export MLFLOW_AUTH_CONFIG_PATH=<that file> and MLFLOW_AUTH_ADMIN_PASSWORD")
    if cfg.auth and not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        raise ConfigError("MLflow basic auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (its CSRF protection)",
                          fix="export MLFLOW_FLASK_SERVER_SECRET_KEY=<a long random string>, the same for every "
                              "server process")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare_local_store(cfg: MlflowServerConfig) -> None:
    """Create the sqlite folder and the local artifact folder (remote stores need nothing)."""
    if cfg.backend_store_uri.startswith("sqlite:///"):
        Path(cfg.backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in cfg.artifacts_destination:
        Path(cfg.artifacts_destination).mkdir(parents=True, exist_ok=True)


def exec_server(cfg: MlflowServerConfig, env: Mapping[str, str]) -> None:
    """Replace this process by the server, so signals (Ctrl-C, SIGTERM from a supervisor) reach it directly."""
    check_auth_settings(cfg, env)
    prepare_local_store(cfg)
    cmd = server_command(cfg)
    # The platform runs no MLflow server jobs (GenAI job runner): do not start a second MLflow process for them.
    os.execve(cmd[0], cmd, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **env})
