"""Sharded `encode` flow: thread runner and a real Dask LocalCluster write the same store as the sequential path.

Which sequential path: the tiny VAE on CPU is NOT batch-invariant bitwise. Measured here (1 torch thread):
a frame encoded in a batch of 1 differs from the same frame in a batch of 2-8 by up to ~2e-6, batches of
16+ differ again, and the same batch under another torch thread count differs too. A shard cuts its own
frame stream, so shards=2 batches frames differently from the unsharded stream (with this data: shard 1
ends in a one-frame batch where the unsharded stream batches that frame with three others).
- BITWISE reference: the same shards run one after another in this process (`prepare_encode`,
  `encode_shard` per `plan_shards` slice, `finalize_encode`); every file, manifest included, is identical.
- BY TOLERANCE: the unsharded `encode_dataset`: latents allclose (atol 1e-5), FileList byte-identical,
  manifest equal except its `shards` field (2 vs 1).
- shards=1 is compared byte-for-byte with `encode_dataset`.
Torch runs one intra-op thread in this process and in the Dask workers: the thread count changes the bits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from support.latent_data import make_prepared_dataset

from echo_core.errors import DataError
from echo_core.latents.encode import (
    EncodeConfig,
    encode_dataset,
    encode_shard,
    finalize_encode,
    plan_shards,
    prepare_encode,
)
from echo_core.latents.store import read_latents
from echo_core.models.vae import load_vae

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
ENCODE = {"mode": "mean", "dtype": "float32", "batch_frames": 4}  # small batches that cross videos and shards


def _project(root: Path, bad: str | None = None, **encode) -> tuple[Path, Path]:
    """`root/prepared/toy` (5 videos, 5/9/6 frames) and params.yaml; `bad` names a video to corrupt."""
    dataset = make_prepared_dataset(root / "prepared" / "toy", num_videos=5, frames=(5, 9, 6))
    if bad:
        (dataset / "Videos" / f"{bad}.avi").write_bytes(b"not a video at all")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"datasets": {"toy": {}}, "encode": {**ENCODE, **encode}}))
    return dataset, params


def _shards_in_process(vae_folder: Path, dataset: Path, out: Path, n_shards: int, **encode) -> None:
    """The sequential reference: the flow's procedure, shard after shard, in this process."""
    vae, info = load_vae(vae_folder)
    cfg = EncodeConfig(**{**ENCODE, **encode})
    prepare_encode(out)
    reports = [encode_shard(vae, dataset, out, info, cfg, rows) for rows in plan_shards(dataset, n_shards)]
    finalize_encode(dataset, out, info, cfg, failed={k: v for r in reports for k, v in r.failed.items()},
                    shards=len(reports), latent_shape=reports[0].latent_shape)


def _digests(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture(scope="class")
def harness():
    from support.servers import prefect_api

    with prefect_api():
        yield


@pytest.mark.usefixtures("harness")
class TestThreadRunner:
    def test_two_shards_equal_the_sequential_shards_and_one_shard_equals_encode_dataset(self, vae_folder, tmp_path):
        from pipelines.flows.encode import encode

        dataset, params = _project(tmp_path / "a", bad="video_001")  # shard 1's failure is merged
        done = encode(str(vae_folder), None, str(params), str(tmp_path / "a"), shards=2)["toy"]
        store = tmp_path / "a" / "latents" / "toy"
        assert (done["shards"], done["encoded"], done["failed"]) == (2, 4, ["video_001"])
        _shards_in_process(vae_folder, dataset, tmp_path / "ref", 2)
        assert _digests(store) == _digests(tmp_path / "ref")
        assert "Latents/video_000.safetensors" in _digests(store)

        vae, info = load_vae(vae_folder)
        encode_dataset(vae, dataset, tmp_path / "seq", info, EncodeConfig(**ENCODE))  # the unsharded stream
        assert (store / "FileList.csv").read_bytes() == (tmp_path / "seq" / "FileList.csv").read_bytes()
        sharded, seq = (json.loads((d / "manifest.json").read_text()) for d in (store, tmp_path / "seq"))
        assert (sharded.pop("shards"), seq.pop("shards")) == (2, 1) and sharded == seq
        for name in ("video_000", "video_002", "video_003", "video_004"):
            got, want = (read_latents(d / "Latents" / f"{name}.safetensors")[0] for d in (store, tmp_path / "seq"))
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

        dataset1, params1 = _project(tmp_path / "b", bad="video_001")
        encode(str(vae_folder), None, str(params1), str(tmp_path / "b"), shards=1)
        encode_dataset(vae, dataset1, tmp_path / "seq1", info, EncodeConfig(**ENCODE))
        assert _digests(tmp_path / "b" / "latents" / "toy") == _digests(tmp_path / "seq1")

    def test_a_failed_shard_leaves_no_partial_file_and_a_rerun_completes(self, vae_folder, tmp_path):
        from pipelines.flows.encode import encode

        dataset, params = _project(tmp_path, fail_on_error=True)
        video = dataset / "Videos" / "video_004.avi"  # in the second shard (rows 2-4)
        good = video.read_bytes()
        video.write_bytes(b"truncated")
        with pytest.raises(DataError, match="video_004"):
            encode(str(vae_folder), None, str(params), str(tmp_path), shards=2)
        store = tmp_path / "latents" / "toy"
        finished = sorted(p.stem for p in (store / "Latents").glob("*.safetensors"))
        assert {"video_000", "video_001"} <= set(finished) and "video_004" not in finished  # shard 1 finished
        assert all(read_latents(store / "Latents" / f"{n}.safetensors")[0].shape[0] > 0 for n in finished)
        assert not list(store.rglob(".*tmp*")) and not (store / "manifest.json").exists()
        assert not (store / "FileList.csv").exists()

        (store / "Latents" / ".video_003.x1.tmp.safetensors").write_bytes(b"half")  # as if killed mid-write
        video.write_bytes(good)
        done = encode(str(vae_folder), None, str(params), str(tmp_path), shards=2)["toy"]
        assert (done["skipped"], done["encoded"], done["failed"]) == (len(finished), 5 - len(finished), [])
        assert not list(store.rglob(".*tmp*"))
        _shards_in_process(vae_folder, dataset, tmp_path / "ref", 2, fail_on_error=True)
        assert _digests(store) == _digests(tmp_path / "ref")


@pytest.mark.slow
def test_dask_local_cluster_shards_equal_the_sequential_shards(vae_folder, tmp_path, monkeypatch):
    from support.servers import dask_behind_prefect

    from pipelines.flows.encode import encode

    dataset, params = _project(tmp_path, bad="video_003")
    # bits depend on torch's thread count: one per worker, as the in-process reference below uses
    with dask_behind_prefect(monkeypatch, {"OMP_NUM_THREADS": "1"}) as dask:
        done = encode.with_options(task_runner=dask.runner)(str(vae_folder), None, str(params), str(tmp_path),
                                                            shards=2)["toy"]
    workers = dask.workers("encode_shard_task")

    assert len(workers) == 2  # each worker process ran a shard
    assert (done["shards"], done["encoded"], done["failed"]) == (2, 4, ["video_003"])
    _shards_in_process(vae_folder, dataset, tmp_path / "ref", 2)
    assert _digests(tmp_path / "latents" / "toy") == _digests(tmp_path / "ref")
