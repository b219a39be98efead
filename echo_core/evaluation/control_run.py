"""Evaluate the evaluator: build every control of a dataset, judge each like samples, check each verdict.

The positive control (held-out real videos with their true labels) must pass; every negative control must
fail, and the table names the metric that failed it. A control that comes out otherwise means a bound is
wrong (or a judge is not competent): `evaluator_ok` is False and the table says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from echo_core.evaluation.assess import AssessConfig, Assessment, assess_folder
from echo_core.evaluation.controls import build_controls, get_control
from echo_core.evaluation.verdict import Bound


def expected_verdict(name: str) -> str:
    return "fail" if get_control(name).caught_by else "pass"


def control_row(name: str, result: Assessment) -> dict[str, Any]:
    """One row of the controls table: expectation, verdict, failing metrics and every metric with its CI."""
    expected = expected_verdict(name)
    failing = [v.name for v in result.verdicts if v.verdict == "fail"]
    return {"control": name, "about": get_control(name).about, "expected": expected, "verdict": result.verdict,
            "as_expected": result.verdict == expected, "failing_metrics": failing, "n_videos": result.n_videos,
            "metrics": {k: v.to_dict() for k, v in result.metrics.items()},
            "reasons": [v.reason for v in result.verdicts]}


def run_controls(prepared: Path, reference: Path, out_root: Path, dataset: str, bounds: Mapping[str, Bound],
                 cfg: AssessConfig, *, frames: int, fps: float, judge=None, class_judge=None,
                 names: list[str] | None = None, progress=None) -> dict[str, Any]:
    """Build the controls of `prepared` under `out_root` and judge each: {"controls": rows, "evaluator_ok"}.
    judge / class_judge: the dataset's EF and class judges (None: absent, which makes their metrics inconclusive)."""
    folders = build_controls(prepared, out_root, names=names, frames=frames, fps=fps, seed=cfg.seed)
    rows = []
    for name, folder in folders.items():
        if progress is not None:
            progress(name)
        rows.append(control_row(name, assess_folder(folder, reference, dataset, bounds, cfg, judge, class_judge)))
    return {"dataset": dataset, "evaluator_ok": all(r["as_expected"] for r in rows),
            "not_as_expected": [r["control"] for r in rows if not r["as_expected"]], "controls": rows,
            "config": cfg.model_dump(mode="json"), "frames": frames, "fps": fps,
            "bounds": {k: v.model_dump() for k, v in bounds.items()}}


def plot_controls(table: dict[str, Any], path: Path) -> Path:
    """One panel per metric: each control's value with its CI, the bound as a dashed line (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from echo_core.utils.atomic import atomic_path

    rows = table["controls"]
    metrics = sorted({m for r in rows for m in r["metrics"]})
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.2 * max(1, len(metrics)), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=False):
        _metric_panel(ax, rows, metric, table["bounds"].get(metric, {}))
    fig.suptitle(f"{table['dataset']}: negative controls (green = as expected)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _metric_panel(ax, rows: list[dict[str, Any]], metric: str, bound: dict[str, Any]) -> None:
    for i, row in enumerate(rows):
        est = row["metrics"].get(metric)
        if not est or est["value"] is None:
            continue
        value = est["value"]
        lo = est["ci_low"] if est["ci_low"] is not None else value
        hi = est["ci_high"] if est["ci_high"] is not None else value
        color = "tab:green" if row["as_expected"] else "tab:red"
        # a percentile interval need not contain the point value (FD's bias under resampling): draw both
        ax.errorbar([i], [value], yerr=[[max(0.0, value - lo)], [max(0.0, hi - value)]], fmt="o", color=color,
                    capsize=3)
        ax.vlines([i], min(lo, value), max(hi, value), color=color, lw=1)
    for side in ("min", "max"):
        if bound.get(side) is not None:
            ax.axhline(bound[side], ls="--", color="k", lw=1)
    ax.set_xticks(range(len(rows)), [r["control"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_title(metric, fontsize=9)
