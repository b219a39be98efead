"""FileList.csv / VolumeTracings.csv schemas, typed reading and writing, and safe path resolution.

The schemas are the file contracts between stages. Reading checks *structure* only (encoding, required
columns); *values* (NaN or out-of-range EF, unknown splits) are reported by the Great Expectations suites
in `pipelines/validation/`, so a bad row is reported with every other bad row instead of one at a time.

Every path derived from a CSV `FileName` goes through `safe_member`: a FileList is data, and data must not
be able to point the pipeline at files outside the dataset root.
"""

from __future__ import annotations

import io
import os
from enum import StrEnum
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from echo_core.errors import DataError, UsageError
from echo_core.utils.atomic import atomic_path


class DatasetKind(StrEnum):
    DYNAMIC = "dynamic"
    PEDIATRIC = "pediatric"
    CARDIACNET = "cardiacnet"


# CLI spelling -> (kind, pediatric view or None). Pediatric views share one schema.
CLI_KINDS: dict[str, tuple[DatasetKind, str | None]] = {
    "dynamic": (DatasetKind.DYNAMIC, None),
    "pediatric": (DatasetKind.PEDIATRIC, None),
    "pediatric-a4c": (DatasetKind.PEDIATRIC, "A4C"),
    "pediatric-psax": (DatasetKind.PEDIATRIC, "PSAX"),
    "cardiacnet": (DatasetKind.CARDIACNET, None),
}


def dataset_kind(name: str | DatasetKind) -> DatasetKind:
    """Map a CLI kind (`dynamic`, `pediatric-a4c`, `pediatric-psax`, `cardiacnet`, ...) to its schema kind."""
    return CLI_KINDS[_cli_key(name)][0]


def pediatric_view(name: str | DatasetKind) -> str | None:
    """`pediatric-a4c` -> "A4C", `pediatric-psax` -> "PSAX", anything else -> None."""
    return CLI_KINDS[_cli_key(name)][1]


def _cli_key(name: str | DatasetKind) -> str:
    key = name.value if isinstance(name, DatasetKind) else str(name).strip().lower()
    if key not in CLI_KINDS:
        raise UsageError(f"unknown dataset kind {name!r}", fix=f"use one of: {', '.join(CLI_KINDS)}")
    return key


SPLITS = ("TRAIN", "VAL", "TEST")
SYNTHETIC_SPLITS = ("GENERATED", "EXTRA")


def fold_to_split(fold: int) -> str:
    """EchoNet-Pediatric fold -> split: 0-7 TRAIN, 8 VAL, 9 TEST (the published protocol)."""
    try:
        valid = not isinstance(fold, bool) and int(fold) == fold and 0 <= int(fold) <= 9
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise DataError(
            f"pediatric fold must be an integer 0-9, got {fold!r}",
            fix="raw EchoNet-Pediatric FileList.csv `Split` holds folds 0-9; a file already converted to "
            "TRAIN/VAL/TEST must be read with prepared=True, not converted again",
        )
    return "TRAIN" if int(fold) <= 7 else ("VAL" if int(fold) == 8 else "TEST")


# Fixed, documented map (the one EchoDream's training/evaluation code assumes). EchoDream's converter
# assigned ids in os.listdir order; fixing it here makes class ids identical on every machine.
CARDIACNET_CLASSES: dict[int, str] = {0: "ASD", 1: "Non-ASD", 2: "Non-PAH", 3: "PAH"}
CARDIACNET_CONDITIONS: dict[str, tuple[str, str]] = {"ASD": ("ASD", "Non-ASD"), "PAH": ("PAH", "Non-PAH")}
_CLASS_IDS = {name: cid for cid, name in CARDIACNET_CLASSES.items()}


def class_id_for(name: str) -> int:
    """CardiacNet class name (ASD, Non-ASD, Non-PAH, PAH) -> class id."""
    if name not in _CLASS_IDS:
        raise DataError(
            f"unknown CardiacNet class {name!r}",
            fix=f"class folders must be named one of: {', '.join(_CLASS_IDS)}",
        )
    return _CLASS_IDS[name]


# Column -> dtype ("str", "float", "int"). Raw = as published; prepared = what `data prepare` writes.
_DYNAMIC = {
    "FileName": "str",
    "EF": "float",
    "ESV": "float",
    "EDV": "float",
    "FrameHeight": "int",
    "FrameWidth": "int",
    "FPS": "float",
    "NumberOfFrames": "int",
    "Split": "str",
}
_VIDEO_META = {"FrameHeight": "int", "FrameWidth": "int", "FPS": "float", "NumberOfFrames": "int"}
_CARDIACNET_RAW = {
    "FileName": "str",
    "condition": "str",
    "class_name": "str",
    "class_id": "int",
    "patient_id": "str",
    "FPS": "float",
    "FrameHeight": "int",
    "FrameWidth": "int",
    "NumberOfFrames": "int",
}

