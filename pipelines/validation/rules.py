"""The rule catalogue: what a valid dataset of each kind is, as GX-free `Rule`s (one per expectation).

Each rule names the FileList field a user has to fix, the rule in words and the fix; `gx.py` turns the
list into an ExpectationSuite. Rules run on the fact table of `echo_core.data.facts.build_table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from echo_core.data.facts import NUMBER_SUFFIX
from echo_core.data.filelist import (
    CARDIACNET_CLASSES,
    PREPARED_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
    DatasetKind,
    dataset_kind,
)

PREPARED_FRAME_SIZE = 112
# EchoNet videos are published at 112x112; raw CardiacNet keeps each scanner's size until preparation.
RAW_FRAME_SIZE = {DatasetKind.DYNAMIC: 112, DatasetKind.PEDIATRIC: 112, DatasetKind.CARDIACNET: None}
NULLABLE = {"ESV", "EDV"}  # EchoNet-Dynamic leaves volumes empty for some studies
PEDIATRIC_FOLDS = tuple(range(10))
FIX_QUARANTINE = "or re-run with --quarantine to set the row(s) aside (then `data prepare --exclude`)"


@dataclass(frozen=True)
class Rule:
    """One expectation, GX-free: `expectation` is a class in `great_expectations.expectations`."""

    expectation: str
    kwargs: dict[str, Any]
    field: str  # the FileList field (or "video") shown to the user
    rule: str  # what must hold, in words (also the GX description shown in Data Docs)
    hint: str  # how to fix a failure
    show: tuple[str, ...] = ()  # raw/fact columns printed for each offending row


def schema_for(kind: str | DatasetKind, prepared: bool) -> dict[str, str]:
    """Required column -> dtype of the raw (or prepared) FileList of `kind`."""
    return (PREPARED_COLUMNS if prepared else REQUIRED_COLUMNS)[dataset_kind(kind)]


def default_frame_size(kind: str | DatasetKind, prepared: bool) -> int | None:
    """Expected frame height = width: 112 for prepared data and EchoNet; None (unchecked), raw CardiacNet."""
    return PREPARED_FRAME_SIZE if prepared else RAW_FRAME_SIZE[dataset_kind(kind)]


def build_rules(kind: str | DatasetKind, columns: list[str], *, prepared: bool = False,
                expected_size: int | None = None) -> list[Rule]:
    """The suite for one dataset kind. `columns` are those present (optional checks need their column)."""
    kind = dataset_kind(kind)
    schema = schema_for(kind, prepared)
    rules = [Rule("ExpectTableRowCountToBeBetween", {"min_value": 1}, "FileList", "the FileList has rows",
                  "add the dataset's rows to FileList.csv")]
    rules += [Rule("ExpectColumnToExist", {"column": c}, c, f"column {c} exists",
                   f"add the {c} column to FileList.csv") for c in schema]
    present = [c for c in schema if c in columns]
    rules += _type_rules(schema, present)
    rules += _file_name_rules() + _video_rules(expected_size)
    if "Split" in present:
        rules += _split_rules(kind, prepared)
    if "EF" in present:
        rules += _ef_rules(present)
    if {"class_id", "class_name"} <= set(present):
        rules += _class_rules()
    rules += _metadata_rules(present)
    return rules


def _type_rules(schema: dict[str, str], present: list[str]) -> list[Rule]:
    rules = []
    for c in present:
        kind_of = {"int": "an integer", "float": "a number"}.get(schema[c])
        if kind_of:
            fix = f"write {c} as {kind_of} in FileList.csv, {FIX_QUARANTINE}"
            is_number = {"column": c + NUMBER_SUFFIX, "value_set": [True]}
            rules.append(Rule("ExpectColumnValuesToBeInSet", is_number, c, f"{c} is {kind_of}", fix, (c,)))
        if c in NULLABLE:
            continue
        column = c + NUMBER_SUFFIX if kind_of else c  # parse facts keep empty apart from "not a number"
        rules.append(Rule("ExpectColumnValuesToNotBeNull", {"column": column}, c, f"{c} is not empty",
                          f"fill in {c} in FileList.csv, {FIX_QUARANTINE}", (c,)))
    return rules


def _file_name_rules() -> list[Rule]:
    return [
        Rule("ExpectColumnValuesToBeUnique", {"column": "FileName"}, "FileName", "FileName is unique",
             f"give each video one row (remove or rename the duplicate), {FIX_QUARANTINE}"),
        Rule("ExpectColumnValuesToBeInSet", {"column": "file_name_safe", "value_set": [True]}, "FileName",
             "FileName stays inside the dataset folder (no '..', no absolute path)",
             f"use the plain video name (e.g. 0X1A2B3C) in FileName, {FIX_QUARANTINE}", ("video_error",)),
    ]


def _video_rules(expected_size: int | None) -> list[Rule]:
    fix_file = f"replace the file (`dvc checkout` / re-export), {FIX_QUARANTINE}"
    rules = [
        Rule("ExpectColumnValuesToBeInSet", {"column": "video_exists", "value_set": [True]}, "video",
             "the row's video file exists under Videos/", f"add the video or fix FileName, {FIX_QUARANTINE}",
             ("video_error",)),
        Rule("ExpectColumnValuesToBeInSet", {"column": "video_decodes", "value_set": [True]}, "video",
             "the video decodes completely", fix_file, ("video_path", "video_error")),
        Rule("ExpectColumnValuesToBeBetween", {"column": "video_fps", "min_value": 0, "strict_min": True},
             "video", "the video's frame rate is > 0", fix_file, ("video_path", "video_fps")),
        Rule("ExpectColumnValuesToBeBetween", {"column": "video_frames", "min_value": 1}, "video",
             "the video has at least one frame", fix_file, ("video_path", "video_frames")),
    ]
    if expected_size:
        size = f"{expected_size}x{expected_size}"
        rules.append(Rule("ExpectColumnValuesToBeInSet", {"column": "video_size", "value_set": [size]}, "video",
                          f"video frames are {size} (width x height)",
                          f"resize the video to {size} (`echoforge data prepare` does) or pass --expected-size, "
                          f"{FIX_QUARANTINE}", ("video_path", "video_size")))
    return rules


def _split_rules(kind: DatasetKind, prepared: bool) -> list[Rule]:
    if kind is DatasetKind.PEDIATRIC and not prepared:
        allowed, rule = list(PEDIATRIC_FOLDS), "raw EchoNet-Pediatric Split is a fold 0-9"
        fix = f"use folds 0-9 (pass --prepared for a TRAIN/VAL/TEST file), {FIX_QUARANTINE}"
    else:
        allowed, rule = list(SPLITS), f"Split is one of {', '.join(SPLITS)}"
        fix = f"use {'/'.join(SPLITS)} (upper case), {FIX_QUARANTINE}"
    return [Rule("ExpectColumnValuesToBeInSet", {"column": "Split", "value_set": allowed}, "Split", rule, fix,
                 ("Split",))]


def _ef_rules(present: list[str]) -> list[Rule]:
    rules = [Rule("ExpectColumnValuesToBeBetween", {"column": "EF", "min_value": 0, "max_value": 100}, "EF",
                  "EF is a percentage in [0, 100]", f"correct EF (percent, not a fraction), {FIX_QUARANTINE}",
                  ("EF",))]
    if {"ESV", "EDV"} <= set(present):
        rules.append(Rule("ExpectColumnPairValuesAToBeGreaterThanB",
                          {"column_A": "EDV", "column_B": "ESV", "ignore_row_if": "either_value_is_missing"},
                          "ESV/EDV", "ESV < EDV where both are given",
                          f"check the volumes (columns swapped?), {FIX_QUARANTINE}", ("ESV", "EDV")))
    return rules


def _class_rules() -> list[Rule]:
    names = ", ".join(f"{i}={n}" for i, n in CARDIACNET_CLASSES.items())
    return [
        Rule("ExpectColumnValuesToBeInSet", {"column": "class_id", "value_set": list(CARDIACNET_CLASSES)},
             "class_id", f"class_id is one of {names}", f"use the fixed class map {names}, {FIX_QUARANTINE}",
             ("class_id",)),
        Rule("ExpectColumnPairValuesToBeInSet",
             {"column_A": "class_id", "column_B": "class_name", "ignore_row_if": "either_value_is_missing",
              "value_pairs_set": [[i, n] for i, n in CARDIACNET_CLASSES.items()]},
             "class_id/class_name", f"class_id and class_name agree ({names})",
             f"fix class_id or class_name to the fixed map, {FIX_QUARANTINE}", ("class_id", "class_name")),
    ]


def _metadata_rules(present: list[str]) -> list[Rule]:
    """FileList's own video metadata must be physical (the video facts are checked separately)."""
    bounds = {"FPS": {"min_value": 0, "strict_min": True}, "NumberOfFrames": {"min_value": 1},
              "FrameHeight": {"min_value": 1}, "FrameWidth": {"min_value": 1}}
    return [Rule("ExpectColumnValuesToBeBetween", {"column": c, **b}, c, f"{c} is positive",
                 f"re-measure {c} from the video (`echoforge data prepare` does), {FIX_QUARANTINE}", (c,))
            for c, b in bounds.items() if c in present]
