"""Phantom datasets on disk, in exactly the raw layouts the reference systems read.

- `dynamic` (EchoNet-Dynamic): `Videos/<FileName>.avi`; `FileList.csv` (FileName without extension, EF,
  ESV, EDV, FrameHeight, FrameWidth, FPS, NumberOfFrames, Split TRAIN/VAL/TEST); `VolumeTracings.csv`
  (FileName WITH .avi, X1, Y1, X2, Y2, Frame): per traced frame the LV long axis [apex -> annulus midpoint]
  first, then 20 cavity chords from apex to annulus. Frames are the true ES then the true ED (smaller
  trace first, the order the EchoNet loader assumes).
- `pediatric-a4c` / `pediatric-psax` (EchoNet-Pediatric, raw): `Videos/<name>.avi` at 30 or 50 fps;
  `FileList.csv` (FileName WITH .avi, EF, Sex, Age, Weight, Height, Split = fold 0-9) with no video
  columns (preparation reads them from the videos); `VolumeTracings.csv` (FileName, X, Y, Frame): LV contour
  points at the true ES then ED frame.
- `cardiacnet` (Kaggle NIfTI tree): `CardiacNet-ASD/{ASD,Non-ASD}/<nnn>/` and `CardiacNet-PAH/{PAH,Non-PAH}/
  <nnn>/`, each with `<nnn>_image.nii` and a `<nnn>_label.nii` chamber mask (which importers must skip).
  Patient numbers are unique across classes. Orientation: the stored array is S = F[::-1, ::-1].T per frame
  for the upright frame F (H, W), i.e. shape (W, H, T) with time on axis 2; the importer's
  `np.flip(np.rot90(S, k=1, axes=(0, 1)), axis=1)` restores F (apex at the top). Intensities are an
  arbitrary per-patient affine map of the display grey levels (int16 on disk with a NIfTI scale factor,
  floats from `get_fdata()`), so importers must window them. Uncompressed .nii (gzip stores an mtime).

Every set also gets `GROUND_TRUTH.csv` (EF, EDV, ESV, heart rate, fps, ED/ES frames, class; not part of the
published formats) and `phantom.json` (what made it). Same kind + seed + sizes -> byte-identical files.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from echo_core.config import validate_config
from echo_core.data.phantom.config import ClipSpec, KindConfig, PhantomClip, PhantomConfig, PhantomKind
from echo_core.data.phantom.render import render_clip
from echo_core.errors import UsageError
from echo_core.utils.atomic import atomic_dir, write_json_atomic
from echo_core.utils.progress import progress

log = logging.getLogger("echoforge")

PHANTOM_VERSION = 1  # bump when the rendered content changes
MANIFEST = "phantom.json"
GROUND_TRUTH = "GROUND_TRUTH.csv"
_KIND_IDS = {PhantomKind.DYNAMIC: 1, PhantomKind.PEDIATRIC_A4C: 2, PhantomKind.PEDIATRIC_PSAX: 3,
             PhantomKind.CARDIACNET: 4}  # fmt: skip
DEFAULT_FOLDERS = {
    PhantomKind.DYNAMIC: "EchoNet-Dynamic",
    PhantomKind.PEDIATRIC_A4C: "EchoNet-Pediatric/A4C",
    PhantomKind.PEDIATRIC_PSAX: "EchoNet-Pediatric/PSAX",
    PhantomKind.CARDIACNET: "CardiacNet",
}
# round-robin class order; (condition folder, class folder, anatomy condition)
CARDIACNET_ORDER = (("ASD", "ASD", "asd"), ("ASD", "Non-ASD", "normal"), ("PAH", "PAH", "pah"),
                    ("PAH", "Non-PAH", "normal"))  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One planned clip: its index, its name in the layout, its spec, and extra FileList columns."""

    index: int
    name: str
    spec: ClipSpec
    columns: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- planning


def plan_dataset(kind: PhantomKind | str, cfg: KindConfig, seed: int) -> list[Item]:
    """Names, ground truth and split of every clip (pure, seeded; rendering uses a per-clip stream)."""
    kind = PhantomKind(kind)
    rng = np.random.default_rng([seed, _KIND_IDS[kind]])
    if kind is PhantomKind.DYNAMIC:
        return _plan_dynamic(cfg, rng)
    if kind is PhantomKind.CARDIACNET:
        return _plan_cardiacnet(cfg, rng)
    return _plan_pediatric(cfg, rng, "a4c" if kind is PhantomKind.PEDIATRIC_A4C else "psax")


