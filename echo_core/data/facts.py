"""Facts about a FileList and its videos, measured without judging them (plain pandas, numpy and PyAV).

`pipelines/validation` hands these facts to Great Expectations, whose suites decide what is acceptable;
a notebook can use them directly (`probe_videos(root, df["FileName"])` says which videos decode).

Facts that do not apply stay None, so each broken row fails exactly one expectation: an unsafe FileName
is not looked up, a missing file is not decoded, an undecodable file has no size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from echo_core.data.filelist import resolve_video, safe_member
from echo_core.data.video import probe_video
from echo_core.errors import DataError
from echo_core.utils.progress import progress

VIDEO_FACTS = ("file_name_safe", "video_exists", "video_decodes", "video_error", "video_path",
               "video_frames", "video_fps", "video_height", "video_width", "video_size", "video_channels")
# fact column `<col>__number`: True = parses as the schema's number type, False = does not, None = empty
NUMBER_SUFFIX = "__number"


def missing_columns(columns: Iterable[str], schema: dict[str, str]) -> list[str]:
    """The schema's columns absent from `columns`, in schema order."""
    present = set(columns)
    return [c for c in schema if c not in present]


def video_facts(root: Path, file_name: Any) -> dict[str, Any]:
    """What can be said about one row's video: safe name, exists, decodes, frames, fps, size, channels."""
    facts: dict[str, Any] = dict.fromkeys(VIDEO_FACTS)
    if is_empty(file_name):
        return facts  # an empty FileName is a FileName fact, not a video fact
    name = str(file_name)
    try:
        safe_member(root, name)
    except DataError as exc:
        return {**facts, "file_name_safe": False, "video_error": first_line(exc)}
    facts["file_name_safe"] = True
    try:
        path = resolve_video(root, name)
    except DataError as exc:
        return {**facts, "video_exists": False, "video_error": first_line(exc)}
    facts.update(video_exists=True, video_path=_relative(path, root))
    try:
        # count=True decodes every frame: a truncated file with an intact header fails here, not in training
        info = probe_video(path, count=True)
    except DataError as exc:
        return {**facts, "video_decodes": False, "video_error": first_line(exc)}
    return {**facts, "video_decodes": True, "video_frames": info.num_frames, "video_fps": info.fps,
            "video_height": info.height, "video_width": info.width, "video_size": f"{info.width}x{info.height}",
            "video_channels": info.channels}


def probe_videos(root: Path, file_names: pd.Series, workers: int = 4) -> pd.DataFrame:
    """video_facts for every row (PyAV decodes outside the GIL, so threads overlap), in row order."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = list(progress(pool.map(partial(video_facts, root), file_names), total=len(file_names),
                             desc="probe videos"))
    facts = pd.DataFrame(rows, columns=list(VIDEO_FACTS), index=file_names.index)
    for column in ("file_name_safe", "video_exists", "video_decodes"):
        facts[column] = facts[column].astype(object)  # keep None (not applicable) apart from False
    for column in ("video_frames", "video_fps", "video_height", "video_width", "video_channels"):
        facts[column] = pd.to_numeric(facts[column]).astype(float)  # None -> NaN, skipped by range checks
    return facts


def number_facts(raw: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """Parsed numeric columns (NaN when empty or not a number) + `<col>__number` parse facts."""
    out = pd.DataFrame(index=raw.index)
    for column, dtype in schema.items():
        if dtype not in ("int", "float") or column not in raw.columns:
            continue
        values = pd.to_numeric(raw[column], errors="coerce").astype(float)
        ok = values.notna() & (values.map(_is_integral) if dtype == "int" else True)
        empty = raw[column].map(is_empty)
        out[column] = values
        out[column + NUMBER_SUFFIX] = pd.Series(ok, index=raw.index, dtype=object).where(~empty, None)
    return out


def build_table(raw: pd.DataFrame, facts: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """One frame of facts per row: schema columns (numbers parsed) + number facts + video facts."""
    numbers = number_facts(raw, schema)
    text = [c for c in schema if c in raw.columns and c not in numbers.columns]
    return pd.concat([raw[text].astype(object), numbers, facts], axis=1)


def is_empty(value: Any) -> bool:
    """None, NaN, pd.NA or a blank string: a cell with nothing in it."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def plain(value: Any) -> Any:
    """JSON-friendly scalar (numpy -> Python, NaN -> None)."""
    if is_empty(value):
        return None
    return value.item() if hasattr(value, "item") else value


def first_line(exc: Exception) -> str:
    """An EchoForgeError's message without its `fix:` line."""
    return str(exc).splitlines()[0]


def _is_integral(value: float) -> bool:
    return not math.isnan(value) and float(value).is_integer()


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
