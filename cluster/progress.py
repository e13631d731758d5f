"""What a run shows: the progress bar, the summary table and the learning curve at the end."""

from __future__ import annotations

from pathlib import Path

from cluster.metrics import read_metrics
from rewards.rules import COMPONENTS

LEARNING_CURVE = "learning_curve.png"

SUMMARY_COLUMNS = (
    ("acc", "reward/accuracy/mean"),
    ("fmt", "reward/format/mean"),
    ("coh", "reward/coherence/mean"),
    ("cons", "reward/consistency/mean"),
    ("score", "reward/score/mean"),
    ("unsc", "rollout/unscorable_rate"),
    ("len", "response_length/mean"),
    ("kl", "train/kl"),
    ("gen_s", "timing_s/generate"),
    ("tail_s", "timing_s/reward_tail"),
    ("train_s", "timing_s/train"),
    ("sync_s", "timing_s/sync"),
    ("eval_AI", "eval/A^I"),
)


class Progress:
    def __init__(self, total: int, initial: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="iterations", unit="it", dynamic_ncols=True)

    def update(self, iteration: int, metrics: dict[str, float]) -> None:
        self.bar.set_postfix(
            acc=f"{metrics.get('reward/accuracy/mean', 0):.2f}",
            score=f"{metrics.get('reward/score/mean', 0):.3f}",
            s=f"{metrics.get('timing_s/iteration', 0):.1f}",
        )
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def summary_table(history: list[dict[str, float]], first_iteration: int, run: Path) -> str:
    header = f"{'iter':>5}" + "".join(f"{name:>8}" for name, _ in SUMMARY_COLUMNS)
    rows = [
        f"{first_iteration + i:>5}" + "".join(_cell(m.get(key)) for _, key in SUMMARY_COLUMNS)
        for i, m in enumerate(history)
    ]
    note = "eval_AI: held-out in-domain accuracy (%) before that iteration's update; the last row is after training"
    return "\n".join([header, *rows, "", note, f"run directory: {run}"])


def _cell(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:>8.3f}"


def eval_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "eval/policy_version" in r]


def datasets(record: dict) -> list[str]:
    return [
        k.removeprefix("eval/").removesuffix("/accuracy")
        for k in record
        if k.endswith("/accuracy") and k.startswith("eval/")
    ]


def plot_learning_curve(run: Path) -> Path:
    """`<run>/learning_curve.png`: reward components per iteration, held-out accuracy per version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run)
    path = run / LEARNING_CURVE
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
    print(f"learning curve: {path}")
    return path