def _spec(cfg: KindConfig, rng: np.random.Generator, *, view: str, edv: float, condition: str = "normal",
          frame_size: tuple[int, int] = (112, 112)) -> ClipSpec:  # fmt: skip
    return ClipSpec(
        view=view, condition=condition, frame_size=frame_size,
        fps=float(cfg.fps[int(rng.integers(len(cfg.fps)))]),
        num_frames=int(rng.integers(cfg.num_frames[0], cfg.num_frames[1] + 1)),
        heart_rate_bpm=round(float(rng.uniform(*cfg.heart_rate_bpm)), 1),
        ef=round(float(rng.uniform(*cfg.ef)), 2),
        edv=round(edv, 2),
    )  # fmt: skip


def dynamic_splits(n: int, rng: np.random.Generator) -> list[str]:
    """~75/12.5/12.5 TRAIN/VAL/TEST in a seeded order; VAL and TEST non-empty when n >= 3."""
    small = max(1, round(n / 8)) if n >= 3 else 0
    labels = ["VAL"] * small + ["TEST"] * small + ["TRAIN"] * (n - 2 * small)
    return [labels[i] for i in rng.permutation(n)]


def pediatric_folds(n: int, rng: np.random.Generator) -> list[int]:
    """Folds 0-9 in a seeded order; every fold occurs when n >= 10."""
    return [int(f) for f in rng.permutation(np.arange(n) % 10)]


def _plan_dynamic(cfg: KindConfig, rng: np.random.Generator) -> list[Item]:
    splits = dynamic_splits(cfg.num_videos, rng)
    names = _unique(lambda: f"0X{int(rng.integers(0, 2**63)):016X}", cfg.num_videos)
    items = []
    for i, (name, split) in enumerate(zip(names, splits, strict=True)):
        edv = float(np.clip(rng.lognormal(math.log(105.0), 0.3), 45.0, 250.0))
        items.append(Item(i, name, _spec(cfg, rng, view="a4c", edv=edv), {"Split": split}))
    return items


def _plan_pediatric(cfg: KindConfig, rng: np.random.Generator, view: str) -> list[Item]:
    folds = pediatric_folds(cfg.num_videos, rng)
    names = _unique(lambda: f"CR{int(rng.integers(16**6, 16**7)):07x}", cfg.num_videos)
    items = []
    for i, (stem, fold) in enumerate(zip(names, folds, strict=True)):
        age = float(rng.uniform(0.3, 18.0))
        height = float(np.clip(52 + 8.5 * age - 0.12 * age**2 + rng.normal(0, 4), 45, 195))
        weight = float(rng.uniform(14.5, 21.5) * (height / 100) ** 2)
        bsa = math.sqrt(height * weight / 3600)  # Mosteller
        edv = 70.0 * bsa**1.3 * float(rng.uniform(0.85, 1.15))
        columns = {"Sex": "M" if rng.random() < 0.5 else "F", "Age": round(age, 1), "Weight": round(weight, 1),
                   "Height": round(height, 1), "Split": fold}  # fmt: skip
        name = f"{stem}-{stem[:2]}{int(rng.integers(16**6, 16**7)):07x}-{i:06d}.avi"
        items.append(Item(i, name, _spec(cfg, rng, view=view, edv=edv), columns))
    return items


def _plan_cardiacnet(cfg: KindConfig, rng: np.random.Generator) -> list[Item]:
    items = []
    for i in range(cfg.num_videos):
        condition, class_name, anatomy = CARDIACNET_ORDER[i % len(CARDIACNET_ORDER)]
        edv = float(np.clip(rng.lognormal(math.log(100.0), 0.25), 50.0, 220.0))
        spec = _spec(cfg, rng, view="a4c", edv=edv, condition=anatomy, frame_size=tuple(cfg.frame_size))
        items.append(Item(i, f"{i + 1:03d}", spec, {"condition": condition, "class_name": class_name}))
    return items


