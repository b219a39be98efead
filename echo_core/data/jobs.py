"""The staging engine of every dataset-writing step: plan -> one job per video -> finalize.

    plan = <planner>(src, dst, ...)                          # pure, cheap: the jobs + what finalize needs
    staging = open_staging(plan.dst)                         # once, before the fan-out
    results = [run_job(job, staging) for job in plan.jobs]   # one video each; parallel-safe
    report = finalize(plan, results)                         # FileList, side files, manifest; swap into dst

`run_jobs` runs the middle step sequentially, on threads or on processes. The planners (echonet.py, cardiacnet.py,
reference.py, export.py) only decide what to do; this module knows no dataset. Every output folder gets the
same `manifest.json` schema (`manifest_of`).

Crash safety: all work goes to `<dst>.partial/` next to `dst`. Each finished job leaves a record with the
sha256 of its source and of its output, so a re-run after a crash (or kill -9) redoes only the jobs whose
record is missing or whose source content changed. `dst` appears only when everything succeeded (two
renames); on any error the old `dst` is untouched and no new one exists. Sources are only ever read.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from echo_core.data.filelist import read_filelist, resolve_video, strip_extension, write_filelist
from echo_core.errors import DataError, EchoForgeError, UsageError
from echo_core.utils.atomic import remove_stale_temps, write_json_atomic
from echo_core.utils.hashing import config_hash, sha256_file, sha256_tree
from echo_core.utils.progress import progress

VIDEO_FACTS = ("FrameHeight", "FrameWidth", "FPS", "NumberOfFrames")  # measured on every output video
RECORDS = ".jobs"  # per-job resume records inside the staging folder; removed before the swap
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Job:
    """One unit of work: `op(job, <staging>/<output>)` turns `source` into the output and returns facts.

    `op` is a module-level function (picklable, so jobs travel to process/Dask workers). `row` holds the
    FileList facts known at plan time; the op adds the facts it measures on the output. `params` are what
    changes the output bytes (with the op, the resume key).
    """

    op: Callable[[Job, Path], dict[str, Any]]
    file_name: str
    source: str
    output: str
    row: dict[str, Any]
    params: dict[str, Any]
    where: str  # "FileList.csv line 7 (FileName 'x')": prefix of every error about this job


# Writes one more file into the staging folder for the kept FileNames; returns its path relative to staging.
SideFile = Callable[[Path, set[str]], str]


@dataclass(frozen=True)
class Plan:
    """Everything `finalize` needs besides the job results (picklable, cheap)."""

    kind: str  # manifest `kind`: dynamic, pediatric-a4c, cardiacnet, reference, jpg-export, ...
    layout: str  # manifest `layout`: what the output tree holds, for a reader who finds the folder
    src: str
    dst: str
    jobs: tuple[Job, ...]
    params: dict[str, Any]  # manifest `params`: the settings that shaped the output
    source_files: dict[str, str]  # FileList.csv / VolumeTracings.csv -> sha256 (part of the source hash)
    columns: tuple[str, ...] | None = None  # FileList.csv of the outputs; None writes none
    side_files: tuple[SideFile, ...] = ()
    excluded: tuple[str, ...] = ()
    unknown_excludes: tuple[str, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass
class Report:
    """What `finalize` did: the manifest it wrote plus the one fact of this run (jobs reused)."""

    dst: str
    manifest: dict[str, Any]
    reused: int

    @property
    def count(self) -> int:
        return self.manifest["count"]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def warnings(self) -> list[str]:
        return self.manifest["warnings"]

    def summary(self) -> str:
        excluded = self.manifest["excluded"]
        lines = [f"{self.manifest['kind']}: {self.count} videos -> {self.dst} ({self.reused} reused from a "
                 f"previous run, {excluded['count']} excluded)"]
        unknown = excluded["not_in_filelist"]
        if unknown:
            lines.append(f"warning: {len(unknown)} excluded name(s) are not in the FileList: "
                         f"{', '.join(unknown[:5])}")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


# ------------------------------------------------------------------------------------ planning helpers


def check_src_dst(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[Path, Path]:
    """Absolute paths; refuse writing into (or over) the source, which is never edited in place."""
    src, dst = Path(src).absolute(), Path(dst).absolute()
    if not src.is_dir():
        raise DataError(f"source dataset folder not found: {src}", fix="check the path, or run `dvc pull`")
    rs, rd = src.resolve(), dst.resolve()
    if rd == rs or rd.is_relative_to(rs) or rs.is_relative_to(rd):
        raise UsageError(f"output {dst} overlaps the source {src}; raw data is never modified in place",
                         fix="choose an output folder outside the source dataset (e.g. data/prepared/<name>)")
    return src, dst


def check_unique(names: pd.Series, path: Path) -> None:
    dup = names[names.duplicated(keep=False)]
    if not dup.empty:
        lines = ", ".join(f"line {i + 2} {n!r}" for i, n in dup.head(6).items())
        raise DataError(f"{path}: FileName is not unique after removing the extension: {lines}",
                        fix="each video must appear once; remove or rename the duplicate rows")


def apply_exclude(df: pd.DataFrame, exclude: Iterable[str]) -> tuple[pd.DataFrame, tuple, tuple]:
    """Drop quarantined rows (names compared without extension); also return excluded and unknown names."""
    wanted = {strip_extension(str(n)) for n in exclude}
    hit = df["FileName"].isin(wanted)
    excluded = tuple(sorted(df.loc[hit, "FileName"]))
    unknown = tuple(sorted(wanted - set(excluded)))
    return df.loc[~hit], excluded, unknown


def read_exclude(path: str | os.PathLike) -> set[str]:
    """FileNames of a quarantine CSV (any CSV with a `FileName` column: `data validate --quarantine`)."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:  # "nothing quarantined" written as no bytes
        return set()
    df = read_filelist(path)
    if "FileName" not in df.columns:
        raise DataError(f"exclude list {path} has no FileName column",
                        fix="pass the CSV written by `echoforge data validate --quarantine`")
    return {strip_extension(str(n)) for n in df["FileName"].dropna()}


