"""`emo-r3 eval`: accuracy of a policy on held-out data sets, the way the paper reports it (METHOD.md §5).

Writes eval.json (how it was produced, the results, the paper's summary), per data set a confusion
PNG and the responses; prints the table. The evaluation itself: cluster.held_out.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from cluster.config import ConfigError, RunConfig
from cluster.data.sample import Sample
from cluster.held_out import (
    PROMPT_TOKEN_ROOM,
    confusion_filename,
    evaluation_sampling,
    generate_datasets,
    load_sources,
    plot_confusion,
    responses_filename,
    score_responses,
    write_responses,
)
from rewards.paper_metrics import EvalResult, PromptStyle, markdown_table, paper_summary, to_json


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
    from cluster.settings import engine_settings, image_policy

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
