"""Judge one folder of generated videos: every metric with a video-level bootstrap CI, then a verdict.

A folder is what `echoforge sample` writes (FileList.csv + jpg/<FileName>/%04d.jpg); a negative control built
from held-out real videos has the same layout, so the evaluator is judged by the same code it judges with.

- Fréchet metrics are ratios at equal N: FD(samples, A) / FD(B, A), where the reference set (real TRAIN clips)
  is split into B with as many videos as there are samples and A with the rest (`equal_n_split`): FD's
  small-sample bias is larger than the effects judged at demo scale, so the baseline must carry the same bias.
- EF adherence: the dataset's EF judge reads each sample and its estimate is compared with the requested EF
  (MAE, R², Pearson). A judge below its competence bar makes those metrics inconclusive, never pass.
- Class adherence (`class_judge_file.class_judgement`): the share of samples the dataset's class judge reads
  as their requested class_id; the same rule for a judge below its bar.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from echo_core.config import StrictModel
from echo_core.errors import DataError
from echo_core.evaluation.competence import MAX_UNMEASURED_FRACTION
from echo_core.evaluation.verdict import Bound, MetricVerdict, VerdictConfig, exit_code, judge_all, overall
from echo_core.metrics.bootstrap import Estimate, equal_n_split, frechet_ratio, mae, paired_statistic, pearson, r2

log = logging.getLogger("echoforge.evaluation")

# metric name → (extractor role, clip length: 0 = every frame is a row, else one clip of that many frames)
FRECHET_FEATURES: dict[str, tuple[str, int]] = {"fd_fallback": ("frame_features", 0),
                                                "fvd16_fallback": ("clip_features", 16)}


class AssessConfig(StrictModel):
    """params.yaml `evaluate.assess`: what is measured, the bounds a folder must meet, and how sure the verdict
    must be. Every bounded metric is required (a missing one fails)."""

    bounds: dict[str, Bound] = Field(default_factory=dict)  # "<dataset>/<metric>" → {min, max}
    frechet: list[str] = Field(default_factory=lambda: list(FRECHET_FEATURES))
    frames: int = Field(16, ge=2)  # frames per video the Fréchet metrics read (the reference clips' length)
    resamples: int = Field(1000, ge=10)
    level: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
    decisive: bool = False  # True: a CI straddling a bound is inconclusive instead of decided by the point value
    min_videos: int = Field(8, ge=2)  # fewer samples than this: inconclusive (no CI says anything)
    ef_judge_min_r2: float = 0.8  # the EF judge's competence bar: held-out real R² (lower CI end reported too)
    # the pixel judge needs an end-diastole and the next end-systole: held-out R² 0.97 at 1.0 s, 0.65 at 0.6 s
    ef_judge_min_seconds: float = Field(1.0, gt=0)
    class_judge_min_accuracy: float = Field(0.5, ge=0, le=1)  # the class judge's bar: held-out real accuracy


@dataclass
class Assessment:
    """The result of judging one folder (`to_dict` is the --out JSON)."""

    dataset: str
    samples: str
    n_videos: int
    metrics: dict[str, Estimate]
    verdicts: list
    judges: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.n_videos < 2:
            return "inconclusive"
        return overall(self.verdicts)

    @property
    def exit_code(self) -> int:
        return exit_code(self.verdict)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "dataset": self.dataset, "samples": self.samples, "n_videos": self.n_videos,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "failures": [v.reason for v in self.verdicts if v.verdict == "fail"],
                "inconclusive": [v.reason for v in self.verdicts if v.verdict == "inconclusive"],
                "verdicts": [v.to_dict() for v in self.verdicts], "judges": self.judges, "notes": self.notes}


# ------------------------------------------------------------------------------------------ reading


def read_samples_filelist(samples: Path):
    """The samples' FileList.csv, with a clear error when the folder is not a samples folder."""
    from echo_core.data.filelist import read_filelist

    path = samples / "FileList.csv"
    if not path.is_file():
        raise DataError(f"{path} does not exist", fix="pass the folder `echoforge sample` wrote (FileList.csv + jpg/)")
    df = read_filelist(path)
    if "FileName" not in df.columns:
        raise DataError(f"{path}: column FileName is missing", fix="write one row per sample with its FileName")
    return df


def read_video_frames(folder: Path, limit: int | None = None) -> np.ndarray:
    """jpg/<FileName>/ → uint8 (T, 3, H, W), the first `limit` frames in name order."""
    from echo_core.metrics.protocol import image_extensions, read_frame

    if not folder.is_dir():
        raise DataError(f"{folder} does not exist", fix="write every sample's frames as jpg/<FileName>/%04d.jpg")
    exts = image_extensions()
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts)[:limit]
    if not files:
        raise DataError(f"{folder} holds no frames", fix="write every sample's frames as jpg/<FileName>/%04d.jpg")
    return np.stack([read_frame(p, None) for p in files])


