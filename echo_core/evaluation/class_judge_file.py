"""The class judge of a dataset as a file, and class adherence of a samples folder by it.

Fitted once on real TRAIN videos (every `window_s` clip of each), scored on the held-out real videos
(VAL + TEST, one clip each, read the way controls and samples are), saved as
`outputs/judges/<ds>/class_judge.json` (DVC stage `class_judge`) and reloaded by every evaluation. The file
holds the judge and its held-out competence: accuracy and macro AUC with bootstrap CIs, N, the confusion
matrix, the bar and whether it meets it.

Class adherence = the share of samples the judge reads as their requested class_id (with a video bootstrap
CI). A sample in which the judge finds no heart counts as wrong: a video that shows no LV shows no class.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from echo_core.errors import DataError
from echo_core.evaluation.competence import MAX_UNMEASURED_FRACTION
from echo_core.metrics.bootstrap import Estimate, paired_statistic

CLASS_JUDGE_FILE = "class_judge.json"
LABEL = "class_id"
METRIC = "class_adherence_accuracy"


def is_competent(competence: dict[str, Any], bar: float) -> bool:
    """Held-out real accuracy at or above `bar`, and the judge found the heart in (nearly) every real video."""
    acc = competence.get("accuracy")
    unmeasured = competence.get("unmeasured", 0) / max(1, competence.get("n", 1))
    return acc is not None and math.isfinite(acc) and acc >= bar and unmeasured <= MAX_UNMEASURED_FRACTION


def _fit(prepared: Path, train) -> tuple[Any, int]:
    """The judge fitted on every clip of the TRAIN videos, and how many TRAIN videos gave no clip."""
    from echo_core.evaluation.judge_file import read_prepared_videos
    from echo_core.models.class_judge import PixelClassJudge, training_clips

    features, labels, unmeasured = [], [], 0
    for (name, frames, fps), label in zip(read_prepared_videos(prepared, train), train[LABEL], strict=True):
        clips = training_clips(frames, fps, name=name)
        unmeasured += not clips
        features += clips
        labels += [int(label)] * len(clips)
    return PixelClassJudge.fit(np.array(features), np.array(labels)), unmeasured


def fit_class_judge(prepared: Path, *, bar: float, seed: int = 0, resamples: int = 1000) -> dict[str, Any]:
    """Fit the class judge on TRAIN, score it on VAL + TEST: {"judge", "competence", "heldout"}."""
    from echo_core.evaluation.competence import classification_competence
    from echo_core.evaluation.judge_file import read_prepared_videos, split_rows
    from echo_core.models.class_judge import UNMEASURED, judge_videos

    prepared = Path(prepared)
    train, held = split_rows(prepared, LABEL)
    judge, train_unmeasured = _fit(prepared, train)
    truth = held[LABEL].to_numpy(np.int64)
    unknown = sorted(set(truth) - set(judge.class_ids))
    if unknown:
        raise DataError(f"{prepared / 'FileList.csv'}: held-out class(es) {unknown} have no TRAIN video",
                        fix="split by patient so that every class is in TRAIN (`echoforge data prepare`)")
    videos = read_prepared_videos(prepared, held)
    predicted, proba = judge_videos(judge, videos)
    competence = classification_competence(predicted, proba, truth, judge.class_ids, n_boot=resamples, seed=seed)
    labels = list(judge.class_ids)
    confusion = [[int(((truth == a) & (predicted == b)).sum()) for b in labels] for a in labels]
    competence.update({"unmeasured": int((predicted == UNMEASURED).sum()), "bar_accuracy": bar,
                       "chance_accuracy": float(np.max(np.bincount(truth)) / len(truth)), "class_ids": labels,
                       "confusion": confusion, "n_train": int(len(train)), "n_train_clips": judge.n_fit,
                       "train_unmeasured": train_unmeasured, "judge": "pixel-class"})
    competence["competent"] = is_competent(competence, bar)
    rows = [{"FileName": name, LABEL: int(t), "predicted": int(c),
             **{f"p_{k}": float(x) for k, x in zip(labels, p, strict=True)}}
            for (name, _, _), t, c, p in zip(videos, truth, predicted, proba, strict=True)]
    return {"judge": judge.to_dict(), "competence": competence, "heldout": rows}


class LoadedClassJudge:
    """A class judge file's judge and its held-out competence."""

    def __init__(self, record: dict[str, Any]):
        from echo_core.models.class_judge import PixelClassJudge

        self.judge = PixelClassJudge.from_dict(record["judge"])
        self.competence = dict(record["competence"])


