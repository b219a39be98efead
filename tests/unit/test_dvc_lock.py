"""A dvc.lock torn mid-write (DVC rewrites it in place) is set aside and restored from git, never lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipelines.ops.dvc_lock import lock_problem, repair_lock, repair_rwlock

ROOT = Path(__file__).resolve().parents[2]


def _repo(tmp_path: Path, commit: bool) -> Path:
    lock = (ROOT / "dvc.lock").read_text()
    (tmp_path / "dvc.lock").write_text(lock)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    if commit:
        subprocess.run(["git", "add", "dvc.lock"], cwd=tmp_path, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], cwd=tmp_path,
                       check=True)
    return tmp_path


def _cut(text: str) -> str:
    """The write cut off right after a stage's `cmd:` key, as the campaign's SIGKILL left it (a cut elsewhere
    can leave valid YAML of fewer stages, which DVC accepts and re-checks)."""
    return text[: text.rindex("    cmd:") + len("    cmd:")] + "\n"


def _tear(root: Path) -> str:
    text = (root / "dvc.lock").read_text()
    torn = _cut(text)
    (root / "dvc.lock").write_text(torn)
    return torn


def test_the_projects_lock_is_valid_and_a_torn_one_is_not():
    text = (ROOT / "dvc.lock").read_text()
    assert lock_problem(text) is None
    assert lock_problem(_cut(text)) is not None
    assert lock_problem("schema: '2.0'\nstages:\n  train:\n    cmd:\n") is not None


def test_a_valid_lock_is_left_alone(tmp_path):
    root = _repo(tmp_path, commit=True)
    before = (root / "dvc.lock").read_bytes()
    assert repair_lock(root) is None
    assert (root / "dvc.lock").read_bytes() == before


def test_a_torn_lock_is_kept_aside_and_the_committed_one_restored(tmp_path):
    root = _repo(tmp_path, commit=True)
    committed, torn = (root / "dvc.lock").read_text(), _tear(root)
    note = repair_lock(root)
    assert note and "restored the committed dvc.lock" in note
    assert (root / "dvc.lock").read_text() == committed
    [kept] = root.glob("dvc.lock.torn-*")
    assert kept.read_text() == torn


def test_without_a_committed_lock_the_torn_one_is_only_set_aside(tmp_path):
    root = _repo(tmp_path, commit=False)
    torn = _tear(root)
    assert "removed it" in repair_lock(root)
    assert not (root / "dvc.lock").exists()
    assert next(root.glob("dvc.lock.torn-*")).read_text() == torn


def test_a_torn_rwlock_is_set_aside_and_a_readable_one_kept(tmp_path):
    rwlock = tmp_path / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True)
    assert repair_rwlock(tmp_path) is None
    rwlock.write_text('{"read": {}, "write": {}}')
    assert repair_rwlock(tmp_path) is None and rwlock.is_file()
    rwlock.write_text("")  # truncated by a kill mid-write
    assert "torn" in repair_rwlock(tmp_path)
    assert not rwlock.exists() and next(rwlock.parent.glob("rwlock.torn-*")).read_text() == ""
