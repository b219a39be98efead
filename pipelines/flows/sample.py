"""Prefect flow `sample`: resolve the registered model → generate (resumable, sharded) → track in MLflow.

`run_sampling` is the plain sequential function (`echoforge sample`, the evaluate flow). The flow runs the
same three steps of echo_core.generation.generate with the middle one fanned out: `start-samples` (once:
stale temps, resume check, "running" record, shard ranges) → `sample-shard` tasks on the flow's task
runner (each resolves and loads the model itself, holds a GPU slot, writes only its own samples) →
`finish-samples` (once: FileList.csv, "complete" record, MLflow). Shards are cut between the sequential
run's batches, so any shard count generates the same samples bit for bit (on CPU: with the same torch
thread count; Dask workers run with OMP_NUM_THREADS=1). Tasks pass paths and small dicts, never tensors.
Run it:
    echoforge flow sample --model models:/echo-lvdm@champion --out outputs/samples/dynamic --shards 2
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from pipelines.flows.common import retry_transient_only, run_shards
from pipelines.ops.scaleout import runner_from_env, shard_count

EXPERIMENT = "echo-sample"
GRID_SAMPLES = 4


def resolve_model(model: str, vae: str | None) -> tuple[Path, Path | None, dict[str, Any]]:
    """(LVDM/bundle folder, VAE folder or None, {"id", "uri", "version"}) for a models:/ URI or a folder."""
    from pipelines.registry import resolve_model_folder, version_of_uri

    folder = resolve_model_folder(model)
    info: dict[str, Any] = {"uri": model, "id": str(folder.resolve())}
    if model.startswith("models:/"):
        mv = version_of_uri(model)
        info.update(id=f"{mv.name}/{mv.version}", version=str(mv.version), run_id=mv.run_id)
    return folder, (resolve_model_folder(vae) if vae else None), info


def grid_video(out: Path, names: list[str], formats: list[str]) -> Any:
    """The first samples tiled into one (T, H', W') video, read back from what was written."""
    from echo_core.data.video import read_jpg_tree, read_video
    from echo_core.generation.writers import VIDEO_FORMATS, make_grid, output_path

    fmt = next((f for f in VIDEO_FORMATS if f in formats), None)
    if fmt is not None:
        videos = [read_video(output_path(out, n, fmt))[0] for n in names]
    else:
        videos = [read_jpg_tree(output_path(out, n, "jpg"), gray=True) for n in names] if "jpg" in formats else []
    return make_grid(videos) if videos else None


def pinned_uri(model_info: dict[str, Any]) -> str:
    """The exact version behind a models:/ alias (shards must not follow an alias moved mid-run)."""
    return f"models:/{model_info['id']}" if model_info["uri"].startswith("models:/") else model_info["uri"]


def load_sampler(folder: Path, vae_folder: Path | None, device: str, conditioning: str | None):
    """(pipeline on `device` (auto → cuda when available), default conditioning frame or None)."""
    import torch

    from echo_core.generation.default_frame import read_frame_png
    from echo_core.generation.pipeline import DEFAULT_FRAME_FILE, load_pipeline

    device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(folder, vae_folder=vae_folder, device=device)
    frame_file = folder / DEFAULT_FRAME_FILE
    if not frame_file.is_file():
        frame_file = Path(__file__).resolve().parents[1] / "serving" / DEFAULT_FRAME_FILE
    return pipe, (read_frame_png(frame_file) if conditioning is None else None)


def run_sampling(model: str, out: str | Path, cfg, *, conditioning: str | None = None, vae: str | None = None,
                 track: bool = True, on_batch: Callable[[int, int], None] | None = None):
    """Generate `cfg.num_samples` videos from a registered model (or folder) into `out`; log params, the
    FileList, generation_params.json and a sample grid video to an MLflow run. Returns the report."""
    from echo_core.generation.generate import generate_samples

    folder, vae_folder, model_info = resolve_model(model, vae)
    pipe, default_frame = load_sampler(folder, vae_folder, cfg.device, conditioning)
    report = generate_samples(pipe, cfg, out, conditioning=conditioning, model=model_info,
                              default_frame=default_frame, on_batch=on_batch)
    if track:
        _track(Path(out), cfg, model_info, report)
    return report


def _track(out: Path, cfg, model_info: dict[str, Any], report) -> None:
    from echo_core.data.video import write_video
    from echo_core.generation.generate import FILELIST_FILE, PARAMS_FILE
    from pipelines.tracking import start_run

    tags = {"model_uri": model_info["uri"], "model_version": str(model_info.get("version", ""))}
    with start_run(EXPERIMENT, run_name=f"sample-{out.name}", tags=tags) as tracker:
        tracker.log_params({"sample": cfg.model_dump(mode="json"), "model": model_info, "out": str(out)})
        tracker.log_metrics({"generated": report.generated, "skipped": report.skipped, "fps": report.fps})
        tracker.log_artifact(out / FILELIST_FILE, "samples")
        tracker.log_artifact(out / PARAMS_FILE, "samples")
        names = [f"sample_{i:06d}" for i in range(min(GRID_SAMPLES, cfg.num_samples))]
        grid = grid_video(out, names, cfg.formats)
        if grid is not None:
            with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".sample-grid-") as tmp:
                tracker.log_artifact(write_video(Path(tmp) / "sample_grid.mp4", grid, report.fps), "samples")


def _job(folder: Path, model_info: dict[str, Any], out: str, cfg_json: str, conditioning: str | None):
    """The generation plan, from the bundle's config only (no weights loaded)."""
    from echo_core.generation.generate import SampleConfig, plan_generation, read_model_config

    cfg = SampleConfig.model_validate_json(cfg_json)
    return plan_generation(read_model_config(folder), cfg, out, conditioning=conditioning, model=model_info)


