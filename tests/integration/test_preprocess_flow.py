"""The Prefect `preprocess` flow under Prefect's test harness (a real temporary Prefect server)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from echo_core.data.phantom.datasets import generate_dataset
from echo_core.data.prepare import prepare_dataset
from echo_core.utils.hashing import sha256_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flowproj")
    generate_dataset("dynamic", root / "raw" / "dynamic", num_videos=6, seed=3)
    generate_dataset("cardiacnet", root / "raw" / "cardiacnet", num_videos=8, seed=3)
    params = {
        "raw_datasets": {"dynamic": {"kind": "dynamic", "validate_kind": "dynamic",
                                     "raw": str(root / "raw" / "dynamic")}},
        "cardiacnet_raw": str(root / "raw" / "cardiacnet"),
        "datasets": {"dynamic": {"validate_kind": "dynamic", "reference_frames": 8},
                     "cardiacnet": {"validate_kind": "cardiacnet", "reference_frames": 8}},
        "prepare": {"seed": 42}, "reference": {"fps": 32.0, "seed": 42},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@dataclass(frozen=True)
class FlowRuns:
    first: dict
    second: dict
    prepared_hash_after_first: str


@pytest.fixture(scope="module")
def flow_runs(project: Path) -> FlowRuns:
    """The flow run twice on the project under a real temporary Prefect server (the re-run must reuse it all)."""
    from support.servers import prefect_api

    from pipelines.flows.preprocess import preprocess

    params, out = str(project / "params.yaml"), str(project / "outputs")
    with prefect_api():
        first = preprocess(params_path=params, out_root=out)
        prepared_hash = sha256_tree(Path(first["dynamic"]["prepared"]))
        second = preprocess(params_path=params, out_root=out)
    return FlowRuns(first, second, prepared_hash)


def test_preprocess_flow_validates_prepares_and_resumes(project: Path, flow_runs: FlowRuns):
    first, out = flow_runs.first, project / "outputs"
    assert set(first) == {"dynamic", "cardiacnet"}
    for name in first:
        assert (Path(first[name]["prepared"]) / "FileList.csv").is_file()
        refs = [p for p in Path(first[name]["reference"]).iterdir() if p.is_dir()]
        assert refs and all(len(list(r.glob("*.jpg"))) == 8 for r in refs)
        report = json.loads((out / "validation" / f"{name}-prepared" / "report.json").read_text())
        assert report["success"] is True
    assert (out / "validation" / "dynamic" / "data_docs" / "index.html").is_file()
    # the re-run reuses every video (content hashes match) and produces identical bytes
    assert flow_runs.second == first
    assert sha256_tree(Path(first["dynamic"]["prepared"])) == flow_runs.prepared_hash_after_first


def test_flow_output_equals_sequential_procedure(project: Path, flow_runs: FlowRuns, tmp_path: Path):
    """The parallel flow and the plain sequential `prepare_dataset` agree byte for byte."""
    flow_out = Path(flow_runs.first["dynamic"]["prepared"])
    seq = tmp_path / "seq"
    prepare_dataset("dynamic", project / "raw" / "dynamic", seq, workers=1)
    for name in ("FileList.csv", "VolumeTracings.csv"):
        assert (seq / name).read_bytes() == (flow_out / name).read_bytes()
    assert sha256_tree(seq / "Videos") == sha256_tree(flow_out / "Videos")
