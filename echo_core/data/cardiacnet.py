"""CardiacNet import: Kaggle NIfTI tree -> MP4 videos + FileList.csv with a seeded patient-level split.

Raw layout: `<src>/CardiacNet-<COND>/<class>/<n>[_image.nii]/<n>_image.nii (+ <n>_label.nii ...)`.
Fixes of the reference converter (`1process_cardiacnetdata.py` + `2split_and_update_filelist.py`):
- only image volumes are converted; label / mask / segmentation files are skipped (they used to overwrite
  the video and duplicate the row);
- intensities are windowed once per VOLUME, not per frame (per-frame min-max made the video flicker);
- class ids come from the fixed `CARDIACNET_CLASSES` map, never from `os.listdir` order;
- FPS is the stated playback rate (a parameter, recorded as such), not an acquisition rate;
- splits are drawn per class over sorted patients with a seeded generator, so they are reproducible and
  every split has every class when a class has >= 3 patients; a patient is never in two splits.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from echo_core.config import StrictModel
from echo_core.data.filelist import CARDIACNET_CLASSES, CARDIACNET_CONDITIONS, SPLITS, class_id_for
from echo_core.data.jobs import Job, Plan, apply_exclude, check_src_dst
from echo_core.errors import DataError

COLUMNS = ("FileName", "condition", "class_name", "class_id", "patient_id", "FPS", "FrameHeight",
           "FrameWidth", "NumberOfFrames", "Split")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# A file or folder whose name contains one of these words holds an annotation, not an image.
LABEL_WORDS = {"label", "labels", "mask", "masks", "seg", "segmentation", "gt", "annotation", "annotations"}
_PATIENT = re.compile(r"^(\d+)(?:_image\.nii(?:\.gz)?)?$", re.IGNORECASE)
FPS_NOTE = "FPS is the stated playback rate (prepare.cardiacnet.fps), not the acquisition rate"
LAYOUT = "cardiacnet: FileList.csv + Videos/<FileName>.mp4"


class CardiacNetConfig(StrictModel):
    """NIfTI -> MP4 conversion and patient-level split of CardiacNet (params.yaml `prepare.cardiacnet`)."""

    fps: float = Field(32.0, gt=0)  # stated playback rate: the NIfTI files carry no trusted acquisition rate
    size: int = Field(112, ge=8)
    split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)  # TRAIN, VAL, TEST
    # Intensity window over the WHOLE volume; (0, 100) = global min/max. Per-frame windows flicker.
    intensity_percentiles: tuple[float, float] = (0.0, 100.0)

    @field_validator("split_ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or v[0] <= 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be >= 0, TRAIN > 0, and sum to 1; got {list(v)}")
        return v

    @field_validator("intensity_percentiles")
    @classmethod
    def _percentiles_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] < v[1] <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100; got {list(v)}")
        return v


@dataclass(frozen=True)
class Volume:
    """One image volume found in the raw tree."""

    condition: str
    class_name: str
    number: str  # patient folder number as written ("001")
    path: Path

    @property
    def file_name(self) -> str:
        return f"{self.class_name.lower()}_{self.number}"

    @property
    def patient_id(self) -> str:
        return f"{self.class_name.lower()}_{int(self.number)}"


def is_label_name(name: str) -> bool:
    return bool(set(re.split(r"[^a-z0-9]+", name.lower())) & LABEL_WORDS)


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


# ----------------------------------------------------------------------------------------------- scan


def scan_cardiacnet(src: str | os.PathLike) -> tuple[list[Volume], list[str]]:
    """All image volumes under `src` (sorted by class id, then patient number) and notes on skipped files."""
    src = Path(src)
    tops = sorted(p for p in src.iterdir() if p.is_dir() and p.name.startswith("CardiacNet-"))
    if not tops:
        raise DataError(f"no CardiacNet-* folder in {src}",
                        fix="point SRC at the folder holding CardiacNet-ASD/ and CardiacNet-PAH/")
    volumes, skipped = [], []
    for top in tops:
        condition = top.name.split("-", 1)[1]
        if condition not in CARDIACNET_CONDITIONS:
            raise DataError(f"unknown CardiacNet condition folder {top}",
                            fix=f"expected CardiacNet-{{{','.join(CARDIACNET_CONDITIONS)}}}")
        for class_dir in sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")):
            _check_class(class_dir, condition)
            found, skip = _scan_class(class_dir, condition)
            volumes += found
            skipped += skip
    _check_unique(volumes)
    volumes.sort(key=lambda v: (class_id_for(v.class_name), int(v.number), v.number))
    return volumes, skipped


def _check_class(class_dir: Path, condition: str) -> None:
    allowed = CARDIACNET_CONDITIONS[condition]
    if class_dir.name not in allowed:
        raise DataError(f"unknown class folder {class_dir}",
                        fix=f"class folders of CardiacNet-{condition} must be named {' or '.join(allowed)} "
                        f"(fixed class map {CARDIACNET_CLASSES})")


def _scan_class(class_dir: Path, condition: str) -> tuple[list[Volume], list[str]]:
    volumes, skipped = [], []
    for entry in sorted(class_dir.iterdir()):
        if entry.name.startswith(".") or is_label_name(entry.name):
            skipped.append(str(entry))
            continue
        match = _PATIENT.match(entry.name)
        if match is None:
            raise DataError(f"cannot read a patient number from {entry}",
                            fix="patient entries must be named <number> or <number>_image.nii")
        image = _image_in(entry, skipped) if entry.is_dir() else entry
        if not is_nifti(image):
            raise DataError(f"{image} is not a NIfTI file", fix="expected <number>_image.nii[.gz]")
        volumes.append(Volume(condition, class_dir.name, match.group(1), image))
    return volumes, skipped


def _image_in(folder: Path, skipped: list[str]) -> Path:
    """The one image volume of a patient folder; label files are recorded as skipped."""
    images = []
    for path in sorted(folder.iterdir()):
        if not is_nifti(path):
            continue
        if is_label_name(path.name):
            skipped.append(str(path))
        else:
            images.append(path)
    if len(images) != 1:
        raise DataError(f"patient folder {folder} holds {len(images)} image volume(s) "
                        f"({', '.join(p.name for p in images) or 'none'})",
                        fix="keep exactly one image NIfTI per patient folder; name annotations *_label.nii")
    return images[0]


def _check_unique(volumes: list[Volume]) -> None:
    for key in ("file_name", "patient_id"):
        seen: dict[str, Path] = {}
        for v in volumes:
            other = seen.setdefault(getattr(v, key), v.path)
            if other != v.path:
                raise DataError(f"two volumes map to the same {key} {getattr(v, key)!r}: "
                                f"{other} and {v.path}",
                                fix="patient numbers must be unique within a class folder")


# ---------------------------------------------------------------------------------------------- split


def split_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Patients per split: largest-remainder rounding of n*ratios; with n >= 3 every split with a
    positive ratio gets at least one patient (taken from the largest split)."""
    quotas = [n * r for r in ratios]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    if n >= 3:
        for i in range(3):
            if ratios[i] > 0 and counts[i] == 0:
                counts[counts.index(max(counts))] -= 1
                counts[i] = 1
    return counts[0], counts[1], counts[2]


