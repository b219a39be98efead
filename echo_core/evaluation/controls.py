"""Negative controls: held-out real videos spoiled in one known way, written exactly like generated samples.

An evaluator that passes a model must also be shown to fail what it has to fail. Each control here is a
folder in the `echoforge sample` layout (jpg/<FileName>/%04d.jpg, mp4/<FileName>.mp4, FileList.csv), so the
same evaluation code judges it as if a model had made it:

    positive        the real clip unchanged                       -> must PASS the gate
    motionless      the first frame repeated T times              -> clip metrics (FVD)
    shuffled        frames in a seeded order, no frame in place   -> clip metrics (FVD)
    blurred         Gaussian blur, sigma 3 px, per frame          -> frame metrics (FD) and FVD
    noisy           additive Gaussian noise, sigma 40 grey levels -> frame metrics (FD) and FVD
    ef_permuted     real pixels, requested EF deranged            -> EF adherence
    class_permuted  real pixels, requested class_id deranged      -> class adherence

Videos come from the VAL and TEST rows only: TRAIN videos are the metrics' reference set, and a control
built from them would be compared with itself. Clips are taken the way reference clips are
(`echo_core.data.reference.write_reference_clip`): gray, 112 x 112, resampled to `fps`, the first `frames`.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from echo_core.data.filelist import read_filelist, write_filelist
from echo_core.data.jobs import locate
from echo_core.errors import DataError, UsageError
from echo_core.generation.writers import describe_sample, parse_formats, write_sample
from echo_core.utils.atomic import atomic_dir, write_json_atomic
from echo_core.utils.hashing import sha256_file

log = logging.getLogger("echoforge.evaluation")

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

PARAMS_FILE = "control_params.json"
FILELIST_FILE = "FileList.csv"
HELDOUT_SPLITS = ("VAL", "TEST")
NEEDED = ("FileName", "Split", "FPS", "NumberOfFrames")
# condition kind (the CondType a sample FileList writes) -> the prepared FileList column holding its truth
CONDITION_COLUMNS = {"ef": "EF", "class_id": "class_id"}
CONDITION_KINDS = ("ef", "class_id", "none")
TRUE_COLUMNS = {"EF": "TrueEF", "class_id": "true_class_id"}

# sigma 3 px at 112 x 112 (FWHM ~7 px) erases the speckle and sharp endocardial border while keeping the
# chambers: a frame extractor must see the texture loss, not just a geometry change.
BLUR_SIGMA = 3.0
# sigma 40 of 255 grey levels: clearly visible snow, yet the heart stays recognisable, so only a metric
# that looks at image statistics (not at gross layout) rejects it.
NOISE_SIGMA = 40.0
_DRAWS = 64  # rejection draws before the constructive fallback (a random permutation is a derangement ~1/e)


# ------------------------------------------------------------------------------------- pixel transforms


def positive(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """clip: (T, H, W) uint8 -> an unchanged copy (the control that must pass)."""
    return clip.copy()


def motionless(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """clip: (T, H, W) uint8 -> (T, H, W): frame 0 repeated T times (perfect frames, no motion)."""
    return np.repeat(clip[:1], len(clip), axis=0)


def shuffled(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """clip: (T, H, W) uint8 -> (T, H, W): the same frames in a seeded order, none at its own index (T > 1)."""
    return clip[derangement(len(clip), rng)]


def blurred(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """clip: (T, H, W) uint8 -> (T, H, W): each frame Gaussian-blurred with sigma BLUR_SIGMA px (not in time)."""
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(clip.astype(np.float32), sigma=(0.0, BLUR_SIGMA, BLUR_SIGMA), mode="reflect")
    return np.clip(np.rint(smooth), 0, 255).astype(np.uint8)


def noisy(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """clip: (T, H, W) uint8 -> (T, H, W): + N(0, NOISE_SIGMA^2) per pixel, rounded and clipped to [0, 255]."""
    noise = rng.normal(0.0, NOISE_SIGMA, clip.shape)
    return np.clip(np.rint(clip + noise), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- derangements


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n > 1); n <= 1 gives the identity."""
    if n <= 1:
        return np.arange(n)
    for _ in range(_DRAWS):  # rejection keeps the draw uniform over derangements
        order = rng.permutation(n)
        if not (order == np.arange(n)).any():
            return order
    return np.roll(np.arange(n), int(rng.integers(1, n)))  # a cyclic shift has no fixed point


