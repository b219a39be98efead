"""Class judge: which CardiacNet class an apical four-chamber (A4C) clip shows, for class adherence.

A small, fixed feature map read from the pixels, and a linear classifier fitted once on real TRAIN videos
(`echoforge evaluate judge`, DVC stage `class_judge`). Nothing is learnt from a generator's output.

Features, per clip (video: (T, H, W) grey levels in [0, 255], the sector fan black outside):
1. the clip is resampled to `fps` and its first `window_s` seconds are read (one heart cycle or more);
2. blood is split from tissue as in the EF judge (`echo_core.models.judges`): a soft "darkness" per pixel
   around the mid-point of the fan's 10th and 90th grey-level percentiles;
3. three maps: the mean darkness (chamber sizes: ASD and PAH enlarge the RV and RA), its 5-95 % range over
   time (wall and chamber motion: the PAH RV barely moves) and the mean frame-to-frame change (moving
   speckle: the ASD shunt jet);
4. the maps are sampled on a grid aligned with the LV (its end-systolic blood core, found by the EF judge's
   `cavity_trace`): along its long axis in core lengths, across it in core widths, so the grid follows the
   heart wherever the probe put it. Each cell's mean is one feature (3 maps x 6 x 6 = 108 features).
The classifier is linear discriminant analysis with Ledoit-Wolf shrinkage on standardised features: tens of
TRAIN videos cannot estimate a 108 x 108 covariance, shrinkage makes it well posed without a tuned knob.
A clip where no LV is found has no features: it is "unmeasured" (`predict` gives class -1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from echo_core.errors import ConfigError, DataError
from echo_core.models.judges import REFERENCE_HEIGHT, PixelEfParams, cavity_trace, check_video, fan_mask

CLASS_JUDGE_VERSION = 1  # bump when the features change: a fitted judge is only valid for its version
UNMEASURED = -1  # the class `predict` gives a clip without a findable LV


@dataclass(frozen=True)
class ClassFeatureParams:
    """What the features read. Grid extents in LV core lengths (along) and widths (across)."""

    fps: float = 32.0  # clips are resampled to this rate (the reference sets' rate)
    window_s: float = 1.25  # seconds read per clip: 40 frames at 32 fps, one heart cycle at >= 48 bpm
    train_step_s: float = 0.5  # a TRAIN video gives one clip every this many seconds (more clips, same video)
    grid: tuple[int, int] = (6, 6)  # cells along x across the LV axis
    along: tuple[float, float] = (-0.8, 1.6)  # apex side (-) to atria (+), in LV core lengths
    across: tuple[float, float] = (-3.0, 1.5)  # septal side (-: RV, RA) to lateral (+), in LV core widths
    oversample: int = 3  # samples per cell side: a cell is the mean of oversample² bilinear samples
    ramp: float = 0.25  # soft darkness ramp, a fraction of the fan's grey-level spread (as the EF judge)

    @property
    def window(self) -> int:
        return max(2, round(self.window_s * self.fps))


@dataclass(frozen=True)
class _LvFrame:
    """The LV's end-systolic core: centre (x, y), unit long axis (apex -> base), its normal, length, width."""

    centre: np.ndarray
    axis: np.ndarray
    normal: np.ndarray
    length: float
    width: float


def _lv_frame(core: np.ndarray) -> _LvFrame:
    rows, cols = np.nonzero(core)
    pts = np.stack([cols, rows], axis=1).astype(np.float64)
    centre = pts.mean(axis=0)
    spread, vectors = np.linalg.eigh(np.cov((pts - centre).T))
    axis = vectors[:, -1] if vectors[1, -1] >= 0 else -vectors[:, -1]  # pointing down: apex -> base
    # 4 sigma spans a uniform ellipse's full axis; the normal points to the image left (the A4C septal side)
    return _LvFrame(centre, axis, np.array([axis[1], -axis[0]]), 4.0 * math.sqrt(spread[-1]),
                    4.0 * math.sqrt(max(spread[0], 1e-6)))


