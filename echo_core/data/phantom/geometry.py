"""Geometry of the phantom: clip placement, the cardiac cycle, the LV volume model and soft masks.

Coordinates. Anatomy is laid out in *units*: pixel-index coordinates of a 112-pixel-tall upright image
(x to the right, y down, the transducer at the top centre). A frame of any (H, W) maps onto units with
`112 / H` units per pixel, centred horizontally, so the same anatomy renders at 112x112 (EchoNet) or at a
wider CardiacNet frame. `ClipTransform` adds a per-clip rotation / scale / shift of the heart under a fixed
sector, so clips differ in pose the way real acquisitions do.

Volume model (A4C). The LV cavity is a prolate ellipse truncated at the mitral annulus (`TRUNCATION` of
the half-length past the centre), and volumes follow the single-plane area-length rule used on EchoNet
tracings, V = 8 A^2 / (3 pi L), A the cavity area and L the apex-to-annulus length. With half-axes (a, b)
that gives V = a^2 b / K exactly (K below), so the pixel areas the frames show realise the requested
EDV/ESV ratio, i.e. the EF. In systole L shortens as V^LONG_EXPONENT (longitudinal shortening is smaller
than radial), the short axis takes the rest. PSAX shows the short-axis ring, so its area scales as
V^(1 - LONG_EXPONENT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

UNITS = 112.0  # anatomy units per image height
TRANSDUCER = (55.5, -6.0)  # sector apex, in units (slightly above the top row, as on EchoNet frames)
TRUNCATION = 0.55  # mitral annulus sits this fraction of b past the LV centre
LONG_EXPONENT = 0.15  # L ~ V^0.15
_G = math.pi / 2 + TRUNCATION * math.sqrt(1 - TRUNCATION**2) + math.asin(TRUNCATION)  # area = a*b*_G
K_AREA_LENGTH = 3 * math.pi * (1 + TRUNCATION) / (8 * _G**2)  # V = a^2 b / K


def area_length_volume(area: float, length: float) -> float:
    """Single-plane area-length volume (same units cubed): V = 8 A^2 / (3 pi L)."""
    return 8.0 * area**2 / (3.0 * math.pi * length)


@dataclass(frozen=True)
class ClipTransform:
    """Maps anatomy units to pixels of an (H, W) frame: rotation `angle` (rad) and `scale` about the
    transducer, then a `shift` (units)."""

    height: int
    width: int
    angle: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    @property
    def units_per_pixel(self) -> float:
        return UNITS / self.height

    def image_units(self) -> tuple[np.ndarray, np.ndarray]:
        """(gx, gy): (H, W) float32 unit coordinates of every pixel centre, before the heart pose."""
        k = self.units_per_pixel
        cols = (np.arange(self.width, dtype=np.float32) - (self.width - 1) / 2) * k + (UNITS - 1) / 2
        rows = np.arange(self.height, dtype=np.float32) * k
        return np.meshgrid(cols, rows)

    def anatomy_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(ax, ay): (H, W) float32 anatomy coordinates seen at every pixel (the inverse pose)."""
        gx, gy = self.image_units()
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = (gx - TRANSDUCER[0] - self.shift[0]) / self.scale
        y = (gy - TRANSDUCER[1] - self.shift[1]) / self.scale
        return (c * x + s * y + TRANSDUCER[0]).astype(np.float32), (-s * x + c * y + TRANSDUCER[1]).astype(
            np.float32
        )

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 2) anatomy (x, y) -> (..., 2) pixel (x=column, y=row) coordinates."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = points[..., 0] - TRANSDUCER[0]
        y = points[..., 1] - TRANSDUCER[1]
        gx = self.scale * (c * x - s * y) + TRANSDUCER[0] + self.shift[0]
        gy = self.scale * (s * x + c * y) + TRANSDUCER[1] + self.shift[1]
        k = self.units_per_pixel
        return np.stack([(gx - (UNITS - 1) / 2) / k + (self.width - 1) / 2, gy / k], axis=-1)

    @property
    def pixel_in_anatomy_units(self) -> float:
        """Length of one pixel in anatomy units (sets the 1-pixel anti-aliasing ramp of soft masks)."""
        return self.units_per_pixel / self.scale


# ------------------------------------------------------------------------------------------------------
# Cardiac cycle


@dataclass(frozen=True)
class CycleTiming:
    """Frame timing of a clip. phase: (T,) in [0, 1), 0 at end-diastole (ED); systole ends at `systole`."""

    phase: np.ndarray
    systole: float
    ed_frame: int
    es_frame: int


