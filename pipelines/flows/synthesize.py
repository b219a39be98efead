"""Prefect flow `synthesize`: a fully synthetic, privacy-checked dataset, the steps of `echoforge synth build`
as tasks (hearts: LIDM → privacy filter, in rounds → videos: the LVDM animates the kept hearts → assemble:
the dataset's own layout), then the Great Expectations validation of the result. Every step is resumable
(`<out>.work/`), so a retried run redoes only what is missing.

    prefect deployment run synthesize/dynamic --params '{"num_videos": 100}'
    echoforge flow synthesize --dataset dynamic --num-videos 100
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task


def _as_task(name: str, step, *args: Any) -> Any:
    return task(step, name=name)(*args)


@task(name="validate")
def validate_synthetic(kind: str, folder: Path, report: Path) -> dict[str, Any]:
    """GX validation of the built dataset, as `echoforge data validate --kind <kind>` runs it."""
    from echo_core.errors import DataError
    from pipelines.validation import default_frame_size, format_report, validate_dataset

    result = validate_dataset(kind, folder, prepared=False, expected_size=default_frame_size(kind, False),
                              docs_dir=report.parent / "data_docs", report_path=report, quarantine=False, workers=2)
    if not result.success:
        raise DataError(f"the synthetic dataset {folder} fails validation:\n{format_report(result, show_rows=5)}",
                        fix=f"see {report}")
    return {"report": str(report), "success": True}


@flow(name="synthesize", log_prints=True)
def synthesize(dataset: str = "dynamic", num_videos: int = 8, out_root: str = "outputs",
               lvdm: str = "models:/echo-lvdm@champion", lidm: str | None = None, reid: str | None = None,
               vae: str | None = None, splits: str | None = None, seed: int = 0,
               params_path: str = "params.yaml", ef_judge: str | None = None) -> dict[str, Any]:
    """Build `<out_root>/synthetic/<dataset>` from the registered models (defaults: echo-lidm@<dataset>, the
    re-identification folder `<out_root>/privacy/<dataset>/reid`, echo-lvdm@champion) and validate it."""
    from pipelines.synthesis import build_dataset

    root = Path(out_root)
    out = root / "synthetic" / dataset
    cfg, table = build_dataset(dataset, num_videos, root / "latents" / dataset,
                               reid or str(root / "privacy" / dataset / "reid"), out, lidm=lidm, lvdm=lvdm,
                               vae=vae, splits=splits, seed=seed, params=Path(params_path),
                               ef_judge=Path(ef_judge) if ef_judge else None, run_step=_as_task)
    report = root / "validation" / f"synthetic-{dataset}" / "report.json"
    validation = validate_synthetic(cfg.kind, out, report)
    splits_done = table["Split"].value_counts().to_dict()
    print(f"{len(table)} synthetic videos in {out} ({splits_done}), validated ({report})")
    return {"dataset": str(out), "videos": len(table), "splits": splits_done, **validation}
