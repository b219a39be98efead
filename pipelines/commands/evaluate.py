"""`echoforge evaluate metrics`: FID / FVD / IS / KID (StyleGAN-V protocol) or their offline fallbacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

SECTION = "evaluate.metrics"


def _load_config(params: Path, overrides: dict):
    """params.yaml `evaluate.metrics` (when present) merged with the CLI flags that were given."""
    from echo_core.config import load_params, load_section, validate_config
    from echo_core.metrics.api import MetricsConfig

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if params.is_file() and isinstance(load_params(params).get("evaluate"), dict) \
            and "metrics" in load_params(params)["evaluate"]:
        return load_section(MetricsConfig, SECTION, params, overrides)
    return validate_config(MetricsConfig, overrides, where="evaluate metrics options")


def _summary(values: dict[str, float], protocol: dict) -> str:
    lines = []
    for name, p in protocol["metrics"].items():
        extra = "  ".join(f"{k}={v:.6g}" for k, v in values.items() if k.startswith(f"{name}_"))
        lines.append(f"{name:>16} = {values[name]:.6g}  {extra}  (N real {p['n_real']}, "
                     f"N fake {p['n_fake']}, extractor {p['extractor']['name']}, exact {p['exact']})")
    return "\n".join(lines)


_METRICS_HELP = ("Comma-separated. Exact (verified weights): fid,fvd16,fvd128,is,kid,fid_inf. Offline: "
                 "fd_fallback,fvd16_fallback,fvd128_fallback,is_fallback,kid_fallback,fd_inf_fallback")
RealOpt = Annotated[Path, typer.Option("--real", help="Real frames: <root>/<video>/<frame>.jpg")]
FakeOpt = Annotated[Path, typer.Option("--fake", help="Generated frames, same layout")]
MetricsOpt = Annotated[str | None, typer.Option("--metrics", help=_METRICS_HELP)]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights-dir", help="Folder holding the metric weights (see infra/metrics/weights.json)")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write the result + protocol JSON here")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of real clip offsets and KID subsets")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1, ...")]
FewerOpt = Annotated[bool | None, typer.Option(
    "--allow-fewer/--no-allow-fewer",
    help="Evaluate on fewer videos/frames than the protocol's 2048 / 50k (result marked not exact)")]
BootOpt = Annotated[int | None, typer.Option("--bootstrap", help="Bootstrap resamples for FD CIs (0 = off)")]
ManifestOpt = Annotated[Path | None, typer.Option("--manifest", help="Weights manifest (default: infra/)")]
ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml with an evaluate.metrics section")]


def register(app: typer.Typer) -> None:
    """Add `metrics` to the `evaluate` group."""

    @app.command("metrics")
    def metrics(real: RealOpt, fake: FakeOpt, metric_names: MetricsOpt = None, weights_dir: WeightsOpt = None,
                out: OutOpt = None, seed: SeedOpt = None, device: DeviceOpt = None, allow_fewer: FewerOpt = None,
                bootstrap: BootOpt = None, manifest: ManifestOpt = None,
                params: ParamsOpt = Path("params.yaml")) -> None:
        """Compute generative metrics between two jpg trees and record their exact protocol."""
        from echo_core.metrics.api import MetricsOptions, compute_metrics
        from echo_core.utils.atomic import write_json_atomic

        names = metric_names.split(",") if metric_names else None
        cfg = _load_config(params, {"metrics": names, "seed": seed, "device": device,
                                    "allow_fewer": allow_fewer, "bootstrap": bootstrap})
        options = MetricsOptions(**cfg.model_dump(exclude={"metrics"}))
        result = compute_metrics(real, fake, cfg.metrics, options, weights_dir=weights_dir, manifest=manifest)
        if out is not None:
            write_json_atomic(out, result.to_dict())
        typer.echo(_summary(result.values, result.protocol))
        if out is None:
            typer.echo(json.dumps(result.values, indent=2, sort_keys=True))
