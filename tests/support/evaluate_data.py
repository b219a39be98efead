"""A tiny evaluation project: outputs/{prepared,reference,latents}/<ds> of pulsing-blob videos and a params.yaml
whose evaluate / downstream sections run in seconds on CPU (tests/integration/test_evaluate_flow.py and the
tracking-server restart of test_faults.py)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from echo_core.data.filelist import CARDIACNET_CLASSES, read_filelist, write_filelist
from echo_core.data.reference import build_reference
from echo_core.latents.store import LatentMeta, latent_path, write_latents
from support.latent_data import make_prepared_dataset

SPLITS = ("TRAIN", "TRAIN", "VAL", "TRAIN", "TEST", "TRAIN", "VAL", "TRAIN", "TEST", "TRAIN")
METRICS = ["fd_fallback", "fvd16_fallback", "is_fallback", "kid_fallback"]


def write_evaluation_dataset(root: Path, name: str, classes: bool = False) -> None:
    """root/{prepared,reference,latents}/<name>: 10 pulsing-blob videos (6 TRAIN, 2 VAL, 2 TEST)."""
    prepared = make_prepared_dataset(root / "prepared" / name, num_videos=10, frames=(16, 20), splits=SPLITS)
    df = read_filelist(prepared / "FileList.csv")
    if classes:  # CardiacNet columns: fixed-map class ids, one patient per video
        df = df.drop(columns=["EF"]).assign(class_id=[0, 1, 0, 1, 1, 0, 1, 0, 0, 1],  # both classes per split
                                             patient_id=[f"p{i}" for i in range(len(df))])
        df["class_name"] = df["class_id"].map(CARDIACNET_CLASSES)
        write_filelist(df, prepared / "FileList.csv")
    build_reference(prepared, root / "reference" / name, frames=16, fps=32.0)
    meta = LatentMeta(fps=32.0, source_sha256="x", scaling_factor=0.5, mode="mean")
    torch.manual_seed(0)
    for file_name, frames in zip(df["FileName"], df["NumberOfFrames"], strict=True):
        write_latents(latent_path(root / "latents" / name, file_name), torch.randn(int(frames), 4, 14, 14), meta)
    write_filelist(df, root / "latents" / name / "FileList.csv")


def write_evaluation_params(path: Path, datasets: tuple[str, ...]) -> Path:
    """params.yaml evaluating `datasets[0]` with 4 samples, the fallback metrics and 1-epoch downstream nets."""
    params = {
        "datasets": {name: {} for name in datasets},
        "sample": {"sampler": "ddim", "steps": 1, "num_frames": 16, "fps": 32.0, "batch_size": 4, "device": "cpu"},
        "evaluate": {"datasets": [datasets[0]], "sample": {"num_samples": 4}, "ratio_metrics": ["fvd16_fallback"],
                     "metrics": {"metrics": METRICS, "allow_fewer": True, "kid_subsets": 10, "kid_subset_size": 8}},
        "downstream": {"regression": {"width": 2, "epochs": 1, "frames": 8, "size": 32, "batch_size": 4},
                       "classification": {"width": 2, "epochs": 1, "frames": 8, "size": 32, "batch_size": 4,
                                          "folds": 2, "train_on": "synthetic"}},
    }
    path.write_text(yaml.safe_dump(params))
    return path
