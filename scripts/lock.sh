#!/usr/bin/env bash
# Re-resolve requirements/top-level.txt into requirements/cpu.lock in a throw-away venv.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q -r requirements/top-level.txt
"$tmp/venv/bin/pip" install -q --no-deps -r requirements/no-deps.txt
{
  sed -n '1,/^$/p' requirements/cpu.lock | grep '^#'
  "$tmp/venv/bin/pip" freeze --all | grep -v "^pip==" | sed -e 's/^torch==\([0-9.]*\)+cpu/torch==\1/'
} > requirements/cpu.lock.new
mv requirements/cpu.lock.new requirements/cpu.lock
echo "wrote requirements/cpu.lock ($(grep -vc '^#' requirements/cpu.lock) packages)"
