"""Preparation throughput (videos/s): the parallel Prefect flow vs a sequential single-process procedure.

Same phantom data, same process, same machine. Work measured per video: decode (NIfTI / AVI), resample,
resize, normalise, encode (MP4 / JPEG). Three procedures:
  sequential      echo_core.prepare_dataset / build_reference with workers=1 (the reference procedure)
  threads         the same jobs on a 2-thread pool, no orchestration
  prefect_flow    pipelines.flows.preprocess fan-out (Prefect tasks of up to 8 videos, 2-thread task runner)
Each procedure starts from an empty output folder (no resume reuse). Writes benchmarks/results/prepare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_data(work: Path, videos: int) -> dict[str, Path]:
    from echo_core.data.phantom.datasets import generate_dataset

    raw = {"dynamic": work / "raw" / "dynamic", "cardiacnet": work / "raw" / "cardiacnet"}
    generate_dataset("dynamic", raw["dynamic"], num_videos=videos, seed=1)
    generate_dataset("cardiacnet", raw["cardiacnet"], num_videos=videos, seed=1)
    return raw


def sequential_or_threads(raw: dict[str, Path], out: Path, workers: int) -> int:
    from echo_core.data.prepare import prepare_dataset
    from echo_core.data.reference import build_reference

    n = 0
    for name, src in raw.items():
        report = prepare_dataset(name, src, out / "prepared" / name, workers=workers)
        build_reference(report.dst, out / "reference" / name, frames=16, workers=workers)
        n += report.count
    return n


def prefect_flow(raw: dict[str, Path], out: Path) -> None:
    from pipelines.flows.preprocess import preprocess

    params = {
        "raw_datasets": {"dynamic": {"kind": "dynamic", "validate_kind": "dynamic", "raw": str(raw["dynamic"])}},
        "cardiacnet_raw": str(raw["cardiacnet"]),
        "datasets": {"dynamic": {"validate_kind": "dynamic", "reference_frames": 16},
                     "cardiacnet": {"validate_kind": "cardiacnet", "reference_frames": 16}},
        "prepare": {"seed": 42}, "reference": {"seed": 42},
    }
    path = out / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params))
    preprocess(params_path=str(path), out_root=str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16, help="videos per dataset (dynamic + cardiacnet)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare.json"))
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=ROOT / "benchmarks"))
    try:
        raw = make_data(work, args.videos)
        n = 2 * args.videos
        seq = _timed(lambda: sequential_or_threads(raw, work / "seq", 1))
        thr = _timed(lambda: sequential_or_threads(raw, work / "thr", 2))
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            prefect_flow(raw, work / "warm")  # first flow run pays server/DB start-up; not measured
            flow = _timed(lambda: prefect_flow(raw, work / "flow"))
        # the flow also runs 3 GX validations (raw dynamic, both prepared sets); time them separately
        from pipelines.validation import validate_dataset

        gx = _timed(lambda: [validate_dataset("dynamic", raw["dynamic"], docs_dir=work / "d1",
                                              report_path=work / "r1.json"),
                             validate_dataset("dynamic", work / "seq" / "prepared" / "dynamic", prepared=True,
                                              docs_dir=work / "d2", report_path=work / "r2.json"),
                             validate_dataset("cardiacnet", work / "seq" / "prepared" / "cardiacnet",
                                              prepared=True, docs_dir=work / "d3", report_path=work / "r3.json")])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "prepare",
        "what": "prepare (dynamic copy+probe, cardiacnet NIfTI->MP4) + 16-frame reference set, per video",
        "videos": n,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1m_at_end": os.getloadavg()[0]},
        "seconds": {"sequential": seq, "threads_2": thr, "prefect_flow_2": flow, "gx_validation_in_flow": gx},
        "videos_per_s": {"sequential": n / seq, "threads_2": n / thr, "prefect_flow_2": n / flow,
                         "prefect_flow_2_excluding_gx": n / max(1e-9, flow - gx)},
        "ratio_vs_sequential": {"threads_2": seq / thr, "prefect_flow_2": seq / flow,
                                "prefect_flow_2_excluding_gx": seq / max(1e-9, flow - gx)},
        "method": "wall time, one run each, fresh output folders, same process; Prefect test-harness server "
                  "warmed by one untimed flow run; the flow additionally validates with GX (timed separately)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
