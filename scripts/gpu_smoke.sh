#!/usr/bin/env bash
# The GPU smoke run: the GPU path end to end in a few minutes on one GPU (or more).
#
#   bash scripts/gpu_smoke.sh [KEY=VALUE ...]     # extra config overrides go last
#
# Three iterations of the embedded task on a random-initialised tiny Qwen2.5-VL (built offline):
# bf16 engines and learner, vLLM's multiprocess engine core, the collective weight transport, a
# rollout engine and a policy-mode judge engine sharing the GPU with the learner by fractions. NCCL
# refuses two ranks of one group on one GPU ("Duplicate GPU detected"), so with fewer than three
# GPUs the weight group runs gloo through host memory (cluster.weight_group_backend=auto); with
# three or more, learner, rollout engine and judge each get a whole GPU and the group runs NCCL.
# Prints, per iteration, the learner-sampler logprob mismatch, the truncated importance weights,
# the push time and the rollout tokens/s, then exits non-zero if an iteration is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[[ -x .venv/bin/python ]] || bash scripts/setup_env.sh --gpu
PY=.venv/bin/python
GPUS=$(nvidia-smi -L | wc -l)
nvidia-smi -L
if ((GPUS >= 3)); then
  SHARE=(learner.num_gpus_per_rank=1 rollout.num_gpus_per_worker=1 reward.num_gpus_per_worker=1
    rollout.gpu_memory_utilization=0.3)
else
  SHARE=(learner.num_gpus_per_rank=0.3 rollout.num_gpus_per_worker=0.3 reward.num_gpus_per_worker=0.3
    rollout.gpu_memory_utilization=0.15)
fi
MODEL=$($PY - <<'EOF'
from cluster.embedded.corpus import tiny_corpus
from cluster.embedded.tiny_model import ensure_tiny_model
from cluster.paths import cache_dir

print(ensure_tiny_model(cache_dir() / "models", tiny_corpus()))
EOF
)
RUN=gpu-smoke-$(date +%Y%m%d-%H%M%S)
START=$(date +%s)
$PY -m cluster.cli train \
  "model.path=$MODEL" "cluster.run_name=$RUN" \
  cluster.iterations=3 cluster.prompts_per_iteration=16 cluster.eval_every=0 cluster.checkpoint_every=0 \
  cluster.num_cpus=8 \
  rollout.num_workers=1 rollout.dtype=bfloat16 rollout.max_new_tokens=64 \
  reward.num_workers=1 reward.reflection=true reward.judge.mode=policy \
  learner.num_ranks=1 learner.dtype=bfloat16 learner.zero_stage=2 \
  cluster.weight_transport=collective \
  "${SHARE[@]}" "$@"
echo "wall: $(($(date +%s) - START)) s"
$PY - "runs/$RUN/metrics.jsonl" <<'EOF'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
keys = [
    ("train/logprob_mismatch_mean", "mismatch mean"),
    ("train/logprob_mismatch_max", "mismatch max"),
    ("train/tis_weight_mean", "IS weight mean"),
    ("train/tis_clipped_share", "IS clipped"),
    ("timing_s/sync", "push s"),
    ("timing_s/sync_group", "group s"),
    ("throughput/rollout_tokens_per_s", "rollout tok/s"),
]
print("iteration | " + " | ".join(label for _, label in keys))
for row in rows:
    print(f"{row['iteration']} | " + " | ".join(f"{row.get(key, float('nan')):.4g}" for key, _ in keys))
if len(rows) < 3:
    sys.exit(f"only {len(rows)} of 3 iterations in {sys.argv[1]}")
EOF
