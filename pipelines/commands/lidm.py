"""`echoforge lidm train | sample`: the latent image diffusion model that generates synthetic hearts.

    echoforge lidm train --data outputs/latents/dynamic --tracings outputs/prepared/dynamic/VolumeTracings.csv \\
        --out outputs/lidm/dynamic
    echoforge lidm sample --model models:/echo-lidm@dynamic --num-samples 64 --out outputs/hearts/dynamic \\
        --vae outputs/vae/vae

Training is the one trainer's `lidm` task (also under `accelerate launch`). One registered model, `echo-lidm`,
holds a version per dataset: each version is tagged `dataset=<name>` and the newest of a dataset carries the
alias `@<dataset>`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer

REGISTERED_NAME = "echo-lidm"
EXPERIMENT = "echo-lidm"
SECTION_PREFIX = "train_lidm_"


def train(
    data: list[Path] = typer.Option(..., "--data", help="Latent store folder (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output folder: checkpoints/, unet_ema/, train_summary.json."),
    tracings: list[Path] = typer.Option([], "--tracings", help="VolumeTracings.csv: train on each traced "
                                        "video's end-diastolic frame (repeatable; else a random frame)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name for the registry "
                                       "(default: the first store's folder name)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml with the LIDM's section."),
    section: str | None = typer.Option(None, "--section", help="The params.yaml section (default: "
                                       "train_lidm_<dataset>: one LIDM per dataset, each its own recipe)."),
    assignments: list[str] = typer.Option([], "--set", help="Override a key of the section: dotted.key=value."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Overrides optim.max_steps."),
    seed: int | None = typer.Option(None, "--seed", help="Overrides train_lidm.seed."),
    resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint folder."),
    tracking: bool = typer.Option(True, "--tracking/--no-tracking", help="Log to MLflow and register (rank 0)."),
) -> None:
    """Train (or resume) the LIDM on the TRAIN frames of latent stores; register it as `echo-lidm@<dataset>`."""
    from echo_core.training.lidm import LidmTrainConfig
    from pipelines.commands.train import resolve_section

    name = dataset or data[0].name
    section = section or f"{SECTION_PREFIX}{name}"
    cfg = resolve_section(LidmTrainConfig, section, params, assignments, max_steps=max_steps, seed=seed)
    if not (int(os.environ.get("RANK", "0")) == 0 and tracking):
        _train(cfg, data, out, resume, tracings)
        return
    from pipelines.commands.train import tracked_run
    from pipelines.registry import log_model_folder
    from pipelines.serving.model_card import card_tags, lidm_card, render_lidm_markdown
    from pipelines.tracking import lineage_tags

    tags = {**lineage_tags(cfg, data), "dataset": name, "objective": cfg.objective.kind,
            "conditioning": "class_id" if cfg.conditioning.class_id else "none"}
    config = {"data": [str(d) for d in data], "tracings": [str(t) for t in tracings], **cfg.model_dump(mode="json")}
    with tracked_run(EXPERIMENT, f"lidm-{name}", tags, cfg, out, resume, config, section) as tracker:
        result = _train(cfg, data, out, resume, tracings, tracker)
        tracker.flush(timeout=300)
        card = lidm_card(name=REGISTERED_NAME, dataset=name, config=config, lineage=tags)
        tracker.log_dict(card, "model_card/model_card.json")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "model_card.md").write_text(render_lidm_markdown(card), encoding="utf-8")
            tracker.log_artifact(Path(tmp) / "model_card.md", "model_card")
        info = log_model_folder(result.folder, name="lidm", registered_model_name=REGISTERED_NAME, alias=name,
                                tags={**tags, **card_tags(card)})
    typer.echo(f"registered {info.name} version {info.version} as models:/{info.name}@{name}")


def _train(cfg, data: list[Path], out: Path, resume: str | None, tracings: list[Path], tracker=None):
    from echo_core.training.lidm import train_lidm

    result = train_lidm(cfg, data, out, tracker=tracker, resume=resume, tracings=tracings)
    if result.is_main:
        typer.echo(f"trained {result.step} steps on {result.world_size} process(es); EMA model at {result.folder}")
    return result


def sample(
    model: str = typer.Option(..., "--model", help="LIDM folder or models:/echo-lidm@<dataset>."),
    num_samples: int | None = typer.Option(None, "--num-samples", min=1, help="Hearts to generate "
                                           "(default: sample_lidm.num_samples)."),
    out: Path = typer.Option(..., "--out", help="Heart folder: latents/, images/, FileList.csv."),
    class_ids: list[int] = typer.Option([], "--class-id", help="Class of the hearts (repeatable, cycled; "
                                        "default: every class of a class-conditioned LIDM)."),
    guidance_scale: float | None = typer.Option(None, "--guidance-scale", min=0.0, help="Classifier-free "
                                                "guidance (default: sample_lidm.guidance_scale)."),
    seed: int = typer.Option(0, "--seed", help="Heart i gets seed + i."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml; its `sample_lidm:` section."),
    sampler: str | None = typer.Option(None, "--sampler", help="ddpm | ddim | dpmpp_2m (v-DDPM); euler | heun (flow)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampler steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Hearts per model call."),
    vae: str | None = typer.Option(None, "--vae", help="VAE folder or models:/echo-vae@alias: also write "
                                                      "images/<FileName>.jpg (must be the LIDM's VAE)."),
) -> None:
    """Generate synthetic hearts (one latent frame each) with an LIDM; resumable, same seed → same heart."""
    from echo_core.generation.lidm_sample import heart_request, sample_hearts

    net, recorded = open_lidm(model)
    sampling = heart_sampling(params, num_samples=num_samples, sampler=sampler, steps=steps, batch_size=batch_size)
    request = heart_request(net, sampling, num_samples=sampling.num_samples, seed=seed, class_ids=class_ids,
                            guidance_scale=guidance_scale)
    vae_model = matching_vae(vae, recorded) if vae else None
    plan = sample_hearts(net, request, out, vae=vae_model, vae_sha256=recorded)
    typer.echo(f"{len(plan)} hearts in {out} ({request.sampler}, {request.steps} steps)")


def open_lidm(model: str):
    """(the LIDM in eval mode, the sha256 of the VAE whose latents it models) from a folder or models:/ URI."""
    from echo_core.models.lidm import LidmNet, read_lidm_meta
    from pipelines.registry import resolve_model_folder

    folder = resolve_model_folder(model)
    recorded = read_lidm_meta(folder).get("vae", {}).get("sha256") or ""
    return LidmNet.from_pretrained(folder), recorded


def heart_sampling(params: Path, **overrides):
    """`sample_lidm:` of params.yaml (defaults where the file or section is absent) + the given flags."""
    from echo_core.config import load_params, load_section, validate_config
    from echo_core.generation.lidm_sample import HeartSampling

    given = {k: v for k, v in overrides.items() if v is not None}
    if params.is_file() and "sample_lidm" in load_params(params):
        return load_section(HeartSampling, "sample_lidm", params, given)
    return validate_config(HeartSampling, given, where="lidm sample options")


def matching_vae(uri: str, recorded: str):
    from echo_core.errors import WeightsError
    from echo_core.models.vae import load_vae
    from pipelines.registry import resolve_model_folder

    vae, info = load_vae(resolve_model_folder(uri))
    if recorded and info.weights_sha256 != recorded:
        raise WeightsError(f"--vae {uri} has weights sha256 {info.weights_sha256[:12]}…, but the LIDM models "
                           f"latents of VAE {recorded[:12]}…",
                           fix="pass the VAE whose latents the LIDM was trained on (its latent store's manifest)")
    return vae


def evaluate(
    hearts: Path = typer.Option(..., "--hearts", help="Heart folder written with --vae (it has images/)."),
    prepared: Path = typer.Option(..., "--prepared", help="The prepared real dataset (Videos/, FileList.csv)."),
    out: Path = typer.Option(..., "--out", help="JSON with FD/IS, their CIs and the controls."),
    tracings: Path | None = typer.Option(None, "--tracings", help="VolumeTracings.csv: real ED frames."),
    kept: Path | None = typer.Option(None, "--kept", help="The privacy filter's output for these hearts: "
                                     "also score the hearts that passed it."),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0, help="Bootstrap resamples for the FD CIs."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """FD and IS of LIDM hearts against real end-diastolic frames, before and after the privacy filter,
    with a held-out real positive control and a noise negative control."""
    import tempfile

    from echo_core.evaluation.hearts import evaluate_hearts
    from echo_core.latents.frames import ed_frames
    from echo_core.utils.atomic import write_json_atomic

    images = hearts / "images"
    ed = ed_frames(tracings) if tracings else {}
    with tempfile.TemporaryDirectory(prefix="echoforge-kept-") as tmp:
        candidates = {"before_filter": images}
        if kept is not None:
            candidates["after_filter"] = _kept_images(images, kept, Path(tmp))
        result = evaluate_hearts(prepared, candidates, ed=ed, seed=seed, bootstrap=bootstrap)
    write_json_atomic(out, {"hearts": str(hearts), "kept": str(kept) if kept else None, **result})
    for name, row in result["rows"].items():
        typer.echo(f"{name:>22}: N={row['n']:>4}  fd_fallback {row['fd_fallback']:.3f} "
                   f"[{row.get('fd_fallback_ci95_low', float('nan')):.3f}, "
                   f"{row.get('fd_fallback_ci95_high', float('nan')):.3f}]  is_fallback {row['is_fallback']:.3f}")


def _kept_images(images: Path, kept: Path, tmp: Path) -> Path:
    """The images of the hearts the filter kept (links into a temp folder)."""
    import pandas as pd

    from echo_core.errors import DataError

    names = pd.read_csv(kept / "FileList.csv", dtype={"FileName": str})["FileName"]
    for name in names:
        src = images / f"{name}.jpg"
        if not src.is_file():
            raise DataError(f"kept heart {name} has no image {src}",
                            fix="filter the same heart folder that --hearts names (sampled with --vae)")
        os.link(src, tmp / src.name)
    return tmp


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("sample")(sample)
    app.command("evaluate")(evaluate)
