"""The promotion gate on intervals: each metric's bootstrap CI against its bound gives pass / fail / inconclusive.

A point estimate on 6-20 videos can sit on either side of a bound by chance. Judging the interval says which
decisions the data support: the whole CI beyond the bound fails, the whole CI within it passes, and a CI that
straddles the bound is inconclusive (with `decisive`) or decided by the point value (the old gate's rule, so
a demo run still ends in pass or fail). `gate.py`'s promotion gate reads the verdicts this module gives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import Field, model_validator

from echo_core.config import StrictModel
from echo_core.metrics.bootstrap import Estimate

Verdict = Literal["pass", "fail", "inconclusive"]
EXIT_CODES: dict[str, int] = {"pass": 0, "fail": 1, "inconclusive": 3}  # 2 is taken by usage/config errors


class Bound(StrictModel):
    """Acceptable range of one metric; at least one side (an empty bound would pass anything)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_consistent_side(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a bound needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} > max {self.max:g}")
        return self


class VerdictConfig(StrictModel):
    """The interval gate: a bound per metric (every bounded metric is required: a missing one fails) and how
    a CI that straddles its bound is decided. The bootstrap that makes the CIs is `AssessConfig`'s."""

    bounds: dict[str, Bound] = Field(default_factory=dict)
    decisive: bool = False  # True: a CI straddling a bound is inconclusive; False: the point value decides
    level: float = Field(0.95, gt=0.0, lt=1.0)


@dataclass(frozen=True)
class MetricVerdict:
    name: str
    verdict: Verdict
    reason: str  # a sentence naming the metric, its value and CI, N and the bound

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _num(x: float) -> str:
    """3 significant digits with trailing zeros ("2.80"), plain integers from 1000 up (FD values)."""
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:#.3g}".rstrip(".")


def _side(est: Estimate, kind: str, limit: float, decisive: bool) -> tuple[Verdict, str]:
    """Verdict and text of one side of a bound (kind "max" or "min")."""
    if kind == "max":
        beyond, within, point_ok, bad, ok = est.ci_low > limit, est.ci_high <= limit, est.value <= limit, ">", "<="
    else:
        beyond, within, point_ok, bad, ok = est.ci_high < limit, est.ci_low >= limit, est.value >= limit, "<", ">="
    if beyond:
        return "fail", f"{bad} {kind} {limit:g}"
    if within:
        return "pass", f"{ok} {kind} {limit:g}"
    if decisive:
        return "inconclusive", f"CI straddles {kind} {limit:g}"
    return ("pass" if point_ok else "fail"), f"CI straddles {kind} {limit:g}, point value {ok if point_ok else bad}"


def judge_metric(name: str, est: Estimate | None, bound: Bound, *, decisive: bool, judge_ok: bool = True,
                 judge: str | None = None) -> MetricVerdict:
    """One metric's verdict from its interval and bound.

    Missing or non-finite estimate → fail. Judge absent or below its competence bar (`judge_ok` False; `judge`
    names it) → inconclusive, never pass: the judge's number says nothing about the model.
    """
    if not judge_ok and (est is None or not math.isfinite(est.value)):
        return MetricVerdict(name, "inconclusive", f"{name}: judge {judge or '(unnamed)'} is absent or below its "
                                                   "competence bar, so the metric was not measured")
    if est is None:
        return MetricVerdict(name, "fail", f"{name}: missing")
    if not all(math.isfinite(x) for x in (est.value, est.ci_low, est.ci_high)):
        return MetricVerdict(name, "fail", f"{name}: missing (non-finite estimate {est.value} "
                                           f"[{est.ci_low}, {est.ci_high}], N={est.n})")
    numbers = f"{name} = {_num(est.value)} [{_num(est.ci_low)}, {_num(est.ci_high)}] (N={est.n})"
    if not judge_ok:
        return MetricVerdict(name, "inconclusive",
                             f"{numbers}: judge {judge or '(unnamed)'} is below its competence bar, not trusted")
    sides = [_side(est, kind, limit, decisive) for kind, limit in (("max", bound.max), ("min", bound.min))
             if limit is not None]
    return MetricVerdict(name, overall(v for v, _ in sides), f"{numbers} " + "; ".join(t for _, t in sides))


def judge_all(estimates: Mapping[str, Estimate | None], cfg: VerdictConfig,
              judges: Mapping[str, tuple[str, bool]] | None = None) -> list[MetricVerdict]:
    """Verdicts of every bounded metric (a bounded metric that is missing fails, as in `gate_failures`).
    judges: metric → (judge name, competent?) for metrics measured by a judge (EF regressor, classifier)."""
    judges = judges or {}
    verdicts = []
    for name, bound in cfg.bounds.items():
        judge, ok = judges.get(name, (None, True))
        verdicts.append(judge_metric(name, estimates.get(name), bound, decisive=cfg.decisive, judge_ok=ok,
                                     judge=judge))
    return verdicts


def overall(verdicts: Iterable[MetricVerdict | str]) -> Verdict:
    """Any fail → fail; else any inconclusive → inconclusive; else pass (also for no metrics)."""
    found = {v.verdict if isinstance(v, MetricVerdict) else v for v in verdicts}
    if not found <= set(EXIT_CODES):
        raise ValueError(f"unknown verdicts {sorted(found - set(EXIT_CODES))}; expected {sorted(EXIT_CODES)}")
    if "fail" in found:
        return "fail"
    return "inconclusive" if "inconclusive" in found else "pass"


def exit_code(verdict: Verdict) -> int:
    """Process exit status of a gate run: pass 0, fail 1, inconclusive 3."""
    return EXIT_CODES[verdict]
