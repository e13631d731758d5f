#!/usr/bin/env bash
# Quickstart command 1: set up the environment if needed, then run the whole story on the embedded
# default: data → tiny model → cold-start SFT → EMO-R3 RL → before/after table + learning curve.
# Extra arguments are passed on as config overrides, e.g.  scripts/run.sh cluster.run_name=mine
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec .venv/bin/emo-r3 pipeline --config configs/cpu_default.yaml "$@"
