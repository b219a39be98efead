"""Repair a torn dvc.lock and .dvc/tmp/rwlock before `dvc repro` (`make repro` runs this first).

DVC rewrites dvc.lock in place after every stage (dvc/utils/serialize/_common.py opens it "w+"; the same
non-atomic write is behind the known torn `.dvc/tmp/rwlock` reports, treeverse/dvc#6097 and #7615). A machine
that dies during that write leaves a truncated lock file, and every later `dvc` command then refuses the
project ("'./dvc.lock' validation failed"). The fault campaign (benchmarks/faults.py) hit exactly this.

The repair never loses a result: the torn file is kept aside as `dvc.lock.torn-<time>`, and the lock is
restored from the last committed one (`git show HEAD:dvc.lock`) when that is valid, else removed. Either way
DVC re-checks every stage against the workspace: a stage whose outputs still match is skipped or restored
from DVC's run cache, only stale ones run again.

    python -m pipelines.ops.dvc_lock [PROJECT_ROOT]     # exit 0: valid (or repaired); prints what it did
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

LOCK = "dvc.lock"


def lock_problem(text: str) -> str | None:
    """Why `text` is not a dvc.lock DVC accepts (DVC's own schema), or None."""
    import yaml
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA

    try:
        COMPILED_LOCKFILE_SCHEMA(yaml.safe_load(text))
    except Exception as exc:  # yaml.YAMLError or voluptuous.Invalid: either means DVC refuses the file
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def committed_lock(root: Path) -> str | None:
    done = subprocess.run(["git", "show", f"HEAD:{LOCK}"], cwd=root, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 and lock_problem(done.stdout) is None else None


def repair_lock(root: Path) -> str | None:
    """Check ROOT/dvc.lock; if torn, set it aside and restore the committed one (or none). What was done."""
    lock = root / LOCK
    if not lock.is_file():
        return None
    problem = lock_problem(lock.read_text(errors="replace"))
    if problem is None:
        return None
    torn = lock.with_name(f"{LOCK}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
    lock.rename(torn)
    committed = committed_lock(root)
    if committed is not None:
        lock.write_text(committed)
        restored = "restored the committed dvc.lock (git HEAD)"
    else:
        restored = "no valid committed dvc.lock: removed it"
    return (f"dvc.lock was torn ({problem}), most likely by a process killed while DVC rewrote it; kept it as "
            f"{torn.name} and {restored}. `dvc repro` re-checks every stage against the workspace: outputs "
            "that still match are kept or restored from DVC's run cache, only stale stages run again.")


def repair_rwlock(root: Path) -> str | None:
    """DVC's `.dvc/tmp/rwlock` (the stages' in-flight readers and writers, JSON) is written in place too; a kill
    mid-write leaves it unreadable and every `dvc repro` then fails ("JSON structure is corrupted", as in
    treeverse/dvc#7615). Found by the fault campaign. An unreadable one records nothing usable: set it aside."""
    import json

    rwlock = root / ".dvc" / "tmp" / "rwlock"
    try:
        json.loads(rwlock.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        torn = rwlock.with_name(f"rwlock.torn-{time.strftime('%Y%m%dT%H%M%S')}")
        rwlock.rename(torn)
        return f".dvc/tmp/rwlock was torn ({exc}); kept it as {torn.name}, DVC writes a new one"
    return None


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    for note in (repair_lock(root), repair_rwlock(root)):
        if note:
            print(f"WARNING: {note}", file=sys.stderr)


if __name__ == "__main__":
    main()
