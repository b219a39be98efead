"""`make repro`'s sweep clears what a killed writer left inside or beside an output DVC restored from its run
cache, and nothing else: not the output's own files, not a writer's temp files newer than the repro."""

from __future__ import annotations

import os

import pytest
import yaml

from pipelines.ops.repro_sweep import main, stale_temp

BEFORE = 1_000_000.0  # the repro's start, as repro.sh passes it


def _project(tmp_path):
    lock = {"schema": "2.0", "stages": {"vae_train": {"cmd": "x", "outs": [{"path": "outputs/vae", "md5": "1.dir"}]},
                                        "gone": {"cmd": "y", "outs": [{"path": "outputs/absent", "md5": "2"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    model = tmp_path / "outputs" / "vae" / "vae"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    return tmp_path / "outputs"


def _touch(path, mtime, folder=False):
    path.mkdir(parents=True) if folder else path.write_text("half")
    os.utime(path, (mtime, mtime))
    return path


def test_old_temp_entries_at_recorded_outputs_go_and_everything_else_stays(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    outputs = _project(tmp_path)
    killed_dir = _touch(outputs / "vae" / ".vae.af2zwccc.tmpdir", BEFORE - 60, folder=True)
    killed_file = _touch(outputs / "vae" / "vae" / ".metrics.k2j1.tmp.json", BEFORE - 60)
    beside = _touch(outputs / ".vae.q1.tmpdir", BEFORE - 60, folder=True)
    live = _touch(outputs / "vae" / ".vae.live.tmpdir", BEFORE + 5, folder=True)  # a writer started during it
    not_ours = _touch(outputs / "vae" / ".hidden-settings", BEFORE - 60)

    assert stale_temp(tmp_path, BEFORE) == sorted([killed_dir, killed_file, beside])
    main([str(tmp_path), "--before", str(BEFORE)])

    assert not killed_dir.exists() and not killed_file.exists() and not beside.exists()
    assert live.exists() and not_ours.exists()
    assert (outputs / "vae" / "vae" / "config.json").read_text() == "{}"


def test_without_before_no_temp_entry_is_touched(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    outputs = _project(tmp_path)
    killed = _touch(outputs / "vae" / ".vae.af2zwccc.tmpdir", BEFORE - 60, folder=True)
    main([str(tmp_path)])
    assert killed.exists()


def test_a_malformed_before_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--before needs the repro's start"):
        main([str(tmp_path), "--before", "yesterday"])
