"""Phantom echocardiograms: synthetic EchoNet-Dynamic, EchoNet-Pediatric and CardiacNet datasets.

Everything in EchoForge runs on these when the real datasets are absent. Each clip realises a known
ground truth (EF, EDV/ESV, heart rate, ED/ES frames, class) and is byte-identical for the same seed.
"""

from echo_core.data.phantom.config import (
    CardiacNetKindConfig,
    ClipSpec,
    KindConfig,
    PhantomClip,
    PhantomConfig,
    PhantomKind,
)
from echo_core.data.phantom.render import render_clip

__all__ = [
    "CardiacNetKindConfig",
    "ClipSpec",
    "KindConfig",
    "PhantomClip",
    "PhantomConfig",
    "PhantomKind",
    "render_clip",
]