def locate(src: Path, file_name: str, where: str) -> Path:
    try:
        return resolve_video(src, file_name)
    except DataError as exc:
        raise with_context(exc, where) from None


def with_context(exc: EchoForgeError, where: str) -> EchoForgeError:
    """The same error type, message prefixed with the row/file it concerns (fix kept)."""
    message = str(exc)
    suffix = f"\n  fix: {exc.fix}" if exc.fix else ""
    if suffix and message.endswith(suffix):
        message = message[: -len(suffix)]
    return type(exc)(f"{where}: {message}", fix=exc.fix)


# --------------------------------------------------------------------------------------------- one job


def run_job(job: Job, staging: str | os.PathLike) -> dict[str, Any]:
    """Run one job into `staging`; skip it when its record shows the same source content, op and params.

    Returns {"file_name", "output", "row" (FileList row with measured facts), "source_sha256",
    "output_sha256", "reused"}. Errors are typed (DataError family) and name the row and file.
    """
    staging = Path(staging)
    out = staging / job.output
    record_path = staging / RECORDS / f"{job.file_name}.json"
    try:
        source_sha = sha256_file(job.source)
    except OSError as exc:
        raise DataError(f"{job.where}: cannot read {job.source}: {exc.strerror or exc}",
                        fix="check the file exists and is readable (`dvc pull` / `dvc checkout`)") from None
    key = config_hash({"op": f"{job.op.__module__}:{job.op.__qualname__}", "params": job.params})
    facts = _reusable_facts(record_path, out, source_sha, key)
    reused = facts is not None
    if facts is None:
        facts = _run_op(job, out)
        output_sha = _output_sha(out)
        write_json_atomic(record_path, {"source_sha256": source_sha, "params_key": key,
                                        "output_sha256": output_sha, "facts": facts})
    else:
        output_sha = facts.pop("_output_sha256")
    return {"file_name": job.file_name, "output": job.output, "row": {**job.row, **facts},
            "source_sha256": source_sha, "output_sha256": output_sha, "reused": reused}


