"""Feature extractors: the exact StyleGAN-V networks (verified TorchScript) and offline fallbacks.

Exact extractors run the published TorchScript files that StyleGAN-V itself runs
(`inception-2015-12-05.pt`, `i3d_torchscript.pt`): the archive carries the architecture *and* the
TF-ported weights, including the in-network resize and normalisation, so re-declaring the
architecture here could only add mismatches. They are built only from a file whose sha256 matches
the manifest (`weights.verify_weights`), and they run with TF32 off, fp32, eval mode, on uint8
input exactly as StyleGAN-V feeds them.

Fallback extractors need no weights: deterministic numpy feature maps with fixed-seed projections.
Their numbers are not comparable with FID/FVD/IS and are reported only under `*_fallback` names.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from echo_core.errors import WeightsError
from echo_core.metrics.weights import VerifiedWeights, load_manifest, verify_weights

Role = Literal["frame_features", "frame_probs", "clip_features"]


class FeatureExtractor(Protocol):
    """frames: uint8 (N, 3, H, W); clips: uint8 (N, T, 3, H, W) -> float64 (N, dim)."""

    name: str
    dim: int
    sha256: str
    exact: bool
    input: Literal["frames", "clips"]

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------- exact


@contextlib.contextmanager
def tf32_disabled():
    """TF32 off for matmuls and cuDNN convolutions (StyleGAN-V sets both; cuDNN's default is on)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# (weights key, output dim, input kind, forward kwargs) per role: StyleGAN-V's detector calls.
EXACT_SPECS: dict[str, tuple[str, int, str, dict[str, Any]]] = {
    "frame_features": ("inception", 2048, "frames", {"return_features": True}),
    "frame_probs": ("inception", 1008, "frames", {"no_output_bias": True}),
    "clip_features": ("i3d", 400, "clips", {"rescale": True, "resize": True, "return_features": True}),
}
EXACT_NAMES = {"frame_features": "inception-v3-pool3", "frame_probs": "inception-v3-probs-nobias",
               "clip_features": "i3d-kinetics400-logits"}


@dataclass(eq=False)  # identity hash: extractors key the per-run feature groups
class TorchScriptExtractor:
    """A verified StyleGAN-V TorchScript detector."""

    name: str
    dim: int
    input: Literal["frames", "clips"]
    weights: VerifiedWeights
    kwargs: dict[str, Any]
    device: str = "cpu"
    exact: bool = True
    model: Any = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        return self.weights.sha256

    def __post_init__(self) -> None:
        import torch

        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript; the published detectors exist only in that format.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(self.weights.path), map_location=self.device).eval()
        except RuntimeError as exc:
            raise WeightsError(f"{self.weights.path} is not a loadable TorchScript file: {exc}",
                               fix=self.weights.entry.how_to_get()) from None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.input == "clips":
            x = x.permute(0, 2, 1, 3, 4)  # (N, T, 3, H, W) -> (N, 3, T, H, W), as StyleGAN-V feeds I3D
        with torch.no_grad(), tf32_disabled():
            out = self.model(x, **self.kwargs)
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise WeightsError(
                f"{self.weights.path} returned shape {tuple(out.shape)}, expected (N, {self.dim})",
                fix=f"use the file from {self.weights.entry.url}")
        # float32 first, then float64: StyleGAN-V's FeatureStats casts exactly this way.
        return out.to(torch.float32).cpu().numpy().astype(np.float64)


# -------------------------------------------------------------------------------------- fallback

FALLBACK_SEED = 20240611  # fixed: changing it changes every fallback number (and the extractor sha256)


