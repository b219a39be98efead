"""Prefect flow `sample`: resolve the registered model → generate (resumable) → track in MLflow.

`run_sampling` is the plain function both `echoforge sample` and the flow call; the flow adds Prefect's
retries (transient IO only) and a progress artifact. Tasks pass paths, never tensors. Run it directly:
    python -m pipelines.flows.sample --model models:/echo-lvdm@champion --out outputs/samples/dynamic
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from pipelines.flows.common import retry_transient_only

EXPERIMENT = "echo-sample"
GRID_SAMPLES = 4


def resolve_model(model: str, vae: str | None) -> tuple[Path, Path | None, dict[str, Any]]:
    """(LVDM/bundle folder, VAE folder or None, {"id", "uri", "version"}) for a models:/ URI or a folder."""
    from pipelines.tracking import resolve_model_folder, version_of_uri

    folder = resolve_model_folder(model)
    info: dict[str, Any] = {"uri": model, "id": str(folder.resolve())}
    if model.startswith("models:/"):
        mv = version_of_uri(model)
        info.update(id=f"{mv.name}/{mv.version}", version=str(mv.version), run_id=mv.run_id)
    return folder, (resolve_model_folder(vae) if vae else None), info


def grid_video(out: Path, names: list[str], formats: list[str]) -> Any:
    """The first samples tiled into one (T, H', W') video, read back from what was written."""
    from echo_core.data.video import read_jpg_tree, read_video
    from echo_core.sampling.writers import VIDEO_FORMATS, make_grid, output_path

    fmt = next((f for f in VIDEO_FORMATS if f in formats), None)
    if fmt is not None:
        videos = [read_video(output_path(out, n, fmt))[0] for n in names]
    else:
        videos = [read_jpg_tree(output_path(out, n, "jpg"), gray=True) for n in names] if "jpg" in formats else []
    return make_grid(videos) if videos else None


def run_sampling(model: str, out: str | Path, cfg, *, conditioning: str | None = None, vae: str | None = None,
                 track: bool = True, on_batch: Callable[[int, int], None] | None = None):
    """Generate `cfg.num_samples` videos from a registered model (or folder) into `out`; log params, the
    FileList, generation_params.json and a sample grid video to an MLflow run. Returns the report."""
    import torch

    from echo_core.sampling.default_frame import read_frame_png
    from echo_core.sampling.generate import FILELIST_FILE, PARAMS_FILE, generate_samples
    from echo_core.sampling.pipeline import DEFAULT_FRAME_FILE, load_pipeline

    folder, vae_folder, model_info = resolve_model(model, vae)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(folder, vae_folder=vae_folder, device=device)
    frame_file = folder / DEFAULT_FRAME_FILE
    if not frame_file.is_file():
        frame_file = Path(__file__).resolve().parents[1] / "serving" / DEFAULT_FRAME_FILE
    default_frame = read_frame_png(frame_file) if conditioning is None else None
    report = generate_samples(pipe, cfg, out, conditioning=conditioning, model=model_info,
                              default_frame=default_frame, on_batch=on_batch)
    if track:
        _track(Path(out), cfg, model_info, report, FILELIST_FILE, PARAMS_FILE)
    return report


def _track(out: Path, cfg, model_info: dict[str, Any], report, filelist: str, params_file: str) -> None:
    from echo_core.data.video import write_video
    from pipelines.tracking import start_run

    tags = {"model_uri": model_info["uri"], "model_version": str(model_info.get("version", ""))}
    with start_run(EXPERIMENT, run_name=f"sample-{out.name}", tags=tags) as tracker:
        tracker.log_params({"sample": cfg.model_dump(mode="json"), "model": model_info, "out": str(out)})
        tracker.log_metrics({"generated": report.generated, "skipped": report.skipped, "fps": report.fps})
        tracker.log_artifact(out / filelist, "samples")
        tracker.log_artifact(out / params_file, "samples")
        names = [f"sample_{i:06d}" for i in range(min(GRID_SAMPLES, cfg.num_samples))]
        grid = grid_video(out, names, cfg.formats)
        if grid is not None:
            with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".sample-grid-") as tmp:
                tracker.log_artifact(write_video(Path(tmp) / "sample_grid.mp4", grid, report.fps), "samples")


@task(name="generate-samples", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient_only)
def generate_task(model: str, out: str, cfg_json: str, conditioning: str | None, vae: str | None,
                  track: bool) -> dict[str, Any]:
    from echo_core.sampling.generate import SampleConfig

    cfg = SampleConfig.model_validate_json(cfg_json)
    artifact = create_progress_artifact(0.0, description=f"sample {out}")

    def progress(done: int, total: int) -> None:
        update_progress_artifact(artifact, 100.0 * done / max(total, 1))
        get_run_logger().info("sample %s: %d/%d videos", out, done, total)

    from pipelines.ops.concurrency import gpu_slot

    with gpu_slot():  # one GPU job per card (no-op where no `gpu` limit exists)
        report = run_sampling(model, out, cfg, conditioning=conditioning, vae=vae, track=track, on_batch=progress)
    return {"out": str(report.out), "generated": report.generated, "skipped": report.skipped, "fps": report.fps}


@flow(name="sample", log_prints=True)
def sample(model: str = "models:/echo-lvdm@champion", out: str = "outputs/samples/default",
           params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
           conditioning: str | None = None, vae: str | None = None, track: bool = True) -> dict[str, Any]:
    """Generate synthetic videos from the registered model (params.yaml `sample:` + overrides)."""
    from echo_core.config import load_section
    from echo_core.sampling.generate import SampleConfig

    cfg = load_section(SampleConfig, "sample", params_path, overrides)
    result = generate_task(model, out, cfg.model_dump_json(), conditioning, vae, track)
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/echo-lvdm@champion")
    parser.add_argument("--out", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--conditioning", default=None)
    parser.add_argument("--vae", default=None)
    parser.add_argument("--no-track", action="store_true")
    args = parser.parse_args()
    sample(args.model, args.out, args.params, None, args.conditioning, args.vae, not args.no_track)


if __name__ == "__main__":
    main()
