"""Where one dataset's evaluation reads and writes, what it is conditioned on, and whether its samples can be
reused (a samples folder is a pure function of the model, the sampling parameters and the conditioning frames)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from echo_core.errors import DataError
from echo_core.evaluation.config import Condition

# sampling settings that do not change any sample: a folder that differs only in these is reused
SAMPLE_FREE = {"batch_size", "device", "decode_chunk"}


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    prepared: Path
    reference: Path
    latents: Path
    samples: Path
    downstream: Path
    condition: Condition | None


def condition_for(filelist_columns: set[str], model_types: tuple[str, ...]) -> Condition | None:
    """The condition both the dataset carries and the model takes (text models render EF as a prompt)."""
    if "EF" in filelist_columns and {"ef", "text"} & set(model_types):
        return "ef"
    if "class_id" in filelist_columns and "class_id" in model_types:
        return "class_id"
    return None


def plan_dataset(name: str, out_root: Path, model_types: tuple[str, ...]) -> DatasetPlan:
    """The folders of dataset `name` under `out_root`; its prepared/, reference/ and latents/ must exist."""
    from echo_core.data.filelist import read_filelist

    paths = {"prepared": out_root / "prepared" / name, "reference": out_root / "reference" / name,
             "latents": out_root / "latents" / name}
    for what, path in paths.items():
        if not path.is_dir():
            raise DataError(f"dataset {name!r}: {what} folder {path} does not exist",
                            fix="run the pipeline up to `encode` first (`dvc repro encode`)")
    columns = set(read_filelist(paths["prepared"] / "FileList.csv").columns)
    return DatasetPlan(name, **paths, samples=out_root / "samples" / name,
                       downstream=out_root / "evaluation" / name, condition=condition_for(columns, model_types))


@contextlib.contextmanager
def train_conditioning(latents: Path, scratch: Path) -> Iterator[tuple[Path, list[str]]]:
    """(temporary folder of links to the TRAIN-split latents, their sorted file names): a TEST video's frame
    would leak into the downstream test."""
    from echo_core.data.filelist import read_filelist

    df = read_filelist(latents / "FileList.csv")
    names = df.loc[df["Split"].astype(str).str.upper() == "TRAIN", "FileName"] if "Split" in df else df["FileName"]
    files = sorted(f"{n}.safetensors" for n in names.astype(str)
                   if (latents / "Latents" / f"{n}.safetensors").is_file())
    if not files:
        raise DataError(f"no TRAIN-split latents in {latents}", fix="re-run `echoforge latents encode` on the "
                        "prepared dataset (its FileList.csv needs Split)")
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".conditioning-", dir=scratch))
    try:
        for name in files:
            (folder / name).symlink_to((latents / "Latents" / name).resolve())
        yield folder, files
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def samples_state(out: Path, sample_cfg, model_id: str, sources: list[str]) -> str:
    """absent | complete | partial (same plan, unfinished) | stale (another model, parameters or sources)."""
    from echo_core.generation.generate import PARAMS_FILE

    path = out / PARAMS_FILE
    if not path.is_file():
        return "absent"
    record = json.loads(path.read_text(encoding="utf-8"))
    wanted = {k: v for k, v in sample_cfg.model_dump(mode="json").items() if k not in SAMPLE_FREE}
    had = {k: v for k, v in (record.get("config") or {}).items() if k not in SAMPLE_FREE}
    same = had == wanted and (record.get("model") or {}).get("id") == model_id \
        and record.get("conditioning_files") == sources
    if not same:
        return "stale"
    return "complete" if record.get("status") == "complete" else "partial"
