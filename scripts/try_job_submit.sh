#!/usr/bin/env bash
# Try `ray job submit` on this machine, as a cluster runs a job: start a private Ray head on
# loopback, submit `python -m cluster.cli train <overrides>` to it, wait for the job, stop that head.
#
#   bash scripts/try_job_submit.sh cluster.iterations=2 cluster.run_name=job-try
#
# The head gets its own temp dir and free ports, so it never collides with another Ray on the machine
# (a training run, a test session), and only its own processes are stopped at the end (`ray stop`
# would stop every Ray of this user). The run lands in ./runs/ (cluster.output_dir), not in the copy
# of the working dir Ray gives the job.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# The job's `python` is resolved by the processes `ray start` launches: the project's environment
# must come first on their PATH, or it is the system Python (ModuleNotFoundError: torch).
export PATH="$ROOT/.venv/bin:$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 # keep every listener of the head on 127.0.0.1
export RAY_AUTH_MODE=disabled              # loopback only, no token needed (a cluster keeps token auth)
TEMP_DIR=$(mktemp -d /tmp/rayXXXXXX)       # short: Ray's socket paths must fit 107 characters

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stop_head() {
  # the processes of this head only: their command lines name its temp dir
  local pids
  pids=$(grep -l -s -F "$TEMP_DIR" /proc/[0-9]*/cmdline | cut -d/ -f3 || true)
  [[ -n $pids ]] && kill $pids 2>/dev/null && sleep 2 && kill -9 $pids 2>/dev/null
  rm -rf "$TEMP_DIR"
}
trap stop_head EXIT

DASHBOARD=$(free_port)
ray start --head --node-ip-address=127.0.0.1 --port="$(free_port)" --num-cpus=2 --disable-usage-stats \
  --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD" --temp-dir="$TEMP_DIR" \
  --dashboard-agent-listen-port="$(free_port)" --dashboard-agent-grpc-port="$(free_port)" \
  --metrics-export-port="$(free_port)" --runtime-env-agent-port="$(free_port)" >/dev/null
RUNTIME_ENV=$(printf '{"excludes": [".venv/", ".cache/", "runs/", ".git/", "__pycache__/"], "env_vars": {"EMO_R3_CACHE_DIR": "%s"}}' "$ROOT/.cache")
submit() {
  ray job submit --address="http://127.0.0.1:$DASHBOARD" --working-dir "$ROOT" --runtime-env-json "$RUNTIME_ENV" \
    -- python -m cluster.cli train "cluster.output_dir=$ROOT/runs" "$@"
}
# The head's job agent can need tens of seconds after `ray start` returns on a loaded machine.
for _ in $(seq 60); do
  set +e
  submit "$@" 2>&1 | tee "$TEMP_DIR/submit.log"
  status=${PIPESTATUS[0]}
  set -e
  grep -q "No available agent to submit job" "$TEMP_DIR/submit.log" || break
  sleep 3
done
exit "$status"
