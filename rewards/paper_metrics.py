"""Held-out evaluation of EMO-R3 answers and the paper's aggregation (METHOD.md §3, §5). Pure: stdlib only.

A response's *prediction* is the label in its last complete `\\boxed{}`; a response without one, or
whose box holds something that is not a label of the data set, is *unparsed*: it counts as wrong and
is reported as a parse failure, never mapped to some default class (METHOD.md §5).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rewards import parsing
from rewards.rules import set_format_reward, think_format_reward

PromptStyle = Literal["set", "grpo"]

# Confusion-matrix column of the responses without a label in their last box (METHOD.md §5).
UNPARSED = "unparsed"

# METHOD.md §3 (format): the SET pattern; METHOD.md §2: the <think> pattern of the GRPO baseline.
_FORMATS = {"set": set_format_reward, "grpo": think_format_reward}


def predict(response: str, labels: Sequence[str]) -> str | None:
    """The label a response answers, or `None` when it is unparseable (METHOD.md §3, §5).

    The last complete `\\boxed{}` of the whitespace-normalized response (as accuracy reads it),
    stripped and lowercased, if it is one of `labels` (compared lowercased); else `None`: no box, an
    unclosed box, or a box holding anything that is not a label ("Fear." and "joy or fear" included).
    """
    answer = parsing.last_boxed(parsing.normalize_whitespace(response))
    if answer is None:
        return None
    answer = answer.strip().lower()
    return answer if answer in {label.strip().lower() for label in labels} else None


@dataclass(frozen=True)
class EvalResult:
    """The evaluation of one data set. Rates are fractions in [0, 1]; counts are ints.

    `confusion[i][j]`: responses whose gold label is `labels[i]` and whose prediction is `labels[j]`;
    the last column (`j == len(labels)`) counts the unparsed ones.
    """

    dataset: str
    n: int
    accuracy: float  # unparsed responses count as wrong (METHOD.md §5)
    parse_failure_rate: float  # share of unparsed responses
    format_rate: float  # mean format reward of the prompt style (METHOD.md §2-§3)
    per_class: dict[str, float | None]  # accuracy per gold label; None for a label without samples
    confusion: list[list[int]]  # [len(labels), len(labels) + 1]
    labels: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names of the confusion matrix: the labels, then "unparsed"."""
        return (*self.labels, UNPARSED)


def evaluate_responses(
    dataset: str,
    responses: Sequence[str],
    golds: Sequence[str],
    labels: Sequence[str],
    prompt_style: PromptStyle = "set",
) -> EvalResult:
    """Score one data set's responses against their gold labels (METHOD.md §3, §5).

    `labels` fixes the order of the confusion matrix; every gold must be one of them (lowercase,
    as loaded samples are). `prompt_style` picks the format pattern: "set" or "grpo" (<think>).
    """
    labels = tuple(label.strip().lower() for label in labels)
    if len(responses) != len(golds) or not responses:
        raise ValueError(
            f"{dataset}: need as many golds as responses, at least one ({len(golds)}, {len(responses)})"
        )
    if prompt_style not in _FORMATS:
        raise ValueError(f"unknown prompt style {prompt_style!r}; expected one of {sorted(_FORMATS)}")
    confusion = confusion_matrix(responses, golds, labels)
    n = len(responses)
    correct = sum(row[i] for i, row in enumerate(confusion))
    unparsed = sum(row[-1] for row in confusion)
    per_class = {label: _share(confusion[i][i], sum(confusion[i])) for i, label in enumerate(labels)}
    format_rate = statistics.fmean(_FORMATS[prompt_style](r) for r in responses)
    return EvalResult(dataset, n, correct / n, unparsed / n, format_rate, per_class, confusion, labels)


def confusion_matrix(
    responses: Sequence[str], golds: Sequence[str], labels: tuple[str, ...]
) -> list[list[int]]:
    """Counts [gold][prediction] in `labels` order, the last column for unparsed responses (METHOD.md §5)."""
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * (len(labels) + 1) for _ in labels]
    for response, gold in zip(responses, golds, strict=True):
        key = gold.strip().lower()
        if key not in index:
            raise ValueError(f"gold label {gold!r} is not in the label set {labels}")
        predicted = predict(response, labels)
        confusion[index[key]][len(labels) if predicted is None else index[predicted]] += 1
    return confusion


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


# ---- the paper's aggregation (METHOD.md §5) ------------------------------------------------------


def paper_summary(results: Mapping[str, EvalResult], in_domain: Sequence[str]) -> dict[str, Any]:
    """A^I, A^O and A in percent (METHOD.md §5); None for an empty side.

    A^I is the mean accuracy of the `in_domain` data sets, A^O the mean of all the others, A the mean
    of every data set (so with 2 in-domain and 4 out-of-domain sets, A = (2·A^I + 4·A^O) / 6).
    """
    unknown = [name for name in in_domain if name not in results]
    if unknown:
        raise ValueError(f"in-domain data sets {unknown} were not evaluated; evaluated: {sorted(results)}")
    inside = [name for name in results if name in in_domain]
    outside = [name for name in results if name not in in_domain]
    return {
        "A^I": _mean_percent(results, inside),
        "A^O": _mean_percent(results, outside),
        "A": _mean_percent(results, list(results)),
        "in_domain": inside,
        "out_of_domain": outside,
    }


def _mean_percent(results: Mapping[str, EvalResult], names: Sequence[str]) -> float | None:
    return 100 * statistics.fmean(results[name].accuracy for name in names) if names else None


def markdown_table(results: Mapping[str, EvalResult], summary: Mapping[str, Any]) -> str:
    """Per data set: n, accuracy, parse-failure and format rates in percent; then A^I, A^O, A."""
    lines = [
        "| data set | n | accuracy (%) | parse failure (%) | format (%) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        shown = f"{name} (in-domain)" if name in summary["in_domain"] else name
        lines.append(
            f"| {shown} | {r.n} | {_percent(r.accuracy)} | {_percent(r.parse_failure_rate)} | {_percent(r.format_rate)} |"
        )
    for key in ("A^I", "A^O", "A"):
        value = summary[key]
        lines.append(f"| {key} | | {'–' if value is None else f'{value:.2f}'} | | |")
    return "\n".join(lines)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def to_json(results: Mapping[str, EvalResult], summary: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready record: every data set's result (rates as fractions) and the summary (percent)."""
    return {
        "datasets": {
            name: {**asdict(r), "labels": list(r.labels), "columns": list(r.columns)}
            for name, r in results.items()
        },
        "summary": dict(summary),
    }
