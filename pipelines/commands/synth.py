"""`echoforge synth build`: a fully synthetic, privacy-checked dataset in the real dataset's own layout.

    echoforge synth build --dataset dynamic --num-videos 100 --data outputs/latents/dynamic \\
        --reid outputs/privacy/dynamic/reid --out outputs/synthetic/dynamic

LIDM hearts (`models:/echo-lidm@<dataset>`) → privacy filter (the re-identification model and its τ) → the
LVDM (`models:/echo-lvdm@champion`) animates every surviving heart under its condition → `Videos/` +
`FileList.csv` + `privacy_scores.csv` + `manifest.json`, which `echoforge data validate --kind <kind>`
accepts unchanged. Hearts are over-generated in rounds (×2 each) until enough survive. Every step writes
into `<out>.work/` and is resumable; the dataset folder appears only when complete.
"""

from __future__ import annotations

from pathlib import Path

import typer


def build(
    dataset: str = typer.Option(..., "--dataset", help="Dataset name: its params.yaml section synth.<dataset>."),
    num_videos: int = typer.Option(..., "--num-videos", min=1, help="Videos in the synthetic dataset."),
    data: Path = typer.Option(..., "--data", help="The real latent store (TRAIN EFs, class names, VAE check)."),
    reid: str = typer.Option(..., "--reid", help="Re-identification model folder or models:/ URI (with τ)."),
    out: Path = typer.Option(..., "--out", help="The synthetic dataset folder (EchoNet layout)."),
    lidm: str | None = typer.Option(None, "--lidm", help="Default: models:/echo-lidm@<dataset>."),
    lvdm: str = typer.Option("models:/echo-lvdm@champion", "--lvdm", help="The LVDM bundle or models:/ URI."),
    vae: str | None = typer.Option(None, "--vae", help="VAE for a bare LVDM folder (a bundle has its own)."),
    splits: str | None = typer.Option(None, "--splits", help="TRAIN=…,VAL=…,TEST=… counts or ratios "
                                      "(default: synth.<dataset>.splits)."),
    seed: int = typer.Option(0, "--seed", help="Hearts, conditions, videos and splits derive from it."),
    ef_judge: Path | None = typer.Option(None, "--ef-judge", help="EF judge file (outputs/judges/<ds>/ef_judge.json):"
                                         " its reading of each video goes into FileList.csv as EF_measured."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml: synth, sample, sample_lidm."),
) -> None:
    """Build a fully synthetic dataset: LIDM → privacy filter → LVDM, in the dataset's own layout."""
    from pipelines.synthesis import build_dataset

    cfg, table = build_dataset(dataset, num_videos, data, reid, out, lidm=lidm, lvdm=lvdm, vae=vae, splits=splits,
                               seed=seed, params=params, ef_judge=ef_judge)
    typer.echo(f"{len(table)} synthetic videos in {out} ({table['Split'].value_counts().to_dict()}); "
               f"validate: echoforge data validate --kind {cfg.kind} {out}")


def register(app: typer.Typer) -> None:
    from pipelines.commands import synth_evaluate

    app.command("build")(build)
    synth_evaluate.register(app)
