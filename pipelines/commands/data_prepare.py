"""`echoforge data prepare | reference | export-jpg`: raw -> prepared datasets, reference sets, jpg trees.

Thin wrappers over `echo_core.data.{prepare,reference,export}` (all on the jobs.py engine); settings come
from `--params` (sections `prepare:` / `reference:`) with command-line flags taking precedence.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer


class PrepareKind(StrEnum):
    dynamic = "dynamic"
    pediatric_a4c = "pediatric-a4c"
    pediatric_psax = "pediatric-psax"
    cardiacnet = "cardiacnet"


class Pool(StrEnum):
    thread = "thread"
    process = "process"


POOL_HELP = "How --workers run: threads, or processes for CPU-bound decode/encode (echo_core.data.jobs)."


def _overrides(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def prepare(
    src: Path = typer.Argument(..., help="Raw dataset folder (read only, never modified)."),
    out: Path = typer.Option(..., "--out", help="Prepared dataset folder (replaced atomically)."),
    kind: PrepareKind = typer.Option(..., "--kind", help="Dataset layout of SRC."),
    exclude: Path | None = typer.Option(None, "--exclude", help="Quarantine CSV (FileName column) to skip."),
    workers: int = typer.Option(1, "--workers", min=1, help="Videos converted in parallel."),
    pool: Pool = typer.Option(Pool.thread, "--pool", help=POOL_HELP),
    seed: int | None = typer.Option(None, "--seed", help="CardiacNet split seed (default: params, else 42)."),
    params: Path | None = typer.Option(None, "--params", help="params.yaml; its `prepare:` section is used."),
) -> None:
    """Harmonise a dataset: FileList.csv with verified frame facts and splits, videos, manifest.json.

    An interrupted run resumes from `<out>.partial/` (work is reused when the source content is unchanged).
    """
    from echo_core.config import load_section
    from echo_core.data.jobs import read_exclude
    from echo_core.data.prepare import PrepareConfig, prepare_dataset

    config = load_section(PrepareConfig, "prepare", params) if params else PrepareConfig()
    excluded = read_exclude(exclude) if exclude else set()
    report = prepare_dataset(kind.value, src, out, exclude=excluded, workers=workers, seed=seed,
                             config=config, pool=pool.value)
    typer.echo(report.summary())


def reference(
    src: Path = typer.Argument(..., help="Prepared dataset folder (from `data prepare`)."),
    out: Path = typer.Option(..., "--out", help="Reference set folder: <video>/%04d.jpg."),
    frames: int = typer.Option(..., "--frames", min=1, help="Frames per video (any N, e.g. 16 or 128)."),
    fps: float | None = typer.Option(None, "--fps", help="Resample to this fps first (default 32)."),
    max_videos: int | None = typer.Option(None, "--max-videos", min=1, help="At most this many videos."),
    seed: int | None = typer.Option(None, "--seed", help="Selection seed (default: params, else 42)."),
    size: int | None = typer.Option(None, "--size", min=8, help="Frame size (default 112)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Videos processed in parallel."),
    pool: Pool = typer.Option(Pool.thread, "--pool", help=POOL_HELP),
    params: Path | None = typer.Option(None, "--params", help="params.yaml; uses its `reference:` section."),
) -> None:
    """Build a StyleGAN-V reference set (FID/FVD/IS) from the TRAIN videos long enough for --frames."""
    from echo_core.config import load_section, validate_config
    from echo_core.data.reference import ReferenceConfig, build_reference

    cli = _overrides(frames=frames, fps=fps, max_videos=max_videos, seed=seed, size=size)
    config = (load_section(ReferenceConfig, "reference", params, cli) if params
              else validate_config(ReferenceConfig, cli, where="command line"))
    report = build_reference(src, out, frames=config.frames, fps=config.fps, max_videos=config.max_videos,
                             seed=config.seed, size=config.size, workers=workers,
                             pool=pool.value)
    typer.echo(report.summary())


def export_jpg(
    src: Path = typer.Argument(..., help="Prepared dataset folder."),
    out: Path = typer.Option(..., "--out", help="Output folder: <FileName>/%04d.jpg + FileList.csv."),
    split: list[str] | None = typer.Option(None, "--split", help="Only these splits (repeatable)."),
    size: int | None = typer.Option(None, "--size", min=8, help="Resize frames to size x size."),
    fps: float | None = typer.Option(None, "--fps", help="Resample to this fps."),
    workers: int = typer.Option(1, "--workers", min=1, help="Videos processed in parallel."),
    pool: Pool = typer.Option(Pool.thread, "--pool", help=POOL_HELP),
) -> None:
    """Export prepared videos as jpg trees (classification inputs)."""
    from echo_core.data.export import export_jpg as run_export

    report = run_export(src, out, splits=split or None, size=size, fps=fps, workers=workers,
                        pool=pool.value)
    typer.echo(report.summary())


def register(app: typer.Typer) -> None:
    """Add `prepare`, `reference` and `export-jpg` to the `data` group."""
    app.command("prepare")(prepare)
    app.command("reference")(reference)
    app.command("export-jpg")(export_jpg)