def cycle_timing(num_frames: int, fps: float, heart_rate_bpm: float, rng: np.random.Generator) -> CycleTiming:
    """Place one ED and the following ES exactly on frames, so the sampled extremes are the true ones.

    Systole lasts ~330 ms (a third of the cycle at 60 bpm, capped at 45 % for fast paediatric rates); it is
    rounded to whole frames, which makes the rendered ED/ES volumes exactly EDV/ESV.
    """
    period = fps * 60.0 / heart_rate_bpm  # frames per beat
    systole_frames = max(1, round(min(max(0.33 * heart_rate_bpm / 60.0, 0.30), 0.45) * period))
    if systole_frames >= num_frames:
        from echo_core.errors import ConfigError

        raise ConfigError(
            f"{num_frames} frames at {fps} fps cannot hold one systole ({systole_frames} frames at "
            f"{heart_rate_bpm:.0f} bpm)",
            fix="raise num_frames or the heart rate, or lower fps",
        )
    last_start = min(int(period), num_frames - 1 - systole_frames)
    ed = int(rng.integers(0, last_start + 1))
    phase = np.mod((np.arange(num_frames) - ed) / period, 1.0)
    return CycleTiming(phase=phase, systole=systole_frames / period, ed_frame=ed, es_frame=ed + systole_frames)


def volume_fraction(phase: np.ndarray, systole: float) -> np.ndarray:
    """(T,) -> (T,): 1 at ED, 0 at ES. Ejection, rapid filling, diastasis, atrial kick; never outside [0, 1]."""
    dia = np.clip((phase - systole) / (1.0 - systole), 0.0, 1.0)
    ejection = 0.5 * (1 + np.cos(np.pi * np.clip(phase / systole, 0, 1)))
    filling = np.select(
        [dia < 0.45, dia < 0.75],
        [0.4 * (1 - np.cos(np.pi * dia / 0.45)), 0.8 + 0.05 * (dia - 0.45) / 0.30],
        0.85 + 0.075 * (1 - np.cos(np.pi * (dia - 0.75) / 0.25)),
    )
    return np.where(phase <= systole, ejection, filling)


def valve_opening(phase: np.ndarray, systole: float) -> np.ndarray:
    """(T,) -> (T,) in [0, 1]: AV valves shut in systole, open in rapid filling and again at the atrial kick."""
    dia = np.clip((phase - systole) / (1.0 - systole), 0.0, 1.0)
    early = np.sin(np.pi * np.clip(dia / 0.5, 0, 1)) ** 0.5
    late = 0.8 * np.sin(np.pi * np.clip((dia - 0.7) / 0.3, 0, 1)) ** 0.5
    return np.where(phase <= systole, 0.0, np.maximum(early, late))


def lv_axes(volume_ratio: np.ndarray, b_ed: float, a_ed: float) -> tuple[np.ndarray, np.ndarray]:
    """Half-axes (a, b) per frame from V/EDV: b ~ V^LONG_EXPONENT, a^2 b ~ V (area-length consistent)."""
    b = b_ed * volume_ratio**LONG_EXPONENT
    a = np.sqrt(a_ed**2 * b_ed * volume_ratio / b)
    return a, b


# ------------------------------------------------------------------------------------------------------
# Soft masks: 1 inside, 0 outside, a one-pixel linear ramp (anti-aliased areas are close to exact).


def ellipse_mask(along: np.ndarray, perp: np.ndarray, a_pos, a_neg, b, px: float) -> np.ndarray:
    """Ellipse in local coordinates. along, perp: (T|1, H, W) offsets from the centre; half-axis b along the
    axis, a_pos / a_neg across it on the perp >= 0 / perp < 0 side (a flattened septum); params (T, 1, 1)."""
    a = a_pos if np.array_equal(a_pos, a_neg) else np.where(perp >= 0, a_pos, a_neg)
    q = np.square(along / b)
    across = perp / a
    q += np.square(across, out=across)
    ramp = np.sqrt(np.minimum(a_pos, b) * b) / (2.0 * px)  # |dq/dd| ~ 2 / radius near the boundary
    np.subtract(1.0, q, out=q)
    q *= ramp
    q += 0.5
    return np.clip(q, 0.0, 1.0, out=q)


def halfplane_mask(along: np.ndarray, limit, px: float) -> np.ndarray:
    """1 where along < limit (soft)."""
    return np.clip(0.5 + (limit - along) / px, 0.0, 1.0)


def segment_mask(ax: np.ndarray, ay: np.ndarray, p0: np.ndarray, p1: np.ndarray, radius: float, px: float):
    """Capsule of `radius` round the segments p0 -> p1. ax, ay: (H', W'); p0, p1: (T, 2) -> (T, H', W')."""
    dx = (p1[:, 0] - p0[:, 0])[:, None, None]
    dy = (p1[:, 1] - p0[:, 1])[:, None, None]
    rx = ax[None] - p0[:, 0, None, None]
    ry = ay[None] - p0[:, 1, None, None]
    t = np.clip((rx * dx + ry * dy) / (dx * dx + dy * dy + 1e-6), 0.0, 1.0)
    dist = np.hypot(rx - t * dx, ry - t * dy)
    return np.clip(0.5 + (radius - dist) / px, 0.0, 1.0)


def direction(angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit axis d for a tilt from straight down (positive = base towards +x), and its normal n (+x side)."""
    t = math.radians(angle_deg)
    return np.array([math.sin(t), math.cos(t)]), np.array([math.cos(t), -math.sin(t)])
