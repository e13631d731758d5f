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
from cluster.rundir import run_path
from rewards.rules import COMPONENTS

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
    records = read_metrics(run)
    print(before_after_table(records))
    plot_learning_curve(records, run / "learning_curve.png")
    print(f"learning curve: {run / 'learning_curve.png'}")
    return 0


def eval_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "eval/policy_version" in r]


def datasets(record: dict) -> list[str]:
    return [
        k.removeprefix("eval/").removesuffix("/accuracy")
        for k in record
        if k.endswith("/accuracy") and k.startswith("eval/")
    ]


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


def plot_learning_curve(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "reward/score/mean" in r]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=False)
    for name in COMPONENTS:
        top.plot(
            [r["iteration"] for r in train], [r[f"reward/{name}/mean"] for r in train], marker=".", label=name
        )
    top.set(title="rollout rewards per iteration", xlabel="iteration", ylabel="mean")
    top.legend(fontsize=8)
    evals = eval_records(records)
    for name in datasets(evals[0]) if evals else []:
        bottom.plot(
            [r["eval/policy_version"] for r in evals],
            [100 * r[f"eval/{name}/accuracy"] for r in evals],
            marker="o",
            label=f"{name} accuracy",
        )
    bottom.set(title="held-out accuracy per policy version", xlabel="policy version", ylabel="%")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
