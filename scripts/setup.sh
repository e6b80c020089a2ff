#!/usr/bin/env bash
# Create or refresh .venv from the lock file, install recfunnel into it, fetch MovieLens 100k.
# Idempotent: with an unchanged lock and pyproject it only checks a stamp and returns.
#   VARIANT=cpu (default) | cuda   (cuda swaps torch / fbgemm-gpu / torchrec for GPU builds)
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${VARIANT:-cpu}
PY=${PYTHON:-python3.11}
venv=.venv
stamp_file=$venv/.recfunnel-stamp
stamp=$(cat requirements/cpu.lock requirements/cuda.txt pyproject.toml | sha256sum | cut -c1-16)-$VARIANT

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "$PY" -m venv "$venv"
fi

if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing requirements/cpu.lock ($VARIANT)"
  lock=requirements/cpu.lock
  if [ "$VARIANT" = cuda ]; then
    # fbgemm-gpu-cpu out, the three CUDA packages in; everything else stays pinned.
    lock=$(mktemp)
    grep -vE '^(torch|fbgemm[-_]gpu[-_]cpu|torchrec)==' requirements/cpu.lock > "$lock"
    grep -vE '^#' requirements/cuda.txt >> "$lock"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$lock"
  [ "$VARIANT" = cuda ] && "$venv/bin/pip" uninstall -q -y fbgemm-gpu-cpu 2>/dev/null || true
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$stamp" > "$stamp_file"
fi

# MovieLens 100k: license forbids redistribution, so it is fetched, never committed.
"$venv/bin/recfunnel" fetch movielens --quiet
