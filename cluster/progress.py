"""Progress bar during training and the summary table at the end."""

from __future__ import annotations

from pathlib import Path

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