def video_features(videos: list[np.ndarray], extractor, clip: int) -> list[np.ndarray]:
    """Per-video feature rows: every frame (clip 0) or the first `clip` frames as one clip → [(n_i, d)]."""
    if clip == 0:
        return [extractor(v) for v in videos]
    short = [i for i, v in enumerate(videos) if len(v) < clip]
    if short:
        raise DataError(f"{len(short)} videos have fewer than {clip} frames (e.g. #{short[0]})",
                        fix=f"evaluate videos of at least {clip} frames")
    return [extractor(v[None, :clip]) for v in videos]


# ------------------------------------------------------------------------------------------ metrics


def frechet_estimates(fake: list[np.ndarray], reference: list[np.ndarray], cfg: AssessConfig) -> dict[str, Estimate]:
    """<name>_ratio for every configured Fréchet metric; fake / reference: uint8 (T, 3, H, W) per video."""
    from echo_core.metrics.extractors import build_extractor

    idx_a, idx_b = equal_n_split(len(reference), len(fake), cfg.seed)
    fake = fake[: len(idx_b)]  # a B smaller than the samples would make the ratio optimistic
    out = {}
    for name in cfg.frechet:
        role, clip = FRECHET_FEATURES[name]
        ext = build_extractor(role, exact=False)
        feats_ref = video_features(reference, ext, clip)
        try:
            out[f"{name}_ratio"] = frechet_ratio(video_features(fake, ext, clip), [feats_ref[i] for i in idx_a],
                                                 [feats_ref[i] for i in idx_b], resamples=cfg.resamples,
                                                 seed=cfg.seed, level=cfg.level)
        except DataError as exc:  # degenerate sets (no finite draws): unmeasured, which fails a bounded metric
            log.warning("%s_ratio not measured: %s", name, exc)
            out[f"{name}_ratio"] = Estimate(math.nan, math.nan, math.nan, len(fake), cfg.level, cfg.resamples)
    return out


def adherence_estimates(predicted: np.ndarray, requested: np.ndarray, cfg: AssessConfig,
                        prefix: str = "ef_adherence") -> dict[str, Estimate]:
    """MAE / R² / Pearson between the judge's estimates and the requested values, each with its CI."""
    ok = np.isfinite(predicted) & np.isfinite(requested)
    p, r = predicted[ok], requested[ok]
    if len(p) < 2:  # unmeasured: NaN estimates, which fail a bounded metric as missing
        nan = Estimate(math.nan, math.nan, math.nan, len(p), cfg.level, cfg.resamples)
        return {f"{prefix}_{name}": nan for name in ("mae", "r2", "pearson")}
    kw = {"resamples": cfg.resamples, "seed": cfg.seed, "level": cfg.level}
    return {f"{prefix}_{name}": _defined_or_nan(fn, p, r, kw) for name, fn in
            (("mae", mae), ("r2", r2), ("pearson", pearson))}


def _defined_or_nan(fn, p: np.ndarray, r: np.ndarray, kw: dict[str, Any]) -> Estimate:
    """The statistic with its CI, or NaN where it is undefined (Pearson of a constant prediction: a
    motionless video's EF), which the verdict reads as missing, never as a pass."""
    try:
        return paired_statistic(fn, p, r, **kw)
    except DataError:
        return Estimate(math.nan, math.nan, math.nan, len(p), float(kw["level"]), kw["resamples"])


def ef_judgement(df, judge, frames: list[np.ndarray], cfg: AssessConfig) -> tuple[dict[str, Estimate], dict[str, Any]]:
    """EF adherence of the samples by `judge` (None: no EF judge for this dataset)."""
    requests_ef = "EF" in df.columns and df["EF"].notna().any()  # a class-conditioned FileList has EF empty
    if judge is None or not requests_ef:
        return {}, ({"name": "ef", "competent": False, "why_not": "no EF judge: run `dvc repro ef_judge`"}
                    if judge is None and requests_ef else {})
    requested = df["EF"].to_numpy(np.float64)
    fps = df["FPS"].to_numpy(np.float64) if "FPS" in df.columns else np.full(len(df), math.nan)
    seconds = min(len(v) / f for v, f in zip(frames, fps, strict=True))
    if not seconds >= cfg.ef_judge_min_seconds:
        return {}, {"name": "ef", **judge.competence, "competent": False,
                    "why_not": f"samples last {seconds:.2f} s, the EF judge needs >= {cfg.ef_judge_min_seconds:g} s "
                               "(one heart cycle): sample more frames (evaluate.sample.num_frames)"}
    predicted = np.array([judge.predict_one(v[:, 0], f) for v, f in zip(frames, fps, strict=True)])
    unmeasured = int((~np.isfinite(predicted)).sum())
    record = {"name": "ef", **judge.competence, "unmeasured_samples": unmeasured,
              "predicted": [None if not math.isfinite(x) else float(x) for x in predicted]}
    if unmeasured > MAX_UNMEASURED_FRACTION * len(predicted):  # an LV the judge cannot find has no EF at all
        log.warning("EF judge found no LV in %d of %d samples: EF adherence not measured", unmeasured, len(predicted))
        predicted = np.full(len(predicted), math.nan)
    return adherence_estimates(predicted, requested, cfg), record