def _maps(video: np.ndarray, fan: np.ndarray, scale: float, params: ClassFeatureParams) -> list[np.ndarray] | None:
    """(mean darkness, darkness range, frame-to-frame change) (H, W) maps of a clip; None without contrast."""
    ef = PixelEfParams()
    smooth = ndimage.gaussian_filter(video, (ef.temporal_sigma_s * params.fps, *[ef.spatial_sigma * scale] * 2),
                                     mode="nearest")
    lo, hi = np.percentile(smooth[:, fan], [10, 90])
    if hi - lo < 1.0:
        return None
    darkness = np.clip(0.5 + (0.5 * (lo + hi) - smooth) / (params.ramp * (hi - lo)), 0.0, 1.0) * fan
    spread = np.percentile(darkness, 95, axis=0) - np.percentile(darkness, 5, axis=0)
    change = np.abs(np.diff(video, axis=0)).mean(axis=0) * fan / (hi - lo)
    return [darkness.mean(axis=0), spread, ndimage.gaussian_filter(change, ef.spatial_sigma * scale)]


def clip_features(video: Any, fps: float, params: ClassFeatureParams = ClassFeatureParams(),
                  name: str = "video") -> np.ndarray | None:
    """video: (T, H, W) uint8 or float in [0, 255], A4C, apex up -> (3 * grid cells,) float64 features.

    None when the clip cannot be read as a heart: shorter than `params.window_s`, no fan, no contrast or no
    LV core. Bad input raises DataError naming the field.
    """
    from echo_core.data.video import resample_indices

    arr, fps = check_video(video, fps, name)
    index = resample_indices(len(arr), fps, params.fps)[: params.window]
    if len(index) < params.window:
        return None
    clip, scale = arr[index], arr.shape[1] / REFERENCE_HEIGHT
    fan = fan_mask(clip, PixelEfParams(), scale)
    trace = cavity_trace(clip, params.fps) if fan.sum() >= 100 * scale**2 else None
    maps = None if trace is None else _maps(clip, fan, scale, params)
    if maps is None:
        return None
    lv, (g_along, g_across), s = _lv_frame(trace.core), params.grid, params.oversample
    u = np.linspace(*params.along, g_along * s) * lv.length
    v = np.linspace(*params.across, g_across * s) * lv.width
    uu, vv = np.meshgrid(u, v, indexing="ij")
    xs = lv.centre[0] + uu * lv.axis[0] + vv * lv.normal[0]
    ys = lv.centre[1] + uu * lv.axis[1] + vv * lv.normal[1]
    cells = [ndimage.map_coordinates(m, [ys, xs], order=1, cval=0.0).reshape(g_along, s, g_across, s).mean((1, 3))
             for m in maps]
    return np.concatenate([c.ravel() for c in cells]).astype(np.float64)


def training_clips(video: Any, fps: float, params: ClassFeatureParams = ClassFeatureParams(),
                   name: str = "video") -> list[np.ndarray]:
    """Features of every `window_s` clip starting each `train_step_s` seconds (the unmeasured left out)."""
    arr, fps = check_video(video, fps, name)
    step = max(1, round(params.train_step_s * fps))
    starts = range(0, max(1, len(arr) - round(params.window_s * fps) + 1), step)
    feats = (clip_features(arr[s:], fps, params, name) for s in starts)
    return [f for f in feats if f is not None]


# ---------------------------------------------------------------------------------------------- judge


