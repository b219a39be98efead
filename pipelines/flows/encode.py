"""Prefect flow `encode`: resolve the registered VAE, encode each prepared dataset into a latent store.

Each dataset is one task (the encoder batches frames across the videos of a dataset and resumes by
itself: finished videos are skipped). Run it directly:
    python -m pipelines.flows.encode --vae models:/echo-vae@candidate --dataset dynamic
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from echo_core.config import load_params, load_section
from pipelines.flows.common import retry_transient_only


@task(name="encode-dataset", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient_only)
def encode_task(vae_uri: str, dataset_dir: str, out_dir: str, params_path: str) -> dict[str, Any]:
    from echo_core.data.encode import EncodeConfig, encode_dataset
    from echo_core.models.vae import load_vae
    from pipelines.tracking import resolve_model_folder

    cfg = load_section(EncodeConfig, "encode", params_path)
    folder = resolve_model_folder(vae_uri)
    vae, info = load_vae(folder, uri=vae_uri if vae_uri.startswith("models:/") else None)
    from pipelines.ops.concurrency import gpu_slot

    with gpu_slot():  # one GPU job per card (no-op where no `gpu` limit exists)
        report = encode_dataset(vae, dataset_dir, out_dir, info, cfg)
    get_run_logger().info("%s: encoded %d, skipped %d, failed %d", out_dir, len(report.encoded),
                          len(report.skipped), len(report.failed))
    return {"out": out_dir, "encoded": len(report.encoded), "skipped": len(report.skipped),
            "failed": sorted(report.failed)}


@flow(name="encode", log_prints=True)
def encode(vae: str = "models:/echo-vae@candidate", datasets: list[str] | None = None,
           params_path: str = "params.yaml", out_root: str = "outputs") -> dict[str, dict[str, Any]]:
    """Encode `datasets` (default: all in params.yaml) from `<out_root>/prepared` into `<out_root>/latents`."""
    names = datasets or list(load_params(params_path)["datasets"])
    root = Path(out_root)
    return {name: encode_task(vae, str(root / "prepared" / name), str(root / "latents" / name), params_path)
            for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="models:/echo-vae@candidate")
    parser.add_argument("--dataset", action="append")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-root", default="outputs")
    args = parser.parse_args()
    print(encode(args.vae, args.dataset, args.params, args.out_root))


if __name__ == "__main__":
    main()