def assign_splits(patients: pd.DataFrame, ratios: tuple[float, float, float], seed: int,
                  ) -> tuple[dict[str, str], list[str]]:
    """patients: columns patient_id, class_name -> ({patient_id: split}, warnings). Stratified by class.

    Each class has its own generator (seeded by seed and class id), so adding a class leaves the
    others' splits unchanged.
    """
    split_of, warnings = {}, []
    for class_name, group in sorted(patients.groupby("class_name"), key=lambda g: class_id_for(g[0])):
        ids = sorted(group["patient_id"].unique())
        if len(ids) < 3:
            warnings.append(f"class {class_name} has {len(ids)} patient(s); some splits have none of it")
        rng = np.random.default_rng([seed, class_id_for(class_name)])
        order = [ids[i] for i in rng.permutation(len(ids))]
        n_train, n_val, _ = split_counts(len(ids), ratios)
        for k, pid in enumerate(order):
            split_of[pid] = SPLITS[0] if k < n_train else SPLITS[1] if k < n_train + n_val else SPLITS[2]
    return split_of, warnings


# ----------------------------------------------------------------------------------------------- plan


def plan_cardiacnet(src: str | os.PathLike, dst: str | os.PathLike, *, config: CardiacNetConfig | None = None,
                    seed: int = 42, exclude: Iterable[str] = ()) -> Plan:
    """Scan the NIfTI tree, assign seeded patient-level splits, one `convert_volume` job per image volume."""
    cfg = config or CardiacNetConfig()
    src, dst = check_src_dst(src, dst)
    volumes, skipped = scan_cardiacnet(src)
    rows = pd.DataFrame([{"FileName": v.file_name, "condition": v.condition, "class_name": v.class_name,
                          "class_id": class_id_for(v.class_name), "patient_id": v.patient_id}
                         for v in volumes])
    # Split over ALL patients before exclusion: quarantining one video must not reshuffle everyone else.
    split_of, warnings = assign_splits(rows, cfg.split_ratios, seed)
    rows["Split"] = rows["patient_id"].map(split_of)
    kept, excluded, unknown = apply_exclude(rows, exclude)
    by_name = {v.file_name: v for v in volumes}
    params = {"fps": cfg.fps, "size": cfg.size, "intensity_percentiles": list(cfg.intensity_percentiles)}
    jobs = tuple(Job(op=convert_volume, file_name=row["FileName"], source=str(by_name[row["FileName"]].path),
                     output=f"Videos/{row['FileName']}.mp4", row=row, params=params,
                     where=f"{by_name[row['FileName']].path} (FileName {row['FileName']!r})")
                 for row in kept.to_dict(orient="records"))
    # No FileList: the source hash is that of the converted image volumes (added per job result).
    return Plan(kind="cardiacnet", layout=LAYOUT, src=str(src), dst=str(dst), jobs=jobs,
                params={"seed": seed, **cfg.model_dump(mode="json")}, source_files={}, columns=COLUMNS,
                excluded=excluded, unknown_excludes=unknown,
                notes={"fps": FPS_NOTE, "skipped_label_files": len(skipped),
                       "class_map": {str(k): v for k, v in CARDIACNET_CLASSES.items()}},
                warnings=tuple(warnings))


