"""The re-identification network: a Siamese ResNet on single latent frames (seed-systems §5.1).

`ReidNet.embed(x)` maps a latent frame to a 128-d embedding (sigmoid of the ResNet's fc); `forward(a, b)` is
the logit that two frames show the same identity, `Linear(128, 1)(|ea − eb|)`. The "reference" variant has the
reference's ResNet-50 layout (conv1 4→64 k7 s2 p3, bottlenecks [3, 4, 6, 3], fc → 128; its ImageNet weights
are not used: they were trained on RGB photographs, not 4-channel latents); "small" is a few basic blocks that
train on a CPU. Normalisation layers are GroupNorm (`_norm`), except in "resnet50-bn": the reference's own
BatchNorm ResNet-50, for weights imported from the reference systems (`echoforge privacy import`; eval mode,
so an embedding still depends on its frame alone, through the trained running statistics).

What it fixes (§8 bug 14): the reference min-max normalised real frames per video and synthetic frames jointly
over the whole synthetic set, so the same latent got a different input depending on what it was batched with.
Here every frame is min-max normalised to [−1, 1] on its own, inside the module, for training, calibration
and filtering alike.

Folder format (`save_pretrained` / `from_pretrained`):
    reid_config.json     format, variant, step, vae_sha256, latent shape, the training config ("train"),
                         the held-out pair AUC where training recorded it
    model.safetensors    the weights
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from echo_core.errors import WeightsError
from echo_core.models.loading import read_folder_meta
from echo_core.utils.atomic import atomic_path, write_json_atomic

REID_FORMAT = "echoforge-reid/1"
REID_CONFIG_FILE = "reid_config.json"
WEIGHTS_FILE = "model.safetensors"
EMBED_DIM = 128
LATENT_SHAPE = (4, 14, 14)


@dataclass(frozen=True)
class ResNetLayout:
    block: str  # "basic" | "bottleneck"
    layers: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # output channels of each stage (before a bottleneck's ×4 expansion)
    stem: str  # "reference": conv k7 s2 + max-pool (ResNet); "light": conv k3 s1 (keeps 14×14)
    norm: str = "group"  # "group" | "batch" (imported reference weights only)


VARIANTS = {
    "reference": ResNetLayout("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), "reference"),
    "small": ResNetLayout("basic", (1, 1, 1), (32, 64, 96), "light"),
    "resnet50-bn": ResNetLayout("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), "reference", norm="batch"),
}


def normalise_frames(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-frame min-max to [−1, 1]. x: (B, C, h, w) → (B, C, h, w); a constant frame becomes 0."""
    flat = x.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    scale = (hi - lo).clamp_min(eps)[:, None, None, None]
    return (x - lo[:, None, None, None]) / scale * 2 - 1


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 3, stride, 1, bias=False), _norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), _norm(width))
        self.skip = _shortcut(c_in, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False), _norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), _norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, c_out, 1, bias=False), _norm(c_out))
        self.skip = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm, not the reference's BatchNorm: an embedding then depends on its frame alone, in training
    (whatever it is batched with) and inference alike, and the net has no running-statistics buffers."""
    return nn.GroupNorm(32 if channels % 32 == 0 else 8, channels)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(c_out))


def _stem(layout: ResNetLayout, c_in: int) -> tuple[nn.Module, int]:
    if layout.stem == "reference":  # 14×14 → 7×7 → 4×4, as the reference's resnet50 with a 4-channel conv1
        return nn.Sequential(nn.Conv2d(c_in, 64, 7, 2, 3, bias=False), _norm(64), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, 2, 1)), 64
    width = layout.widths[0]
    return nn.Sequential(nn.Conv2d(c_in, width, 3, 1, 1, bias=False), _norm(width),
                         nn.ReLU(inplace=True)), width


def _use_batch_norm(module: nn.Module) -> None:
    """Replace every GroupNorm by a BatchNorm2d of the same width (the reference's layer, same position)."""
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, nn.BatchNorm2d(child.num_channels))
        else:
            _use_batch_norm(child)


class ResNetEncoder(nn.Module):
    """x: (B, C, h, w) → (B, EMBED_DIM) pre-sigmoid features."""

    def __init__(self, layout: ResNetLayout, in_channels: int = LATENT_SHAPE[0]):
        super().__init__()
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[layout.block]
        self.stem, c = _stem(layout, in_channels)
        stages = []
        for i, (count, width) in enumerate(zip(layout.layers, layout.widths, strict=True)):
            for j in range(count):
                stages.append(block(c, width, 2 if i > 0 and j == 0 else 1))
                c = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, EMBED_DIM)
        if layout.norm == "batch":
            _use_batch_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


class ReidNet(nn.Module):
    """Siamese re-identification net on latent frames (B, 4, 14, 14), normalised per frame inside."""

    def __init__(self, variant: str = "small"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown re-identification variant {variant!r}; choose one of {sorted(VARIANTS)}")
        self.variant = variant
        self.encoder = ResNetEncoder(VARIANTS[variant])
        self.head = nn.Linear(EMBED_DIM, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, h, w) raw latents → (B, 128) embeddings in (0, 1)."""
        return torch.sigmoid(self.encoder(normalise_frames(x.float())))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: (B, C, h, w) → (B,) logit that a and b show the same identity."""
        return self.head((self.embed(a) - self.embed(b)).abs()).squeeze(1)

    def save_pretrained(self, folder: str | os.PathLike, *, step: int = 0, vae_sha256: str = "",
                        train: dict[str, Any] | None = None, heldout: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp))
        write_json_atomic(folder / REID_CONFIG_FILE, {
            "format": REID_FORMAT, "variant": self.variant, "step": step, "vae_sha256": vae_sha256,
            "latent_shape": list(LATENT_SHAPE), "train": dict(train or {}), "heldout_auc": heldout})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ReidNet:
        """The net in eval mode; a WeightsError naming the folder when it is not a re-identification folder."""
        from safetensors.torch import load_file

        meta = read_reid_meta(folder)
        net = cls(meta["variant"])
        try:
            net.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
        except (OSError, RuntimeError) as exc:
            raise WeightsError(f"cannot load {Path(folder) / WEIGHTS_FILE}: {str(exc)[:200]}",
                               fix="re-run `echoforge privacy train`") from None
        return net.eval()


def read_reid_meta(folder: str | os.PathLike) -> dict[str, Any]:
    return read_folder_meta(folder, REID_CONFIG_FILE, REID_FORMAT, what="a re-identification model",
                            fix="pass the folder written by `echoforge privacy train` (outputs/privacy/<ds>/reid)")


def build_reid_net(variant: str) -> ReidNet:
    """The registry of variants (VARIANTS); an unknown name raises ValueError."""
    return ReidNet(variant)
