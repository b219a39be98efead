"""Per-video fan-out of the `preprocess` flow on a real dask.distributed LocalCluster (2 worker processes),
through prefect-dask's DaskTaskRunner at the cluster's scheduler address: the prepared dataset and the
reference set are byte-identical to the plain sequential procedure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support.servers import dask_behind_prefect

from echo_core.data.phantom.datasets import generate_dataset
from echo_core.data.prepare import prepare_dataset
from echo_core.data.reference import ReferenceConfig, build_reference
from echo_core.utils.hashing import sha256_tree
from pipelines.ops.scaleout import runner_settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FRAMES = 8


@pytest.fixture
def project(tmp_path: Path) -> Path:
    generate_dataset("dynamic", tmp_path / "raw" / "dynamic", num_videos=4, seed=5)
    params = {
        "raw_datasets": {"dynamic": {"kind": "dynamic", "validate_kind": "dynamic",
                                     "raw": str(tmp_path / "raw" / "dynamic")}},
        "cardiacnet_raw": str(tmp_path / "raw" / "cardiacnet"),
        "datasets": {"dynamic": {"validate_kind": "dynamic", "reference_frames": FRAMES}},
        "prepare": {"seed": 42}, "reference": {"fps": 32.0, "seed": 42},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_dask_fanout_matches_the_sequential_path(project: Path, monkeypatch):
    from pipelines.flows.preprocess import preprocess

    with dask_behind_prefect(monkeypatch) as dask:
        # the address a deployment passes in ECHOFORGE_DASK_ADDRESS selects the same runner
        assert runner_settings({"ECHOFORGE_DASK_ADDRESS": dask.address}) == ("dask", 2, dask.address)
        done = preprocess.with_options(task_runner=dask.runner)(params_path=str(project / "params.yaml"),
                                                                 out_root=str(project / "outputs"))
    workers = dask.workers()

    assert len(workers) == 2  # both worker processes ran per-video tasks
    prepared, reference = Path(done["dynamic"]["prepared"]), Path(done["dynamic"]["reference"])
    seq = project / "sequential"
    prepare_dataset("dynamic", project / "raw" / "dynamic", seq / "prepared", workers=1)
    cfg = ReferenceConfig(fps=32.0, seed=42, frames=FRAMES)
    build_reference(seq / "prepared", seq / "reference", frames=cfg.frames, fps=cfg.fps, max_videos=cfg.max_videos,
                    seed=cfg.seed, size=cfg.size, workers=1)
    for name in ("FileList.csv", "VolumeTracings.csv"):
        assert (prepared / name).read_bytes() == (seq / "prepared" / name).read_bytes()
    assert sha256_tree(prepared / "Videos") == sha256_tree(seq / "prepared" / "Videos")
    clips = sorted(p.name for p in reference.iterdir() if p.is_dir())
    assert clips and clips == sorted(p.name for p in (seq / "reference").iterdir() if p.is_dir())
    for clip in clips:
        assert sha256_tree(reference / clip) == sha256_tree(seq / "reference" / clip)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ("thread", 2, None)),
    ({"ECHOFORGE_TASK_RUNNER": "process", "ECHOFORGE_TASK_WORKERS": "3"}, ("process", 3, None)),
    ({"ECHOFORGE_TASK_RUNNER": "dask", "ECHOFORGE_DASK_ADDRESS": "tcp://10.0.0.5:8786"},
     ("dask", 2, "tcp://10.0.0.5:8786")),
])
def test_runner_settings_from_environment(env, expected):
    assert runner_settings(env) == expected


@pytest.mark.parametrize("env", [{"ECHOFORGE_TASK_RUNNER": "ray"}, {"ECHOFORGE_TASK_WORKERS": "0"},
                                 {"ECHOFORGE_TASK_RUNNER": "thread", "ECHOFORGE_DASK_ADDRESS": "tcp://x:1"}])
def test_runner_settings_reject_bad_values_naming_the_variable(env):
    from echo_core.errors import ConfigError

    with pytest.raises(ConfigError, match="ECHOFORGE_"):
        runner_settings(env)
