#!/usr/bin/env bash
# Quickstart command 2: set up the environment if needed, then run the test suite.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k rewards -x
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
