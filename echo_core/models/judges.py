"""EF judges: the ejection fraction a video shows, for EF adherence of generated videos.

`PixelEfJudge` is training-free: it measures the LV cavity in the pixels of an apical four-chamber (A4C)
clip and turns the area change into an EF with a two-parameter calibration fitted on real TRAIN videos.
Nothing is learnt from appearance (no features shared with the generator, no retraining per evaluation);
it is validated against the phantom's ground truth (issue #12 §2).

The measure, per clip (video: (T, H, W) grey levels in [0, 255], the sector fan black outside):
1. smooth the speckle (Gaussian in space, ~20 ms in time); the fan is where the temporal median is not
   black (a median ignores zero-mean noise, which a mean would turn into a grey "fan" everywhere);
2. blood is ~30 dB darker than myocardium: grey levels are split at the mid-point of the fan's 10th and
   90th percentiles (the half level sits on the cavity outline); a lower level finds the blood cores;
3. the LV core is the blood that stays dark through the cycle (the end-systolic cavity); in A4C it is the
   large core with the highest apex (the RV apex is lower, the atria are below the valves);
4. the region of interest is the dark area connected to that core, cut at the core's base (the mitral
   annulus at end-systole, so the LA never counts) and kept within 12 px of the core;
5. per frame, the (soft) number of dark pixels in that region is the cavity area A(t); the measure is
   m = 1 - (A_low / A_high) ** (2 / 1.15), with A_low / A_high the 5th / 95th percentiles of A(t):
   the area-length rule V = 8 A² / (3 π L) with L ~ V^0.15 (geometry.py) makes V ~ A^(2 / 1.15).
EF = clip(alpha * m + beta, 0, 100). A motionless clip gives m = 0, i.e. EF = clip(beta): the judge's floor.

Lengths are in pixels of a 112-pixel-tall frame (EchoNet) and scale with the frame height. The clip must
hold one end-diastole and the following end-systole: about one heart cycle (>= 1 s at >= 60 bpm).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from echo_core.errors import ConfigError, DataError

JUDGE_VERSION = 1  # bump when the measure changes: a saved calibration is only valid for its version
REFERENCE_HEIGHT = 112  # pixel lengths below are for this frame height
_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, one pixel per morphology step


@dataclass(frozen=True)
class PixelEfParams:
    """How the cavity is found and measured. Lengths in pixels of a 112-pixel-tall frame."""

    spatial_sigma: float = 1.5  # speckle smoothing for the cavity area
    core_sigma: float = 2.5  # heavier smoothing for finding the blood cores
    temporal_sigma_s: float = 0.02  # seconds; far shorter than systole (~330 ms), so extremes survive
    fan_sigma: float = 3.0
    fan_level: float = 8.0  # grey level of the smoothed temporal median above which a pixel is in the fan
    core_level: float = 0.25  # blood cores: below lo + core_level * (hi - lo) (below the grey background)
    core_fraction: float = 0.8  # a core pixel is dark in at least this fraction of frames
    ever_fraction: float = 0.1  # a cavity pixel is dark in at least this fraction of frames
    fan_margin_px: int = 4  # cores must keep this far from the fan edge (its soft ramp is dark)
    core_open_px: int = 3  # opening that removes thin dark strips before choosing the core
    cavity_open_px: int = 2  # opening that cuts thin leaks out of the cavity region
    reach_px: float = 12.0  # the cavity extends at most this far beyond the end-systolic core
    grow_px: int = 3  # the core-level cavity grown to the half-level outline
    base_margin_px: float = 3.0  # the cut below the core's base (the annulus descends in diastole)
    ramp: float = 0.25  # soft dark ramp width, as a fraction of (hi - lo): sub-pixel areas
    percentiles: tuple[float, float] = (5.0, 95.0)  # robust min / max of A(t)
    exponent: float = 2.0 / 1.15  # V ~ A^exponent (area-length rule with L ~ V^0.15)


@dataclass(frozen=True)
class CavityTrace:
    """What the measure saw. areas: (T,) soft dark pixels in the ROI per frame; roi, core: (H, W) bool."""

    areas: np.ndarray
    roi: np.ndarray
    core: np.ndarray
    level: float  # the half level (grey) splitting blood from tissue


# ------------------------------------------------------------------------------------------------ input


def check_video(video: Any, fps: float, name: str = "video") -> tuple[np.ndarray, float]:
    """(T, H, W) uint8 or float grey levels in [0, 255] -> float32 copy; raises DataError naming the field."""
    arr = np.asarray(video)
    if arr.ndim != 3:
        raise DataError(
            f"{name}: expected (T, H, W) grey frames, got shape {arr.shape}",
            fix="pass one grey clip per call (read_video(..., gray=True); RGB -> take one channel)",
        )
    if min(arr.shape) < 2 or min(arr.shape[1:]) < 16:
        raise DataError(
            f"{name}: shape {arr.shape} is too small (need >= 2 frames of >= 16x16 pixels)",
            fix="pass a whole clip, at least one heart cycle long",
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{name}: dtype {arr.dtype} is not numeric", fix="pass uint8 or float grey levels")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{name}: contains NaN or Inf", fix="check the decoder / sampler output")
    if arr.min() < 0 or arr.max() > 255:
        raise DataError(f"{name}: values must be grey levels in [0, 255], got [{arr.min():.3g}, {arr.max():.3g}]",
                        fix="rescale to [0, 255] (e.g. (x + 1) * 127.5 for [-1, 1] model outputs)")  # fmt: skip
    if not (isinstance(fps, numbers.Real) and not isinstance(fps, bool) and math.isfinite(fps) and fps > 0):
        raise DataError(f"fps: must be a positive number, got {fps!r}", fix="pass the clip's frame rate")
    return arr, float(fps)


# ---------------------------------------------------------------------------------------------- the LV


def _px(length: float, scale: float) -> int:
    return max(1, round(length * scale))


def fan_mask(video: np.ndarray, p: PixelEfParams, scale: float) -> np.ndarray:
    """(T, H, W) -> (H, W) bool: the largest not-black region (holes filled), eroded off its soft edge."""
    median = ndimage.gaussian_filter(np.median(video, axis=0), p.fan_sigma * scale)
    fan = ndimage.binary_fill_holes(median > p.fan_level)
    labels, n = ndimage.label(fan)
    if n > 1:
        fan = labels == 1 + int(np.argmax(ndimage.sum(fan, labels, np.arange(1, n + 1))))
    return ndimage.binary_erosion(fan, iterations=_px(2, scale))


def _pick_core(candidates: np.ndarray) -> np.ndarray | None:
    """The A4C LV among the blood cores: of the large ones (>= 1/4 of the largest), the highest apex.

    Cores touching the image border are noise outside the fan, not a cavity.
    """
    labels, n = ndimage.label(candidates)
    if n == 0:
        return None
    areas = ndimage.sum(candidates, labels, np.arange(1, n + 1))
    border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    best, best_top = None, math.inf
    for k in range(1, n + 1):
        if areas[k - 1] < max(0.25 * areas.max(), 30) or k in border:
            continue
        top = int(np.argmax((labels == k).any(axis=1)))
        if top < best_top:
            best, best_top = k, top
    return None if best is None else labels == best


def _below_base(core: np.ndarray, margin: float) -> np.ndarray:
    """(H, W) bool: pixels past the core's base along its long axis (apex -> base, pointing down)."""
    rows, cols = np.nonzero(core)
    pts = np.stack([cols, rows], axis=1).astype(np.float64)
    centre = pts.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov((pts - centre).T))
    axis = vectors[:, -1] if vectors[1, -1] >= 0 else -vectors[:, -1]
    base = ((pts - centre) @ axis).max()
    yy, xx = np.mgrid[: core.shape[0], : core.shape[1]]
    return (xx - centre[0]) * axis[0] + (yy - centre[1]) * axis[1] > base + margin


