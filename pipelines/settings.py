"""Project-local state and analytics-off defaults, applied before Prefect/MLflow/DVC/GX are imported.

Nothing is written to the home folder or a system temp folder: PREFECT_HOME, DVC's site cache and the
MLflow store all live inside the project. Values already set in the environment win.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The folder holding params.yaml (searched upwards from the CWD), else the CWD."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
            return folder
    return here


def default_environment(root: Path) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(root / ".prefect"),
        "DVC_SITE_CACHE_DIR": str(root / ".dvc" / "site-cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def apply_defaults(root: Path | None = None) -> Path:
    root = root or project_root()
    for key, value in default_environment(root).items():
        os.environ.setdefault(key, value)
    return root
