"""After a successful `dvc repro` (infra/scripts/repro.sh runs this): clear what killed runs left behind where
DVC did not run our code again.

DVC restores a stage's outputs from its run cache without running the stage's command when deps, params and
command match an earlier run. A stage killed earlier then never gets to clean up after itself:
- its `<out>.partial/` staging folder (echo_core.data.jobs) stays next to the complete output;
- the temp files and folders of its atomic writers (echo_core.utils.atomic: `.NAME.XXXX.tmp*`) stay inside or
  next to the output, because DVC's checkout of a directory output leaves files it does not track;
- its MLflow run stays RUNNING, because only a new run of the same stage closes it
  (pipelines.tracking.close_orphaned_runs).
All are safe to clear once `dvc repro` succeeded: every output is then complete and recorded in dvc.lock, so a
staging folder next to it is stale, and a RUNNING run whose process is gone will never be finished. Temp entries
are cleared only when older than the repro (`--before`, seconds since the epoch), so a writer that started
during it (another user's flow, say) keeps its files.

    python -m pipelines.ops.repro_sweep [PROJECT_ROOT] [--before EPOCH_SECONDS]
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import yaml

# The names our writers give unfinished work: atomic files and folders, checkpoint staging, the evaluator's
# scratch folders, and job staging folders.
TEMP_NAME = re.compile(r"^\.(.+\.tmp.*|checkpoint-\d+\.tmp|conditioning-.*|metric-shards-.*|halves-.*|"
                       r"reference-.*)$|\.partial$")


def recorded_outputs(root: Path, stage: str | None = None) -> list[Path]:
    """The outputs dvc.lock records (of one stage, or of all)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return []
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    specs = [stages.get(stage, {})] if stage else list(stages.values())
    return sorted({root / o["path"] for spec in specs for o in spec.get("outs", [])})


def temp_leftovers(outputs: list[Path]) -> list[Path]:
    """Entries named like unfinished work inside the outputs (at any depth) and beside them."""
    found = set()
    for out in outputs:
        beside = out.parent.glob("*") if out.parent.is_dir() else []
        inside = out.rglob("*") if out.is_dir() else []
        found.update(p for p in [*beside, *inside] if TEMP_NAME.search(p.name))
    return sorted(found)


def stale_staging(root: Path) -> list[Path]:
    """`<out>.partial` folders next to outputs that dvc.lock records (and that exist)."""
    return sorted(p for out in recorded_outputs(root)
                  if out.exists() and (p := out.with_name(f"{out.name}.partial")).is_dir())


def stale_temp(root: Path, before: float) -> list[Path]:
    """Atomic writers' temp entries at recorded outputs that exist, last touched before `before`."""
    outputs = [out for out in recorded_outputs(root) if out.exists()]
    return [p for p in temp_leftovers(outputs)
            if not p.name.endswith(".partial") and p.lstat().st_mtime < before]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _arguments(argv: list[str]) -> tuple[Path, float | None]:
    """[ROOT] [--before EPOCH]: an internal step of repro.sh, so plain argv (the typer CLI is the users' one)."""
    before = None
    if "--before" in argv:
        at = argv.index("--before")
        try:
            before, argv = float(argv[at + 1]), argv[:at] + argv[at + 2:]
        except (IndexError, ValueError):
            raise SystemExit("repro_sweep: --before needs the repro's start in seconds since the epoch "
                             "(infra/scripts/repro.sh passes `date +%s`)") from None
    return Path(argv[0] if argv else ".").resolve(), before


def main(argv: list[str] | None = None) -> None:
    root, before = _arguments(sys.argv[1:] if argv is None else argv)
    for folder in stale_staging(root):
        shutil.rmtree(folder)
        print(f"removed the stale staging folder {folder.relative_to(root)} (its output is complete)",
              file=sys.stderr)
    for path in stale_temp(root, before) if before is not None else []:
        _remove(path)
        print(f"removed {path.relative_to(root)}, left by a killed writer (its output is complete)",
              file=sys.stderr)
    _close_orphaned_runs()


def _close_orphaned_runs() -> None:
    # imported outside the try: a broken install must fail loudly, not pass for an unreachable server (a stale
    # tracking.py once left an orphaned run RUNNING behind this very warning)
    from pipelines.tracking import close_orphaned_runs_everywhere

    try:
        closed = close_orphaned_runs_everywhere()
    except Exception as exc:  # the tracking server unreachable: the runs stay for the next sweep
        print(f"WARNING: could not check MLflow for orphaned runs ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    if closed:
        print(f"ended {len(closed)} MLflow run(s) left RUNNING by killed stages as KILLED: {', '.join(closed)}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