def _cavity_roi(dark_fraction: np.ndarray, core: np.ndarray, fan: np.ndarray, p: PixelEfParams,
                scale: float) -> np.ndarray:  # fmt: skip
    """(H, W) bool: the ever-dark region connected to the core, above its base, near it, grown to the outline."""
    above = fan & ~_below_base(core, p.base_margin_px * scale)
    ever = ndimage.binary_opening((dark_fraction >= p.ever_fraction) & above, _CROSS,
                                  iterations=_px(p.cavity_open_px, scale))  # fmt: skip
    ever &= ndimage.distance_transform_edt(~core) <= p.reach_px * scale
    labels, _ = ndimage.label(ever | core)
    region = np.isin(labels, np.unique(labels[core]))
    return ndimage.binary_dilation(region, _CROSS, iterations=_px(p.grow_px, scale)) & above


def cavity_trace(video: np.ndarray, fps: float, p: PixelEfParams = PixelEfParams()) -> CavityTrace | None:
    """The LV cavity area per frame of an A4C clip, or None when no cavity can be found.

    video: (T, H, W) float32 in [0, 255] (see `check_video`). None: an empty fan (all black), no contrast
    (constant frames) or no dark enclosed core.
    """
    scale = video.shape[1] / REFERENCE_HEIGHT
    fan = fan_mask(video, p, scale)
    if fan.sum() < 100 * scale**2:
        return None
    sigma_t = p.temporal_sigma_s * fps
    smooth = ndimage.gaussian_filter(video, (sigma_t, *[p.spatial_sigma * scale] * 2), mode="nearest")
    lo, hi = np.percentile(smooth[:, fan], [10, 90])
    if hi - lo < 1.0:
        return None
    coarse = ndimage.gaussian_filter(video, (sigma_t, *[p.core_sigma * scale] * 2), mode="nearest")
    core_fraction = (coarse < lo + p.core_level * (hi - lo)).mean(axis=0) * fan
    inner = ndimage.binary_erosion(fan, iterations=_px(p.fan_margin_px, scale))
    candidates = ndimage.binary_opening((core_fraction >= p.core_fraction) & inner, _CROSS,
                                        iterations=_px(p.core_open_px, scale))  # fmt: skip
    core = _pick_core(candidates)
    if core is None:
        return None
    roi = _cavity_roi(core_fraction, core, fan, p, scale)
    level = 0.5 * (lo + hi)
    # a soft ramp instead of a hard threshold: sub-pixel areas, and less flicker from speckle at the edge
    darkness = np.clip(0.5 + (level - smooth[:, roi]) / (p.ramp * (hi - lo)), 0.0, 1.0)
    return CavityTrace(areas=darkness.sum(axis=1).astype(np.float64), roi=roi, core=core, level=float(level))