def load_class_judge(path: Path) -> LoadedClassJudge:
    try:
        return LoadedClassJudge(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the class judge {path}: {exc}",
                        fix="re-fit it: `echoforge evaluate judge --dataset <name>` (DVC stage class_judge)") from None


def dataset_class_judge(out_root: Path, dataset: str) -> LoadedClassJudge | None:
    """The class judge of `dataset` under `out_root/judges/`, None where there is none."""
    path = Path(out_root) / "judges" / dataset / CLASS_JUDGE_FILE
    return load_class_judge(path) if path.is_file() else None


# ------------------------------------------------------------------------------------------ adherence


def _not_judged(df, judge: LoadedClassJudge, frames: list[np.ndarray]) -> str | None:
    """Why `judge` cannot judge these samples (a sentence with the fix), or None when it can."""
    requested = df[LABEL]
    unknown = sorted(set(requested.dropna().astype(int)) - set(judge.judge.class_ids))
    if requested.isna().any() or unknown:
        return (f"samples request class_id {unknown or 'missing'}; the class judge knows {list(judge.judge.class_ids)}"
                ": request only classes of the dataset's TRAIN split (evaluate.conditions.class_id)")
    if "FPS" not in df.columns:
        return "the samples' FileList.csv has no FPS column: write each sample's frame rate"
    seconds = min(len(v) / f for v, f in zip(frames, df["FPS"].astype(float), strict=True))
    window = judge.judge.params.window_s
    if not seconds >= window:
        return (f"samples last {seconds:.2f} s, the class judge reads {window:g} s (one heart cycle): sample more "
                "frames (evaluate.sample.num_frames)")
    return None


def class_judgement(df, judge: LoadedClassJudge | None, frames: list[np.ndarray], cfg
                    ) -> tuple[dict[str, Estimate], dict[str, Any]]:
    """Class adherence of samples (FileList `df`, frames uint8 (T, 3, H, W) each) by `judge`.

    ({}, {}) when the samples request no class; ({}, record with why_not) when there is no judge or it cannot
    judge them. cfg: `AssessConfig` (resamples, seed, level, class_judge_min_accuracy).
    """
    from echo_core.evaluation.competence import accuracy
    from echo_core.models.class_judge import UNMEASURED, judge_videos

    if LABEL not in df.columns or not df[LABEL].notna().any():
        return {}, {}
    if judge is None:
        return {}, {"name": "class", "competent": False, "why_not": "no class judge: run `dvc repro class_judge`"}
    why_not = _not_judged(df, judge, frames)
    if why_not:
        return {}, {"name": "class", **judge.competence, "competent": False, "why_not": why_not}
    names, rates = df["FileName"].astype(str), df["FPS"].astype(float)
    predicted, _ = judge_videos(judge.judge, [(n, v[:, 0], f) for n, v, f in zip(names, frames, rates, strict=True)])
    requested = df[LABEL].astype(int).to_numpy()
    estimate = paired_statistic(accuracy, predicted, requested, resamples=cfg.resamples, seed=cfg.seed,
                                level=cfg.level)
    record = {"name": "class", **judge.competence, "competent": is_competent(judge.competence,
                                                                             cfg.class_judge_min_accuracy),
              "bar_accuracy": cfg.class_judge_min_accuracy, "unmeasured_samples": int((predicted == UNMEASURED).sum()),
              "predicted": predicted.tolist()}
    return {METRIC: estimate}, record


def judge_kind(prepared: Path) -> str:
    """Which judge a prepared dataset gets, from its FileList columns: "ef" (an EF column) or "class" (class_id)."""
    from echo_core.data.filelist import read_filelist

    filelist = Path(prepared) / "FileList.csv"
    if not filelist.is_file():
        raise DataError(f"{filelist} does not exist", fix="prepare the dataset first (`dvc repro prepare`)")
    columns = set(read_filelist(filelist).columns)
    if "EF" in columns:
        return "ef"
    if LABEL in columns:
        return "class"
    raise DataError(f"{filelist} has neither an EF nor a class_id column: no judge can be fitted",
                    fix="judges are fitted for EF datasets (EchoNet) and class datasets (CardiacNet)")
