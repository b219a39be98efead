"""Few-step sampling at equal quality (issue #14 §1): v-DDPM vs rectified flow, judged by the honest evaluator.

    python benchmarks/sampling_quality.py --out-root outputs             # CPU default (~25 min on 2 quiet cores)
    python benchmarks/sampling_quality.py --out-root outputs --tiny      # smoke run (<= 2 min on quiet cores)

--tiny: both models trained 2 steps, 2 videos of 16 frames, one timed 16-frame video, the fewest steps of each
sampler only (TINY_SETTINGS); it checks that everything runs, its numbers show nothing (the JSON says so).

1. Two LVDMs with the same model, data and training budget, through the one trainer (`train_lvdm`, what
   `echoforge train lvdm` runs): the demo's `train_lvdm` recipe (v-DDPM) and the same recipe with
   `objective: {kind: rectified_flow}`, on `<out-root>/latents/dynamic`; then the rectified-flow model's
   few-step student (`train_distill`, what `echoforge train distill` runs: params.yaml `train_distill:`, the
   same step budget), sampled with Euler at 1 and 2 steps. Reused from `--work` when the folder there was
   trained with exactly the same config (and, for the student, the same teacher weights).
2. Every setting of SETTINGS samples the same plan (seeds, requested EFs, TRAIN conditioning frames: the
   evaluate flow's `evaluate.sample` + `evaluate.conditions.ef`), batch by batch in round-robin over settings,
   each batch timed. Then one `--time-frames`-frame video (192: EchoNet-Synthetic's length) per setting and
   repetition, also round-robin, latent sampling and VAE decode timed apart (the fixed cost at few steps).
3. Each samples folder is judged by `assess_samples` (what `echoforge evaluate samples` runs): FD/FVD16 ratios
   at equal N and EF adherence by the competent EF judge, each with its video-bootstrap CI. The negative
   controls (`build_controls`, the code behind `echoforge evaluate controls`) are built from the held-out
   real videos at the SAME N and frame count and judged the same way.
4. A setting has equal quality when its CI overlaps the reference's (DDPM-64) on every metric the reference
   has measured; `speedup_at_equal_quality` = reference seconds / the fastest such setting's seconds (median
   over repetitions of the 192-frame timing). The same test is applied to every negative control: a control
   that passes it means the CIs at this N cannot tell a spoiled set from the reference, and the JSON says so
   (`equal_quality_shown: false`).

Writes benchmarks/results/sampling_quality.json (by this script only) and sampling_quality.png (each metric
with its CI against seconds per video, the reference's CI as a band, the negative controls as lines).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echo_core.utils.atomic import write_json_atomic  # noqa: E402

DATASET = "dynamic"
REFERENCE = "ddpm-64"
METRICS = ("fd_fallback_ratio", "fvd16_fallback_ratio", "ef_adherence_mae", "ef_adherence_pearson")
# objective kind -> its `train_lvdm.objective` override; v_ddpm keeps the demo's own section unchanged
OBJECTIVES: dict[str, dict[str, Any] | None] = {"v_ddpm": None, "rectified_flow": {"kind": "rectified_flow"}}
DISTILLED = "distilled"  # the rectified-flow model's few-step student (`echoforge train distill`)
MODELS = (*OBJECTIVES, DISTILLED)  # trained in this order: the student needs its teacher


@dataclass(frozen=True)
class Setting:
    objective: str
    sampler: str
    steps: int

    @property
    def key(self) -> str:
        prefix = f"{DISTILLED}-" if self.objective == DISTILLED else ""
        return f"{prefix}{self.sampler}-{self.steps}"

    @property
    def model_calls(self) -> int:
        """UNet evaluations per window (Heun's last step to t=0 is an Euler step)."""
        return 2 * self.steps - 1 if self.sampler == "heun" else self.steps


SETTINGS = (Setting("v_ddpm", "ddpm", 64), *(Setting("v_ddpm", "dpmpp_2m", s) for s in (10, 15, 25)),
            *(Setting("v_ddpm", "ddim", s) for s in (10, 25)),
            *(Setting("rectified_flow", "euler", s) for s in (1, 2, 4, 8)),
            *(Setting("rectified_flow", "heun", s) for s in (2, 4, 8)),
            *(Setting(DISTILLED, "euler", s) for s in (1, 2)))
# --tiny: the fewest steps of each model's samplers (every sampler and model runs, at a fraction of the cost)
TINY_SETTINGS = tuple(next(s for s in SETTINGS if (s.objective, s.sampler) == pair) for pair in dict.fromkeys(
    (s.objective, s.sampler) for s in SETTINGS))


# ------------------------------------------------------------------------------------- the selection (pure)


def _finite(est: dict[str, Any] | None) -> bool:
    return bool(est) and all(isinstance(est.get(k), (int, float)) and math.isfinite(est[k])
                             for k in ("value", "ci_low", "ci_high"))


def overlaps(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """True when both estimates are measured and their CIs [ci_low, ci_high] share a point."""
    return _finite(a) and _finite(b) and a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"]


def compared_metrics(reference: dict[str, Any]) -> list[str]:
    """The metrics the reference has measured: equality is judged on every one of them."""
    return [m for m in METRICS if _finite(reference.get(m))]


def equal_quality(metrics: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Every measured metric of the reference overlaps; a metric the candidate lacks is not equal."""
    names = compared_metrics(reference)
    return bool(names) and all(overlaps(metrics.get(m), reference[m]) for m in names)


def fastest_at_equal_quality(rows: list[dict[str, Any]], reference: str = REFERENCE) -> dict[str, Any]:
    """{"setting", "speedup"} of the fastest row (median seconds) whose quality equals the reference's;
    both None when the reference measured nothing (then no equality can be shown)."""
    ref = next(r for r in rows if r["setting"] == reference)
    equal = [r for r in rows if equal_quality(r["metrics"], ref["metrics"])]
    if not equal:
        return {"setting": None, "speedup": None}
    best = min(equal, key=lambda r: r["seconds"]["median"])
    return {"setting": best["setting"], "speedup": ref["seconds"]["median"] / best["seconds"]["median"]}


# which way is worse: ratios and MAE grow, the Pearson correlation with the requested EF falls
HIGHER_IS_WORSE = {"fd_fallback_ratio": True, "fvd16_fallback_ratio": True, "ef_adherence_mae": True,
                   "ef_adherence_pearson": False}


def worse_on(metrics: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """The reference's measured metrics on which `metrics` is worse beyond both CIs (no overlap)."""
    def worse(m: str) -> bool:
        a, r = metrics.get(m), reference[m]
        if not _finite(a) or overlaps(a, r):
            return False
        return a["ci_low"] > r["ci_high"] if HIGHER_IS_WORSE[m] else a["ci_high"] < r["ci_low"]
    return [m for m in compared_metrics(reference) if worse(m)]


def control_power(controls: list[dict[str, Any]], reference: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per negative control: the metrics on which it is detected as WORSE than the reference. A control that
    fails the equality test only by being better (real videos follow the EF; a model that does not is worse
    than them) or by an unmeasured metric shows no power to detect a degraded sample set at this N."""
    return {c["control"]: {"worse_on": worse_on(c["metrics"], reference),
                           "equal": equal_quality(c["metrics"], reference)}
            for c in controls if c["control"] != "positive"}


def controls_passing(controls: list[dict[str, Any]], reference: dict[str, Any]) -> list[str]:
    """Negative controls that the equal-quality test would call equal to the reference: at this N the CIs
    cannot tell them apart, so equality shown by the same test means nothing."""
    return [c["control"] for c in controls
            if c["control"] != "positive" and equal_quality(c["metrics"], reference)]


# ------------------------------------------------------------------------------------------ training


def budgeted(section: dict[str, Any], steps: int, batch_size: int | None) -> dict[str, Any]:
    """A copy of a training section with this run's step budget (and batch), checkpointing only at the end."""
    section = json.loads(json.dumps(section))
    section["optim"]["max_steps"] = steps
    if batch_size is not None:
        section["optim"]["batch_size"] = batch_size
    section["checkpoint"] = {**section.get("checkpoint", {}), "every": steps, "total_limit": 1}
    return section


def train_config(params: dict[str, Any], objective: str, steps: int, batch_size: int | None):
    """The demo's `train_lvdm` with the objective switched and the budget set; no checkpoints or previews
    between the start and the end (they would cost both models the same, and teach nothing here)."""
    from echo_core.training.lvdm import LvdmTrainConfig

    section = budgeted(params["train_lvdm"], steps, batch_size)
    if OBJECTIVES[objective] is not None:
        section["objective"] = OBJECTIVES[objective]
    section["validation"] = {**section.get("validation", {}), "every": 10 * steps}
    return LvdmTrainConfig.model_validate(section)


def recipe(name: str, params: dict[str, Any], args, models: dict[str, dict[str, Any]]):
    """(config, trainer, extra record keys) of the model `name`: an objective, or DISTILLED, the student of
    the rectified-flow model in `models` (params.yaml `train_distill:` at the same budget)."""
    from echo_core.models.lvdm import UNET_WEIGHTS_FILE
    from echo_core.training.distill import distill_config, train_distill
    from echo_core.training.lvdm import train_lvdm
    from echo_core.utils.hashing import sha256_file

    if name != DISTILLED:
        return train_config(params, name, args.train_steps, args.train_batch), train_lvdm, {}
    teacher = models["rectified_flow"]["folder"]
    cfg = distill_config(teacher, budgeted(params["train_distill"], args.train_steps, args.train_batch),
                         where="params.yaml:train_distill")
    # a retrained teacher at the same path needs a new student
    return cfg, train_distill, {"teacher_weights_sha256": sha256_file(Path(teacher) / UNET_WEIGHTS_FILE)}


def trained_model(name: str, params: dict[str, Any], args, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"folder", "train_seconds", "config"} of the model `name` (see `recipe`) under --work (reused when
    --work holds one trained with exactly this config and data)."""
    from echo_core.training.lvdm import FINAL_DIR

    cfg, trainer, extra = recipe(name, params, args, models)
    data = [str(args.out_root / "latents" / DATASET)]
    record = {"config": cfg.model_dump(mode="json"), "data": data, **extra}
    run_dir = args.work / name
    recorded = run_dir / "recipe.json"
    if recorded.is_file() and (run_dir / "train" / FINAL_DIR).is_dir():
        previous = json.loads(recorded.read_text(encoding="utf-8"))
        if {k: previous.get(k) for k in record} == record:
            print(f"{name}: reusing {run_dir / 'train' / FINAL_DIR}", flush=True)
            return {"folder": run_dir / "train" / FINAL_DIR, "reused": True, **previous}
    shutil.rmtree(run_dir / "train", ignore_errors=True)  # another recipe: the trainer would resume it
    start = time.perf_counter()
    folder = trainer(cfg, data, run_dir / "train").folder
    record["train_seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(recorded, record)
    print(f"{name}: trained {args.train_steps} steps in {record['train_seconds']} s", flush=True)
    return {"folder": folder, "reused": False, **record}


# ------------------------------------------------------------------------------------------ sampling


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """(fn(*args, **kwargs), its wall seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def plan_jobs(models: dict[str, dict[str, Any]], settings, sample_cfg, cond_dir: Path, work: Path) -> dict:
    """{Setting: its generation job}, every job with the same plan (seeds, EFs, conditioning files)."""
    from echo_core.generation.generate import plan_generation, read_model_config, start_generation

    jobs = {}
    for s in settings:
        folder = models[s.objective]["folder"]
        cfg = sample_cfg.model_copy(update={"sampler": s.sampler, "steps": s.steps})
        shutil.rmtree(work / "samples" / s.key, ignore_errors=True)  # timings need every sample made afresh
        jobs[s] = plan_generation(read_model_config(folder), cfg, work / "samples" / s.key,
                                  conditioning=cond_dir, model={"id": f"{s.objective}:{folder}"})
        start_generation(jobs[s])
    return jobs


def warm_up(pipes: dict[str, Any], job) -> None:
    """One short generation per model: first-call costs (allocations, kernel choice) out of every timing."""
    from echo_core.diffusion.samplers import samplers_for
    from echo_core.generation.generate import load_cond_frames

    plan = job.plans[0]
    for pipe in pipes.values():
        sampler = samplers_for(pipe.config.objective)[0]
        opts = job.cfg.sampler_options().model_copy(update={"sampler": sampler, "steps": 1,
                                                            "num_frames": pipe.window})
        pipe.generate(load_cond_frames(pipe, [plan], job.cfg.cond_frame, None), [plan.spec], [plan.seed], opts)


def quality_sets(pipes: dict[str, Any], jobs: dict[Setting, Any]) -> dict[str, list[float]]:
    """Generate every setting's samples batch by batch, round-robin over settings; seconds per video of
    each batch (sampling + decode + jpg writing) per setting."""
    from echo_core.generation.generate import finish_generation, generate_shard

    seconds: dict[str, list[float]] = {s.key: [] for s in jobs}
    first = next(iter(jobs.values()))
    size, total = first.cfg.batch_size, len(first.plans)
    for start in range(0, total, size):
        batch = range(start, min(start + size, total))
        for s, job in jobs.items():
            made, took = _timed(generate_shard, pipes[s.objective], job, batch)
            seconds[s.key].append(took / max(1, made))
        print(f"quality set: {batch.stop}/{total} videos per setting", flush=True)
    for job in jobs.values():
        finish_generation(job, total)
    return seconds


def long_video_times(pipes: dict[str, Any], settings, job, frames: int,
                     reps: int) -> dict[str, list[dict[str, float]]]:
    """{setting: [{"sample_s", "decode_s", "total_s"}] per repetition}: one `frames`-frame video (batch 1,
    the plan's first condition, seed = repetition), repetitions round-robin over settings."""
    from echo_core.generation.generate import load_cond_frames

    plan, times = job.plans[0], {s.key: [] for s in settings}
    for rep in range(reps):
        for s in settings:
            pipe = pipes[s.objective]
            opts = job.cfg.sampler_options().model_copy(update={"sampler": s.sampler, "steps": s.steps,
                                                                "num_frames": frames})
            cond = load_cond_frames(pipe, [plan], job.cfg.cond_frame, None)
            latents, sample_s = _timed(pipe.sample_latents, cond, [plan.spec], [plan.seed + rep], opts)
            _, decode_s = _timed(pipe.decode, latents, chunk=opts.decode_chunk, gray=opts.gray)
            times[s.key].append({"sample_s": sample_s, "decode_s": decode_s, "total_s": sample_s + decode_s})
        print(f"{frames}-frame timing: repetition {rep + 1}/{reps} done", flush=True)
    return times


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "all": [round(v, 4) for v in values]}


# ------------------------------------------------------------------------------------------ judging


def judged(folder: Path, out_root: Path, cfg) -> dict[str, Any]:
    """`echoforge evaluate samples` on one folder: the reported metrics with CIs, verdict and judged EFs."""
    from echo_core.evaluation.assess import assess_samples

    assessed = assess_samples(folder, out_root, DATASET, cfg).to_dict()
    judge = assessed["judges"].get("ef", {})
    return {"verdict": assessed["verdict"], "n_videos": assessed["n_videos"],
            "metrics": {m: assessed["metrics"][m] for m in METRICS if m in assessed["metrics"]},
            "failures": assessed["failures"], "inconclusive": assessed["inconclusive"],
            "judged_ef": judge.get("predicted"), "ef_judge": {k: judge.get(k) for k in ("r2", "mae", "competent")}}


def negative_controls(out_root: Path, work: Path, cfg, frames: int, fps: float, n: int) -> list[dict[str, Any]]:
    """Every applicable control of the held-out real videos at N = n and `frames` frames, judged like samples."""
    from echo_core.evaluation.assess import assess_folder, dataset_bounds
    from echo_core.evaluation.control_run import control_row
    from echo_core.evaluation.controls import build_controls
    from echo_core.evaluation.judge_file import dataset_judge

    folders = build_controls(out_root / "prepared" / DATASET, work / "controls", frames=frames, fps=fps,
                             seed=cfg.seed, max_videos=n)
    judge, bounds = dataset_judge(out_root, DATASET), dataset_bounds(cfg.bounds, DATASET)
    rows = []
    for name, folder in folders.items():
        row = control_row(name, assess_folder(folder, out_root / "reference" / DATASET, DATASET, bounds, cfg, judge))
        rows.append({k: row[k] for k in ("control", "about", "verdict", "n_videos")}
                    | {"metrics": {m: row["metrics"][m] for m in METRICS if m in row["metrics"]}})
    return rows


# ------------------------------------------------------------------------------------------ the report


def setting_rows(settings, quality: dict[str, list[float]], long: dict[str, list[dict[str, float]]],
                 judgements: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: seconds per long video (median/min/max), the quality-set timing, the metrics,
    and whether each metric's CI overlaps the reference's."""
    rows = [{"setting": s.key, "objective": s.objective, "sampler": s.sampler, "steps": s.steps,
             "model_calls_per_window": s.model_calls,
             "seconds": spread([t["total_s"] for t in long[s.key]]),
             "sample_seconds": spread([t["sample_s"] for t in long[s.key]]),
             "decode_seconds": spread([t["decode_s"] for t in long[s.key]]),
             "quality_set_seconds_per_video": spread(quality[s.key]), **judgements[s.key]} for s in settings]
    ref = next(r for r in rows if r["setting"] == REFERENCE)
    for row in rows:
        row["speedup_vs_reference"] = ref["seconds"]["median"] / row["seconds"]["median"]
        row["overlaps_reference"] = {m: overlaps(row["metrics"].get(m), ref["metrics"][m])
                                     for m in compared_metrics(ref["metrics"])}
        row["equal_quality"] = equal_quality(row["metrics"], ref["metrics"])
    return rows


def verdict_notes(rows: list[dict[str, Any]], passing: list[str], choice: dict[str, Any], n: int) -> list[str]:
    """What the numbers do and do not show, in words (written by the script, never by hand)."""
    ref = next(r for r in rows if r["setting"] == REFERENCE)
    names = compared_metrics(ref["metrics"])
    notes = [f"equality = CI overlap with {REFERENCE} on every metric it measured: {', '.join(names) or 'none'}"]
    if choice["setting"] is None:
        notes.append(f"{REFERENCE} measured no metric at N={n} (verdict {ref['verdict']}; "
                     f"{'; '.join(ref['inconclusive'][:2])}): no equality can be shown, no speedup is claimed")
    elif choice["setting"] == REFERENCE:
        notes.append("no faster setting overlaps the reference on every metric: speedup 1")
    if passing:
        notes.append(f"at N={n} the negative controls {', '.join(passing)} also overlap {REFERENCE} on every "
                     "metric: the CIs cannot separate them, so equal quality is NOT shown at this size and "
                     "speedup_at_equal_quality is null (speedup_at_ci_overlap is the overlap alone; more "
                     "videos: --videos)")
    missing = [m for m in METRICS if m not in names]
    if missing:
        notes.append(f"not compared (unmeasured for {REFERENCE}): {', '.join(missing)}")
    if ref["verdict"] != "pass":
        notes.append(f"{REFERENCE} itself has the verdict {ref['verdict']!r} against real videos: equal quality "
                     "here means as good as the reference system's setting, not good")
    return notes


def power_notes(power: dict[str, dict[str, Any]]) -> list[str]:
    """Which degradations the equality test detects below the reference at this N, in words."""
    seen = {name: p["worse_on"] for name, p in power.items() if p["worse_on"]}
    blind = [name for name, p in power.items() if not p["worse_on"]]
    notes = []
    if seen:
        notes.append("detected as worse than the reference: " + "; ".join(
            f"{name} (on {', '.join(metrics)})" for name, metrics in seen.items()))
    if blind:
        notes.append(f"NOT detected as worse than the reference at this N: {', '.join(blind)} (they fail the "
                     "equality test only by being better on some metric, or by a metric they lack); a setting "
                     "degraded like them could pass as equal")
    return notes


def selection(rows: list[dict[str, Any]], controls: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Everything the JSON derives from the measured rows and controls: the headline, its test, the notes."""
    ref = next(r for r in rows if r["setting"] == REFERENCE)
    choice = fastest_at_equal_quality(rows)
    passing = controls_passing(controls, ref["metrics"]) if choice["setting"] else []
    shown = choice["setting"] is not None and not passing
    power = control_power(controls, ref["metrics"])
    # the headline only where the test separated every negative control; the overlap alone is kept beside it
    return {"speedup_at_equal_quality": choice["speedup"] if shown else None,
            "fastest_equal_quality_setting": choice["setting"], "speedup_at_ci_overlap": choice["speedup"],
            "reference": REFERENCE, "equal_quality_shown": shown,
            "controls_passing_as_equal": passing, "compared_metrics": compared_metrics(ref["metrics"]),
            "notes": verdict_notes(rows, passing, choice, n) + power_notes(power), "control_power": power}


def report(rows, controls, models, args, context: dict[str, Any]) -> dict[str, Any]:
    return {"benchmark": "sampling_quality", "mode": "tiny" if args.tiny else "default",
            **selection(rows, controls, args.videos), "rows": rows, "controls": controls,
            "models": {k: {"train_seconds": v.get("train_seconds"), "reused": v["reused"], "data": v["data"],
                           "objective": v["config"]["objective"], "model": v["config"]["model"],
                           "optim": v["config"]["optim"], "folder": str(v["folder"])} for k, v in models.items()},
            **context}


def rederive(path: Path) -> dict[str, Any]:
    """A measured JSON with its derived part recomputed by this script's selection rules (no sampling): the
    measurements stay as they were written; `rederived` records when and from which file."""
    from datetime import UTC, datetime

    result = json.loads(path.read_text(encoding="utf-8"))
    result.update(selection(result["rows"], result["controls"], result["sampling"]["videos"]))
    result["rederived"] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "from": str(path),
                           "measured_wall_seconds": result.get("wall_seconds")}
    return result


MARKERS = {"v_ddpm": ("o", "tab:blue"), "rectified_flow": ("s", "tab:orange"), DISTILLED: ("^", "tab:purple")}


def plot(result: dict[str, Any], path: Path) -> None:
    """One panel per metric: each setting's value with its CI against its median seconds per long video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from echo_core.utils.atomic import atomic_path

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.4 * len(METRICS), 3.8))
    ref = next(r for r in result["rows"] if r["setting"] == REFERENCE)["metrics"]
    for ax, metric in zip(axes, METRICS, strict=True):
        if _finite(ref.get(metric)):
            ax.axhspan(ref[metric]["ci_low"], ref[metric]["ci_high"], color="tab:blue", alpha=0.12,
                       label=f"{REFERENCE} CI")
        for row in result["rows"]:
            est = row["metrics"].get(metric)
            if not _finite(est):
                continue
            x, y = row["seconds"]["median"], est["value"]
            err = [[max(0.0, y - est["ci_low"])], [max(0.0, est["ci_high"] - y)]]
            marker, color = MARKERS[row["objective"]]
            ax.errorbar([x], [y], yerr=err, fmt=marker, capsize=3, color=color)
            ax.annotate(row["setting"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        for control in result["controls"]:
            est = control["metrics"].get(metric)
            if _finite(est):
                color = "tab:green" if control["control"] == "positive" else "tab:red"
                ax.axhline(est["value"], color=color, ls=":", lw=1)
                ax.annotate(control["control"], (0.01, est["value"]), xycoords=("axes fraction", "data"),
                            fontsize=6, color=color)
        if not any(_finite(r["metrics"].get(metric)) for r in result["rows"]):
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
        ax.set_xscale("log")
        ax.set_xlabel(f"seconds per {result['sampling']['time_frames']}-frame video")
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"v-DDPM (circles), rectified flow (squares), its distilled student (triangles): 95% CIs, "
                 f"N={result['sampling']['videos']} videos per setting; dotted: controls at the same N "
                 "(green: real videos)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ driver


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-root", type=Path, default=ROOT / "outputs",
                        help="a demo state: latents/, vae/, prepared/, reference/, judges/ (only read)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".sampling-quality",
                        help="trained models (reused), samples and controls")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/sampling_quality.json; --tiny: in --work)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: 2-step models, 16 frames, 2 videos, "
                        "the fewest steps of each sampler only")
    parser.add_argument("--train-steps", type=int, default=None, help="default: train_lvdm.optim.max_steps")
    parser.add_argument("--train-batch", type=int, default=None, help="default: train_lvdm.optim.batch_size")
    parser.add_argument("--videos", type=int, default=8, help="videos per setting (and per control)")
    parser.add_argument("--frames", type=int, default=None, help="frames of the quality set "
                        "(default evaluate.sample.num_frames: the EF judge needs >= 1 s)")
    parser.add_argument("--time-frames", type=int, default=192, help="frames of the timed video")
    parser.add_argument("--time-reps", type=int, default=2, help="timed videos per setting (round-robin)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (evaluate.torch_threads' reason)")
    parser.add_argument("--rederive", type=Path, default=None, metavar="JSON",
                        help="recompute the headline, notes and control power of a measured JSON (no sampling)")
    args = parser.parse_args()
    args.settings = TINY_SETTINGS if args.tiny else SETTINGS
    if args.tiny:
        args.train_steps, args.train_batch, args.videos = 2, 2, 2
        args.frames, args.time_frames, args.time_reps = 16, 16, 1
    args.out = args.out or (args.work / "sampling_quality.json" if args.tiny
                            else ROOT / "benchmarks" / "results" / "sampling_quality.json")
    return args


def configs(args, params: dict[str, Any]):
    """(assess config, sample config, reference fps) of params.yaml, with this run's sizes."""
    from echo_core.evaluation.config import load_configs, sample_config

    cfg, _, sample_section = load_configs(args.params)
    sample_cfg = sample_config(sample_section, cfg, "ef")
    args.frames = args.frames or sample_cfg.num_frames
    args.train_steps = args.train_steps or params["train_lvdm"]["optim"]["max_steps"]
    sample_cfg = sample_cfg.model_copy(update={"num_samples": args.videos, "num_frames": args.frames,
                                               "formats": ["jpg"], "batch_size": min(sample_cfg.batch_size,
                                                                                     args.videos)})
    assess = cfg.assess
    if args.tiny:  # 2 videos: below min_videos nothing would be measured, and the smoke run must reach it all
        assess = assess.model_copy(update={"min_videos": 2, "resamples": 100})
    fps = float((params.get("reference") or {}).get("fps", 32.0))
    return assess, sample_cfg, fps


def generate_all(models: dict[str, dict[str, Any]], sample_cfg, args) -> tuple[dict, dict, dict[str, float]]:
    """(quality-set seconds, long-video timings, wall seconds per phase): both models loaded once."""
    from echo_core.evaluation.plan import train_conditioning
    from echo_core.generation.pipeline import load_pipeline

    vae, phases = args.out_root / "vae" / "vae", {}
    pipes = {k: load_pipeline(m["folder"], vae_folder=vae, device="cpu") for k, m in models.items()}
    with train_conditioning(args.out_root / "latents" / DATASET, args.work) as (cond_dir, _):
        jobs = plan_jobs(models, args.settings, sample_cfg, cond_dir, args.work)
        first = next(iter(jobs.values()))
        warm_up(pipes, first)
        quality, phases["quality_set_sampling"] = _timed(quality_sets, pipes, jobs)
        long, phases["long_video_timing"] = _timed(long_video_times, pipes, args.settings, first,
                                                   args.time_frames, args.time_reps)
    return quality, long, phases


def train_models(params: dict[str, Any], args) -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        models[name] = trained_model(name, params, args, models)
    return models


def run(args, params: dict[str, Any]) -> dict[str, Any]:
    assess, sample_cfg, fps = configs(args, params)
    models, train_s = _timed(train_models, params, args)
    quality, long, phases = generate_all(models, sample_cfg, args)
    judgements, phases["judging"] = _timed(
        lambda: {s.key: judged(args.work / "samples" / s.key, args.out_root, assess) for s in args.settings})
    controls, phases["controls"] = _timed(negative_controls, args.out_root, args.work, assess, args.frames, fps,
                                          args.videos)
    sampling = {"settings": [s.key for s in args.settings], "videos": args.videos, "frames": args.frames,
                "batch_size": sample_cfg.batch_size,
                "time_frames": args.time_frames, "time_reps": args.time_reps, "time_batch": 1,
                "fps": fps, "conditions": sample_cfg.conditions.model_dump(mode="json"), "seed": sample_cfg.seed,
                "interleaving": "quality set: batch b of every setting before batch b+1 of any; timing: "
                                "repetition r of every setting before r+1; one warm-up generation per model",
                "quality_set_seconds": "per video of each batch: sampling + VAE decode + jpg writing",
                "seconds": f"one {args.time_frames}-frame video (batch 1): latent sampling + VAE decode"}
    context = {"sampling": sampling, "assess": assess.model_dump(mode="json", exclude={"bounds"}),
               "phase_seconds": {"training_or_reuse": round(train_s, 1), **{k: round(v, 1) for k, v in phases.items()}}}
    return report(setting_rows(args.settings, quality, long, judgements), controls, models, args, context)


def main() -> None:
    args = parse_args()
    if args.rederive is not None:
        result = rederive(args.rederive)
        write_json_atomic(args.out, result)
        plot(result, args.out.with_suffix(".png"))
        print(json.dumps({k: result[k] for k in ("speedup_at_equal_quality", "notes")}, indent=2))
        return
    import torch
    import yaml

    from benchmarks.setup_times import machine
    from echo_core.metrics.api import library_versions

    torch.set_num_threads(args.threads)
    params = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    args.work.mkdir(parents=True, exist_ok=True)
    load_before, start = [round(x, 2) for x in os.getloadavg()], time.perf_counter()
    result = run(args, params)
    result["machine"] = {**machine(), "torch_threads": torch.get_num_threads(), "load_average_before": load_before,
                         "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    result["versions"] = library_versions()
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("speedup_at_equal_quality", "speedup_at_ci_overlap",
                                             "fastest_equal_quality_setting", "equal_quality_shown", "notes",
                                             "wall_seconds")}, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
