"""Held-out evaluation, the way the paper reports it (METHOD.md §5): for `emo-r3 eval`
(cluster.commands.evaluate) and inside training (`Evaluator`).

One completion per sample, sampled with the release's validation settings (temperature 0.6, top_p
0.95; or greedy), scored by `rewards.paper_metrics`: an answer without a label in its last box is
unparsed, counted wrong and reported as such. Generation goes through any `GenerateFn`, so the same
code serves an in-process `Engine.generate` and the rollout workers:

    evaluate_sources(lambda reqs, s: ray.get(worker.generate.remote(reqs, s), timeout=600), ...)

`Evaluator` runs inside training, every `cluster.eval_every` iterations and after the last, on the
rollout workers (each call's requests split evenly over them) at the current policy version (before
that iteration's update), without reflection (METHOD.md §3); it lands in metrics.jsonl as
`eval/<dataset>/<accuracy|parse_failure_rate|format_rate>` and `eval/<A^I|A^O|A>`, with its wall
time as `timing_s/eval` (not part of the iteration's `timing_s/iteration`).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from actors.types import Group, PromptRequest, SamplingSettings, derive_seed
from cluster.config import SYNTHETIC_PREFIX, DataConfig, RunConfig
from cluster.data.sample import Sample
from rewards.paper_metrics import (
    EvalResult,
    PromptStyle,
    evaluate_responses,
    paper_summary,
    predict,
)
from rewards.prompts import build_user_text

if TYPE_CHECKING:
    from cluster.session import TrainingCluster

GenerateFn = Callable[[list[PromptRequest], SamplingSettings], list[Group]]

# Validation sampling of the release: one answer, temperature 0.6, top_p 0.95. METHOD.md does not
# state it (§3 gives these values for the reflections; §5 only says unparseable answers are wrong).
EVAL_TEMPERATURE = 0.6
EVAL_TOP_P = 0.95
BATCH_SIZE = 256  # requests per generate call: one engine batch at the default rollout.max_num_seqs
PROMPT_TOKEN_ROOM = 1024  # max_model_len is raised to at least this + max_new_tokens


def evaluation_sampling(greedy: bool = False, max_new_tokens: int = 128) -> SamplingSettings:
    """One answer per prompt: the release's validation sampling (see EVAL_TEMPERATURE), or greedy."""
    temperature, top_p = (0.0, 1.0) if greedy else (EVAL_TEMPERATURE, EVAL_TOP_P)
    return SamplingSettings(
        n=1, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, logprobs=False
    )


def generate_responses(
    generate_fn: GenerateFn,
    samples: Sequence[Sample],
    prompt_style: PromptStyle,
    sampling: SamplingSettings,
    seed: int,
) -> list[str]:
    """The first completion's text for each sample, in order, `BATCH_SIZE` requests per call."""
    requests = [
        PromptRequest(
            i, build_user_text(s.question, prompt_style), s.image, seed=derive_seed(seed, s.sample_id)
        )
        for i, s in enumerate(samples)
    ]
    responses: list[str] = []
    for start in range(0, len(requests), BATCH_SIZE):
        batch = requests[start : start + BATCH_SIZE]
        groups = generate_fn(batch, sampling)
        if [g.group_id for g in groups] != [r.group_id for r in batch]:
            raise RuntimeError(
                f"generate returned groups {[g.group_id for g in groups]} for requests {[r.group_id for r in batch]}"
            )
        responses += [g.completions[0].text for g in groups]
    return responses


def dataset_name(source: str) -> str:
    """'emoset:test' for 'synthetic:emoset:test'; else the source's basename ('test.jsonl')."""
    if source.startswith(SYNTHETIC_PREFIX):
        return source[len(SYNTHETIC_PREFIX) :]
    return Path(source.rstrip("/")).expanduser().name or source


def load_sources(
    sources: Sequence[str], data_cfg: DataConfig, *, limit: int | None, seed: int
) -> dict[str, list[Sample]]:
    """The usable samples of each source, by data set name; `limit` keeps a seeded subset, in order.

    A missing path raises FileNotFoundError and a source without a usable sample ValueError, both
    before anything is generated. Two sources with the same basename keep their full source strings.
    """
    from cluster.sources import load_samples

    for source in sources:
        if not source.startswith(SYNTHETIC_PREFIX) and not Path(source).expanduser().exists():
            raise FileNotFoundError(
                f"data path {source!r} does not exist; point --data at a manifest or folder"
            )
    names = [dataset_name(s) for s in sources]
    datasets: dict[str, list[Sample]] = {}
    for source, name in zip(sources, names, strict=True):
        loaded = load_samples(source, data_cfg)
        if not loaded.samples:
            raise ValueError(f"no usable sample in {source}: skipped {dict(loaded.skipped)}")
        datasets[source if names.count(name) > 1 else name] = _subset(loaded.samples, limit, seed)
    return datasets


def _subset(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    if limit is None or limit >= len(samples):
        return samples
    keep = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in keep]


def evaluate_samples(
    generate_fn: GenerateFn,
    datasets: dict[str, list[Sample]],
    *,
    prompt_style: PromptStyle,
    sampling: SamplingSettings,
    seed: int,
) -> dict[str, EvalResult]:
    """One response per sample of each data set, scored (METHOD.md §5)."""
    responses = generate_datasets(generate_fn, datasets, prompt_style, sampling, seed)
    return score_responses(datasets, responses, prompt_style)


