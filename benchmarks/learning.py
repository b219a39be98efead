"""What a CPU budget can teach the LVDM: a learning curve, judged by the honest gate (issue #12 §5).

    python benchmarks/learning.py                          # after `make demo` (needs outputs/ of the demo)
    python benchmarks/learning.py --steps 100,200,400 --variants echoforge,echoforge_mixed --untrained

For each variant (a set of `train_lvdm` overrides on params.yaml) ONE training run goes to the largest step
count, checkpointing at every requested count; each checkpoint's EMA export (with --untrained also the
untrained network, step 0) is then sampled like the evaluate flow samples a version (`evaluate.sample`,
conditioned on TRAIN frames, EF drawn from `evaluate.conditions.ef`) and judged by `assess_samples`, the function behind
`echoforge evaluate samples` and the promotion gate: FD/FVD16 ratios at equal N and EF adherence by the
competent pixel judge, each with its video-bootstrap 95% CI, and the verdict.

Writes benchmarks/results/learning.json (overwritten; settings, training seconds and every estimate) and
benchmarks/results/learning.png (each metric with its CI against training steps, the gate's bound dashed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echo_core.utils.atomic import write_json_atomic  # noqa: E402

DATASET = "dynamic"
METRICS = ("fd_fallback_ratio", "fvd16_fallback_ratio", "ef_adherence_mae", "ef_adherence_pearson")
# Each variant overrides the demo's `train_lvdm` (params.yaml). "reference" is the seed systems' recipe: EF as
# ONE cross-attention token (a softmax over a single key is 1, so EF is a query-independent bias), the video
# itself diffused, frame dropout 0.1, three datasets mixed. "echoforge" is the demo's: the same EF token as
# SVD's motion-bucket micro-condition (time embedding → every ResNet block), the residual to the conditioning
# frame diffused (the motion, ~3 % of the latents' variance, at unit scale), the evaluated dataset only.
REFERENCE_RECIPE = {"model": {"added_time_ids": False, "ef_micro_condition": False},
                    "conditioning": {"frame_residual": None, "p_frame": 0.1}}
ECHOFORGE_RECIPE = {"model": {"added_time_ids": True, "ef_micro_condition": True},
                    "conditioning": {"frame_residual": 0.25, "p_frame": 0.0}}
VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {**REFERENCE_RECIPE, "data": ["dynamic", "ped_a4c", "ped_psax"]},
    "echoforge": {**ECHOFORGE_RECIPE, "data": ["dynamic"]},
    "echoforge_mixed": {**ECHOFORGE_RECIPE, "data": ["dynamic", "ped_a4c", "ped_psax"]},
    "reference_dynamic": {**REFERENCE_RECIPE, "data": ["dynamic"]},
}


def _train_config(params: dict[str, Any], variant: dict[str, Any], steps: list[int], lr: float | None):
    from echo_core.training.lvdm import LvdmTrainConfig

    section = json.loads(json.dumps(params["train_lvdm"]))
    for key in ("model", "conditioning"):
        section[key].update(variant[key])
    section["optim"]["max_steps"] = max(steps)
    if lr is not None:
        section["optim"]["lr"] = lr
    section["checkpoint"] = {**section.get("checkpoint", {}), "every": _gcd(steps),
                            "total_limit": len(steps) + 1}
    section["validation"] = {**section.get("validation", {}), "every": 10 * max(steps)}  # no preview videos
    return LvdmTrainConfig.model_validate(section)


def _gcd(values: list[int]) -> int:
    import math

    return math.gcd(*values)


def _untrained_folder(cfg, out: Path) -> Path:
    import torch

    from echo_core.models.lvdm import build_lvdm_net

    torch.manual_seed(cfg.seed)  # the trainer's own initialisation
    return build_lvdm_net(cfg).save_pretrained(out, step=0)


def _judge(folder: Path, samples: Path, out_root: Path, params_path: Path) -> dict[str, Any]:
    """Sample `folder` like the evaluate flow, then judge the folder like `echoforge evaluate samples`."""
    from echo_core.evaluation.assess import assess_samples
    from echo_core.evaluation.config import load_configs, sample_config
    from echo_core.evaluation.plan import plan_dataset, train_conditioning
    from pipelines.flows.sample import run_sampling

    cfg, _, sample_section = load_configs(params_path)
    plan = plan_dataset(DATASET, out_root, ("ef",))
    sample_cfg = sample_config(sample_section, cfg, plan.condition).model_copy(update={"formats": ["jpg"]})
    start = time.perf_counter()
    with train_conditioning(plan.latents, samples.parent) as (cond_dir, _):
        run_sampling(str(folder), samples, sample_cfg, conditioning=str(cond_dir), vae=str(out_root / "vae" / "vae"),
                     track=False)
    sampled = time.perf_counter() - start
    assessed = assess_samples(samples, out_root, DATASET, cfg.assess).to_dict()
    judge = assessed["judges"].get("ef", {})
    return {"verdict": assessed["verdict"], "failures": assessed["failures"], "sample_seconds": round(sampled, 1),
            "n_videos": assessed["n_videos"],
            "metrics": {k: assessed["metrics"][k] for k in METRICS if k in assessed["metrics"]},
            "judged_ef": judge.get("predicted"), "judge_r2": judge.get("r2")}


def vae_ceiling(args, params: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """The held-out real videos' own latents decoded by the demo VAE, judged like samples with their true EF:
    the best any LVDM that generates through this VAE can score (its ratios are the VAE's blur, not the LVDM's)."""
    import numpy as np
    import torch

    from echo_core.data.filelist import read_filelist, write_filelist
    from echo_core.data.video import write_jpg_tree
    from echo_core.evaluation.assess import assess_samples
    from echo_core.evaluation.config import load_configs
    from echo_core.latents.store import latent_path, read_latents
    from echo_core.models.vae import load_vae, output_to_frames

    cfg, _, _ = load_configs(args.params)
    frames, fps = params["evaluate"]["sample"]["num_frames"], params["train_lvdm"]["dataset"]["target_fps"]
    store = args.out_root / "latents" / DATASET
    df = read_filelist(store / "FileList.csv")
    held = df[df["Split"].astype(str).str.upper().isin(["VAL", "TEST"])]
    vae, _ = load_vae(args.out_root / "vae" / "vae")
    out, rows = scratch / "vae-ceiling", []
    for name, ef in zip(held["FileName"].astype(str), held["EF"].astype(float), strict=True):
        z, meta = read_latents(latent_path(store, name))
        index = np.minimum(np.round(np.arange(frames) * meta.fps / fps).astype(int), len(z) - 1)
        with torch.no_grad():
            x = vae.decode(z[index].float() / vae.config.scaling_factor).sample
        gray = (output_to_frames(x).numpy().astype(np.uint16).sum(axis=-1) + 1) // 3  # as LvdmPipeline.decode
        write_jpg_tree(out / "jpg" / name, gray.astype(np.uint8))
        rows.append({"FileName": name, "EF": ef, "FPS": fps, "NumberOfFrames": frames})
    import pandas as pd

    write_filelist(pd.DataFrame(rows), out / "FileList.csv")
    assessed = assess_samples(out, args.out_root, DATASET, cfg.assess).to_dict()
    return {"verdict": assessed["verdict"], "failures": assessed["failures"], "n_videos": assessed["n_videos"],
            "metrics": {k: assessed["metrics"][k] for k in METRICS if k in assessed["metrics"]}}


def run_variant(name: str, params: dict[str, Any], args, scratch: Path) -> dict[str, Any]:
    from echo_core.training.checkpoint import EXPORT_DIR
    from echo_core.training.lvdm import train_lvdm

    variant = VARIANTS[name]
    cfg = _train_config(params, variant, args.steps, args.lr)
    data = [args.out_root / "latents" / d for d in variant["data"]]
    run_dir = scratch / name
    points = [] if not args.untrained else [
        {"step": 0, "train_seconds": 0.0, **_judge(_untrained_folder(cfg, run_dir / "untrained"),
                                                   run_dir / "samples-0", args.out_root, args.params)}]
    start = time.perf_counter()
    train_lvdm(cfg, data, run_dir / "train")
    train_seconds = time.perf_counter() - start
    for step in args.steps:
        folder = run_dir / "train" / "checkpoints" / f"checkpoint-{step}" / EXPORT_DIR
        points.append({"step": step, "train_seconds": round(train_seconds * step / max(args.steps), 1),
                       **_judge(folder, run_dir / f"samples-{step}", args.out_root, args.params)})
        print(f"{name} step {step}: {points[-1]['verdict']} " +
              ", ".join(f"{k} {v['value']:.3g} [{v['ci_low']:.3g}, {v['ci_high']:.3g}]"
                        for k, v in points[-1]["metrics"].items()), flush=True)
    return {"overrides": variant, "data": variant["data"], "train_seconds": round(train_seconds, 1),
            "seconds_per_step": round(train_seconds / max(args.steps), 3), "points": points}


def plot(result: dict[str, Any], bounds: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, metric in zip(axes, METRICS, strict=True):
        for name, run in result["variants"].items():
            pts = [p for p in run["points"] if metric in p["metrics"]]
            x = [p["step"] for p in pts]
            est = [p["metrics"][metric] for p in pts]
            y = [e["value"] for e in est]
            err = [[e["value"] - e["ci_low"] for e in est], [e["ci_high"] - e["value"] for e in est]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        ceiling = result["vae_ceiling"]["metrics"].get(metric)
        if ceiling:
            ax.axhline(ceiling["value"], color="tab:gray", ls=":", lw=1.5, label="VAE ceiling")
        bound = bounds.get(f"{DATASET}/{metric}")
        if bound:
            for key in ("max", "min"):
                if bound.get(key) is not None:
                    ax.axhline(bound[key], color="k", ls="--", lw=1, label=f"gate {key}")
        if metric.endswith("_ratio"):
            ax.set_yscale("log")  # an untrained model's ratio is ~20x a trained one's
        ax.set_title(metric)
        ax.set_xlabel("training steps")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"tiny LVDM on phantom {DATASET}: 95% bootstrap CIs, N={result['n_videos']} samples per point")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-root", type=Path, default=ROOT / "outputs")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--steps", type=lambda s: sorted({int(v) for v in s.split(",")}), default=[150, 300])
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["reference", "echoforge"])
    parser.add_argument("--untrained", action="store_true", help="also judge each variant's untrained network")
    parser.add_argument("--lr", type=float, default=None, help="override train_lvdm.optim.lr for every variant")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning.json")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from an existing --out JSON")
    args = parser.parse_args()
    if args.replot:
        result = json.loads(args.out.read_text(encoding="utf-8"))
        return plot(result, result["bounds"], args.out.with_suffix(".png"))
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")

    import torch
    import yaml

    torch.set_num_threads(max(1, torch.get_num_threads()))
    params = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    scratch = Path(tempfile.mkdtemp(prefix=".learning-", dir=ROOT / "benchmarks"))
    start = time.perf_counter()
    try:
        ceiling = vae_ceiling(args, params, scratch)
        print(f"VAE ceiling: {ceiling['verdict']} {ceiling['failures']}", flush=True)
        variants = {name: run_variant(name, params, args, scratch) for name in args.variants}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"dataset": DATASET, "steps": args.steps, "lr": args.lr or params["train_lvdm"]["optim"]["lr"],
              "n_videos": params["evaluate"]["sample"].get("num_samples"),
              "evaluate_sample": params["evaluate"]["sample"], "bounds": params["evaluate"]["assess"]["bounds"],
              "torch_threads": torch.get_num_threads(), "wall_seconds": round(time.perf_counter() - start, 1),
              "vae_ceiling": ceiling, "variants": variants}
    write_json_atomic(args.out, result)
    plot(result, result["bounds"], args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
