"""compute_metrics / CLI: fallback names only without weights, exact names only with verified weights.

The published Inception/I3D TorchScript files cannot exist here (no internet), so the exact path is
exercised with small TorchScript networks that have the published call signatures, pinned by sha256
in a temporary manifest. Everything else is real (jpg trees, PIL, numpy, scipy, the CLI process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.tiny_extractors import moving_video, write_stub_weights
from typer.testing import CliRunner

from echo_core.errors import DataError, UsageError, WeightsError
from echo_core.metrics import (
    EXACT_METRIC_NAMES,
    FALLBACK_METRIC_NAMES,
    MetricsOptions,
    build_extractor,
    compute_metrics,
    result_name,
)
from echo_core.metrics.api import RESULT_NAMES
from echo_core.utils.hashing import sha256_file

RES = 16
FAST = MetricsOptions(resolution=RES, allow_fewer=True, kid_subsets=5, batch_frames=16, batch_clips=4,
                      decode_threads=1)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trees")
    for v in range(4):
        moving_video(base / "real", f"v{v:03d}", 20, phase=v * 2)
        moving_video(base / "shuffled", f"v{v:03d}", 20, phase=v * 2, shuffle=True)
    return {k: base / k for k in ("real", "shuffled")}


# ---------------------------------------------------------------------------------- naming rules


def test_fallback_extractors_can_only_produce_fallback_names():
    for role in ("frame_features", "frame_probs", "clip_features"):
        ext = build_extractor(role, exact=False)
        assert ext.exact is False and "fallback" in ext.name
        for base in RESULT_NAMES:
            assert result_name(base, ext) in FALLBACK_METRIC_NAMES
    assert not EXACT_METRIC_NAMES & FALLBACK_METRIC_NAMES


def test_fallback_run_reports_only_fallback_names_and_protocol(trees):
    names = ["fd_fallback", "fvd16_fallback", "is_fallback", "kid_fallback"]
    # offset 0 on both sides makes the two clip sets identical (SGV draws random real offsets)
    result = compute_metrics(trees["real"], trees["real"], names, FAST.model_copy(update={"real_random_offset": False}))
    reported = {k.removesuffix("_std") for k in result.values}
    assert reported == set(names)
    assert not any(k in EXACT_METRIC_NAMES for k in result.values)
    assert abs(result.values["fd_fallback"]) < 1e-6  # identical sets
    assert abs(result.values["fvd16_fallback"]) < 1e-6
    proto = result.protocol
    assert proto["exact"] is False and proto["covariance_ddof"] == 0 and proto["tf32"] is False
    assert {"numpy", "scipy", "torch", "echoforge"} <= set(proto["versions"])
    fvd = proto["metrics"]["fvd16_fallback"]
    assert (fvd["n_real"], fvd["n_fake"], fvd["frames_per_clip"], fvd["stride"]) == (4, 4, 16, 1)
    assert fvd["extractor"]["exact"] is False and len(fvd["extractor"]["sha256"]) == 64
    assert proto["metrics"]["fd_fallback"]["n_real"] == 80 and proto["metrics"]["is_fallback"]["n_fake"] == 80


def test_fvd_fallback_is_motion_sensitive(trees):
    zero = FAST.model_copy(update={"real_random_offset": False})
    shuffled = compute_metrics(trees["real"], trees["shuffled"], ["fvd16_fallback"], zero).values
    offset = compute_metrics(trees["real"], trees["real"], ["fvd16_fallback"], FAST).values
    # same frames in a scrambled order are far; the same motion seen from a shifted start is closer.
    assert shuffled["fvd16_fallback"] > offset["fvd16_fallback"] > 0


def test_protocol_exact_needs_exact_extractor_and_full_counts(weights):
    from echo_core.metrics.api import METRICS, _protocol, _Side
    from echo_core.metrics.stats import StreamingMoments

    folder, manifest = weights
    full = _Side(StreamingMoments(1008), None, 50_000, "x")
    exact = build_extractor("frame_probs", True, weights_dir=folder, manifest=manifest)
    fallback = build_extractor("frame_probs", False)
    need = {"fake": 50_000}
    assert _protocol(METRICS["is"], exact, None, full, need, "", FAST)["exact"] is True
    assert _protocol(METRICS["is"], fallback, None, full, need, "", FAST)["exact"] is False
    short = _Side(StreamingMoments(1008), None, 49_999, "x")
    assert _protocol(METRICS["is"], exact, None, short, need, "", FAST)["exact"] is False


def test_exact_name_without_weights_is_weights_error(trees, tmp_path, monkeypatch):
    monkeypatch.setenv("ECHOFORGE_METRIC_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "dnnlib"))
    monkeypatch.chdir(tmp_path)
    for name in ("fid", "fvd16", "is"):
        with pytest.raises(WeightsError, match="download https://") as err:
            compute_metrics(trees["real"], trees["real"], [name], FAST)
        assert "not found" in str(err.value)


def test_unknown_metric_and_fewer_than_protocol_are_refused(trees):
    with pytest.raises(UsageError, match="fid50k_full"):
        compute_metrics(trees["real"], trees["real"], ["fid50k_full"], FAST)
    strict = FAST.model_copy(update={"allow_fewer": False})
    with pytest.raises(DataError, match="the protocol uses 2048"):
        compute_metrics(trees["real"], trees["real"], ["fvd16_fallback"], strict)


# ------------------------------------------------------------------------------- exact weights path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return folder, write_stub_weights(folder)


def test_exact_names_with_verified_weights(trees, weights):
    folder, manifest = weights
    result = compute_metrics(trees["real"], trees["shuffled"], ["fid", "is", "fvd16"], FAST,
                             weights_dir=folder, manifest=manifest)
    assert {"fid", "is", "is_std", "fvd16"} == set(result.values)
    proto = result.protocol["metrics"]
    assert proto["fid"]["extractor"] == {"name": "inception-v3-pool3", "exact": True, "dim": 2048,
                                         "sha256": sha256_file(folder / "inception-2015-12-05.pt")}
    assert proto["fvd16"]["extractor"]["name"] == "i3d-kinetics400-logits"
    # exact extractor, but 4 videos / 80 frames instead of 2048 / 50k: not protocol-exact.
    assert proto["fid"]["counts_met"] is False and result.protocol["exact"] is False
    assert torch.backends.cudnn.allow_tf32 is True  # restored after extraction


def test_unpinned_or_mismatched_sha_is_refused(trees, weights, tmp_path):
    folder, manifest = weights
    data = json.loads(manifest.read_text())
    data["files"]["i3d"]["sha256"] = None
    (tmp_path / "unpinned.json").write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="pins no sha256") as err:
        compute_metrics(trees["real"], trees["real"], ["fvd16"], FAST, weights_dir=folder,
                        manifest=tmp_path / "unpinned.json")
    assert sha256_file(folder / "i3d_torchscript.pt") in str(err.value)
    data["files"]["i3d"]["sha256"] = "0" * 64
    (tmp_path / "wrong.json").write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="expected 0000"):
        compute_metrics(trees["real"], trees["real"], ["fvd16"], FAST, weights_dir=folder,
                        manifest=tmp_path / "wrong.json")


# ------------------------------------------------------------------------------------------ CLI


def test_cli_writes_result_json(trees, tmp_path):
    from pipelines.cli import app

    out = tmp_path / "m.json"
    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  metrics:\n    resolution: {RES}\n    kid_subsets: 5\n    decode_threads: 1\n")
    res = CliRunner().invoke(app, ["evaluate", "metrics", "--real", str(trees["real"]), "--fake",
                                   str(trees["shuffled"]), "--metrics", "fvd16_fallback,is_fallback",
                                   "--allow-fewer", "--seed", "3", "--out", str(out), "--params", str(params)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["fvd16_fallback"] > 0 and data["protocol"]["seed"] == 3
    assert "fvd16_fallback" in res.output


def test_cli_exact_metric_without_weights_exits_nonzero_without_traceback(trees, tmp_path):
    env_dir = tmp_path / "none"
    cmd = [sys.executable, "-c", "from pipelines.cli import main; main()", "evaluate", "metrics",
           "--real", str(trees["real"]), "--fake", str(trees["real"]), "--metrics", "fid",
           "--weights-dir", str(env_dir), "--allow-fewer", "--params", str(tmp_path / "none.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "ECHOFORGE_METRIC_WEIGHTS": str(env_dir),
                               "DNNLIB_CACHE_DIR": str(env_dir), "HOME": str(tmp_path)},
                          cwd=Path(__file__).parents[2])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "inception-2015-12-05.pt" in proc.stderr and "fix: download" in proc.stderr
