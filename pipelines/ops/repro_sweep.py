"""After a successful `dvc repro` (infra/scripts/repro.sh runs this): clear what killed runs left behind where
DVC did not run our code again.

DVC restores a stage's outputs from its run cache without running the stage's command when deps, params and
command match an earlier run. A stage killed earlier then never gets to clean up after itself:
- its `<out>.partial/` staging folder (echo_core.data.jobs) stays next to the complete output;
- its MLflow run stays RUNNING, because only a new run of the same stage closes it
  (pipelines.tracking.close_orphaned_runs).
Both are safe to clear once `dvc repro` succeeded: every output is then complete and recorded in dvc.lock, so
a staging folder next to it is stale, and a RUNNING run whose process is gone will never be finished.

    python -m pipelines.ops.repro_sweep [PROJECT_ROOT]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml


def stale_staging(root: Path) -> list[Path]:
    """`<out>.partial` folders next to outputs that dvc.lock records (and that exist)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return []
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    outs = {root / o["path"] for spec in stages.values() for o in spec.get("outs", [])}
    return sorted(p for out in outs if out.exists() and (p := out.with_name(f"{out.name}.partial")).is_dir())


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    for folder in stale_staging(root):
        shutil.rmtree(folder)
        print(f"removed the stale staging folder {folder.relative_to(root)} (its output is complete)",
              file=sys.stderr)
    try:
        from pipelines.tracking import close_orphaned_runs_everywhere

        closed = close_orphaned_runs_everywhere()
    except Exception as exc:  # the tracking server unreachable: the runs stay for the next sweep
        print(f"WARNING: could not check MLflow for orphaned runs ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    if closed:
        print(f"ended {len(closed)} MLflow run(s) left RUNNING by killed stages as KILLED: {', '.join(closed)}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