def value_derangement(values: Sequence[Any], rng: np.random.Generator, *, what: str = "value") -> np.ndarray:
    """Indices `order` with values[order[i]] != values[i] for every i: each row gets another row's value.

    A permutation of row indices is not enough when values repeat (class ids always do): row i could get an
    equal value from row j. Random draws are tried first; the fallback sorts the values (ties in seeded
    order) and shifts by s in [k, n - k], k = the largest tie group, so no row lands in its own group.
    Impossible when one value holds more than half the rows: a DataError says so.
    """
    values = np.asarray(values)
    n = len(values)
    _, counts = np.unique(values, return_counts=True)
    k = int(counts.max()) if n else 0
    if n < 2 or 2 * k > n:
        raise DataError(f"cannot give every one of {n} held-out videos another video's {what}: "
                        f"{k} share one {what}", fix="use more held-out videos (max_videos), or a balanced set")
    for _ in range(_DRAWS):
        order = rng.permutation(n)
        if (values[order] != values).all():
            return order
    tie = rng.permutation(n)
    ranked = tie[np.argsort(values[tie], kind="stable")]  # sorted by value, ties in a seeded order
    shift = int(rng.integers(k, n - k + 1))
    order = np.empty(n, dtype=np.int64)
    order[ranked] = ranked[(np.arange(n) + shift) % n]
    return order


# ----------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Control:
    """One negative (or the positive) control: what it does to the pixels and to the requested condition."""

    transform: Transform  # (T, H, W) uint8 + seeded rng -> (T, H, W) uint8
    caught_by: tuple[str, ...]  # metric families that must reject it; () = it must pass the gate
    applies_to: tuple[str, ...] = CONDITION_KINDS  # condition kinds whose datasets it can be built for
    relabel: str | None = None  # condition kind whose requested value is deranged (label controls only)
    about: str = ""


CONTROLS: dict[str, Control] = {
    "positive": Control(positive, (), about="held-out real clips unchanged"),
    "motionless": Control(motionless, ("fvd",), about="first frame repeated T times"),
    "shuffled": Control(shuffled, ("fvd",), about="seeded frame order, no frame at its own index"),
    "blurred": Control(blurred, ("fd", "fvd"), about=f"Gaussian blur sigma {BLUR_SIGMA:g} px per frame"),
    "noisy": Control(noisy, ("fd", "fvd"), about=f"additive Gaussian noise sigma {NOISE_SIGMA:g} grey levels"),
    "ef_permuted": Control(positive, ("ef_adherence",), ("ef",), "ef",
                           about="real clips, requested EF = another held-out video's EF"),
    "class_permuted": Control(positive, ("class_adherence",), ("class_id",), "class_id",
                              about="real clips, requested class_id = another held-out video's class"),
}


def get_control(name: str) -> Control:
    if name not in CONTROLS:
        raise ValueError(f"unknown control {name!r}; known: {', '.join(CONTROLS)}")
    return CONTROLS[name]


def control_table(names: Iterable[str] | None = None) -> list[dict[str, str]]:
    """One row per control for reports: what it does, where it applies and what must catch it."""
    return [{"control": n, "about": get_control(n).about, "applies_to": ",".join(get_control(n).applies_to),
             "caught_by": ",".join(get_control(n).caught_by) or "nothing (must pass)"}
            for n in (names if names is not None else CONTROLS)]


def condition_kinds(df: pd.DataFrame) -> tuple[str, ...]:
    """Condition kinds a FileList carries (a column with at least one value); ("none",) when neither."""
    kinds = tuple(k for k, col in CONDITION_COLUMNS.items() if col in df.columns and df[col].notna().any())
    return kinds or ("none",)


