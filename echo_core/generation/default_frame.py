"""The documented default conditioning frame: the end-diastolic frame of a phantom A4C clip (never a patient).

Served when a request sends no `conditioning_frame`. Regenerate `pipelines/serving/default_frame.png` with
    echoforge default-frame pipelines/serving/default_frame.png
(same bytes every time: fixed seed, fixed spec, deterministic PNG encoder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_FRAME_SEED = 20251122
DEFAULT_FRAME_SPEC = {"view": "a4c", "condition": "normal", "num_frames": 32, "fps": 32.0,
                      "heart_rate_bpm": 70.0, "ef": 60.0, "edv": 110.0}


def make_default_frame(size: int = 112) -> np.ndarray:
    """(size, size) uint8: the ED frame of a seeded phantom A4C clip (synthetic, privacy-safe)."""
    from echo_core.data.phantom.config import ClipSpec
    from echo_core.data.phantom.render import render_clip

    spec = ClipSpec(**DEFAULT_FRAME_SPEC, frame_size=(size, size))
    clip = render_clip(spec, np.random.default_rng(DEFAULT_FRAME_SEED))
    return clip.frames[clip.ed_frame]


def write_default_frame(path: str | os.PathLike, size: int = 112) -> Path:
    """Atomically write `make_default_frame(size)` as a PNG at `path`; returns `path`."""
    from PIL import Image

    from echo_core.utils.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(make_default_frame(size)).save(tmp, format="PNG")
    return path


def read_frame_png(path: str | os.PathLike) -> np.ndarray:
    """A PNG → (H, W) uint8 gray."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"))

