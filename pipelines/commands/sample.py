"""`echoforge sample`: generate synthetic echo videos from a registered LVDM (or a local folder).

Defaults come from params.yaml `sample:`; every flag given on the command line overrides its key.
Resumable: re-running with the same parameters skips finished samples.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _conditions(ef: float | None, ef_range: tuple[float, float] | None, class_id: list[int] | None,
                random_class: bool, prompt: list[str] | None, conditions_csv: Path | None) -> dict | None:
    given = {"ef": ef, "ef_range": ef_range, "class_ids": class_id or ([] if random_class else None),
             "prompts": prompt or None, "csv": str(conditions_csv) if conditions_csv else None}
    given = {k: v for k, v in given.items() if v is not None}
    if len(given) > 1:
        from echo_core.errors import UsageError

        raise UsageError(f"give one condition source, got {sorted(given)}",
                         fix="use one of --ef, --ef-range, --class-id/--random-class, --prompt, --conditions-csv")
    return given or None


def sample(
    model: str = typer.Option(..., "--model", help="models:/echo-lvdm@<alias>, models:/echo-lvdm/<v> or a folder."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable)."),
    vae: str | None = typer.Option(None, "--vae", help="VAE folder or models:/echo-vae@<alias> (if the model "
                                                       "is a bare LVDM folder without vae/)."),
    conditioning: str | None = typer.Option(None, "--conditioning", help="Latent store, .pt folder or image "
                                                                          "folder; default: the phantom frame."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml with a `sample:` section."),
    num_samples: int | None = typer.Option(None, "--num-samples", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    sampler: str | None = typer.Option(None, "--sampler", help="ddpm | ddim | dpmpp_2m | euler | heun"),
    steps: int | None = typer.Option(None, "--steps", min=1),
    guidance_scale: float | None = typer.Option(None, "--guidance-scale", min=0.0),
    frame_guidance_scale: float | None = typer.Option(None, "--frame-guidance-scale", min=0.0),
    frames: int | None = typer.Option(None, "--frames", min=1, help="Video length (any; windows cover it)."),
    window: int | None = typer.Option(None, "--window", min=1, help="Window length (default: the model's)."),
    stride: int | None = typer.Option(None, "--stride", min=1, help="Window stride (default: window/2)."),
    blend: bool | None = typer.Option(None, "--blend/--no-blend", help="Average window overlaps."),
    seed: int | None = typer.Option(None, "--seed", help="Sample i uses seed + i."),
    fps: float | None = typer.Option(None, "--fps", help="Written fps (default: the model's)."),
    formats: str | None = typer.Option(None, "--formats", help="Comma list: mp4,avi,gif,jpg,png,safetensors."),
    cond_frame: str | None = typer.Option(None, "--cond-frame", help="first | random frame of a latent video."),
    ef: float | None = typer.Option(None, "--ef", help="Fixed EF (%)."),
    ef_range: tuple[float, float] | None = typer.Option(None, "--ef-range", help="Uniform integer EF in [LO, HI]."),
    class_id: list[int] | None = typer.Option(None, "--class-id", help="Class ids, cycled (repeatable)."),
    random_class: bool = typer.Option(False, "--random-class", help="A random class per sample."),
    prompt: list[str] | None = typer.Option(None, "--prompt", help="Prompts, cycled (repeatable)."),
    conditions_csv: Path | None = typer.Option(None, "--conditions-csv", help="CSV with ef/class_id/text."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:1"),
    track: bool = typer.Option(True, "--track/--no-track", help="Log to MLflow (params, FileList, grid video)."),
) -> None:
    """Generate synthetic videos (+ FileList.csv, generation_params.json) from a registered LVDM."""
    from echo_core.config import load_params, load_section, validate_config
    from echo_core.generation.generate import SampleConfig
    from pipelines.flows.sample import run_sampling

    overrides = {"num_samples": num_samples, "batch_size": batch_size, "sampler": sampler, "steps": steps,
                 "guidance_scale": guidance_scale, "frame_guidance_scale": frame_guidance_scale,
                 "num_frames": frames, "window": window, "stride": stride, "blend": blend, "seed": seed, "fps": fps,
                 "formats": formats.split(",") if formats else None, "cond_frame": cond_frame, "device": device,
                 "conditions": _conditions(ef, ef_range, class_id, random_class, prompt, conditions_csv)}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if params.is_file() and "sample" in load_params(params):
        cfg = load_section(SampleConfig, "sample", params, overrides)
    else:
        cfg = validate_config(SampleConfig, overrides, where="sample options")
    report = run_sampling(model, out, cfg, conditioning=conditioning, vae=vae, track=track)
    typer.echo(report.summary())


def default_frame(
    out: Path = typer.Argument(..., help="PNG to write (the shipped one: pipelines/serving/default_frame.png)."),
    size: int = typer.Option(112, "--size", min=1, help="Frame size in pixels."),
) -> None:
    """Write the documented default conditioning frame (a seeded phantom A4C ED frame; same bytes every time)."""
    from echo_core.generation.default_frame import write_default_frame

    typer.echo(write_default_frame(out, size))


def register_root(app: typer.Typer) -> None:
    """Add the top-level `sample` and `default-frame` commands to the `echoforge` app."""
    app.command("sample")(sample)
    app.command("default-frame")(default_frame)