def _reusable_facts(record_path: Path, out: Path, source_sha: str, key: str) -> dict[str, Any] | None:
    if not (record_path.is_file() and out.exists()):
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = record.get("source_sha256") == source_sha and record.get("params_key") == key
    # Re-hash the staged output too: a half-overwritten or hand-edited staging file is redone, not trusted.
    if not same or record.get("output_sha256") != _output_sha(out):
        return None
    return {**record["facts"], "_output_sha256": record["output_sha256"]}


def _run_op(job: Job, out: Path) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return job.op(job, out)
    except EchoForgeError as exc:
        raise with_context(exc, job.where) from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{job.where}: cannot convert {job.source}: {type(exc).__name__}: {exc}",
                        fix="the file is damaged or not a video/volume; replace it or --exclude the row",
                        ) from None


def _output_sha(out: Path) -> str:
    return sha256_tree(out) if out.is_dir() else sha256_file(out)


# -------------------------------------------------------------------------------------------- staging


def staging_dir(dst: str | os.PathLike) -> Path:
    dst = Path(dst)
    return dst.with_name(f"{dst.name}.partial")


def open_staging(dst: str | os.PathLike) -> Path:
    """Create (or reopen, to resume) `<dst>.partial/`; drop temp files of killed writers. Once per run."""
    _recover_interrupted_swap(Path(dst))
    staging = staging_dir(dst)
    (staging / RECORDS).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(staging)
    return staging


POOLS = ("thread", "process")
# Imported once by the forkserver, so each worker process starts with the planners' ops already loaded.
_PRELOAD = ["echo_core.data.jobs", "echo_core.data.echonet", "echo_core.data.cardiacnet",
            "echo_core.data.reference", "echo_core.data.export"]


def run_jobs(jobs: Sequence[Job], staging: Path, *, workers: int = 1, desc: str = "prepare",
             pool: str = "thread") -> list[dict[str, Any]]:
    """Sequential (workers=1) or pooled fan-out of `run_job`; the first error cancels the rest.

    pool="thread" shares one process (decoders release the GIL only part of the time); pool="process"
    runs `workers` forkserver processes, for CPU-bound decode/encode (benchmarks/results/prepare.json).
    Both write the same bytes: each job's output depends on its source and params alone.
    """
    if pool not in POOLS:
        raise UsageError(f"unknown pool {pool!r}", fix=f"use one of: {', '.join(POOLS)}")
    if workers <= 1 or len(jobs) < 2:
        return [run_job(job, staging) for job in progress(jobs, total=len(jobs), desc=desc)]
    if pool == "thread":
        with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as executor:
            return _fan_out(executor, jobs, staging, desc)
    try:
        return _fan_out(_process_pool(workers), jobs, staging, desc)
    except BrokenProcessPool:
        _PROCESS_POOLS.pop(workers, None)  # a broken pool takes no more work; the next call starts a new one
        raise DataError(f"{desc}: a worker process died before finishing its video (killed, out of memory, or "
                        "started from a script without an `if __name__ == \"__main__\":` guard)",
                        fix="re-run the same command (finished videos are kept and reused), with fewer "
                            "--workers or --pool thread") from None


def _fan_out(executor: Executor, jobs: Sequence[Job], staging: Path, desc: str) -> list[dict[str, Any]]:
    futures = [executor.submit(run_job, job, staging) for job in jobs]
    try:
        return [f.result() for f in progress(as_completed(futures), total=len(futures), desc=desc)]
    except BaseException:
        for f in futures:
            f.cancel()
        raise


# One process pool per size, kept for the life of the process: a flow or script that prepares several
# datasets pays the worker start-up (~0.2 s, ~0.9 s with the forkserver's first start) once, not per dataset.
_PROCESS_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()  # threads of one flow may fan out at once; they share one pool


def _process_pool(workers: int) -> ProcessPoolExecutor:
    with _POOLS_LOCK:
        return _PROCESS_POOLS.get(workers) or _new_process_pool(workers)


def _new_process_pool(workers: int) -> ProcessPoolExecutor:
    # forkserver, not fork: the caller may hold threads (Prefect, torch) that a forked child would inherit
    # in an arbitrary state; the server process is started clean and forks the workers from there.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    _PROCESS_POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    return _PROCESS_POOLS[workers]