@task(name="start-samples", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient_only)
def start_task(model: str, vae: str | None, out: str, cfg_json: str, conditioning: str | None,
               shards: int) -> dict[str, Any]:
    """Once: resolve the model (downloads land in the cache the shards then share), record "running",
    cut the missing samples into shard ranges."""
    from echo_core.generation.generate import shard_ranges, start_generation

    folder, _, model_info = resolve_model(model, vae)
    job = _job(folder, model_info, out, cfg_json, conditioning)
    ranges = shard_ranges(job, start_generation(job), shards)
    return {"model": model_info, "ranges": [(r.start, r.stop) for r in ranges]}


@task(name="sample-shard", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient_only)
def shard_task(model_info: dict[str, Any], vae: str | None, out: str, cfg_json: str, conditioning: str | None,
               lo: int, hi: int) -> int:
    """Generate the missing samples of plan indices [lo, hi); → how many were generated."""
    from echo_core.generation.generate import generate_shard
    from pipelines.ops.concurrency import gpu_slot

    artifact = create_progress_artifact(0.0, description=f"sample {out} [{lo}, {hi})")

    def progress(done: int, total: int) -> None:
        update_progress_artifact(artifact, 100.0 * done / max(total, 1))
        get_run_logger().info("sample %s [%d, %d): %d/%d videos", out, lo, hi, done, total)

    folder, vae_folder, _ = resolve_model(pinned_uri(model_info), vae)
    job = _job(folder, model_info, out, cfg_json, conditioning)
    with gpu_slot():  # one GPU job per card (no-op where no `gpu` limit exists); the weights load inside it
        pipe, default_frame = load_sampler(folder, vae_folder, job.cfg.device, conditioning)
        generated = generate_shard(pipe, job, range(lo, hi), default_frame=default_frame, on_batch=progress)
    update_progress_artifact(artifact, 100.0)
    return generated


@task(name="finish-samples", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient_only)
def finish_task(model_info: dict[str, Any], out: str, cfg_json: str, conditioning: str | None, generated: int,
                track: bool) -> dict[str, Any]:
    """Once: FileList.csv + "complete" record, then one MLflow run."""
    from echo_core.generation.generate import finish_generation
    from pipelines.registry import resolve_model_folder

    job = _job(resolve_model_folder(pinned_uri(model_info)), model_info, out, cfg_json, conditioning)
    report = finish_generation(job, generated)
    if track:
        _track(job.out, job.cfg, model_info, report)
    return {"out": str(report.out), "generated": report.generated, "skipped": report.skipped, "fps": report.fps}


@flow(name="sample", log_prints=True, task_runner=runner_from_env("thread", workers=2))
def sample(model: str = "models:/echo-lvdm@champion", out: str = "outputs/samples/default",
           params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
           conditioning: str | None = None, vae: str | None = None, track: bool = True,
           shards: int | None = None) -> dict[str, Any]:
    """Generate synthetic videos from the registered model (params.yaml `sample:` + overrides), in `shards`
    shards on the flow's task runner (default: scaleout.shard_count)."""
    from echo_core.config import load_section
    from echo_core.generation.generate import SampleConfig

    cfg_json = load_section(SampleConfig, "sample", params_path, overrides).model_dump_json()
    started = start_task(model, vae, out, cfg_json, conditioning, shard_count(shards))
    calls = [(started["model"], vae, out, cfg_json, conditioning, lo, hi) for lo, hi in started["ranges"]]
    generated = sum(run_shards(shard_task, calls, f"sample {out}"))
    result = finish_task(started["model"], out, cfg_json, conditioning, generated, track)
    print(json.dumps(result))
    return result
