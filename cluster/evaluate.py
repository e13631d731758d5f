"""`emo-r3 eval`: accuracy of a policy on held-out data sets, the way the paper reports it (METHOD.md §5).

One completion per sample, sampled with the release's validation settings (temperature 0.6, top_p
0.95; or greedy), scored by `rewards.evaluation`: an answer without a label in its last box is
unparsed, counted wrong and reported as such. Generation goes through any `GenerateFn`, so the same
code serves an in-process `Engine.generate` and a Ray rollout worker:

    evaluate_sources(lambda reqs, s: ray.get(worker.generate.remote(reqs, s), timeout=600), ...)
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from actors.types import Group, PromptRequest, SamplingSettings
from cluster.config import SYNTHETIC_PREFIX, ConfigError, DataConfig, RunConfig
from cluster.data.sample import Sample
from rewards.evaluation import (
    EvalResult,
    PromptStyle,
    evaluate_responses,
    markdown_table,
    paper_summary,
    predict,
    to_json,
)
from rewards.prompts import build_user_text

GenerateFn = Callable[[list[PromptRequest], SamplingSettings], list[Group]]

# Validation sampling of the release: one answer, temperature 0.6, top_p 0.95. METHOD.md does not
# state it (§3 gives these values for the reflections; §5 only says unparseable answers are wrong).
EVAL_TEMPERATURE = 0.6
EVAL_TOP_P = 0.95
BATCH_SIZE = 256  # requests per generate call: one engine batch at the default rollout.max_num_seqs
PROMPT_TOKEN_ROOM = 1024  # max_model_len is raised to at least this + max_new_tokens
_SEED_STRIDE = 100_003  # per-request seed = seed * stride + index, as `emo-r3 sample` does


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
        PromptRequest(i, build_user_text(s.question, prompt_style), s.image, seed=seed * _SEED_STRIDE + i)
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
    from cluster.datasets import load_samples

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
    generate_fn: GenerateFn, datasets: dict[str, list[Sample]], *, prompt_style: PromptStyle,
    sampling: SamplingSettings, seed: int,
) -> dict[str, EvalResult]:  # fmt: skip
    """One response per sample of each data set, scored (METHOD.md §5)."""
    responses = generate_datasets(generate_fn, datasets, prompt_style, sampling, seed)
    return score_responses(datasets, responses, prompt_style)


def generate_datasets(
    generate_fn: GenerateFn, datasets: dict[str, list[Sample]], prompt_style: PromptStyle,
    sampling: SamplingSettings, seed: int,
) -> dict[str, list[str]]:  # fmt: skip
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
    generate_fn: GenerateFn, sources: list[str], data_cfg: DataConfig, *, prompt_style: PromptStyle = "set",
    sampling: SamplingSettings | None = None, seed: int = 0, limit: int | None = None,
) -> dict[str, EvalResult]:  # fmt: skip
    """Load each source (`cluster.datasets.load_samples`) and evaluate it, by data set name."""
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


def run_eval(
    cfg: RunConfig, model: str, sources: list[str], *, in_domain: list[str] | None = None, greedy: bool = False,
    limit: int | None = None, max_new_tokens: int | None = None, prompt_style: PromptStyle | None = None,
    out: str | None = None, seed: int | None = None,
) -> int:  # fmt: skip
    """`emo-r3 eval`: evaluate `model` on every source, print the table, write eval.json and the PNGs.

    `cfg` supplies data settings and engine defaults; the keyword arguments override it. In-domain
    sources default to the first one (METHOD.md §5). Returns the exit code.
    """
    from cluster.models import TINY, resolve_model

    sources = list(dict.fromkeys(sources))
    in_domain = _check_request(model, sources, in_domain or sources[:1], limit, max_new_tokens)
    seed = cfg.cluster.seed if seed is None else seed
    start = time.perf_counter()
    try:
        datasets = load_sources(sources, cfg.data, limit=limit, seed=seed)
    except ValueError as err:  # a source without a usable sample: the work cannot be done
        print(f"emo-r3 eval: {err}")
        return 1
    model_path = resolve_model(model if model == TINY else os.fspath(Path(model).expanduser()))
    sampling = evaluation_sampling(greedy, max_new_tokens or cfg.rollout.max_new_tokens)
    engine = _engine(cfg, model_path, sampling.max_new_tokens, seed)
    style = prompt_style or cfg.data.prompt_style
    responses = generate_datasets(engine.generate, datasets, style, sampling, seed)
    results = score_responses(datasets, responses, style)
    summary = paper_summary(results, _names_of(in_domain, sources, list(datasets)))
    out_dir = Path(out).expanduser() if out else Path(model_path) / "eval"
    meta = {
        "model": model_path,
        "prompt_style": style,
        "sampling": asdict(sampling),
        "seed": seed,
        "limit": limit,
        "sources": dict(zip(datasets, sources, strict=True)),  # data set name -> source (bench reasoning)
        "data": cfg.data.model_dump(mode="json"),
    }
    _write(out_dir, meta, results, summary, datasets, responses)
    print(f"EMO-R3 eval: {model_path}, {'greedy' if greedy else 'T=0.6 top_p=0.95'}, {style} prompt, "
          f"max_new_tokens {sampling.max_new_tokens}, {time.perf_counter() - start:.1f} s\n")  # fmt: skip
    print(markdown_table(results, summary))
    print(f"\nwritten to {out_dir}")
    return 0


def _check_request(
    model: str, sources: list[str], in_domain: list[str], limit: int | None, max_new_tokens: int | None
) -> list[str]:
    """The in-domain sources, after the checks that need nothing loaded (ConfigError / FileNotFoundError: exit 2)."""
    from cluster.models import TINY

    if unknown := [s for s in in_domain if s not in sources]:
        raise ConfigError(
            f"--in-domain {unknown} is not among --data {sources}; name sources given to --data"
        )
    for name, value in (("--limit", limit), ("--max-new-tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} is {value}; give a positive number")
    if model != TINY and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"model folder {model!r} does not exist; pass an HF-format folder or 'tiny'")
    return list(in_domain)


def _names_of(chosen: Sequence[str], sources: Sequence[str], names: Sequence[str]) -> list[str]:
    """The data set names of the `chosen` sources (`names` are in the order of `sources`)."""
    return [names[sources.index(source)] for source in chosen]


def _engine(cfg: RunConfig, model_path: str, max_new_tokens: int, seed: int):
    """One in-process engine with the run's rollout settings, room for the prompt and the answer."""
    from functools import partial

    from actors.engine import Engine
    from cluster.datasets import image_policy
    from cluster.sample import engine_settings

    settings = engine_settings(cfg, model_path)
    max_model_len = max(settings.max_model_len, PROMPT_TOKEN_ROOM + max_new_tokens)
    settings = replace(settings, max_model_len=max_model_len, seed=seed)
    return Engine(settings, partial(_load_image, policy=image_policy(cfg.data)))


def _load_image(ref, policy):
    from cluster.data.images import load_image

    return load_image(ref, policy)


def _write(
    out_dir: Path, meta: dict, results: dict[str, EvalResult], summary: dict,
    datasets: dict[str, list[Sample]], responses: dict[str, list[str]],
) -> None:  # fmt: skip
    """eval.json (how it was produced, the results, the summary), and per data set a confusion PNG
    and the responses file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps({**meta, **to_json(results, summary)}, indent=2) + "\n")
    for name, result in results.items():
        plot_confusion(result, out_dir / confusion_filename(name))
        write_responses(out_dir / responses_filename(name), datasets[name], responses[name])