# -------------------------------------------------------------------------------------------- convert


def load_volume(path: str | os.PathLike) -> np.ndarray:
    """NIfTI -> float32 frames (T, H, W) in display orientation (rot90 in-plane, then flip left-right)."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises several unrelated types for damaged files
        raise DataError(f"cannot read NIfTI {path}: {type(exc).__name__}: {exc}",
                        fix="re-download the file, or --exclude the row") from None
    if data.ndim == 4 and 1 in data.shape[2:]:  # (X, Y, T, 1) or NIfTI-style (X, Y, 1, T)
        data = data[..., 0] if data.shape[3] == 1 else data[:, :, 0, :]
    if data.ndim != 3:
        raise DataError(f"NIfTI {path} has shape {data.shape}; expected (X, Y, time)",
                        fix="CardiacNet volumes are 2-D+time; --exclude anything else")
    if not np.isfinite(data).all():
        raise DataError(f"NIfTI {path} contains NaN or infinite values", fix="re-export the volume")
    oriented = np.flip(np.rot90(data, k=1, axes=(0, 1)), axis=1)
    return np.ascontiguousarray(np.moveaxis(oriented, 2, 0))


def normalise_volume(volume: np.ndarray, percentiles: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
    """volume: (T, H, W) float -> uint8 with ONE intensity window over the whole volume (no flicker)."""
    low, high = np.percentile(volume, percentiles)
    if not high > low:
        raise DataError(f"volume is constant (intensity {low}) within percentiles {list(percentiles)}",
                        fix="the file holds no image; --exclude it")
    scaled = np.clip((volume - low) / (high - low), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def convert_volume(job: Job, out: Path) -> dict[str, Any]:
    """Job op: one NIfTI image volume -> size x size gray MP4 at the stated fps."""
    from echo_core.data.video import probe_video, resize_frames, write_video

    params = job.params
    frames = normalise_volume(load_volume(job.source), tuple(params["intensity_percentiles"]))
    frames = resize_frames(frames, params["size"])
    write_video(out, frames, params["fps"])
    info = probe_video(out)
    return {"FPS": float(params["fps"]), "FrameHeight": info.height, "FrameWidth": info.width,
            "NumberOfFrames": info.num_frames}


__all__ = ["COLUMNS", "CardiacNetConfig", "Volume", "assign_splits", "convert_volume", "is_label_name",
           "load_volume", "normalise_volume", "plan_cardiacnet", "scan_cardiacnet", "split_counts"]
