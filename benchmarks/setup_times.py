"""The README's two set-up commands timed from a fresh clone, as a new user runs them (#14 §4).

    python benchmarks/setup_times.py                 # clone HEAD, time `make demo`, then `make test`
    python benchmarks/setup_times.py --skip-demo     # only `make test` (keeps the last demo record)

Each command runs in the clone in sequence (never side by side: they would share the 2 cores). The record per
command: wall seconds, exit code, the commit, the date, and the machine's load before and after. After the
demo it also records whether `data.dvc` changed (a fresh clone must regenerate the committed bytes). Results go
to `benchmarks/results/setup_times.json` (top level `demo_s`, `test_s`, `machine`); a skipped command keeps
its previous record, which carries its own commit and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "setup_times.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def timed_make(clone: Path, target: str, log: Path) -> dict:
    """`make <target>` in the clone (output to `log`) → its record."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(["make", target], cwd=clone, stdout=out, stderr=subprocess.STDOUT).returncode
    record = {"s": round(time.monotonic() - start, 1), "rc": rc, "log": str(log),
              "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    print(f"make {target}: rc {rc} in {record['s']:.0f} s (log {log})", flush=True)
    return record


def git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=clone, capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=str(ROOT), help="repository to clone (default: this checkout's HEAD)")
    parser.add_argument("--workdir", default=None, help="where to clone (default: a new temp folder)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-test", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    clone = Path(args.workdir or tempfile.mkdtemp(prefix="echoforge-setup-")) / "clone"
    subprocess.run(["git", "clone", "-q", args.repo, str(clone)], check=True)
    stamp = {"commit": git(clone, "rev-parse", "--short", "HEAD"),
             "date": datetime.now(UTC).isoformat(timespec="seconds")}
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    if not args.skip_demo:
        result["demo"] = {**stamp, **timed_make(clone, "demo", clone.parent / "demo.log"),
                          "data_dvc_changed": bool(git(clone, "status", "--porcelain", "data.dvc"))}
    if not args.skip_test:
        result["test"] = {**stamp, **timed_make(clone, "test", clone.parent / "test.log")}
    result.update(demo_s=result.get("demo", {}).get("s"), test_s=result.get("test", {}).get("s"), machine=machine(),
                  note="wall seconds from a fresh clone, install included; each command alone on the machine")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    sys.exit(max(r.get("rc", 0) for r in (result.get("demo", {}), result.get("test", {}))))


if __name__ == "__main__":
    main()