@dataclass(frozen=True)
class PixelClassJudge:
    """Linear judge on `clip_features`: p(class | clip) = softmax(coef @ z + intercept), z standardised."""

    class_ids: tuple[int, ...]
    mean: np.ndarray  # (D,) feature means on TRAIN clips
    scale: np.ndarray  # (D,) feature standard deviations (1 where a feature is constant)
    coef: np.ndarray  # (K, D) logits per class
    intercept: np.ndarray  # (K,)
    params: ClassFeatureParams = field(default_factory=ClassFeatureParams)
    n_fit: int = 0  # TRAIN clips it was fitted on

    @classmethod
    def fit(cls, features: Any, labels: Any, params: ClassFeatureParams = ClassFeatureParams()) -> PixelClassJudge:
        """features (N, D) of TRAIN clips, labels (N,) class ids -> a fitted judge (shrinkage LDA)."""
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        x, y = np.asarray(features, np.float64), np.asarray(labels).astype(np.int64)
        if x.ndim != 2 or len(x) != len(y):
            raise DataError(f"features / labels: need (N, D) and (N,), got {x.shape} and {y.shape}")
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2 or counts.min() < 2:
            found = dict(zip(classes.tolist(), counts.tolist(), strict=True))
            raise DataError(f"labels: need >= 2 classes with >= 2 clips each, got {found}",
                            fix="fit on a TRAIN split holding every class (raise the phantom count)")
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit((x - mean) / scale, y)
        coef, intercept = np.atleast_2d(lda.coef_), np.atleast_1d(lda.intercept_)
        if len(classes) == 2:  # sklearn keeps one logit for two classes: p(second) = sigmoid(it)
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
        return cls(tuple(int(c) for c in lda.classes_), mean, scale, coef, intercept, params, int(len(x)))

    def proba(self, features: np.ndarray | None) -> np.ndarray:
        """(D,) features -> (K,) class probabilities; uniform (no information) for an unmeasured clip."""
        if features is None:
            return np.full(len(self.class_ids), 1.0 / len(self.class_ids))
        logits = self.coef @ ((np.asarray(features, np.float64) - self.mean) / self.scale) + self.intercept
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def judge(self, video: Any, fps: float, name: str = "video") -> tuple[int, np.ndarray]:
        """(class id or UNMEASURED, (K,) probabilities) of one clip (T, H, W) in [0, 255] at `fps`."""
        features = clip_features(video, fps, self.params, name)
        p = self.proba(features)
        return (UNMEASURED if features is None else self.class_ids[int(np.argmax(p))]), p

    def to_dict(self) -> dict[str, Any]:
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.params).items()}
        return {"kind": "pixel_class", "version": CLASS_JUDGE_VERSION, "class_ids": list(self.class_ids),
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(), "n_fit": self.n_fit, "params": params}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PixelClassJudge:
        """Inverse of `to_dict`; raises ConfigError for another kind, version or unknown parameters."""
        if data.get("kind") != "pixel_class" or data.get("version") != CLASS_JUDGE_VERSION:
            raise ConfigError(f"class judge: expected kind 'pixel_class' version {CLASS_JUDGE_VERSION}, got kind "
                              f"{data.get('kind')!r} version {data.get('version')!r}",
                              fix="re-fit it with this code: `echoforge evaluate judge --dataset <name>`")
        raw = dict(data.get("params", {}))
        unknown = set(raw) - set(ClassFeatureParams.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"class judge params: unknown field(s) {sorted(unknown)}", fix="re-fit the judge")
        params = ClassFeatureParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        arrays = {k: np.asarray(data[k], np.float64) for k in ("mean", "scale", "coef", "intercept")}
        return cls(tuple(int(c) for c in data["class_ids"]), params=params, n_fit=int(data.get("n_fit", 0)),
                   **arrays)


def judge_videos(judge: PixelClassJudge, videos: Sequence[tuple[str, np.ndarray, float]]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(name, (T, H, W) frames, fps) per video -> predicted class ids (N,) and probabilities (N, K)."""
    judged = [judge.judge(frames, fps, name) for name, frames, fps in videos]
    return (np.array([c for c, _ in judged], dtype=np.int64),
            np.stack([p for _, p in judged]) if judged else np.zeros((0, len(judge.class_ids))))
