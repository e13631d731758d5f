"""`emo-r3 eval`: accuracy of a policy on held-out data sets, the way the paper reports it (METHOD.md §5).

Writes eval.json (how it was produced, the results, the paper's summary), per data set a confusion
PNG and the responses; prints the table. The evaluation itself: cluster.held_out.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
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


@dataclass(frozen=True)
class EvalRequest:
    """What `emo-r3 eval` was asked; None: from the run config (`-c`)."""

    model: str  # an HF-format folder, or 'tiny'
    sources: list[str]  # manifests, folders or synthetic:<style>:<split>
    in_domain: list[str] | None = None  # among `sources`; default: the first (METHOD.md §5)
    greedy: bool = False  # temperature 0 instead of the release's 0.6 / top_p 0.95
    limit: int | None = None  # a seeded subset of at most this many samples per source
    max_new_tokens: int | None = None  # default: rollout.max_new_tokens
    prompt_style: PromptStyle | None = None  # default: data.prompt_style
    out: str | None = None  # default: <model>/eval
    seed: int | None = None  # sampling and subset seed; default: cluster.seed


def run_eval(cfg: RunConfig, request: EvalRequest) -> int:
    """`emo-r3 eval`: evaluate the model on every source, print the table, write eval.json and the PNGs.

    `cfg` supplies data settings and engine defaults; the request overrides them. Returns the exit code.
    """
    from cluster.models import TINY, resolve_model

    r = request
    sources = list(dict.fromkeys(r.sources))
    in_domain = _check_request(r.model, sources, r.in_domain or sources[:1], r.limit, r.max_new_tokens)
    seed = cfg.cluster.seed if r.seed is None else r.seed
    start = time.perf_counter()
    try:
        datasets = load_sources(sources, cfg.data, limit=r.limit, seed=seed)
    except ValueError as err:  # a source without a usable sample: nothing can be evaluated
        raise ConfigError(str(err)) from None
    model_path = resolve_model(r.model if r.model == TINY else os.fspath(Path(r.model).expanduser()))
    sampling = evaluation_sampling(r.greedy, r.max_new_tokens or cfg.rollout.max_new_tokens)
    engine = _engine(cfg, model_path, sampling.max_new_tokens, seed)
    style = r.prompt_style or cfg.data.prompt_style
    responses = generate_datasets(engine.generate, datasets, style, sampling, seed)
    results = score_responses(datasets, responses, style)
    summary = paper_summary(results, _names_of(in_domain, sources, list(datasets)))
    out_dir = Path(r.out).expanduser() if r.out else Path(model_path) / "eval"
    meta = {
        "model": model_path,
        "prompt_style": style,
        "sampling": asdict(sampling),
        "seed": seed,
        "limit": r.limit,
        "sources": dict(zip(datasets, sources, strict=True)),  # data set name -> source (bench reasoning)
        "data": cfg.data.model_dump(mode="json"),
    }
    _write(out_dir, meta, results, summary, datasets, responses)
    print(
        f"EMO-R3 eval: {model_path}, {'greedy' if r.greedy else 'T=0.6 top_p=0.95'}, {style} prompt, "
        f"max_new_tokens {sampling.max_new_tokens}, {time.perf_counter() - start:.1f} s\n"
    )
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
    from cluster.launch import use_service_env
    from cluster.settings import engine_settings, image_policy

    use_service_env(cfg.cluster.num_cpus, on_gpu=cfg.rollout.num_gpus_per_worker > 0)
    settings = engine_settings(cfg, model_path)
    max_model_len = max(settings.max_model_len, PROMPT_TOKEN_ROOM + max_new_tokens)
    settings = replace(settings, max_model_len=max_model_len, seed=seed)
    return Engine(settings, partial(_load_image, policy=image_policy(cfg.data)))


def _load_image(ref, policy):
    from cluster.data.images import load_image

    return load_image(ref, policy)


def _write(
    out_dir: Path,
    meta: dict,
    results: dict[str, EvalResult],
    summary: dict,
    datasets: dict[str, list[Sample]],
    responses: dict[str, list[str]],
) -> None:
    """eval.json (how it was produced, the results, the summary), and per data set a confusion PNG
    and the responses file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps({**meta, **to_json(results, summary)}, indent=2) + "\n")
    for name, result in results.items():
        plot_confusion(result, out_dir / confusion_filename(name))
        write_responses(out_dir / responses_filename(name), datasets[name], responses[name])
