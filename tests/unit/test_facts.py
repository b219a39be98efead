"""echo_core/data/facts.py: per-row facts on plain frames and real PyAV files (no GX)."""

from __future__ import annotations

import pandas as pd
from support.corpus import make_fixture_dataset, read_raw

from echo_core.data.facts import missing_columns, number_facts, video_facts


def test_missing_columns_follow_the_schema_order():
    schema = {"FileName": "str", "EF": "float", "ESV": "float", "Split": "str"}
    assert missing_columns(["Split", "FileName", "Extra"], schema) == ["EF", "ESV"]
    assert missing_columns(schema, schema) == []


def test_number_facts_tell_empty_from_not_a_number():
    raw = pd.DataFrame({"EF": ["50.5", "abc", "", "60"], "NumberOfFrames": ["8", "8.5", "x", None]})
    facts = number_facts(raw, {"EF": "float", "NumberOfFrames": "int", "FileName": "str"})
    assert facts["EF__number"].tolist() == [True, False, None, True]
    assert facts["NumberOfFrames__number"].tolist() == [True, False, False, None]
    assert facts["EF"].iloc[0] == 50.5 and pd.isna(facts["EF"].iloc[1])
    assert "FileName" not in facts.columns


def test_video_facts_one_cause_per_broken_row(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", num_videos=1)
    name = read_raw(root).loc[0, "FileName"]
    good = video_facts(root, name)
    assert (good["video_decodes"], good["video_size"], good["video_frames"]) == (True, "112x112", 8)
    missing = video_facts(root, "0XNOPE")
    assert missing["video_exists"] is False and missing["video_decodes"] is None
    assert "0XNOPE" in missing["video_error"]
    unsafe = video_facts(root, "../" + name)
    assert unsafe["file_name_safe"] is False and unsafe["video_exists"] is None
