#!/usr/bin/env bash
# Materialise the raw data pointed to by data.dvc.
#  1. If data/ already matches data.dvc: nothing to do.
#  2. Else try the DVC cache / default remote (a team that pushed real or phantom data gets it here).
#  3. Else regenerate the phantom default deterministically (params.yaml `phantom:`) and `dvc add` it.
#     Same code + params => same bytes => data.dvc unchanged. If data.dvc changes, the difference is
#     printed and explained (generator or params changed since data.dvc was committed).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -f data.dvc ] && [ -d data ] && dvc status data.dvc 2>/dev/null | grep -q "up to date"; then
  echo "data/: matches data.dvc"
  exit 0
fi
if [ -f data.dvc ] && dvc pull -q data.dvc 2>/dev/null; then
  echo "data/: pulled from the DVC cache/remote"
  exit 0
fi
echo "data/: not in the DVC cache or remote; regenerating the phantom default (deterministic)"
rm -rf data
echo "data/: generating the phantom default into data/"
echoforge data phantom-all --out data --params params.yaml
cp data.dvc .data.dvc.before 2>/dev/null || true
dvc add -q data
if [ -f .data.dvc.before ] && ! cmp -s .data.dvc.before data.dvc; then
  echo "NOTE: data.dvc changed: the regenerated phantom data differs from the committed pointer."
  echo "      This happens when the phantom generator or params.yaml 'phantom:' changed since data.dvc"
  echo "      was committed. Commit the new data.dvc (and 'dvc push') to make it the reference:"
  diff .data.dvc.before data.dvc || true
fi
rm -f .data.dvc.before
