"""The EF judge of a dataset as a file: fitted once on real TRAIN videos, scored on held-out real videos, and
reloaded by every evaluation (`outputs/judges/<ds>/ef_judge.json`, the DVC stage `ef_judge`).

The file holds the judge's parameters and its competence on held-out real videos (R² and MAE with bootstrap
CIs, N, the bar and whether it meets it), so a verdict that depends on the judge can say how far to trust it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from echo_core.errors import DataError
from echo_core.evaluation.competence import MAX_UNMEASURED_FRACTION

JUDGE_FILE = "ef_judge.json"
HELDOUT = ("VAL", "TEST")


def read_prepared_videos(prepared: Path, df) -> list[tuple[str, np.ndarray, float]]:
    """(FileName, gray (T, H, W) uint8, fps) of every row, read from the prepared dataset."""
    from echo_core.data.jobs import locate
    from echo_core.data.video import read_video

    out = []
    for name in df["FileName"].astype(str):
        frames, fps = read_video(locate(prepared, name, f"{prepared / 'FileList.csv'} (FileName {name!r})"),
                                 gray=True, size=112)
        out.append((name, frames, fps))
    return out


def split_rows(prepared: Path, label: str = "EF"):
    """(TRAIN rows, VAL + TEST rows) of a prepared FileList that has FileName, `label` and Split."""
    from echo_core.data.filelist import read_filelist

    df = read_filelist(prepared / "FileList.csv")
    missing = [c for c in ("FileName", label, "Split") if c not in df.columns]
    if missing:
        raise DataError(f"{prepared / 'FileList.csv'} lacks {missing}",
                        fix=f"a judge of {label} needs FileName, {label} and Split")
    split = df["Split"].astype(str).str.upper()
    train, held = df[split == "TRAIN"], df[split.isin(HELDOUT)]
    if len(train) < 3 or len(held) < 2:
        raise DataError(f"{prepared / 'FileList.csv'}: {len(train)} TRAIN and {len(held)} VAL/TEST videos",
                        fix="a judge needs >= 3 TRAIN and >= 2 held-out videos (raise the phantom count)")
    return train, held


def fit_ef_judge(prepared: Path, *, bar: float, seed: int = 0, resamples: int = 1000) -> dict[str, Any]:
    """Calibrate the pixel EF judge on TRAIN, score it on VAL + TEST: {"judge", "competence", "heldout"}.

    Videos the judge cannot measure (no LV found: NaN) are left out of the calibration and counted on the
    held-out side: more than 10% unmeasured makes the judge incompetent whatever its R².
    """
    from echo_core.evaluation.competence import regression_competence
    from echo_core.models.judges import PixelEfJudge

    train, held = split_rows(Path(prepared))
    raw = PixelEfJudge()
    measures = np.array([raw.measure(v, fps) for _, v, fps in read_prepared_videos(Path(prepared), train)])
    ok = np.isfinite(measures)
    judge = raw.fit(measures[ok], train["EF"].to_numpy(np.float64)[ok])
    held_videos = read_prepared_videos(Path(prepared), held)
    predicted = judge.predict([v for _, v, _ in held_videos], [fps for _, _, fps in held_videos])
    truth = held["EF"].to_numpy(np.float64)
    measured = np.isfinite(predicted)
    competence = regression_competence(predicted[measured], truth[measured], n_boot=resamples, seed=seed)
    competent = (math.isfinite(competence["r2"]) and competence["r2"] >= bar
                 and (~measured).mean() <= MAX_UNMEASURED_FRACTION)
    competence.update({"bar_r2": bar, "competent": bool(competent), "unmeasured": int((~measured).sum()),
                       "n_train": int(ok.sum()), "train_unmeasured": int((~ok).sum()), "judge": "pixel-ef"})
    rows = [{"FileName": n, "EF": float(t), "predicted": None if not math.isfinite(p) else float(p)}
            for (n, _, _), t, p in zip(held_videos, truth, predicted, strict=True)]
    return {"judge": judge.to_dict(), "competence": competence, "heldout": rows}


class LoadedEfJudge:
    """A judge file's judge and competence: `predict_one(frames (T, H, W) uint8, fps) -> EF %`."""

    def __init__(self, record: dict[str, Any]):
        from echo_core.models.judges import PixelEfJudge

        self.judge = PixelEfJudge.from_dict(record["judge"])
        self.competence = dict(record["competence"])

    def predict_one(self, frames: np.ndarray, fps: float) -> float:
        return float(self.judge.predict([frames], fps)[0])


def load_ef_judge(path: Path) -> LoadedEfJudge:
    try:
        return LoadedEfJudge(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the EF judge {path}: {exc}",
                        fix="re-fit it: `echoforge evaluate judge --dataset <name>` (DVC stage ef_judge)") from None


def dataset_judge(out_root: Path, dataset: str) -> LoadedEfJudge | None:
    """The EF judge of `dataset` under `out_root/judges/` (the DVC stage ef_judge), None where there is none."""
    path = Path(out_root) / "judges" / dataset / JUDGE_FILE
    return load_ef_judge(path) if path.is_file() else None