def _unique(draw, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = draw()
        if name not in names:
            names.append(name)
    return names


# ----------------------------------------------------------------------------------------------- writing


def _truth_row(item: Item, clip: PhantomClip) -> dict[str, Any]:
    spec = item.spec
    return {"EF": spec.ef, "EDV": spec.edv, "ESV": round(spec.esv, 2), "heart_rate_bpm": spec.heart_rate_bpm,
            "fps": spec.fps, "num_frames": spec.num_frames, "ed_frame": clip.ed_frame, "es_frame": clip.es_frame,
            "view": spec.view.upper(), "anatomy": spec.condition}  # fmt: skip


def _write_echonet_item(root: Path, kind: PhantomKind, item: Item, clip: PhantomClip) -> dict[str, list]:
    """Video + FileList row + VolumeTracings rows + ground-truth row of one EchoNet clip."""
    from echo_core.data.video import write_video

    avi = item.name if item.name.endswith(".avi") else f"{item.name}.avi"
    write_video(root / "Videos" / avi, clip.frames, item.spec.fps)
    spec = item.spec
    if kind is PhantomKind.DYNAMIC:
        row = {"FileName": item.name, "EF": spec.ef, "ESV": round(spec.esv, 2), "EDV": spec.edv,
               "FrameHeight": clip.frames.shape[1], "FrameWidth": clip.frames.shape[2], "FPS": spec.fps,
               "NumberOfFrames": clip.frames.shape[0], **item.columns}  # fmt: skip
        tracings = _dynamic_tracings(avi, clip)
    else:
        row = {"FileName": item.name, "EF": spec.ef, **item.columns}
        tracings = [{"FileName": avi, "X": round(float(x), 4), "Y": round(float(y), 4), "Frame": frame}
                    for frame, contour in ((clip.es_frame, clip.es_contour), (clip.ed_frame, clip.ed_contour))
                    for x, y in contour]  # fmt: skip
    return {"filelist": [row], "tracings": tracings, "truth": [{"FileName": item.name, **_truth_row(item, clip)}]}


def _dynamic_tracings(avi: str, clip: PhantomClip) -> list[dict[str, Any]]:
    """EchoNet-Dynamic rows: long axis [apex, annulus midpoint], then the 20 chords, for ES then ED."""
    from echo_core.data.phantom.anatomy import chords_from_contour

    rows = []
    for frame, contour, axis in ((clip.es_frame, clip.es_contour, clip.es_axis),
                                 (clip.ed_frame, clip.ed_contour, clip.ed_axis)):  # fmt: skip
        for (x1, y1), (x2, y2) in [tuple(axis), *chords_from_contour(contour, axis)]:
            rows.append({"FileName": avi, "X1": round(float(x1), 4), "Y1": round(float(y1), 4),
                         "X2": round(float(x2), 4), "Y2": round(float(y2), 4), "Frame": frame})  # fmt: skip
    return rows


def _write_cardiacnet_item(root: Path, item: Item, clip: PhantomClip) -> dict[str, list]:
    """`CardiacNet-<COND>/<class>/<nnn>/<nnn>_image.nii` + `<nnn>_label.nii` and the ground-truth row."""
    from echo_core.data.filelist import class_id_for

    cond, cls = item.columns["condition"], item.columns["class_name"]
    folder = root / f"CardiacNet-{cond}" / cls / item.name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([item.index, 7])  # the per-patient intensity map: arbitrary but fixed
    span, offset = float(rng.uniform(400.0, 1200.0)), float(rng.uniform(-200.0, 100.0))
    values = clip.frames.astype(np.float32) * np.float32(span / 255.0) + np.float32(offset)
    _write_nifti(folder / f"{item.name}_image.nii", to_nifti_layout(values), np.int16)
    _write_nifti(folder / f"{item.name}_label.nii", to_nifti_layout(clip.labels), np.uint8)
    truth = {"condition": cond, "class_name": cls, "class_id": class_id_for(cls), "patient": item.name,
             "patient_number": int(item.name), "image": str((folder / f"{item.name}_image.nii").relative_to(root)),
             **_truth_row(item, clip), "frame_height": clip.frames.shape[1],
             "frame_width": clip.frames.shape[2]}  # fmt: skip
    return {"truth": [truth]}


def to_nifti_layout(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) upright frames -> (W, H, T) stored array S with S[:, :, t] = F_t[::-1, ::-1].T (module doc)."""
    return np.ascontiguousarray(frames[:, ::-1, ::-1].transpose(2, 1, 0))


def _write_nifti(path: Path, data: np.ndarray, dtype) -> None:
    import nibabel as nib

    from echo_core.utils.atomic import atomic_path

    image = nib.Nifti1Image(data, affine=np.diag([0.3, 0.3, 1.0, 1.0]))
    image.set_data_dtype(dtype)  # float data -> int16 + scale factor computed by nibabel (deterministic)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))


def _write_tables(root: Path, kind: PhantomKind, records: list[dict[str, list]]) -> None:
    from echo_core.data.filelist import write_filelist, write_volume_tracings

    def table(key: str) -> pd.DataFrame:
        return pd.DataFrame([row for record in records for row in record.get(key, [])])

    if kind is not PhantomKind.CARDIACNET:
        write_filelist(table("filelist"), root / "FileList.csv")
        write_volume_tracings(table("tracings"), root / "VolumeTracings.csv")
    write_filelist(table("truth"), root / GROUND_TRUTH)


# ----------------------------------------------------------------------------------------------- entry points


def resolve_kind_config(kind: PhantomKind | str, config: KindConfig | None = None, *, num_videos: int | None = None,
                        fps: float | None = None, num_frames: int | None = None) -> KindConfig:  # fmt: skip
    """The kind's config (default: PhantomConfig()'s) with CLI-style overrides, validated."""
    kind = _kind(kind)
    base = config if config is not None else PhantomConfig().for_kind(kind)
    updates: dict[str, Any] = {}
    if num_videos is not None:
        updates["num_videos"] = num_videos
    if fps is not None:
        updates["fps"] = [fps]
    if num_frames is not None:
        updates["num_frames"] = (num_frames, num_frames)
    return validate_config(type(base), {**base.model_dump(), **updates}, where=f"phantom {kind.value} config")


def _render_item(kind: PhantomKind, tmp: Path, seed: int, item: Item) -> dict[str, Any]:
    """Render and write one clip; its own random stream makes it independent of every other clip."""
    clip = render_clip(item.spec, np.random.default_rng([seed, _KIND_IDS[kind], item.index]))
    if kind is PhantomKind.CARDIACNET:
        return _write_cardiacnet_item(tmp, item, clip)
    return _write_echonet_item(tmp, kind, item, clip)


def _render_all(kind: PhantomKind, tmp: Path, seed: int, items: list[Item], workers: int) -> list[dict[str, Any]]:
    """Every clip's record, in item order, rendered by `workers` processes (same bytes for any count)."""
    import functools

    render = functools.partial(_render_item, kind, tmp, seed)
    desc = f"phantom {kind.value}"
    if workers <= 1 or len(items) < 2:
        return [render(item) for item in progress(items, total=len(items), desc=desc)]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(progress(pool.map(render, items), total=len(items), desc=desc))


