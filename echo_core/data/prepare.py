"""Dataset preparation: a raw dataset folder -> a prepared folder (harmonised FileList.csv, videos, manifest).

Every operation is split so an orchestrator can fan out one task per video:

    plan = plan_prepare(kind, src, dst, config=cfg, exclude=names)  # pure, cheap: FileList + paths
    staging = open_staging(plan.dst)                                 # once, before the fan-out
    results = [prepare_video(job, staging) for job in plan.jobs]     # one video each; parallel-safe
    report = finalize_prepare(plan, results)                         # FileList + manifest, swap into dst

`prepare_dataset` runs the three steps in order (threads for `workers > 1`). Reference sets
(`reference.py`) and jpg exports (`export.py`) use the same job / staging / finalize machinery.

Crash safety: all work goes to `<dst>.partial/` next to `dst`. Each finished job leaves a record with the
sha256 of its source and of its output, so a re-run after a crash (or kill -9) redoes only the jobs whose
record is missing or whose source content changed. `dst` appears only when everything succeeded (two
renames); on any error the old `dst` is untouched and no new one exists. Raw data is only ever read.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from pydantic import Field, field_validator

from echo_core.config import StrictModel
from echo_core.data.filelist import (
    DatasetKind,
    dataset_kind,
    read_filelist,
    read_volume_tracings,
    resolve_video,
    strip_extension,
    write_filelist,
    write_volume_tracings,
)
from echo_core.errors import DataError, EchoForgeError, UsageError
from echo_core.utils.atomic import atomic_path, remove_stale_temps, write_json_atomic
from echo_core.utils.hashing import config_hash, sha256_file, sha256_tree
from echo_core.utils.progress import progress

PREPARE_KINDS = ("dynamic", "pediatric-a4c", "pediatric-psax", "cardiacnet")
VIDEO_FACTS = ("FrameHeight", "FrameWidth", "FPS", "NumberOfFrames")
RECORDS = ".jobs"  # per-job resume records inside the staging folder; removed before the swap
MANIFEST = "manifest.json"


class CardiacNetConfig(StrictModel):
    """NIfTI -> MP4 conversion and patient-level split of CardiacNet (params.yaml `prepare.cardiacnet`)."""

    fps: float = Field(32.0, gt=0)  # stated playback rate: the NIfTI files carry no trusted acquisition rate
    size: int = Field(112, ge=8)
    split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)  # TRAIN, VAL, TEST
    # Intensity window over the WHOLE volume; (0, 100) = global min/max. Per-frame windows flicker.
    intensity_percentiles: tuple[float, float] = (0.0, 100.0)

    @field_validator("split_ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or v[0] <= 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be >= 0, TRAIN > 0, and sum to 1; got {list(v)}")
        return v

    @field_validator("intensity_percentiles")
    @classmethod
    def _percentiles_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] < v[1] <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100; got {list(v)}")
        return v


class PrepareConfig(StrictModel):
    """params.yaml `prepare:` section."""

    seed: int = 42  # CardiacNet patient split (the other kinds keep their published splits)
    link: bool = False  # hardlink instead of copying Dynamic/Pediatric videos (same filesystem only)
    cardiacnet: CardiacNetConfig = CardiacNetConfig()


@dataclass(frozen=True)
class VideoJob:
    """One unit of work: turn `source` into `<staging>/<output>` with the operation `op`.

    `row` holds the FileList facts known at plan time; the operation adds the facts measured on the
    output (frame size, fps, frame count). `params` are what changes the output bytes (resume key).
    """

    op: str
    file_name: str
    source: str
    output: str
    row: dict[str, Any]
    params: dict[str, Any]
    where: str  # "FileList.csv line 7 (FileName 'x')": prefix of every error about this job


@dataclass(frozen=True)
class PreparePlan:
    """Everything `finalize_prepare` needs besides the job results (picklable, cheap)."""

    kind: str
    src: str
    dst: str
    jobs: tuple[VideoJob, ...]
    columns: tuple[str, ...]
    params: dict[str, Any]
    source_files: dict[str, str]  # FileList.csv / VolumeTracings.csv -> sha256
    excluded: tuple[str, ...] = ()
    unknown_excludes: tuple[str, ...] = ()
    tracings: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass
class PrepareReport:
    kind: str
    dst: str
    rows: int
    reused: int
    excluded: list[str]
    unknown_excludes: list[str]
    warnings: list[str]
    output_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"{self.kind}: {self.rows} videos -> {self.dst} ({self.reused} reused from a previous run, "
                 f"{len(self.excluded)} excluded)"]
        if self.unknown_excludes:
            lines.append(f"warning: {len(self.unknown_excludes)} excluded name(s) are not in the FileList: "
                         f"{', '.join(self.unknown_excludes[:5])}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- planning


def plan_prepare(kind: str, src: str | os.PathLike, dst: str | os.PathLike, *,
                 config: PrepareConfig | None = None, exclude: Iterable[str] = ()) -> PreparePlan:
    """Plan any prepare kind (`dynamic`, `pediatric-a4c`, `pediatric-psax`, `cardiacnet`)."""
    config = config or PrepareConfig()
    if kind == "dynamic":
        return plan_dynamic(src, dst, config=config, exclude=exclude)
    if kind in ("pediatric-a4c", "pediatric-psax"):
        from echo_core.data.pediatric import plan_pediatric

        return plan_pediatric(src, dst, view=kind.split("-")[1].upper(), config=config, exclude=exclude)
    if kind == "cardiacnet":
        from echo_core.data.cardiacnet import plan_cardiacnet

        return plan_cardiacnet(src, dst, config=config, exclude=exclude)
    raise UsageError(f"unknown prepare kind {kind!r}", fix=f"use one of: {', '.join(PREPARE_KINDS)}")


def plan_dynamic(src: str | os.PathLike, dst: str | os.PathLike, *, config: PrepareConfig | None = None,
                 exclude: Iterable[str] = ()) -> PreparePlan:
    """EchoNet-Dynamic: FileName without extension, published splits kept, frame facts re-measured."""

    def harmonise(df: pd.DataFrame, path: Path) -> pd.DataFrame:
        return df.assign(FileName=df["FileName"].map(strip_extension))

    return plan_echonet("dynamic", src, dst, harmonise, config=config or PrepareConfig(), exclude=exclude)


def plan_echonet(kind: str, src: str | os.PathLike, dst: str | os.PathLike,
                 harmonise: Callable[[pd.DataFrame, Path], pd.DataFrame], *, config: PrepareConfig,
                 exclude: Iterable[str] = ()) -> PreparePlan:
    """Shared plan of the EchoNet layouts (`Videos/`, `FileList.csv`, optional `VolumeTracings.csv`)."""
    src, dst = check_src_dst(src, dst)
    filelist = src / "FileList.csv"
    df = harmonise(read_filelist(filelist, dataset_kind(kind)), filelist)
    check_unique(df["FileName"], filelist)
    df, excluded, unknown = apply_exclude(df, exclude)
    jobs = []
    for line, row in zip(df.index, df.to_dict(orient="records"), strict=True):
        where = f"{filelist} line {line + 2} (FileName {row['FileName']!r})"
        video = locate(src, row["FileName"], where)
        jobs.append(VideoJob(op="copy", file_name=row["FileName"], source=str(video),
                             output=f"Videos/{row['FileName']}{video.suffix.lower()}", row=row,
                             params={"link": config.link}, where=where))
    columns = tuple(df.columns) + tuple(c for c in VIDEO_FACTS if c not in df.columns)
    tracings = src / "VolumeTracings.csv"
    sources = {"FileList.csv": sha256_file(filelist)}
    if tracings.is_file():
        sources["VolumeTracings.csv"] = sha256_file(tracings)
    return PreparePlan(kind=kind, src=str(src), dst=str(dst), jobs=tuple(jobs), columns=columns,
                       params={"link": config.link}, source_files=sources, excluded=excluded,
                       unknown_excludes=unknown, tracings=str(tracings) if tracings.is_file() else None)


def check_src_dst(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[Path, Path]:
    """Absolute paths; refuse writing into (or over) the raw data, which is never edited in place."""
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


def locate(src: Path, file_name: str, where: str) -> Path:
    try:
        return resolve_video(src, file_name)
    except DataError as exc:
        raise with_context(exc, where) from None


def read_exclude(path: str | os.PathLike) -> set[str]:
    """FileNames of a quarantine CSV (any CSV with a `FileName` column: `data validate --quarantine`)."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:  # "nothing quarantined" written as no bytes
        return set()
    df = read_filelist(path)
    if "FileName" not in df.columns:
        raise DataError(f"exclude list {path} has no FileName column",
                        fix="pass the CSV written by `echoforge data validate --quarantine`")
    return {strip_extension(str(n)) for n in df["FileName"].dropna()}


