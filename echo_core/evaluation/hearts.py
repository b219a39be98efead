"""The LIDM's own quality: FD and IS of its hearts against real end-diastolic frames, with the controls that
make the number mean something (EchoNet-Synthetic reports FID/IS of the hearts before and after the
privacy filter, seed-systems §6.1, without any reference point).

- real: each real TRAIN video's heart frame (the traced ED frame, else the LIDM's seeded random frame),
  decoded from the prepared pixel videos; what the LIDM was trained to produce.
- positive control: the held-out videos' (VAL + TEST) heart frames against the same real set: the FD a
  perfect generator would get at that sample size.
- negative control: uniform-noise frames: what no heart at all scores.
Each FD carries a bootstrap CI (`MetricsOptions.bootstrap`); the fallback (weight-free) extractors are
labelled as such by their metric names.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from echo_core.data.video import read_video
from echo_core.errors import DataError
from echo_core.metrics.api import MetricsOptions, compute_metrics

METRICS = ("fd_fallback", "is_fallback")
NOISE_SEED = 7


def heart_frame_index(file_name: str, num_frames: int, ed: Mapping[str, int], seed: int) -> int:
    """The heart frame of a real video: its traced ED frame, else a frame drawn with (seed, name)."""
    if file_name in ed:
        return min(int(ed[file_name]), num_frames - 1)
    return int(np.random.default_rng([seed, *file_name.encode()]).integers(num_frames))


def write_real_hearts(prepared: str | os.PathLike, splits: Sequence[str], out: str | os.PathLike, *,
                      ed: Mapping[str, int], seed: int = 0) -> int:
    """out/<FileName>.jpg: the heart frame of every `splits` video of a prepared dataset → how many."""
    prepared, out = Path(prepared), Path(out)
    df = pd.read_csv(prepared / "FileList.csv", dtype={"FileName": str})
    rows = df[df["Split"].astype(str).str.upper().isin([s.upper() for s in splits])]
    if rows.empty:
        raise DataError(f"{prepared / 'FileList.csv'} has no {list(splits)} rows",
                        fix="pass the prepared dataset the LIDM was trained on")
    out.mkdir(parents=True, exist_ok=True)
    for name in rows["FileName"]:
        video = next((prepared / "Videos").glob(f"{name}.*"), None)
        if video is None:
            raise DataError(f"{prepared / 'Videos'} has no video for FileName {name!r}",
                            fix="re-run the prepare stage for this dataset")
        frames, _ = read_video(video, gray=True, size=112)
        Image.fromarray(frames[heart_frame_index(name, len(frames), ed, seed)]).convert("RGB").save(
            out / f"{name}.jpg", quality=100)
    return len(rows)


def write_noise_frames(out: str | os.PathLike, n: int, size: int = 112) -> Path:
    """The negative control: `n` uniform-noise frames (no heart at all)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(NOISE_SEED)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).convert("RGB").save(out / f"{i:06d}.jpg")
    return out


def _scores(real: Path, fake: Path, opts: MetricsOptions) -> dict[str, float]:
    values = compute_metrics(real, fake, list(METRICS), opts).values
    return {k: float(v) for k, v in values.items()}


def evaluate_hearts(prepared: str | os.PathLike, candidates: Mapping[str, str | os.PathLike], *,
                    ed: Mapping[str, int], seed: int = 0, bootstrap: int = 200) -> dict[str, Any]:
    """FD/IS (with FD CIs) of each named image folder in `candidates` (e.g. {"before_filter": DIR,
    "after_filter": DIR}) and of the controls, all against the real TRAIN heart frames."""
    opts = MetricsOptions(allow_fewer=True, bootstrap=bootstrap, seed=seed)
    with tempfile.TemporaryDirectory(prefix="echoforge-hearts-") as tmp:
        real, held_out = Path(tmp) / "real", Path(tmp) / "held_out"
        n_real = write_real_hearts(prepared, ["TRAIN"], real, ed=ed, seed=seed)
        n_held = write_real_hearts(prepared, ["VAL", "TEST"], held_out, ed=ed, seed=seed)
        rows = {name: {"n": len(list(Path(folder).glob("*.jpg"))), **_scores(real, Path(folder), opts)}
                for name, folder in candidates.items()}
        rows["control_real_held_out"] = {"n": n_held, **_scores(real, held_out, opts)}
        noise = write_noise_frames(Path(tmp) / "noise", n_held)
        rows["control_noise"] = {"n": n_held, **_scores(real, noise, opts)}
    return {"real_train_frames": n_real, "metrics": list(METRICS), "bootstrap": bootstrap, "rows": rows,
            "beats_noise": {k: r["fd_fallback"] < rows["control_noise"]["fd_fallback"]
                            for k, r in rows.items() if not k.startswith("control_")}}
