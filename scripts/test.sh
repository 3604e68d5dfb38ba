#!/usr/bin/env bash
# Set up (first time only) and run the test suite. Extra arguments go to pytest:
#   bash scripts/test.sh                                      # everything (CI, through .ci/run)
#   bash scripts/test.sh -m "not slow and not distributed"    # the fast lane for local work
#   bash scripts/test.sh tests/test_loss.py -x                # one file
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
# Tiny models run several times faster on one thread per process (the distributed tests start two).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest "$@"
