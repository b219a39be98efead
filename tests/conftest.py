"""Test-wide environment: all tool state goes into a per-session temp project folder, analytics off."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from support import REPO_ROOT

import pipelines  # noqa: F401  # first: caps numpy's SIMD dispatch before numpy is imported (pipelines/__init__.py)

_STATE = Path(tempfile.mkdtemp(prefix="echoforge-test-state-"))
for key, value in {
    "PREFECT_HOME": str(_STATE / "prefect"),
    "DVC_SITE_CACHE_DIR": str(_STATE / "dvc-site-cache"),
    "MLFLOW_TRACKING_URI": f"sqlite:///{_STATE / 'mlflow.db'}",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # No MLflow job runner beside each test server: a second full MLflow import per server start (~8 s of CPU)
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}.items():
    os.environ[key] = value

@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def one_torch_thread():
    """2 shared cores: one intra-op thread avoids oversubscription (small convs run ~10x slower otherwise)."""
    from support.threads import one_torch_thread as one_thread

    with one_thread():
        yield


@pytest.fixture(autouse=True)
def mlflow_follows_the_environment():
    """Code under test calls `mlflow.set_tracking_uri`, a process-wide setting that outlives a test's
    monkeypatched MLFLOW_TRACKING_URI; re-point it at the environment before and after every test so a
    later test's `MlflowClient()` never reads an earlier test's store (an order-dependent empty history)."""
    _follow_environment()
    yield
    _follow_environment()


def _follow_environment() -> None:
    import sys

    if "mlflow" in sys.modules:  # a test that never imported MLflow does not pay for importing it
        sys.modules["mlflow"].set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory) -> Path:
    """A seeded tiny diffusers VAE (112 px gray → 4×14×14) saved as a folder, scaling factor 0.5."""
    import torch

    from echo_core.models.vae import build_vae

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    build_vae("tiny", scaling_factor=0.5).save_pretrained(folder)
    return folder


def pytest_sessionfinish(session, exitstatus):
    """Stop the per-process shared servers (support.servers.shared_prefect_server), started on first use."""
    import sys

    if "support.servers" in sys.modules:
        sys.modules["support.servers"].stop_shared_servers()
