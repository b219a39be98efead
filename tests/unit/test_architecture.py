"""House rules that keep the floors one-way (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CORE = {"mlflow", "prefect", "dvc", "great_expectations", "typer", "pipelines"}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_echo_core_never_imports_mlops_machinery():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imported_roots(p) & FORBIDDEN_IN_CORE)
        for p in (ROOT / "echo_core").rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, f"echo_core must stay pure: {offenders}"


def test_great_expectations_only_in_validation_module():
    users = [
        str(p.relative_to(ROOT))
        for folder in ("echo_core", "pipelines")
        for p in (ROOT / folder).rglob("*.py")
        if "great_expectations" in _imported_roots(p)
    ]
    assert users == ["pipelines/validation.py"]


def test_cli_help_is_fast_and_lazy():
    """`echoforge --help` must not import torch/diffusers/mlflow/GX (they cost seconds each)."""
    code = (
        "import sys, pipelines.cli as c\n"
        "heavy = [m for m in ('torch', 'diffusers', 'mlflow', 'great_expectations', 'prefect') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy imports at CLI start-up: {out.stdout.strip()}"