def generate_datasets(
    generate_fn: GenerateFn,
    datasets: dict[str, list[Sample]],
    prompt_style: PromptStyle,
    sampling: SamplingSettings,
    seed: int,
) -> dict[str, list[str]]:
    """One response per sample of each data set, in sample order."""
    return {
        name: generate_responses(generate_fn, samples, prompt_style, sampling, seed)
        for name, samples in datasets.items()
    }


def score_responses(
    datasets: dict[str, list[Sample]], responses: dict[str, list[str]], prompt_style: PromptStyle
) -> dict[str, EvalResult]:
    """Each data set's responses (in sample order) scored against its gold labels."""
    return {
        name: evaluate_responses(
            name, responses[name], [s.answer for s in samples], _label_order(samples), prompt_style
        )
        for name, samples in datasets.items()
    }


def _label_order(samples: Sequence[Sample]) -> tuple[str, ...]:
    """The label set of a data set: the first sample's order, then any label other samples add."""
    return tuple(dict.fromkeys(label for s in samples for label in s.labels))


def evaluate_sources(
    generate_fn: GenerateFn,
    sources: list[str],
    data_cfg: DataConfig,
    *,
    prompt_style: PromptStyle = "set",
    sampling: SamplingSettings | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> dict[str, EvalResult]:
    """Load each source (`cluster.sources.load_samples`) and evaluate it, by data set name."""
    datasets = load_sources(sources, data_cfg, limit=limit, seed=seed)
    sampling = sampling or evaluation_sampling()
    return evaluate_samples(generate_fn, datasets, prompt_style=prompt_style, sampling=sampling, seed=seed)


def plot_confusion(result: EvalResult, path: str | Path) -> None:
    """Write the confusion matrix of `result` as a PNG: gold labels down, predictions across, counts in cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(result.labels), len(result.columns)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * cols, 1.0 + 0.7 * rows))
    image = ax.imshow(result.confusion, cmap="Blues", vmin=0)
    peak = max((max(row) for row in result.confusion), default=0)
    for i, row in enumerate(result.confusion):
        for j, count in enumerate(row):
            ax.text(
                j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black"
            )
    ax.set_xticks(range(cols), result.columns, rotation=45, ha="right")
    ax.set_yticks(range(rows), result.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"{result.dataset}: accuracy {100 * result.accuracy:.2f}%, n={result.n}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_filename(dataset: str) -> str:
    """`confusion_<dataset>.png`, with characters other than letters, digits, '.', '-' made '_'."""
    return f"confusion_{_file_safe(dataset)}.png"


def responses_filename(dataset: str) -> str:
    """`responses_<dataset>.jsonl`, named like the confusion PNG."""
    return f"responses_{_file_safe(dataset)}.jsonl"


def _file_safe(dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", dataset)


def write_responses(path: Path, samples: Sequence[Sample], responses: Sequence[str]) -> None:
    """One JSON line per sample: its id, gold answer, the prediction the accuracy counts (null when
    unparseable) and the response, for error analysis beyond the aggregate numbers."""
    lines = (
        json.dumps(
            {"sample_id": s.sample_id, "answer": s.answer, "prediction": predict(r, s.labels), "response": r}
        )
        for s, r in zip(samples, responses, strict=True)
    )
    path.write_text("".join(line + "\n" for line in lines))


class Evaluator:
    def __init__(self, cfg: RunConfig, tc: TrainingCluster):
        self.cfg = cfg
        self.tc = tc
        self.every = cfg.cluster.eval_every if cfg.data.eval else 0
        self.datasets = (
            load_sources(cfg.data.eval, cfg.data, limit=cfg.cluster.eval_limit, seed=cfg.cluster.seed)
            if self.every
            else {}
        )
        self.sampling = evaluation_sampling(cfg.cluster.eval_greedy, cfg.rollout.max_new_tokens)
        self.last_version: int | None = None

    def _generate(self, requests, sampling):
        timeout_s = self.cfg.cluster.generate_timeout_s
        return self.tc.rollout.generate_all(requests, sampling, timeout_s, "held-out evaluation")

    def run(self, version: int) -> dict[str, float]:
        start = time.perf_counter()
        results = evaluate_samples(
            self._generate,
            self.datasets,
            prompt_style=self.cfg.data.prompt_style,
            sampling=self.sampling,
            seed=self.cfg.cluster.seed,
        )
        self.last_version = version
        metrics: dict[str, float] = {"eval/policy_version": float(version)}
        for name, r in results.items():
            metrics |= {
                f"eval/{name}/accuracy": r.accuracy,
                f"eval/{name}/parse_failure_rate": r.parse_failure_rate,
                f"eval/{name}/format_rate": r.format_rate,
            }
        summary = paper_summary(results, in_domain=[next(iter(results))])
        metrics |= {f"eval/{k}": v for k in ("A^I", "A^O", "A") if (v := summary.get(k)) is not None}
        metrics["timing_s/eval"] = time.perf_counter() - start
        return metrics

    def due(self, iteration: int) -> bool:
        """An evaluation comes before iteration `iteration`'s update (a multiple of eval_every)."""
        return bool(self.every) and iteration % self.every == 0

    def final_due(self, version: int) -> bool:
        """An evaluation comes after the last iteration: on, and that version not just evaluated."""
        return bool(self.every) and self.last_version != version

    def maybe_run(self, iteration: int, version: int) -> dict[str, float]:
        """Before iteration `iteration`'s update, when it is a multiple of eval_every."""
        return self.run(version) if self.due(iteration) else {}

    def final(self, iterations: int, version: int) -> dict[str, float]:
        """After the last iteration, unless that version was just evaluated."""
        if not self.final_due(version):
            return {}
        return {"policy_version": float(version)} | self.run(version)
