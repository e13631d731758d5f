"""`emo-r3 pipeline`: the whole story on one machine — data, model, cold-start SFT, EMO-R3 RL, evaluation.

1. generate the data and build the model (cached);
2. cold-start SFT on `sft.samples` reference responses → `<run>/sft`;
3. RL from that checkpoint (the KL reference is the SFT model), evaluating the held-out sets before
   the first update, every `cluster.eval_every` iterations and after the last;
4. a before/after table (accuracy, format rate, parse failures per held-out set) and a learning-curve
   PNG (`<run>/learning_curve.png`: reward components per iteration, held-out accuracy per version).
"""

from __future__ import annotations

from pathlib import Path

from cluster.config import RunConfig
from cluster.metrics import read_metrics
from cluster.progress import datasets, eval_records
from cluster.rundir import run_path

RATES = ("accuracy", "format_rate", "parse_failure_rate")


def run_pipeline(cfg: RunConfig) -> int:
    from cluster.checkpoints import latest_checkpoint
    from cluster.commands.sft import run_sft
    from cluster.launch import check_address_is_safe
    from cluster.train import run_train

    check_address_is_safe(cfg)  # before the run folder
    run = run_path(cfg)  # `train` writes the run's config.yaml: the RL stage's, which a rerun resumes
    run.mkdir(parents=True, exist_ok=True)
    # RL writes into the same folder: the name relative to output_dir (a nested name keeps its parents)
    name = run.relative_to(Path(cfg.cluster.output_dir).expanduser()).as_posix()
    cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"run_name": name})})
    sft_out = Path(cfg.sft.output or run / "sft")
    if not (sft_out / "model.safetensors").is_file():
        status = run_sft(cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"output": str(sft_out)})}))
        if status:
            return status
    rl = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(sft_out)})})
    status = run_train(rl, resume=latest_checkpoint(run) is not None)
    if status:
        return status
    print(before_after_table(read_metrics(run)))
    return 0


def before_after_table(records: list[dict]) -> str:
    """Held-out rates of the first evaluated version (after SFT) and the last (after RL), in percent."""
    evals = eval_records(records)
    if not evals:
        return "no held-out evaluation in this run (data.eval empty or cluster.eval_every=0)"
    first, last = evals[0], evals[-1]
    v0, v1 = int(first["eval/policy_version"]), int(last["eval/policy_version"])
    lines = [
        f"| held-out set | accuracy v{v0} → v{v1} | format rate v{v0} → v{v1} | parse failures v{v0} → v{v1} |",
        "|---|---|---|---|",
    ]
    names = datasets(first)
    for name in names:
        cells = [
            f"{100 * first[f'eval/{name}/{r}']:.1f} → {100 * last[f'eval/{name}/{r}']:.1f}" for r in RATES
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    delta = 100 * (last[f"eval/{names[0]}/accuracy"] - first[f"eval/{names[0]}/accuracy"])
    lines.append(
        f"\nin-domain accuracy change over RL: {delta:+.1f} points (v{v0}: after cold-start SFT; v{v1}: after RL)"
    )
    return "\n".join(lines)
