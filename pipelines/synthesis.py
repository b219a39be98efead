"""The steps of a fully synthetic dataset build, shared by `echoforge synth build` and the `synthesize` flow:
LIDM hearts → privacy filter (over-generation in rounds) → LVDM videos → the dataset's own layout.
Each step writes into the build's `<out>.work/` folder and is resumable."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _call(name: str, step: Callable, *args: Any) -> Any:
    return step(*args)


def build_dataset(dataset: str, num_videos: int, data: Path, reid: str, out: Path, *, lidm: str | None,
                  lvdm: str, vae: str | None, splits: str | None, seed: int, params: Path,
                  ef_judge: Path | None = None, run_step: Callable = _call):
    """The whole build → (its SynthConfig, the dataset's FileList). `ef_judge`: an EF judge file whose reading
    of each video becomes the FileList's `EF_measured`. `run_step(name, step, *args)` runs each step: a plain
    call here, a Prefect task in the `synthesize` flow."""
    from echo_core.config import load_section
    from echo_core.evaluation.judge_file import load_ef_judge
    from echo_core.generation.synth_dataset import SynthConfig, split_counts

    cfg = load_section(SynthConfig, f"synth.{dataset}", params, {"splits": splits} if splits else None)
    split_counts(cfg.splits, num_videos)  # a spec that does not add up fails before any compute
    judge = load_ef_judge(ef_judge) if ef_judge else None  # so does an unreadable judge file
    work = out.with_name(f"{out.name}.work")
    hearts, scores = run_step("hearts", surviving_hearts, dataset, cfg, num_videos, data, reid, lidm, params, seed,
                              work)
    samples = run_step("videos", animate, cfg, hearts, data, lvdm, vae, params, seed, work)
    models = {"lidm": lidm or f"models:/echo-lidm@{dataset}", "reid": reid, "lvdm": lvdm}
    table = run_step("assemble", assemble, dataset, cfg, hearts, samples, scores, data, seed, out, models, judge)
    return cfg, table


def surviving_hearts(dataset, cfg, n: int, data: Path, reid: str, lidm: str | None, params: Path, seed: int,
                      work: Path):
    """Sample hearts and filter them, doubling the candidates until `n` survive → (first n kept rows,
    the scores CSV)."""
    import pandas as pd

    from echo_core.errors import DataError
    from echo_core.generation.lidm_sample import heart_request, sample_hearts
    from echo_core.privacy.filter import filter_hearts
    from pipelines.commands.lidm import heart_sampling, open_lidm
    from pipelines.registry import resolve_model_folder

    net, vae_sha = open_lidm(lidm or f"models:/echo-lidm@{dataset}")
    check_same_vae(data, vae_sha)
    reid_folder, sampling = resolve_model_folder(reid), heart_sampling(params)
    candidates, limit = math.ceil(n * cfg.hearts_per_video), math.ceil(n * cfg.max_hearts_per_video)
    while True:
        request = heart_request(net, sampling, num_samples=candidates, seed=seed, class_ids=cfg.class_ids)
        sample_hearts(net, request, work / "hearts", vae_sha256=vae_sha)
        filter_hearts(reid_folder, data, work / "hearts", work / "kept")
        kept = pd.read_csv(work / "kept" / "FileList.csv", dtype={"FileName": str}).sort_values("FileName")
        print(f"privacy filter: {len(kept)} of {candidates} candidate hearts kept")
        if len(kept) >= n:
            return kept.head(n).reset_index(drop=True), work / "kept" / "privacy_scores.csv"
        if candidates >= limit:
            raise DataError(f"only {len(kept)} of {candidates} candidate hearts passed the privacy filter, "
                            f"{n} are needed (see {work / 'kept' / 'privacy_scores.csv'})",
                            fix="raise synth.<dataset>.max_hearts_per_video, ask for fewer videos, or train the "
                                "LIDM longer (a model that copies its training hearts fails the filter)")
        candidates = min(2 * candidates, limit)


def check_same_vae(data: Path, lidm_vae: str) -> None:
    from echo_core.errors import WeightsError
    from echo_core.training.lidm import stores_vae

    store_vae = stores_vae([data])["sha256"]
    if lidm_vae and store_vae and store_vae != lidm_vae:
        raise WeightsError(f"the LIDM models latents of VAE {lidm_vae[:12]}…, the store {data} was encoded "
                           f"with VAE {store_vae[:12]}…", fix="use the latent store and LIDM of the same VAE")


def animate(cfg, hearts, data: Path, lvdm: str, vae: str | None, params: Path, seed: int, work: Path) -> Path:
    """The LVDM's videos, one per kept heart in order, conditioned as `video_conditions` draws."""
    from echo_core.config import load_params, load_section, validate_config
    from echo_core.data.filelist import write_filelist
    from echo_core.generation.generate import SampleConfig
    from echo_core.generation.synth_dataset import VIDEO_FORMAT, video_conditions
    from pipelines.flows.sample import run_sampling

    conditions = video_conditions(hearts, cfg, seed, real_train_efs(data))
    write_filelist(conditions, work / "conditions.csv")
    overrides = {**cfg.sample, "num_samples": len(hearts), "num_frames": cfg.num_frames,
                 "formats": [VIDEO_FORMAT[cfg.kind]],
                 "conditions": {"csv": str(work / "conditions.csv")}, "seed": seed, "cond_frame": "first"}
    has_section = params.is_file() and "sample" in load_params(params)
    sample_cfg = load_section(SampleConfig, "sample", params, overrides) if has_section else \
        validate_config(SampleConfig, overrides, where="synth sampling")
    # the kept hearts' folder holds more hearts than videos: sample i takes heart i of the sorted folder
    run_sampling(lvdm, work / "videos", sample_cfg, conditioning=str(work / "kept"), vae=vae, track=False)
    return work / "videos"


def real_train_efs(data: Path) -> list[float]:
    import pandas as pd

    df = pd.read_csv(data / "FileList.csv")
    if "EF" not in df:
        return []
    train = df[df["Split"].astype(str).str.upper() == "TRAIN"]
    return pd.to_numeric(train["EF"], errors="coerce").dropna().tolist()


def assemble(dataset: str, cfg, hearts, samples: Path, scores: Path, data: Path, seed: int, out: Path,
              models: dict[str, str], judge=None):
    from echo_core.generation.synth_dataset import assemble_dataset
    from pipelines.tracking import git_commit

    manifest = {"dataset": dataset, "kind": cfg.kind, "synthetic": True, "seed": seed, "models": models,
                "real_store": str(data), "config": cfg.model_dump(mode="json"), "git_commit": git_commit(),
                "privacy": "every video's heart passed the re-identification filter (privacy_scores.csv)"}
    return assemble_dataset(samples, hearts, scores, out, cfg, seed=seed, manifest=manifest, judge=judge)