def generate_dataset(kind: PhantomKind | str, out: str | os.PathLike, *, num_videos: int, seed: int,
                     fps: float | None = None, num_frames: int | None = None, overwrite: bool = False,
                     config: KindConfig | None = None, workers: int = 1) -> Path:  # fmt: skip
    """Write a phantom dataset of `kind` into `out` atomically (built in a temp sibling, then renamed).

    fps / num_frames: fixed for every clip; None draws them per clip from the kind's config. An `out`
    already holding the same phantom (same phantom.json) is left as is; any other non-empty `out` is refused
    unless `overwrite`. `workers` > 1 renders clips in that many processes (the bytes do not change).
    """
    kind = _kind(kind)
    cfg = resolve_kind_config(kind, config, num_videos=num_videos, fps=fps, num_frames=num_frames)
    out = Path(out)
    manifest = {"generator": "echoforge phantom", "version": PHANTOM_VERSION, "kind": kind.value, "seed": seed,
                "config": cfg.model_dump(mode="json")}  # fmt: skip
    if not overwrite and _same_phantom(out, manifest):
        log.info("phantom %s: %s is up to date", kind.value, out)
        return out
    _check_target(out, overwrite)
    items = plan_dataset(kind, cfg, seed)
    with atomic_dir(out) as tmp:
        records = _render_all(kind, tmp, seed, items, workers)
        _write_tables(tmp, kind, records)
        write_json_atomic(tmp / MANIFEST, manifest)
    return out


def generate_default_data(root: str | os.PathLike, cfg: PhantomConfig | None = None, *,
                          overwrite: bool = False, workers: int = 1) -> dict[str, Path]:  # fmt: skip
    """The four default sets under `root` (EchoNet-Dynamic, EchoNet-Pediatric/{A4C,PSAX}, CardiacNet)."""
    cfg = cfg or PhantomConfig()
    return {
        kind.value: generate_dataset(kind, Path(root) / folder, num_videos=cfg.for_kind(kind).num_videos,
                                     seed=cfg.seed, overwrite=overwrite, config=cfg.for_kind(kind),
                                     workers=workers)  # fmt: skip
        for kind, folder in DEFAULT_FOLDERS.items()
    }


def _kind(kind: PhantomKind | str) -> PhantomKind:
    try:
        return PhantomKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in PhantomKind)
        raise UsageError(f"unknown phantom kind {kind!r}", fix=f"use one of: {choices}") from None


def _same_phantom(out: Path, manifest: dict[str, Any]) -> bool:
    import json

    try:
        return json.loads((out / MANIFEST).read_text(encoding="utf-8")) == manifest
    except (OSError, ValueError):
        return False


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder", fix="choose a folder path for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} exists and is not empty",
                         fix="pass --overwrite to replace it, or choose another --out")  # fmt: skip
