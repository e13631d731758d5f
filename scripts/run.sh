#!/usr/bin/env bash
# Quickstart command 1: set up the environment if needed, then run the main job on the embedded default.
# Extra arguments are passed on as config overrides, e.g.  scripts/run.sh rollout.group_size=4
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec .venv/bin/emo-r3 train --config configs/cpu_default.yaml cluster.iterations=4 cluster.eval_limit=32 "$@"