def applicable(df: pd.DataFrame) -> list[str]:
    """Names of the controls that can be built from a FileList with these columns."""
    kinds = set(condition_kinds(df))
    return [name for name, control in CONTROLS.items() if kinds & set(control.applies_to)]


# -------------------------------------------------------------------------------------------- held-out


def heldout_rows(prepared: str | os.PathLike, *, splits: Sequence[str] = HELDOUT_SPLITS) -> pd.DataFrame:
    """The held-out (default VAL + TEST) rows of a prepared FileList.csv, index reset. Never TRAIN."""
    filelist = Path(prepared) / FILELIST_FILE
    wanted = tuple(str(s).strip().upper() for s in splits)
    if "TRAIN" in wanted or not wanted:
        raise UsageError(f"controls need held-out splits, got {list(splits)}",
                         fix="TRAIN videos are the metrics' reference set; use VAL and/or TEST")
    df = read_filelist(filelist)
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise DataError(f"{filelist} lacks column(s) {', '.join(missing)}",
                        fix="build controls from a prepared dataset (`echoforge data prepare`)")
    rows = df[df["Split"].astype(str).str.strip().str.upper().isin(wanted)]
    if rows.empty:
        raise DataError(f"{filelist} has no {'/'.join(wanted)} rows: no held-out video to build controls from",
                        fix="prepare the dataset with VAL/TEST splits (`echoforge data prepare`); "
                            "TRAIN videos must not be used")
    return rows.reset_index(drop=True)


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator per (seed, control, video): one video's draw does not depend on which others were chosen."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode("utf-8")) for k in keys)])


