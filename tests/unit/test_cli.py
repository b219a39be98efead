"""The `echoforge` entry point: groups present, usage errors exit 2, user errors exit 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipelines.settings import default_environment

ROOT = Path(__file__).resolve().parents[2]
ECHOFORGE = [sys.executable, "-m", "pipelines.cli"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ECHOFORGE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_help_lists_every_group():
    out = _run("--help")
    assert out.returncode == 0
    for group in ("data", "vae", "latents", "evaluate", "flow"):
        assert group in out.stdout


def test_usage_error_exits_2_without_traceback():
    out = _run("data", "phantom", "--kind", "nope", "--num-videos", "1", "--out", "x")
    assert out.returncode == 2
    assert "Traceback" not in out.stdout + out.stderr
    assert "nope" in out.stdout + out.stderr


def test_user_error_names_the_path_and_exits_1(tmp_path: Path):
    missing = tmp_path / "no-such-dataset"
    out = _run("data", "prepare", "--kind", "dynamic", str(missing), "--out", str(tmp_path / "out"))
    assert out.returncode == 1
    assert str(missing) in out.stderr and "fix:" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "out").exists()


def test_tool_state_defaults_stay_inside_the_project(tmp_path: Path):
    env = default_environment(tmp_path)
    for key in ("PREFECT_HOME", "DVC_SITE_CACHE_DIR"):
        assert env[key].startswith(str(tmp_path))
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert env["DO_NOT_TRACK"] == "1" and env["GX_ANALYTICS_ENABLED"] == "false"
    assert env["DVC_NO_ANALYTICS"] == "1" and env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_every_flow_runs_through_echoforge_flow_and_none_has_its_own_cli():
    out = _run("flow", "--help")
    assert out.returncode == 0
    flows = sorted(p.stem for p in (ROOT / "pipelines" / "flows").glob("*.py")
                   if "@flow(" in p.read_text(encoding="utf-8"))
    for name in flows:
        assert name.replace("_", "-") in out.stdout, f"`echoforge flow {name}` is missing"
        source = (ROOT / "pipelines" / "flows" / f"{name}.py").read_text(encoding="utf-8")
        assert "argparse" not in source and "__main__" not in source, f"pipelines/flows/{name}.py has its own CLI"
