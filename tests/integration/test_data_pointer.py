"""The committed `data.dvc` names exactly the bytes a clean machine regenerates (#15 §2).

A fresh clone has no DVC cache, so `make demo` regenerates the phantom default from `params.yaml: phantom`
and `dvc add`s it. If the generator or those params change and `data.dvc` is not re-committed, a fresh clone
silently trains on other data than its pointer names (and two clones' `data_dvc_hash` tags disagree). This
test regenerates the default in an empty folder with real DVC and compares the hashes: it fails on a stale
pointer and says how to fix it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(cwd / ".dvc-site-cache")}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def _pointer(path: Path) -> dict:
    out = yaml.safe_load(path.read_text())["outs"][0]
    return {key: out[key] for key in ("md5", "size", "nfiles")}


def test_the_committed_pointer_matches_a_clean_regeneration(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], tmp_path)
    _run([str(BIN / "echoforge"), "data", "phantom-all", "--out", "data", "--params", "params.yaml"], tmp_path)
    _run([str(BIN / "dvc"), "add", "-q", "--no-commit", "data"], tmp_path)  # the hash only, no cache copy
    assert _pointer(tmp_path / "data.dvc") == _pointer(ROOT / "data.dvc"), (
        "data.dvc is stale: the phantom default regenerated from params.yaml has other bytes. Run "
        "`rm -rf data && make data` and commit the new data.dvc (and `dvc push` it)")