def area_change(areas: np.ndarray, p: PixelEfParams = PixelEfParams()) -> float:
    """(T,) cavity areas -> m = 1 - (A_low / A_high) ** exponent in [0, 1]; NaN when the cavity is empty."""
    low, high = np.percentile(areas, p.percentiles)
    if not high > 0:
        return math.nan
    return float(1.0 - (low / high) ** p.exponent)


# ---------------------------------------------------------------------------------------------- judge


@dataclass(frozen=True)
class PixelEfJudge:
    """Training-free EF judge: EF = clip(alpha * measure + beta, 0, 100), NaN where no LV is found.

    The defaults (alpha 100, beta 0) are the uncalibrated area-length EF; `fit` calibrates on TRAIN.
    """

    alpha: float = 100.0
    beta: float = 0.0
    params: PixelEfParams = field(default_factory=PixelEfParams)
    n_fit: int = 0  # videos the calibration was fitted on (0: not calibrated)

    def measure(self, video: np.ndarray, fps: float) -> float:
        """video: (T, H, W) uint8 or float in [0, 255], A4C, apex up -> the raw measure m in [0, 1].

        NaN when no LV can be found: all-black or constant frames, or no dark cavity enclosed by tissue.
        A motionless clip (one frame repeated) gives 0. Bad input raises DataError naming the field.
        """
        arr, fps = check_video(video, fps)
        trace = cavity_trace(arr, fps, self.params)
        return math.nan if trace is None else area_change(trace.areas, self.params)

    def calibrate(self, measures: Any) -> np.ndarray:
        """(N,) raw measures -> (N,) EF in % (clipped to [0, 100]; NaN stays NaN)."""
        m = np.asarray(measures, dtype=np.float64)
        return np.clip(self.alpha * m + self.beta, 0.0, 100.0)

    def predict(self, videos: Sequence[np.ndarray] | np.ndarray, fps: float | Sequence[float]) -> np.ndarray:
        """videos: N clips (T_i, H, W) (a list, or an (N, T, H, W) array); fps: one rate or N -> (N,) EF %."""
        rates = [fps] * len(videos) if np.isscalar(fps) else list(fps)
        if len(rates) != len(videos):
            raise DataError(f"fps: {len(rates)} rates for {len(videos)} videos", fix="pass one fps or one per video")
        return self.calibrate([self.measure(v, r) for v, r in zip(videos, rates, strict=True)])

    def fit(self, measures: Any, efs: Any) -> PixelEfJudge:
        """Least-squares EF = alpha * m + beta on TRAIN measures (N,) and true EFs (N,) % -> a new judge."""
        m, y = np.asarray(measures, dtype=np.float64), np.asarray(efs, dtype=np.float64)
        if m.ndim != 1 or m.shape != y.shape:
            raise DataError(f"measures / efs: need two (N,) arrays, got shapes {m.shape} and {y.shape}")
        bad = np.flatnonzero(~(np.isfinite(m) & np.isfinite(y)))
        if bad.size:
            raise DataError(
                f"measures / efs: {bad.size} non-finite value(s), first at index {int(bad[0])}",
                fix="drop the videos the judge could not measure (NaN) before fitting",
            )
        if m.size < 3 or np.ptp(m) == 0:
            raise DataError(
                f"measures: need >= 3 videos with differing measures, got {m.size}",
                fix="calibrate on the real TRAIN split (tens of videos across the EF range)",
            )
        alpha, beta = np.polyfit(m, y, 1)
        return replace(self, alpha=float(alpha), beta=float(beta), n_fit=int(m.size))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: version, calibration and every measure parameter."""
        params = asdict(self.params)
        params["percentiles"] = list(params["percentiles"])
        return {"kind": "pixel_ef", "version": JUDGE_VERSION, "alpha": self.alpha, "beta": self.beta,
                "n_fit": self.n_fit, "params": params}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PixelEfJudge:
        """Inverse of `to_dict`; raises ConfigError for another kind, version or unknown parameters."""
        if data.get("kind") != "pixel_ef" or data.get("version") != JUDGE_VERSION:
            raise ConfigError(
                f"judge: expected kind 'pixel_ef' version {JUDGE_VERSION}, got kind {data.get('kind')!r} "
                f"version {data.get('version')!r}",
                fix="re-fit the judge with this code (a calibration belongs to its measure's version)",
            )
        raw = dict(data.get("params", {}))
        unknown = set(raw) - set(PixelEfParams.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"judge.params: unknown field(s) {sorted(unknown)}", fix="re-fit the judge")
        if "percentiles" in raw:
            raw["percentiles"] = tuple(raw["percentiles"])
        return cls(alpha=float(data["alpha"]), beta=float(data["beta"]), params=PixelEfParams(**raw),
                   n_fit=int(data.get("n_fit", 0)))  # fmt: skip
