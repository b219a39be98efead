#!/usr/bin/env bash
# `dvc repro` made safe to re-run after a crash (`make repro` runs this; arguments go to `dvc repro`):
# before, repair a dvc.lock torn by a process killed while DVC rewrote it in place (pipelines/ops/dvc_lock.py);
# after a success, clear what killed stages left where DVC restored outputs from its run cache without running
# them again: stale `<out>.partial/` folders, killed writers' temp files older than this repro, and MLflow runs
# left RUNNING (pipelines/ops/repro_sweep.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pipelines.ops.dvc_lock .
started=$(date +%s)
dvc repro "$@"
python -m pipelines.ops.repro_sweep . --before "$started"
