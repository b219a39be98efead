#!/usr/bin/env bash
# MLflow tracking server for this project: sqlite under mlruns/, proxied artifacts, 127.0.0.1:5000 by default.
# Same as `echoforge ops mlflow-server`; every option is passed on, e.g.
#   infra/mlflow/launch.sh --port 5001
#   infra/mlflow/launch.sh --env-file infra/mlflow/production.env --host 0.0.0.0   # PostgreSQL + S3
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${ECHOFORGE:-.venv/bin/echoforge}" ops mlflow-server "$@"
