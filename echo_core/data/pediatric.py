"""EchoNet-Pediatric (A4C / PSAX) preparation.

Fixes the reference `complete_pediatrics_filelist.py`: it was not idempotent (a second run mapped the
already-converted TRAIN/VAL/TEST strings to TEST and overwrote its own backup), silently wrote fps=0 for a
missing video, and edited the raw FileList in place. Here the raw folder is only read, a missing or
unreadable video is an error naming the row, and a prepared folder prepared again gives identical output:
the fold is the source of truth (raw: `Split` holds the fold; prepared: `Fold` does).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from echo_core.data.filelist import fold_to_split, strip_extension
from echo_core.data.prepare import PrepareConfig, PreparePlan, plan_echonet, with_context
from echo_core.errors import DataError

VIEWS = ("A4C", "PSAX")


def plan_pediatric(src: str | os.PathLike, dst: str | os.PathLike, *, view: str,
                   config: PrepareConfig | None = None, exclude: Iterable[str] = ()) -> PreparePlan:
    """Plan one view folder (`view` = A4C or PSAX): raw or already prepared, same result."""
    if view not in VIEWS:
        raise DataError(f"unknown pediatric view {view!r}", fix=f"use one of: {', '.join(VIEWS)}")

    def harmonise(df: pd.DataFrame, path: Path) -> pd.DataFrame:
        return harmonise_pediatric(df, path, view)

    return plan_echonet(f"pediatric-{view.lower()}", src, dst, harmonise, config=config or PrepareConfig(),
                        exclude=exclude)


def harmonise_pediatric(df: pd.DataFrame, path: Path, view: str) -> pd.DataFrame:
    """FileName without extension; `Fold` = original fold; `Split` = TRAIN 0-7 / VAL 8 / TEST 9; View."""
    df = df.copy()
    df["FileName"] = df["FileName"].map(strip_extension)
    already_prepared = "Fold" in df.columns
    folds = df["Fold"] if already_prepared else df["Split"]
    splits = [_split_of(fold, path, line, name, "Fold" if already_prepared else "Split")
              for line, fold, name in zip(df.index, folds, df["FileName"], strict=True)]
    if already_prepared:
        _check_splits_agree(df, splits, path)
    df["Fold"] = [int(f) for f in folds]
    df["Split"] = splits
    if not already_prepared:  # keep Fold next to Split, where a reader looks for it
        columns = [c for c in df.columns if c != "Fold"]
        columns.insert(columns.index("Split") + 1, "Fold")
        df = df[columns]
    return _with_view(df, path, view)


def _split_of(fold, path: Path, line: int, name: str, column: str) -> str:
    try:
        return fold_to_split(fold)
    except DataError as exc:
        raise with_context(exc, f"{path} line {line + 2} (FileName {name!r}) field {column}") from None


def _check_splits_agree(df: pd.DataFrame, splits: list[str], path: Path) -> None:
    """A prepared FileList whose Split disagrees with its Fold was edited by hand: refuse to guess."""
    current = df["Split"].astype(str).str.upper().tolist()
    rows = zip(df.index, df["FileName"], current, splits, strict=True)
    bad = [(i, n, c, s) for i, n, c, s in rows if c != s]
    if bad:
        i, name, have, want = bad[0]
        raise DataError(f"{path} line {i + 2} (FileName {name!r}): Split {have!r} disagrees with Fold "
                        f"(-> {want!r}); {len(bad)} row(s) disagree",
                        fix="Fold is the source of truth for pediatric splits; fix or drop the Split column")


def _with_view(df: pd.DataFrame, path: Path, view: str) -> pd.DataFrame:
    if "View" not in df.columns:
        return df.assign(View=view)
    other = df.loc[df["View"].astype(str).str.upper() != view]
    if not other.empty:
        i = other.index[0]
        raise DataError(f"{path} line {i + 2} (FileName {df.at[i, 'FileName']!r}) field View: "
                        f"{df.at[i, 'View']!r}, but preparing as {view}",
                        fix=f"use --kind pediatric-{str(df.at[i, 'View']).lower()} for this folder")
    return df
