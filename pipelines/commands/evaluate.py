"""`echoforge evaluate metrics | sample | run`.

- metrics: FID / FVD / IS / KID (StyleGAN-V protocol) or their offline fallbacks between two jpg trees.
- sample: the evaluation samples of a registered version (the DVC `sample` stage).
- run: the Prefect `evaluate` flow: sample (or reuse) → metrics + downstream → MLflow, model-version tags and
  metrics/*.json for DVC; `echoforge registry promote` then applies the gate.
"""

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


ModelOpt = Annotated[str, typer.Option("--model", help="Registered model name.")]
VersionOpt = Annotated[str, typer.Option("--version", help="Version number or alias (candidate, champion).")]
DatasetOpt = Annotated[list[str] | None, typer.Option(
    "--dataset", help="Dataset (repeatable); default: params.yaml evaluate.datasets")]
OutRootOpt = Annotated[str, typer.Option("--out-root", help="Reads prepared/, reference/, latents/; writes "
                                                            "samples/<ds> and evaluation/<ds>")]
MetricsDirOpt = Annotated[str, typer.Option("--metrics-dir", help="Where evaluate.json, <ds>/ and plots/ go")]
VaeOpt = Annotated[str | None, typer.Option(
    "--vae", help="VAE folder or models:/echo-vae@<alias>, for a version without its own vae/")]


def sample(model: ModelOpt = "echo-lvdm", version: VersionOpt = "candidate", dataset: DatasetOpt = None,
           params: ParamsOpt = Path("params.yaml"), out_root: OutRootOpt = "outputs", vae: VaeOpt = None) -> None:
    """Generate (or reuse) the evaluation samples of a registered version into <out-root>/samples/<ds>."""
    from pipelines.flows.evaluate import sample_for_evaluation

    typer.echo(json.dumps(sample_for_evaluation(model, version, dataset, str(params), out_root, vae), indent=2))


def run(model: ModelOpt = "echo-lvdm", version: VersionOpt = "candidate", dataset: DatasetOpt = None,
        params: ParamsOpt = Path("params.yaml"), out_root: OutRootOpt = "outputs",
        metrics_dir: MetricsDirOpt = "metrics", vae: VaeOpt = None,
        shards: int | None = typer.Option(None, "--shards", min=1, help="Feature-extraction shards per metric "
                                          "side on ECHOFORGE_TASK_RUNNER's runner (default: its workers, else 1).")
        ) -> None:
    """Evaluate a registered version (Prefect flow `evaluate`): samples, metrics, downstream, MLflow, tags."""
    from echo_core.evaluation.config import load_configs
    from pipelines.flows.evaluate import evaluate
    from pipelines.registry import get_model_version

    load_configs(params)  # the usual user errors (params, version) fail here in one line, before Prefect starts
    version = str(get_model_version(model, version).version)
    result = evaluate(model, version, dataset, str(params), out_root, metrics_dir, vae, shards)
    typer.echo(json.dumps(result["metrics"], indent=2, sort_keys=True))
    typer.echo(f"{result['model']} version {result['version']}: MLflow run {result['run_id']}; "
               f"gate: echoforge registry promote --model {result['model']} --version {result['version']}")


def register(app: typer.Typer) -> None:
    """Add `metrics`, `sample`, `run`, `samples`, `controls` and `judge` to the `evaluate` group."""
    from pipelines.commands import assess

    app.command("sample")(sample)
    app.command("run")(run)
    assess.register(app)

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