def with_context(exc: EchoForgeError, where: str) -> EchoForgeError:
    """The same error type, message prefixed with the row/file it concerns (fix kept)."""
    message = str(exc)
    suffix = f"\n  fix: {exc.fix}" if exc.fix else ""
    if suffix and message.endswith(suffix):
        message = message[: -len(suffix)]
    return type(exc)(f"{where}: {message}", fix=exc.fix)


# ------------------------------------------------------------------------------------------- per video

# op -> "module:function(job, out: Path) -> facts". Imported on demand so each module owns its op.
OPS = {
    "copy": "echo_core.data.prepare:copy_video",
    "nifti": "echo_core.data.cardiacnet:convert_volume",
    "reference": "echo_core.data.reference:write_reference_clip",
    "jpg": "echo_core.data.export:write_jpg_video",
}


def prepare_video(job: VideoJob, staging: str | os.PathLike) -> dict[str, Any]:
    """Run one job into `staging`; skip it when its record shows the same source content and params.

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
    key = config_hash({"op": job.op, "params": job.params})
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


def _run_op(job: VideoJob, out: Path) -> dict[str, Any]:
    if job.op not in OPS:
        raise UsageError(f"unknown job op {job.op!r}", fix=f"use one of: {', '.join(OPS)}")
    module, name = OPS[job.op].split(":")
    func = getattr(importlib.import_module(module), name)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return func(job, out)
    except EchoForgeError as exc:
        raise with_context(exc, job.where) from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{job.where}: cannot convert {job.source}: {type(exc).__name__}: {exc}",
                        fix="the file is damaged or not a video/volume; replace it or --exclude the row",
                        ) from None


def _output_sha(out: Path) -> str:
    return sha256_tree(out) if out.is_dir() else sha256_file(out)


def copy_video(job: VideoJob, out: Path) -> dict[str, Any]:
    """Copy (or hardlink) one video and measure its frame facts on the real file."""
    with atomic_path(out) as tmp:
        if job.params.get("link"):
            tmp.unlink()
            try:
                os.link(job.source, tmp)
            except OSError as exc:
                raise DataError(f"cannot hardlink {job.source} into {out.parent}: {exc.strerror or exc}",
                                fix="hardlinks need one filesystem; set `prepare.link: false` to copy") from None
        else:
            shutil.copyfile(job.source, tmp)
    return measure_video(out)


def measure_video(path: Path) -> dict[str, Any]:
    """FrameHeight, FrameWidth, FPS, NumberOfFrames as the decoder sees them (never fps=0 silently)."""
    from echo_core.data.video import probe_video

    info = probe_video(path)
    if info.num_frames <= 0 or not info.fps or info.fps <= 0:
        raise DataError(f"video {path} has {info.num_frames} frames at {info.fps} fps",
                        fix="the file is empty or damaged; replace it or --exclude the row")
    return {"FrameHeight": int(info.height), "FrameWidth": int(info.width), "FPS": float(info.fps),
            "NumberOfFrames": int(info.num_frames)}


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


def run_jobs(jobs: Sequence[VideoJob], staging: Path, *, workers: int = 1, desc: str = "prepare",
             ) -> list[dict[str, Any]]:
    """Sequential (workers=1) or threaded fan-out of `prepare_video`; the first error cancels the rest."""
    if workers <= 1:
        return [prepare_video(job, staging) for job in progress(jobs, total=len(jobs), desc=desc)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(prepare_video, job, staging) for job in jobs]
        try:
            return [f.result() for f in progress(as_completed(futures), total=len(futures), desc=desc)]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def results_in_plan_order(jobs: Sequence[VideoJob], results: Iterable[dict[str, Any]],
                          ) -> list[dict[str, Any]]:
    by_name = {r["file_name"]: r for r in results}
    missing = [j.file_name for j in jobs if j.file_name not in by_name]
    if missing:
        raise DataError(f"{len(missing)} planned video(s) have no result (e.g. {missing[:3]})",
                        fix="run prepare_video for every job of the plan before finalizing")
    return [by_name[j.file_name] for j in jobs]


def commit_staging(staging: Path, dst: Path, keep: Iterable[str]) -> str:
    """Prune stale outputs (from an earlier, different plan), drop resume records, swap into `dst`.

    `keep` are paths relative to staging (files or folders). Returns the output hash (manifest excluded,
    so two runs producing the same data have the same hash whatever their source path).
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