def _select(rows: pd.DataFrame, column: str | None, frames: int, fps: float, max_videos: int | None,
            seed: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows with a condition value whose FileList duration covers `frames` at `fps`; seeded max_videos."""
    from echo_core.data.reference import select

    skipped: dict[str, str] = {}
    has_value = rows[column].notna() if column else pd.Series(True, index=rows.index)
    for name in rows.loc[~has_value, "FileName"]:
        skipped[str(name)] = f"no {column} value"
    n, src_fps = rows["NumberOfFrames"].astype(float), rows["FPS"].astype(float)
    long_enough = (src_fps > 0) & (n * fps >= frames * src_fps - 1e-9)  # compared without division
    for name, count, rate in rows.loc[has_value & ~long_enough, ["FileName", "NumberOfFrames", "FPS"]].values:
        skipped[str(name)] = f"too short: FileList says {count} frames at {rate:g} fps, {frames} at {fps:g} needed"
    eligible = rows[has_value & long_enough]
    chosen = set(select(eligible["FileName"].astype(str), max_videos, seed))
    return eligible[eligible["FileName"].astype(str).isin(chosen)].reset_index(drop=True), skipped


# ---------------------------------------------------------------------------------------------- building


def _condition(rows: pd.DataFrame, name: str, control: Control, condition: str | None) -> str:
    """The condition kind the control's FileList requests (EF first, as the evaluation plan prefers it)."""
    kinds = condition_kinds(rows)
    kind = control.relabel or condition or kinds[0]
    if kind not in CONDITION_KINDS:
        raise UsageError(f"unknown condition kind {kind!r}", fix=f"use one of {', '.join(CONDITION_KINDS)}")
    if kind not in control.applies_to or (kind != "none" and kind not in kinds):
        raise UsageError(f"control {name!r} needs a {kind} condition; the held-out rows carry {', '.join(kinds)}",
                         fix=f"build it only for datasets with a {CONDITION_COLUMNS.get(kind, kind)} column")
    return kind


def _requested(selected: pd.DataFrame, name: str, control: Control, seed: int) -> pd.DataFrame:
    """Requested EF / class_id per row: the truth, or (label controls) another row's value."""
    out = pd.DataFrame({"FileName": selected["FileName"].astype(str)})
    for column in CONDITION_COLUMNS.values():
        if column in selected.columns:
            out[TRUE_COLUMNS[column]] = selected[column].to_numpy()
            out[column] = selected[column].to_numpy()
    if control.relabel:
        column = CONDITION_COLUMNS[control.relabel]
        order = value_derangement(out[column].to_numpy(), _rng(seed, name, "labels"), what=column)
        out[column] = out[column].to_numpy()[order]
    return out


def _read_clip(path: Path, src_fps: float, frames: int, fps: float, size: int) -> tuple[np.ndarray | None, str]:
    """(T, H, W) uint8 clip taken like a reference clip, or (None, why) when the decoded video is too short."""
    from echo_core.data.video import read_video, resample_indices

    video, _ = read_video(path, gray=True, size=size)
    index = resample_indices(len(video), src_fps, fps)[:frames]
    if len(index) < frames:
        return None, f"too short: {len(video)} decoded frames, {len(index)} at {fps:g} fps, {frames} needed"
    return video[index], ""


def _write_videos(prepared: Path, tmp: Path, selected: pd.DataFrame, name: str,
                  params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read, transform and write every selected video into `tmp`.

    Returns the rows written (selected columns + ConditioningFile and what `describe_sample` reads back) and
    the videos skipped as too short once decoded. Pixels never depend on the requested condition, so label
    controls derange over exactly the videos written, after this step."""
    control, filelist = get_control(name), prepared / FILELIST_FILE
    rows, skipped = [], {}
    for _, src in selected.iterrows():
        file_name = str(src["FileName"])
        where = f"{filelist} (FileName {file_name!r})"
        if "/" in file_name or "\\" in file_name:  # the sample is written as jpg/<FileName>/: one level only
            raise DataError(f"{where}: FileName contains a path separator", fix="rename it to a plain name")
        path = locate(prepared, file_name, where)
        clip, why = _read_clip(path, float(src["FPS"]), params["frames"], params["fps"], params["size"])
        if clip is None:
            skipped[file_name] = why
            continue
        frames = control.transform(clip, _rng(params["seed"], name, file_name))
        write_sample(tmp, file_name, frames, params["formats"], params["fps"],
                     meta={"control": name, "source": file_name})
        described = describe_sample(tmp, file_name, params["formats"], params["fps"])
        rows.append({**src.to_dict(), "ConditioningFile": path.name, "Described": described})
    return pd.DataFrame(rows), skipped


def _filelist(written: pd.DataFrame, kind: str, name: str, seed: int) -> pd.DataFrame:
    """The sample FileList (generate.py `_filelist_row` columns, in order) + Control, SourceSplit, the truth."""
    requested = _requested(written, name, get_control(name), seed)
    rows = []
    for (_, src), (_, req) in zip(written.iterrows(), requested.iterrows(), strict=True):
        ef = float(req["EF"]) if "EF" in req.index and pd.notna(req["EF"]) else np.nan
        cid = int(req["class_id"]) if "class_id" in req.index and pd.notna(req["class_id"]) else None
        value = {"ef": f"{ef:g}", "class_id": str(cid), "none": ""}[kind]
        rows.append({"FileName": req["FileName"], "CondType": kind, "CondValue": value, "EF": ef,
                     "class_id": cid, "Prompt": "", "Seed": seed, "ConditioningFile": src["ConditioningFile"],
                     **src["Described"], "Split": "GENERATED", "Control": name,
                     "SourceSplit": str(src["Split"]).strip().upper(),
                     **{true: req[true] for true in TRUE_COLUMNS.values() if true in req.index}})
    table = pd.DataFrame(rows).astype({"class_id": "Int64"})
    return table.astype({"true_class_id": "Int64"}) if "true_class_id" in table.columns else table


def _record(prepared: Path, name: str, kind: str, params: dict[str, Any], splits: Sequence[str]) -> dict:
    """What makes the folder: reused only when every entry matches (the source FileList by content)."""
    return {"control": name, "condition": kind, **params, "splits": [s.upper() for s in splits],
            "source_filelist_sha256": sha256_file(prepared / FILELIST_FILE),
            "constants": {"blur_sigma": BLUR_SIGMA, "noise_sigma": NOISE_SIGMA}}


def _reusable(out: Path, record: dict[str, Any]) -> bool:
    """True when `out` is a complete control folder made with exactly `record`; refuses a foreign folder."""
    import json

    params = out / PARAMS_FILE
    if not out.exists() or not any(out.iterdir()):
        return False
    if not params.is_file():
        raise UsageError(f"{out} exists and is not a control folder (no {PARAMS_FILE}); refusing to replace it",
                         fix="use a new output folder, or delete this one")
    recorded = json.loads(params.read_text(encoding="utf-8"))
    same = all(recorded.get(k) == v for k, v in record.items())
    return same and recorded.get("status") == "complete" and (out / FILELIST_FILE).is_file()


def build_control(prepared: str | os.PathLike, name: str, out: str | os.PathLike, *, frames: int,
                  fps: float = 32.0, seed: int = 0, formats: Sequence[str] = ("jpg", "mp4"),
                  max_videos: int | None = None, size: int = 112, condition: str | None = None,
                  splits: Sequence[str] = HELDOUT_SPLITS) -> Path:
    """Write control `name` of the held-out videos of `prepared` into `out` in the sample layout.

    Each sample: (frames, size, size) uint8 at `fps`. FileList.csv: CondType/CondValue, EF and class_id are
    the REQUESTED condition (truth for pixel controls, deranged for label controls), TrueEF / true_class_id
    the truth. Videos skipped (no condition value, too short) are listed in `out/control_params.json`
    ("skipped") and logged. The folder is swapped in whole; a complete one with the same record is reused.
    """
    control, prepared, out = get_control(name), Path(prepared), Path(out)
    if frames < 1 or fps <= 0 or (max_videos is not None and max_videos < 1):
        raise UsageError(f"need frames >= 1, fps > 0, max_videos >= 1 or None; got {frames}, {fps}, {max_videos}",
                         fix="pass positive values")
    rows = heldout_rows(prepared, splits=splits)
    kind = _condition(rows, name, control, condition)
    params = {"frames": int(frames), "fps": float(fps), "seed": int(seed), "size": int(size),
              "formats": parse_formats(list(formats)), "max_videos": max_videos}
    record = _record(prepared, name, kind, params, splits)
    if _reusable(out, record):
        return out
    selected, skipped = _select(rows, CONDITION_COLUMNS.get(kind), frames, fps, max_videos, seed)
    with atomic_dir(out) as tmp:
        written, short = _write_videos(prepared, tmp, selected, name, params)
        skipped |= short
        if written.empty:
            raise DataError(f"no held-out video of {prepared / FILELIST_FILE} gives a {frames}-frame clip at "
                            f"{fps:g} fps for control {name!r} (skipped: {len(skipped)})",
                            fix="use fewer frames, or a dataset with longer held-out videos")
        write_filelist(_filelist(written, kind, name, seed), tmp / FILELIST_FILE)
        write_json_atomic(tmp / PARAMS_FILE, {**record, "status": "complete", "videos": len(written),
                                              "skipped": dict(sorted(skipped.items()))})
    if skipped:
        log.warning("control %s: %d held-out video(s) skipped (listed in %s)", name, len(skipped),
                    out / PARAMS_FILE)
    return out


def build_controls(prepared: str | os.PathLike, out_root: str | os.PathLike, *,
                   names: Iterable[str] | None = None, **kwargs: Any) -> dict[str, Path]:
    """Build every applicable control (or `names`) as out_root/<name>; kwargs go to `build_control`."""
    rows = heldout_rows(prepared, splits=kwargs.get("splits", HELDOUT_SPLITS))
    chosen = list(names) if names is not None else applicable(rows)
    for name in chosen:
        get_control(name)  # unknown names fail before any video is written
    return {name: build_control(prepared, name, Path(out_root) / name, **kwargs) for name in chosen}
