"""Typed configuration and value objects of the phantom generator.

`PhantomConfig` is the `phantom:` section of params.yaml; `ClipSpec` is the clinical ground truth of one
clip (what the generator is asked to realise); `PhantomClip` is what `render_clip` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from echo_core.config import StrictModel


class PhantomKind(StrEnum):
    """Dataset layouts the generator writes (the reference systems' raw forms)."""

    DYNAMIC = "dynamic"
    PEDIATRIC_A4C = "pediatric-a4c"
    PEDIATRIC_PSAX = "pediatric-psax"
    CARDIACNET = "cardiacnet"


View = Literal["a4c", "psax"]
Condition = Literal["normal", "asd", "pah"]


def _check_range(name: str, pair: tuple[float, float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{name} range must be (low, high) with low <= high, got {list(pair)}")


class KindConfig(StrictModel):
    """How one dataset kind is sampled. Ranges are inclusive (low, high) and drawn uniformly per clip."""

    num_videos: int = Field(ge=1)
    fps: list[float] = Field(min_length=1, description="acquisition rates, one drawn per clip")
    num_frames: tuple[int, int] = (64, 96)
    heart_rate_bpm: tuple[float, float] = (55.0, 95.0)
    ef: tuple[float, float] = (20.0, 75.0)

    @model_validator(mode="after")
    def _ranges(self) -> KindConfig:
        if any(f <= 0 for f in self.fps):
            raise ValueError(f"fps values must be > 0, got {self.fps}")
        if self.num_frames[0] < 8:
            raise ValueError(f"num_frames must be >= 8, got {list(self.num_frames)}")
        if self.heart_rate_bpm[0] < 20 or self.heart_rate_bpm[1] > 250:
            raise ValueError(f"heart_rate_bpm must lie in [20, 250], got {list(self.heart_rate_bpm)}")
        if self.ef[0] < 5 or self.ef[1] > 90:
            raise ValueError(f"ef must lie in [5, 90] %, got {list(self.ef)}")
        for name in ("num_frames", "heart_rate_bpm", "ef"):
            _check_range(name, getattr(self, name))
        return self


class CardiacNetKindConfig(KindConfig):
    """CardiacNet: `num_videos` patients in total, assigned round-robin to ASD, Non-ASD, Non-PAH, PAH."""

    frame_size: tuple[int, int] = Field((96, 128), description="upright (height, width) of the NIfTI frames")


# Per-kind defaults; a params.yaml kind section only lists what it changes (merged over these).
KIND_DEFAULTS: dict[str, dict] = {
    "dynamic": {"num_videos": 24, "fps": [50.0], "heart_rate_bpm": (50.0, 100.0), "ef": (20.0, 75.0)},
    "pediatric_a4c": {"num_videos": 20, "fps": [30.0, 50.0], "heart_rate_bpm": (70.0, 130.0), "ef": (30.0, 75.0)},
    "pediatric_psax": {"num_videos": 20, "fps": [30.0, 50.0], "heart_rate_bpm": (70.0, 130.0), "ef": (30.0, 75.0)},
    "cardiacnet": {"num_videos": 24, "fps": [30.0], "heart_rate_bpm": (60.0, 100.0), "ef": (50.0, 70.0)},
}


class PhantomConfig(StrictModel):
    """The `phantom:` section of params.yaml: the default data set under `data/`."""

    seed: int = Field(0, ge=0)
    dynamic: KindConfig = KindConfig(**KIND_DEFAULTS["dynamic"])
    pediatric_a4c: KindConfig = KindConfig(**KIND_DEFAULTS["pediatric_a4c"])
    pediatric_psax: KindConfig = KindConfig(**KIND_DEFAULTS["pediatric_psax"])
    cardiacnet: CardiacNetKindConfig = CardiacNetKindConfig(**KIND_DEFAULTS["cardiacnet"])

    @model_validator(mode="before")
    @classmethod
    def _merge_kind_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**data, **{k: {**KIND_DEFAULTS[k], **data[k]} for k in KIND_DEFAULTS
                               if isinstance(data.get(k), dict)}}  # fmt: skip
        return data

    def for_kind(self, kind: PhantomKind | str) -> KindConfig:
        return getattr(self, PhantomKind(kind).value.replace("-", "_"))


class ClipSpec(StrictModel):
    """Ground truth one clip must realise. EF in %, volumes in ml; ESV = EDV * (1 - EF/100)."""

    view: View = "a4c"
    condition: Condition = "normal"
    num_frames: int = Field(64, ge=8)
    fps: float = Field(50.0, gt=0)
    heart_rate_bpm: float = Field(70.0, ge=20, le=250)
    ef: float = Field(60.0, ge=5, le=90)
    edv: float = Field(110.0, gt=0)
    frame_size: tuple[int, int] = (112, 112)

    @property
    def esv(self) -> float:
        return self.edv * (1.0 - self.ef / 100.0)


@dataclass(frozen=True)
class PhantomClip:
    """One rendered clip and its ground truth.

    frames: (T, H, W) uint8; labels: (T, H, W) uint8 (0 background, 1 LV, 2 RV, 3 LA, 4 RA cavities).
    Contours are (N, 2) float (x, y) in pixel coordinates: a closed LV cavity polygon (A4C: from one mitral
    annulus corner round the apex to the other; PSAX: the short-axis ring). Axes are (2, 2) [apex, base
    midpoint] for A4C, None for PSAX.
    """

    frames: np.ndarray
    labels: np.ndarray
    ed_frame: int
    es_frame: int
    ed_contour: np.ndarray
    es_contour: np.ndarray
    ed_axis: np.ndarray | None
    es_axis: np.ndarray | None
    edv: float
    esv: float
    ef: float
    heart_rate_bpm: float
    fps: float
