"""`echoforge data phantom` / `phantom-all`: synthetic echo datasets in the reference raw layouts."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from echo_core.data.phantom.config import PhantomKind


def register(app: typer.Typer) -> None:
    """Add `phantom` and `phantom-all` to the `data` group."""
    app.command("phantom")(phantom)
    app.command("phantom-all")(phantom_all)


def phantom(
    kind: PhantomKind = typer.Option(..., "--kind", help="dataset layout to write"),
    num_videos: int = typer.Option(..., "--num-videos", min=1, help="videos (CardiacNet: patients, all classes)"),
    seed: int = typer.Option(0, "--seed", min=0, help="same seed and sizes -> byte-identical files"),
    out: Path = typer.Option(..., "--out", help="dataset folder to create"),
    fps: float | None = typer.Option(None, "--fps", help="fixed frame rate (default: the kind's fps choices)"),
    frames: int | None = typer.Option(None, "--frames", min=8, help="fixed frames per clip (default: 64-96)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out"),
    workers: int = typer.Option(0, "--workers", min=0, help="render processes (0: one per CPU; same bytes)"),
) -> None:
    """Write one phantom dataset (EchoNet-Dynamic, EchoNet-Pediatric A4C/PSAX raw, or CardiacNet NIfTI)."""
    from echo_core.data.phantom.datasets import generate_dataset

    path = generate_dataset(kind, out, num_videos=num_videos, seed=seed, fps=fps, num_frames=frames,
                            overwrite=overwrite, workers=workers or os.cpu_count() or 1)  # fmt: skip
    typer.echo(f"phantom {kind.value}: {num_videos} videos (seed {seed}) -> {path}")


def phantom_all(
    out: Path = typer.Option(Path("data"), "--out", help="root of the four default datasets"),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params file with a `phantom:` section"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing, different phantom sets"),
    workers: int = typer.Option(0, "--workers", min=0, help="render processes (0: one per CPU; same bytes)"),
) -> None:
    """Write the default sets: EchoNet-Dynamic, EchoNet-Pediatric/{A4C,PSAX}, CardiacNet under --out."""
    from echo_core.config import load_section
    from echo_core.data.phantom.config import PhantomConfig
    from echo_core.data.phantom.datasets import generate_default_data

    cfg = load_section(PhantomConfig, "phantom", params)
    for kind, path in generate_default_data(out, cfg, overwrite=overwrite,
                                                 workers=workers or os.cpu_count() or 1).items():
        typer.echo(f"phantom {kind}: {cfg.for_kind(kind).num_videos} videos -> {path}")