# ------------------------------------------------------------------------------------------- finalize


def finalize_prepare(plan: PreparePlan, results: Iterable[dict[str, Any]]) -> PrepareReport:
    """Write FileList.csv (+ VolumeTracings.csv) and manifest.json into staging, then swap into dst."""
    staging, dst = staging_dir(plan.dst), Path(plan.dst)
    ordered = results_in_plan_order(plan.jobs, results)
    df = pd.DataFrame([r["row"] for r in ordered], columns=list(plan.columns))
    write_filelist(df, staging / "FileList.csv")
    keep = {"FileList.csv", *(r["output"] for r in ordered)}
    if plan.tracings:
        _write_tracings(plan, set(df["FileName"]), staging / "VolumeTracings.csv")
        keep.add("VolumeTracings.csv")
    output_sha = commit_staging(staging, dst, keep)
    manifest = {
        "kind": plan.kind,
        "source": {"path": display_path(plan.src), "sha256": source_hash(plan.source_files, ordered),
                   "files": plan.source_files},
        "params": plan.params,
        "rows": len(df),
        "excluded": {"count": len(plan.excluded), "file_names": list(plan.excluded),
                     "not_in_filelist": list(plan.unknown_excludes)},
        "code_version": code_version(),
        "output_sha256": output_sha,
        **({"notes": plan.notes} if plan.notes else {}),
        "warnings": list(plan.warnings),
    }
    write_json_atomic(staging / MANIFEST, manifest)
    swap_into(staging, dst)
    return PrepareReport(kind=plan.kind, dst=str(dst), rows=len(df), reused=sum(r["reused"] for r in ordered),
                         excluded=list(plan.excluded), unknown_excludes=list(plan.unknown_excludes),
                         warnings=list(plan.warnings), output_sha256=output_sha)


