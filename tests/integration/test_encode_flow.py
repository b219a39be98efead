"""The Prefect `encode` flow (Prefect test harness): registry-free local VAE folder, resumable re-run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from support.latent_data import make_prepared_dataset

from echo_core.latents.store import read_latents
from echo_core.models.vae import build_vae
from echo_core.utils.hashing import sha256_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_encode_flow_encodes_and_skips_on_rerun(tmp_path: Path):
    from support.servers import prefect_api

    from pipelines.flows.encode import encode

    torch.manual_seed(0)
    build_vae("tiny", scaling_factor=0.5).save_pretrained(tmp_path / "vae")
    make_prepared_dataset(tmp_path / "outputs" / "prepared" / "toy", num_videos=3)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"datasets": {"toy": {}}, "encode": {"mode": "mean", "dtype": "float32"}}))

    with prefect_api():
        first = encode(str(tmp_path / "vae"), None, str(params), str(tmp_path / "outputs"))
        before = sha256_tree(tmp_path / "outputs" / "latents" / "toy" / "Latents")
        second = encode(str(tmp_path / "vae"), None, str(params), str(tmp_path / "outputs"))

    assert first["toy"]["encoded"] == 3 and first["toy"]["failed"] == []
    assert second["toy"]["encoded"] == 0 and second["toy"]["skipped"] == 3
    assert sha256_tree(tmp_path / "outputs" / "latents" / "toy" / "Latents") == before
    tensor, _ = read_latents(next((tmp_path / "outputs" / "latents" / "toy" / "Latents").glob("*.safetensors")))
    assert tuple(tensor.shape[1:]) == (4, 14, 14)
