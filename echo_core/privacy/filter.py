"""The privacy filter: keep a candidate heart only if no real TRAIN frame re-identifies it (seed-systems §5.3).

Each candidate's score is its maximum Pearson correlation to any real TRAIN embedding of the calibrated model
folder (`calibrate.py`); it is kept iff the score is below τ. `OUT/` is again a heart folder (`latents/`,
`images/` where the candidates had them, `FileList.csv`) holding the kept hearts, plus `privacy_scores.csv`
(FileName, nearest_real, max_correlation, tau, kept; one row per candidate) and `privacy_hist.png`. It is
built in a temp folder and swapped in whole, and every input is checked before anything is written.

Fixes relative to the reference: the scores file names the real frame and the sample's own score (the
reference wrote the score into a column called `tau`), the histogram goes with the output, not into the
model folder, and each candidate is normalised on its own (bug 14).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from echo_core.generation.hearts import (
    HEARTS_FILELIST,
    IMAGES_SUBDIR,
    LATENTS_SUBDIR,
    heart_name,
    list_hearts,
    read_heart,
)
from echo_core.privacy.calibrate import check_vae, embed, load_calibration, max_correlation
from echo_core.training.lidm import stores_vae
from echo_core.utils.atomic import atomic_dir

SCORES_FILE = "privacy_scores.csv"
HIST_FILE = "privacy_hist.png"


def _as_roots(store: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    return [store] if isinstance(store, str | os.PathLike) else list(store)


def score_candidates(model_dir: str | os.PathLike, store: Any,
                     candidates: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(one row per candidate heart: FileName, nearest_real, max_correlation, tau, kept; privacy.json).
    Checks the VAE of the store and of every heart against the model's, and every heart's shape, first."""
    net, record, train_emb, train_names = load_calibration(model_dir)
    expected = record.get("vae_sha256", "")
    check_vae(expected, stores_vae(_as_roots(store)).get("sha256") or "", f"latent store {store}")
    files = list_hearts(candidates)
    latents = []
    for path in files:
        latent, meta = read_heart(path)
        check_vae(expected, meta.get("vae_sha256", ""), f"heart {path}")
        latents.append(latent)
    scores, nearest = max_correlation(embed(net, latents), train_emb)
    tau = float(record["tau"])
    return pd.DataFrame({"FileName": [heart_name(p) for p in files],
                         "nearest_real": [train_names[i] for i in nearest], "max_correlation": scores,
                         "tau": tau, "kept": scores < tau}), record


def filter_hearts(model_dir: str | os.PathLike, store: Any, candidates: str | os.PathLike,
                  out: str | os.PathLike) -> dict[str, Any]:
    """Score the candidate hearts and write OUT (module docstring). Returns counts, τ and the rejected share."""
    candidates = Path(candidates)
    scores, record = score_candidates(model_dir, store, candidates)
    rows = _filelist(candidates, scores["FileName"])
    kept = scores.loc[scores["kept"], "FileName"].tolist()
    with atomic_dir(out) as tmp:
        scores.to_csv(tmp / SCORES_FILE, index=False)
        _copy_hearts(candidates, tmp, kept)
        rows[rows["FileName"].isin(kept)].to_csv(tmp / HEARTS_FILELIST, index=False)
        write_histogram(scores["max_correlation"].to_numpy(), float(record["tau"]), tmp / HIST_FILE,
                        record.get("heldout_scores", []))
    return {"candidates": len(scores), "kept": len(kept), "rejected": len(scores) - len(kept),
            "rejected_share": float(1 - len(kept) / len(scores)), "tau": float(scores["tau"].iloc[0]),
            "out": str(out)}


def _filelist(candidates: Path, names: pd.Series) -> pd.DataFrame:
    """The candidates' FileList rows (FileName, Seed[, class_id]), or FileName alone when it has none."""
    path = candidates / HEARTS_FILELIST
    if not path.is_file():
        return pd.DataFrame({"FileName": names})
    return pd.read_csv(path, dtype={"FileName": str})


def _copy_hearts(candidates: Path, out: Path, names: list[str]) -> None:
    """Kept latents (byte copies: the bytes the LIDM wrote) and their images where present."""
    for sub, suffix in ((LATENTS_SUBDIR, ".safetensors"), (IMAGES_SUBDIR, ".jpg")):
        for name in names:
            src = candidates / sub / f"{name}{suffix}"
            if src.is_file():
                (out / sub).mkdir(exist_ok=True)
                shutil.copyfile(src, out / sub / src.name)


def write_histogram(scores: np.ndarray, tau: float, path: Path, reference: Sequence[float] = ()) -> Path:
    """Histogram of candidate scores against τ (and the held-out real scores τ came from, if given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    low = float(np.min(np.concatenate([scores, np.asarray(reference, np.float64), [tau]])))
    bins = np.linspace(low - 1e-3, 1.0, 40)
    if len(reference):
        ax.hist(reference, bins=bins, alpha=0.5, label="held-out real frames")
    ax.hist(scores, bins=bins, alpha=0.6, label="candidates")
    ax.axvline(tau, color="k", linestyle="--", label=f"τ = {tau:.4f}")
    ax.set_xlabel("max Pearson correlation to a TRAIN embedding")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
