#!/usr/bin/env bash
# Create .venv and install trl_shaped with its test extras. Idempotent: re-runs only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# One exact torch release: on this project's CPU machines pip takes the CPU build that lies on disk; elsewhere
# PyPI serves the CUDA build for Linux. Override with TORCH_SPEC (e.g. "torch" or a CUDA-index wheel).
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.trl_shaped-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, so that the range in pyproject.toml is already satisfied and never pulls another build
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "$want" > "$stamp"
