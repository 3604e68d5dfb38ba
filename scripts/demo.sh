#!/usr/bin/env bash
# Set up (first time only) and run the built-in end-to-end demo. Extra arguments go to `trl-shaped demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
exec .venv/bin/trl-shaped demo "$@"