# ------------------------------------------------------------------------------------------ the verdict


def dataset_bounds(bounds: Mapping[str, Bound], dataset: str) -> dict[str, Bound]:
    """The `<dataset>/<metric>` bounds of the gate, keyed by metric."""
    prefix = f"{dataset}/"
    return {k[len(prefix):]: b for k, b in bounds.items() if k.startswith(prefix)}


def _judged(bounds: Mapping[str, Bound], prefix: str, record: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """metric -> (judge name with why it did not judge, competent?) for the bounded metrics of one judge."""
    name = f"{record['name']} ({record['why_not']})" if "why_not" in record else record.get("name", prefix)
    return {m: (name, bool(record.get("competent"))) for m in bounds if m.startswith(prefix)}


def assess_folder(samples: Path, reference: Path, dataset: str, bounds: Mapping[str, Bound], cfg: AssessConfig,
                  judge=None, class_judge=None) -> Assessment:
    """Every metric of `samples` against the `reference` jpg tree, and the verdict under `bounds`.
    judge / class_judge: the dataset's EF and class judges (None: absent)."""
    from echo_core.evaluation.class_judge_file import class_judgement
    from echo_core.metrics.protocol import list_videos

    df = read_samples_filelist(samples)
    names = df["FileName"].astype(str).tolist()
    if len(names) < cfg.min_videos:  # no interval says anything at this N: not measured, never a pass
        note = (f"only {len(names)} videos (< min_videos {cfg.min_videos}): nothing measured, the verdict is "
                "inconclusive; generate more samples (evaluate.sample.num_samples)")
        return Assessment(dataset, str(samples), len(names), {}, [MetricVerdict("n_videos", "inconclusive", note)],
                          {}, [note])
    videos = [read_video_frames(samples / "jpg" / n) for n in names]
    real = [read_video_frames(reference / v.name, cfg.frames) for v in list_videos(reference)]
    metrics = frechet_estimates([v[: cfg.frames] for v in videos], real, cfg)
    ef_metrics, ef_record = ef_judgement(df, judge, videos, cfg)
    class_metrics, class_record = class_judgement(df, class_judge, videos, cfg)
    metrics.update({**ef_metrics, **class_metrics})
    judged = {**_judged(bounds, "ef_adherence", {"name": "ef", **ef_record}),
              **_judged(bounds, "class_adherence", {"name": "class", **class_record})}
    gate = VerdictConfig(bounds=dict(bounds), decisive=cfg.decisive, level=cfg.level)
    records = {"ef": ef_record, "class": class_record}
    return Assessment(dataset, str(samples), len(names), metrics, judge_all(metrics, gate, judged),
                      {k: r for k, r in records.items() if r})


def assess_samples(samples: Path, out_root: Path, dataset: str, cfg: AssessConfig) -> Assessment:
    """`assess_folder` with the dataset's reference set, bounds and judges under `out_root`: what both
    `echoforge evaluate samples` and the evaluate flow of a registered version run."""
    from echo_core.evaluation.class_judge_file import dataset_class_judge
    from echo_core.evaluation.judge_file import dataset_judge

    return assess_folder(Path(samples), Path(out_root) / "reference" / dataset, dataset,
                         dataset_bounds(cfg.bounds, dataset), cfg, dataset_judge(Path(out_root), dataset),
                         dataset_class_judge(Path(out_root), dataset))


def flat_estimates(payload: dict[str, Any]) -> dict[str, float]:
    """gate/<metric>{,_ci_low,_ci_high,_n} of an assessment's JSON: its numbers for metrics.json and MLflow."""
    out = {}
    for name, est in payload["metrics"].items():
        for key, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"), ("n", "_n")):
            if est.get(key) is not None:
                out[f"gate/{name}{suffix}"] = float(est[key])
    return out