def _gray(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., 3, H, W) -> float64 (..., H, W) in [0, 1]."""
    return frames.astype(np.float64).mean(axis=-3) / 255.0


def _area_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Adaptive average pooling (..., H, W) -> (..., size, size), torch's bin edges, via an integral image."""
    h, w = x.shape[-2:]
    s = np.zeros(x.shape[:-2] + (h + 1, w + 1), np.float64)
    s[..., 1:, 1:] = x.cumsum(-2).cumsum(-1)
    i = np.arange(size)
    r0, r1 = (i * h) // size, -((-(i + 1) * h) // size)
    c0, c1 = (i * w) // size, -((-(i + 1) * w) // size)
    r0, r1 = r0[:, None], r1[:, None]
    total = s[..., r1, c1] - s[..., r0, c1] - s[..., r1, c0] + s[..., r0, c0]
    return total / ((r1 - r0) * (c1 - c0)[None, :])


def _frame_descriptor(frames: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, 1280): 32x32 intensities (centred) + 16x16 gradient magnitudes."""
    g = _gray(frames)
    grad = np.zeros_like(g)
    grad[..., :-1, :] += np.abs(np.diff(g, axis=-2))
    grad[..., :, :-1] += np.abs(np.diff(g, axis=-1))
    pix = _area_pool(g, 32).reshape(len(g), -1) - 0.5
    edges = 4.0 * _area_pool(grad, 16).reshape(len(g), -1)  # x4: gradients are small next to intensities
    return np.concatenate([pix, edges], axis=1)


def _clip_descriptor(clips: np.ndarray) -> np.ndarray:
    """(N, T, 3, H, W) uint8 -> (N, 768): mean 16x16 appearance, mean |frame difference|, temporal std."""
    small = _area_pool(_gray(clips), 16).reshape(clips.shape[0], clips.shape[1], -1)  # (N, T, 256)
    motion = np.abs(np.diff(small, axis=1)).mean(axis=1) if small.shape[1] > 1 else np.zeros_like(small[:, 0])
    return np.concatenate([small.mean(axis=1) - 0.5, 8.0 * motion, 4.0 * small.std(axis=1)], axis=1)


@dataclass(eq=False)
class FallbackExtractor:
    """Weight-free, deterministic extractor: |descriptor @ W + b| (features) or softmax (probs)."""

    name: str
    dim: int
    input: Literal["frames", "clips"]
    probs: bool = False
    exact: bool = False
    sha256: str = ""

    def __post_init__(self) -> None:
        in_dim = 1280 if self.input == "frames" else 768
        rng = np.random.Generator(np.random.PCG64([FALLBACK_SEED, self.dim, in_dim]))
        self._w = rng.standard_normal((in_dim, self.dim)) * (4.0 / np.sqrt(in_dim))
        self._b = rng.standard_normal(self.dim) * 0.1
        h = hashlib.sha256(self.name.encode())
        h.update(self._w.tobytes())
        h.update(self._b.tobytes())
        self.sha256 = h.hexdigest()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        desc = _frame_descriptor(batch) if self.input == "frames" else _clip_descriptor(batch)
        z = desc @ self._w + self._b
        if not self.probs:
            return np.abs(z)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


FALLBACKS: dict[str, tuple[str, int, str, bool]] = {
    "frame_features": ("fallback-pixstats-v1", 2048, "frames", False),
    "frame_probs": ("fallback-probs-v1", 1008, "frames", True),
    "clip_features": ("fallback-spacetime-v1", 400, "clips", False),
}


def build_extractor(role: Role, exact: bool, *, weights_dir: str | os.PathLike | None = None,
                    manifest: str | os.PathLike | None = None, device: str = "cpu") -> FeatureExtractor:
    """The extractor for `role`. exact=True needs verified weights (else WeightsError); never falls back."""
    if role not in FALLBACKS:
        raise ValueError(f"unknown extractor role {role!r}; expected one of {sorted(FALLBACKS)}")
    if not exact:
        name, dim, kind, probs = FALLBACKS[role]
        return FallbackExtractor(name=name, dim=dim, input=kind, probs=probs)
    key, dim, kind, kwargs = EXACT_SPECS[role]
    weights = verify_weights(load_manifest(manifest)[key], weights_dir)
    return TorchScriptExtractor(name=EXACT_NAMES[role], dim=dim, input=kind, weights=weights,
                                kwargs=kwargs, device=device)
