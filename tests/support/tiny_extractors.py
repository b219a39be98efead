"""Metric test inputs: tiny jpg-tree videos, and TorchScript stand-ins with the call signatures of the
published metric weights (inception-2015-12-05.pt, i3d_torchscript.pt) plus a weights folder + manifest
pinning their sha256, so the exact-extractor code paths run for real without the downloaded files (which
cannot exist here)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from echo_core.utils.hashing import sha256_file

FILES = {"inception": "inception-2015-12-05.pt", "i3d": "i3d_torchscript.pt"}


def moving_video(root: Path, name: str, n_frames: int, phase: float, *, speed: float = 0.5, size: int = 16,
                 shuffle: bool = False, quality: int = 100) -> None:
    """`root/name/0000.jpg…`: a bright square moving left to right on gray (optionally frames shuffled)."""
    order = np.random.default_rng(0).permutation(n_frames) if shuffle else np.arange(n_frames)
    (root / name).mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(order):
        frame = np.full((size, size), 20, np.uint8)
        x = int(phase + t * speed) % (size - 4)
        frame[6:10, x:x + 4] = 230
        Image.fromarray(frame).save(root / name / f"{i:04d}.jpg", quality=quality)


class TinyInception(torch.nn.Module):
    """Stand-in with the published inception-2015-12-05.pt call signature (uint8 in)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3 * 4 * 4, 2048)
        self.fc = torch.nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(img.to(torch.float32) / 255, 4).flatten(1)
        feats = torch.relu(self.proj(x))
        if return_features:
            return feats
        logits = feats @ self.fc.weight.t() if no_output_bias else self.fc(feats)
        return torch.softmax(logits, dim=1)


class TinyI3D(torch.nn.Module):
    """Stand-in with the published i3d_torchscript.pt call signature: x (B, 3, T, H, W)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.proj = torch.nn.Linear(3 * 2 * 4 * 4, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        x = x.to(torch.float32) / 255 * 2 - 1 if rescale else x.to(torch.float32)
        return self.proj(torch.nn.functional.adaptive_avg_pool3d(x, (2, 4, 4)).flatten(1))


def write_stub_weights(folder: Path, which: tuple[str, ...] = ("inception", "i3d")) -> Path:
    """Script the stand-ins into `folder` and write a manifest pinning their sha256; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    models = {"inception": TinyInception, "i3d": TinyI3D}
    manifest = json.loads((Path(__file__).parents[2] / "infra/metrics/weights.json").read_text())
    for key in which:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated in torch 2.13
            torch.jit.script(models[key]()).save(str(folder / FILES[key]))
        manifest["files"][key]["sha256"] = sha256_file(folder / FILES[key])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"