def _write_tracings(plan: PreparePlan, names: set[str], out: Path) -> None:
    """Tracings of the kept videos, FileName harmonised like the FileList (no extension)."""
    df = read_volume_tracings(plan.tracings, dataset_kind(plan.kind))
    df = df.assign(FileName=df["FileName"].map(strip_extension))
    write_volume_tracings(df[df["FileName"].isin(names)], out)


def prepare_dataset(kind: str, src: str | os.PathLike, dst: str | os.PathLike, *,
                    exclude: Iterable[str] = (), workers: int = 1, seed: int | None = None,
                    config: PrepareConfig | None = None) -> PrepareReport:
    """Plan, convert every video (resuming a crashed run), finalize. `seed` overrides `config.seed`."""
    config = config or PrepareConfig()
    if seed is not None:
        config = config.model_copy(update={"seed": seed})
    plan = plan_prepare(kind, src, dst, config=config, exclude=exclude)
    if not plan.jobs:
        raise DataError(f"nothing to prepare in {plan.src}: every row is excluded or the dataset is empty",
                        fix="check the source folder and the --exclude list")
    staging = open_staging(plan.dst)
    results = run_jobs(plan.jobs, staging, workers=workers, desc=f"prepare {kind}")
    return finalize_prepare(plan, results)


__all__ = [
    "CardiacNetConfig", "DatasetKind", "PREPARE_KINDS", "PrepareConfig", "PreparePlan", "PrepareReport",
    "VideoJob", "finalize_prepare", "open_staging", "plan_dynamic", "plan_prepare", "prepare_dataset",
    "prepare_video", "read_exclude", "run_jobs", "staging_dir",
]