REQUIRED_COLUMNS: dict[DatasetKind, dict[str, str]] = {
    DatasetKind.DYNAMIC: _DYNAMIC,
    # raw pediatric: FileName carries ".avi" and Split is an int fold 0-9
    DatasetKind.PEDIATRIC: {"FileName": "str", "EF": "float", "Split": "int"},
    DatasetKind.CARDIACNET: _CARDIACNET_RAW,
}
PREPARED_COLUMNS: dict[DatasetKind, dict[str, str]] = {
    DatasetKind.DYNAMIC: _DYNAMIC,
    # FileName without extension, Split TRAIN/VAL/TEST, the original fold kept in Fold
    DatasetKind.PEDIATRIC: {"FileName": "str", "EF": "float", "Split": "str", "Fold": "int", **_VIDEO_META},
    DatasetKind.CARDIACNET: {**_CARDIACNET_RAW, "Split": "str"},
}
TRACING_COLUMNS: dict[DatasetKind, dict[str, str]] = {
    DatasetKind.DYNAMIC: {
        "FileName": "str",
        "X1": "float",
        "Y1": "float",
        "X2": "float",
        "Y2": "float",
        "Frame": "int",
    },
    DatasetKind.PEDIATRIC: {"FileName": "str", "X": "float", "Y": "float", "Frame": "int"},
}

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".gif")


def strip_extension(name: str) -> str:
    """Drop a known video extension only ("a.b.avi" -> "a.b"; "a.b" stays "a.b")."""
    name = str(name)
    for ext in VIDEO_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def read_filelist(
    path: str | os.PathLike, kind: DatasetKind | str | None = None, *, prepared: bool = False
) -> pd.DataFrame:
    """Read a FileList.csv; check encoding and required columns of `kind` (raw or prepared schema).

    Extra columns are kept in their original order. `FileName` is always a string (never "1E5" -> 100000.0).
    Values are not checked here (see module docstring).
    """
    required = None
    if kind is not None:
        schemas = PREPARED_COLUMNS if prepared else REQUIRED_COLUMNS
        required = schemas[dataset_kind(kind)]
    return _read_csv(Path(path), required, what="FileList")


def write_filelist(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write atomically: UTF-8, LF line endings, no index column."""
    return _write_csv(df, Path(path))


def read_volume_tracings(path: str | os.PathLike, kind: DatasetKind | str) -> pd.DataFrame:
    """Read VolumeTracings.csv (dynamic: FileName,X1,Y1,X2,Y2,Frame; pediatric: FileName,X,Y,Frame)."""
    kind = dataset_kind(kind)
    if kind not in TRACING_COLUMNS:
        raise DataError(f"{kind.value} datasets have no VolumeTracings.csv ({path})")
    return _read_csv(Path(path), TRACING_COLUMNS[kind], what="VolumeTracings")


def write_volume_tracings(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    return _write_csv(df, Path(path))


def _read_csv(path: Path, required: dict[str, str] | None, *, what: str) -> pd.DataFrame:
    text = _read_utf8(path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype={"FileName": str})
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} {path} is empty", fix="regenerate it or restore it with `dvc checkout`") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{what} {path} is not a valid CSV: {exc}", fix="fix the malformed row") from None
    if required is not None:
        _check_columns(df, required, path, what)
    return df


def _read_utf8(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"file not found: {path}", fix="check the path, or run `dvc pull` / `dvc checkout`")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a BOM (Excel exports) is harmless; drop it
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line})",
            fix="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None


def _check_columns(df: pd.DataFrame, required: dict[str, str], path: Path, what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return
    # A near miss (" EF", "filename") is the usual cause; point at it rather than just listing.
    folded = {str(c).strip().lower(): str(c) for c in df.columns}
    hints = [f"{folded[m.lower()]!r} -> {m!r}" for m in missing if m.lower() in folded]
    fix = f"rename {', '.join(hints)}" if hints else f"the file must have columns: {', '.join(required)}"
    raise DataError(f"{what} {path} is missing column(s) {', '.join(missing)}", fix=fix)


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    return path


def safe_member(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """`root/relative`, refusing anything that can leave `root`.

    Refused: empty names, absolute paths (POSIX or Windows), `..` components, and paths that resolve
    outside `root` through a symlink. Raises DataError naming the FileName and the root.
    """
    root = Path(root)
    rel = str(relative)
    posix, windows = PurePosixPath(rel), PureWindowsPath(rel)
    reason = None
    if not rel.strip():
        reason = "is empty"
    elif posix.is_absolute() or windows.is_absolute() or windows.drive:
        reason = "is an absolute path"
    elif ".." in posix.parts or ".." in windows.parts:
        reason = "contains '..'"
    else:
        resolved = (root / rel).resolve()
        if not resolved.is_relative_to(root.resolve()):
            reason = f"resolves to {resolved}, outside the root (symlink?)"
    if reason:
        raise DataError(
            f"FileName {rel!r} {reason}; refusing to read outside dataset root {root}",
            fix="FileName must be a plain name relative to the dataset folder; fix the CSV row",
        )
    return root / rel


def resolve_video(
    root: str | os.PathLike,
    file_name: str,
    *,
    folder: str = "Videos",
    extensions: tuple[str, ...] = (".avi", ".mp4"),
) -> Path:
    """Find `root/folder/<file_name>[.ext]`; FileName may carry an extension or not.

    With an extension, that exact file is tried first, then the same stem with each of `extensions`
    (EchoDream's CardiacNet loader looked for .avi next to .mp4 files and found nothing).
    """
    name = str(file_name)
    stem = strip_extension(name)
    candidates = [name] if stem != name else []
    candidates += [stem + ext for ext in extensions if stem + ext != name]
    tried = []
    for candidate in candidates:
        path = safe_member(root, f"{folder}/{candidate}" if folder else candidate)
        if path.is_file():
            return path
        tried.append(str(path))
    raise DataError(
        f"video for FileName {name!r} not found; tried: {', '.join(tried)}",
        fix="check the FileName column and the Videos folder (`dvc pull` / `dvc checkout` if DVC-tracked)",
    )