def results_in_plan_order(jobs: Sequence[Job], results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {r["file_name"]: r for r in results}
    missing = [j.file_name for j in jobs if j.file_name not in by_name]
    if missing:
        raise DataError(f"{len(missing)} planned video(s) have no result (e.g. {missing[:3]})",
                        fix="run run_job for every job of the plan before finalizing")
    return [by_name[j.file_name] for j in jobs]


def commit_staging(staging: Path, keep: Iterable[str]) -> str:
    """Prune stale outputs (from an earlier, different plan) and the resume records; hash what is left.

    `keep` are paths relative to staging (files or folders). The hash excludes the manifest (written
    after), so two runs producing the same data have the same hash whatever their source path.
    """
    keep = {PurePosixPath(k) for k in keep}
    ancestors = {parent for k in keep for parent in k.parents}
    shutil.rmtree(staging / RECORDS, ignore_errors=True)
    for path in sorted(staging.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        rel = PurePosixPath(path.relative_to(staging).as_posix())
        if rel in keep or rel in ancestors or any(p in keep for p in rel.parents):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return sha256_tree(staging)


def swap_into(staging: Path, dst: Path) -> None:
    """Replace `dst` by `staging` with two renames; on failure the old `dst` is restored."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    try:
        os.replace(staging, dst)
    except OSError:
        if old.exists():
            os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _recover_interrupted_swap(dst: Path) -> None:
    old = dst.with_name(f".{dst.name}.old")
    if old.exists() and not dst.exists():  # killed between the two renames of swap_into
        os.replace(old, dst)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------- finalize


def finalize(plan: Plan, results: Iterable[dict[str, Any]]) -> Report:
    """Write FileList.csv (when the plan has columns), the side files and manifest.json into staging,
    then swap the staged tree into dst."""
    staging = staging_dir(plan.dst)
    ordered = results_in_plan_order(plan.jobs, results)
    keep = [r["output"] for r in ordered]
    if plan.columns is not None:
        df = pd.DataFrame([r["row"] for r in ordered], columns=list(plan.columns))
        write_filelist(df, staging / "FileList.csv")
        keep.append("FileList.csv")
    names = {r["file_name"] for r in ordered}
    keep += [write(staging, names) for write in plan.side_files]
    manifest = manifest_of(plan, ordered, commit_staging(staging, keep))
    write_json_atomic(staging / MANIFEST, manifest)
    swap_into(staging, Path(plan.dst))
    return Report(dst=plan.dst, manifest=manifest, reused=sum(r["reused"] for r in ordered))


def manifest_of(plan: Plan, ordered: Sequence[dict[str, Any]], output_sha: str) -> dict[str, Any]:
    """The one manifest schema of prepared datasets, reference sets and exports (same keys for all)."""
    return {
        "kind": plan.kind,
        "layout": plan.layout,
        "source": {"path": display_path(plan.src), "sha256": source_hash(plan.source_files, ordered),
                   "files": plan.source_files},
        "params": plan.params,
        "count": len(ordered),
        "excluded": {"count": len(plan.excluded), "file_names": list(plan.excluded),
                     "not_in_filelist": list(plan.unknown_excludes)},
        "notes": plan.notes,
        "warnings": list(plan.warnings),
        "code_version": code_version(),
        "sha256": output_sha,
    }


def code_version() -> dict[str, str]:
    """Package version + hash of the data-preparation code (what produced an artifact)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("echoforge")
    except PackageNotFoundError:
        pkg = "unknown"
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return {"echoforge": pkg, "echo_core.data_sha256": h.hexdigest()[:16]}


def display_path(path: str | os.PathLike) -> str:
    """Relative to the working directory when inside it: manifests stay identical across checkouts."""
    path = Path(path)
    return path.relative_to(Path.cwd()).as_posix() if path.is_relative_to(Path.cwd()) else str(path)


def source_hash(source_files: dict[str, str], results: Iterable[dict[str, Any]]) -> str:
    """Hash of the source FileList/side files plus the content of every used video (sorted by name)."""
    blob = {"files": source_files, "videos": {r["file_name"]: r["source_sha256"] for r in results}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()
