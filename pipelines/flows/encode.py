"""Prefect flow `encode`: encode each prepared dataset into a latent store, fanned out over row shards.

Per dataset: `encode-prepare` once (removes temp files a killed run left) → one `encode-shard` task per
contiguous slice of FileList rows, submitted to the flow's task runner (thread / process / Dask, chosen by
the environment: pipelines.ops.scaleout) → `encode-finalize` once (FileList, manifest, orphan removal).
A shard resolves the VAE itself (a Dask worker may be another machine), holds a GPU slot while it encodes
and writes each latent file atomically; shards write distinct files. The shard count decides which frames
share a VAE batch and is recorded in the manifest; shards=1 writes exactly what `echoforge latents encode`
writes. Resumable: finished videos are skipped. Run it:
    echoforge flow encode --vae models:/echo-vae@candidate --dataset dynamic --shards 2
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from echo_core.config import load_params, load_section
from echo_core.errors import WeightsError
from pipelines.flows.common import retry_transient_only, run_shards
from pipelines.ops.scaleout import runner_from_env, shard_count


@task(name="encode-prepare", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient_only)
def prepare_task(out_dir: str) -> int:
    from echo_core.latents.encode import prepare_encode

    return prepare_encode(out_dir)


@task(name="encode-shard", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient_only)
def encode_shard_task(vae_uri: str, dataset_dir: str, out_dir: str, params_path: str, start: int,
                      stop: int) -> dict[str, Any]:
    """Encode FileList rows [start, stop); returns small, picklable facts for `encode-finalize`."""
    from echo_core.latents.encode import EncodeConfig, encode_shard
    from echo_core.models.vae import load_vae
    from pipelines.ops.concurrency import gpu_slot
    from pipelines.registry import resolve_model_folder

    cfg = load_section(EncodeConfig, "encode", params_path)
    vae, info = load_vae(resolve_model_folder(vae_uri), uri=vae_uri if vae_uri.startswith("models:/") else None)
    with gpu_slot():  # one GPU job per card (no-op where no `gpu` limit exists)
        report = encode_shard(vae, dataset_dir, out_dir, info, cfg, range(start, stop))
    get_run_logger().info("%s rows %d-%d: encoded %d, skipped %d, failed %d", out_dir, start, stop,
                          len(report.encoded), len(report.skipped), len(report.failed))
    return {"rows": [start, stop], "encoded": report.encoded, "skipped": report.skipped, "failed": report.failed,
            "latent_shape": report.latent_shape, "vae": dataclasses.asdict(info)}


@task(name="encode-finalize", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient_only)
def finalize_task(dataset_dir: str, out_dir: str, params_path: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the store index once every shard ended; returns the dataset's summary."""
    from echo_core.latents.encode import EncodeConfig, finalize_encode
    from echo_core.models.vae import VaeInfo

    if len({tuple(sorted(s["vae"].items())) for s in shards}) > 1:  # e.g. the alias moved mid-run
        raise WeightsError(f"the shards of {out_dir} were encoded with different VAEs",
                           fix="re-run with a pinned version (models:/<name>/<version>)")
    manifest = finalize_encode(dataset_dir, out_dir, VaeInfo(**shards[0]["vae"]),
                               load_section(EncodeConfig, "encode", params_path),
                               failed={k: v for s in shards for k, v in s["failed"].items()}, shards=len(shards),
                               latent_shape=shards[0]["latent_shape"])
    summary = {"out": out_dir, "shards": len(shards), "encoded": sum(len(s["encoded"]) for s in shards),
               "skipped": sum(len(s["skipped"]) for s in shards), "failed": sorted(manifest["failed"])}
    get_run_logger().info("%s: encoded %d, skipped %d, failed %d (%d shards)", out_dir, summary["encoded"],
                          summary["skipped"], len(summary["failed"]), len(shards))
    return summary


def encode_one(vae: str, dataset_dir: str, out_dir: str, params_path: str, shards: int) -> dict[str, Any]:
    """prepare → shards (fanned out) → finalize for one dataset."""
    from echo_core.latents.encode import plan_shards

    prepare_task(out_dir)
    calls = [(vae, dataset_dir, out_dir, params_path, rows.start, rows.stop)
             for rows in plan_shards(dataset_dir, shards)]
    results = run_shards(encode_shard_task, calls, f"encode {Path(out_dir).name}")
    return finalize_task(dataset_dir, out_dir, params_path, results)


@flow(name="encode", log_prints=True, task_runner=runner_from_env("thread", workers=2))
def encode(vae: str = "models:/echo-vae@candidate", datasets: list[str] | None = None,
           params_path: str = "params.yaml", out_root: str = "outputs",
           shards: int | None = None) -> dict[str, dict[str, Any]]:
    """Encode `datasets` (default: all in params.yaml) from `<out_root>/prepared` into `<out_root>/latents`,
    each in `shards` row slices (default: 1, or ECHOFORGE_TASK_WORKERS when the environment names a runner)."""
    names = datasets or list(load_params(params_path)["datasets"])
    root, n_shards = Path(out_root), shard_count(shards)
    return {name: encode_one(vae, str(root / "prepared" / name), str(root / "latents" / name), params_path,
                             n_shards)
            for name in names}
