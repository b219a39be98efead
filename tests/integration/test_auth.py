"""#15 §5, who may do what: the servers' authentication, for real on loopback.

- MLflow's basic-auth app (`echoforge ops mlflow-server --auth`): an unauthenticated or wrong-password request
  gets 401; a client with MLFLOW_TRACKING_USERNAME / PASSWORD logs a run; the launcher refuses `--auth` without
  its own auth config (no fallback to MLflow's packaged one).
- Prefect's API auth string (PREFECT_SERVER_API_AUTH_STRING): 401 without it, the client with
  PREFECT_API_AUTH_STRING works; health probes stay open.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request

import pytest
from support import REPO_ROOT
from support.servers import Processes, start_mlflow_server, start_prefect_server

from echo_core.errors import ConfigError
from pipelines.ops.mlflow_server import MlflowServerConfig, check_auth_settings, server_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PASSWORD = "correct-horse-battery-staple"


def _status(url: str, user_password: str | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if user_password:
        request.add_header("Authorization", "Basic " + base64.b64encode(user_password.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_mlflow_launcher_refuses_auth_without_its_config(tmp_path):
    cfg = MlflowServerConfig("sqlite:///x.db", str(tmp_path), auth=True)
    assert server_command(cfg)[-2:] == ["--app-name", "basic-auth"]
    with pytest.raises(ConfigError, match="MLFLOW_AUTH_CONFIG_PATH"):
        check_auth_settings(cfg, {})
    (tmp_path / "auth.ini").write_text("[mlflow]\n")
    with pytest.raises(ConfigError, match="MLFLOW_FLASK_SERVER_SECRET_KEY"):
        check_auth_settings(cfg, {"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini")})


def test_mlflow_basic_auth_answers_401_without_credentials(tmp_path):
    from mlflow.tracking import MlflowClient

    ini = tmp_path / "basic_auth.ini"
    example = (REPO_ROOT / "infra" / "mlflow" / "basic_auth.ini.example").read_text()
    ini.write_text(example.replace("sqlite:///mlruns/basic_auth.db", f"sqlite:///{tmp_path / 'auth.db'}"))
    procs = Processes()
    try:
        _, url = start_mlflow_server(procs, tmp_path, auth=True, extra_env={
            "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret"})
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
        assert _status(search) == 401
        assert _status(search, f"admin:{PASSWORD}x") == 401
        assert _status(search, f"admin:{PASSWORD}") == 200
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD)
        try:
            client = MlflowClient(url)
            run = client.create_run(client.create_experiment("auth-test"))
            client.log_metric(run.info.run_id, "m", 1.0)
            assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
        finally:
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(key)
    finally:
        procs.stop_all()


def test_prefect_api_auth_string_answers_401_without_it(tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    procs = Processes()
    try:
        server = start_prefect_server(procs, tmp_path / "home",
                                      extra_env={"PREFECT_SERVER_API_AUTH_STRING": f"admin:{PASSWORD}"})
        flows = f"{server.api_url}/flows/filter"
        assert _status(f"{server.api_url}/health") == 200  # probes stay open
        assert _status(flows, data=b"{}") == 401
        assert _status(flows, "admin:wrong", data=b"{}") == 401
        assert _status(flows, f"admin:{PASSWORD}", data=b"{}") == 200
        with SyncPrefectClient(server.api_url, auth_string=f"admin:{PASSWORD}") as client:
            assert client.read_flows() == []
    finally:
        procs.stop_all()
