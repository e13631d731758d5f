"""`emo-r3 compare`: the paper's ablation in miniature — GRPO baseline vs SET only vs SET + RER.

Every (method, seed) is one `emo-r3 pipeline` run in `<output_dir>/<name>/<method>-seed<s>`: a
cold-start SFT on the method's reference form (GRPO: `<think>` responses; SET and EMO-R3 share one
checkpoint per seed), then RL with the same budget (iterations, prompts, G, learning rate), held-out
evaluation before and after. Seeds set `cluster.seed` (sampling, data order) and `sft.seed` (the SFT
subset); the data set stays the same. A finished run is reused and an interrupted one resumes from
its checkpoint, so a comparison that was cut off continues where it stopped.

The table (stdout, `compare.md`, `compare.json`): per method, accuracy on every held-out set after
RL, A^I, A^O, A, the in-domain format rate, and A^I after the cold start, each mean ± std over seeds.
"""

from __future__ import annotations

import json
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.config import RunConfig, load_config
from cluster.metrics import read_metrics
from cluster.progress import datasets, eval_records


@dataclass(frozen=True)
class Method:
    name: str  # as printed in the table
    slug: str  # run directory prefix
    overrides: tuple[str, ...]


METHODS: dict[str, Method] = {
    m.slug: m
    for m in (
        # METHOD.md §2: the `<think>` prompt, R = 0.9·acc + 0.1·format, no reflection. Its cold start
        # has no reflection tasks (a `<think>` reference has no step spans): run_config gives it as
        # many updates as the SET cold start (grpo_sft_epochs)
        Method("GRPO", "grpo", ("data.prompt_style=grpo", "reward.total=grpo", "reward.reflection=false")),
        # SET prompt and format; R_coh = R_cons = 1 (constant, so the advantages ignore them)
        Method("SET", "set", ("data.prompt_style=set", "reward.reflection=false")),
        # SET + the Reflective Emotional Reward
        Method("SET + RER (EMO-R3)", "emo-r3", ("data.prompt_style=set", "reward.reflection=true")),
    )
}


@dataclass
class RunResult:
    method: str
    seed: int
    run: str
    ok: bool
    before: dict[str, float] = field(default_factory=dict)  # the first held-out evaluation (after SFT)
    after: dict[str, float] = field(default_factory=dict)  # the last (after RL)
    seconds: float = 0.0
    error: str | None = None


def run_config(
    base: str | None, overrides: Sequence[str], method: Method, seed: int, root: Path
) -> RunConfig:
    """The pipeline config of one (method, seed): base + user overrides + the method's + the seed's."""
    style = "grpo" if "data.prompt_style=grpo" in method.overrides else "set"
    epochs = [f"sft.epochs={grpo_sft_epochs(load_config(base, list(overrides)))}"] if style == "grpo" else []
    own = [
        *method.overrides,
        *epochs,
        f"cluster.seed={seed}",
        f"sft.seed={seed}",
        f"cluster.output_dir={root}",
        f"cluster.run_name={method.slug}-seed{seed}",
        f"sft.output={root / f'sft-{style}-seed{seed}'}",
    ]
    return load_config(base, [*overrides, *own])


def grpo_sft_epochs(cfg: RunConfig) -> int:
    """Epochs giving the `<think>` cold start as many updates as the SET cold start of `cfg`: both
    train the answers and the epoch's scene examples; only SET adds the reflection tasks
    (cluster.cold_start.example_texts), which the `<think>` references cannot give."""
    from cluster.cold_start import reflection_count
    from learner.sft import steps_per_epoch

    sft = cfg.sft
    think = steps_per_epoch(sft.samples + sft.scene_examples, sft.batch_size)
    set_ = steps_per_epoch(
        sft.samples + reflection_count(sft, sft.samples) + sft.scene_examples, sft.batch_size
    )
    return max(1, round(sft.epochs * set_ / think))


def _run_path(cfg: RunConfig) -> Path:
    return Path(cfg.cluster.output_dir) / str(cfg.cluster.run_name)


def _evaluations(cfg: RunConfig) -> list[dict]:
    """The run's held-out evaluation records, in order (none if it has no metrics yet)."""
    return eval_records(read_metrics(_run_path(cfg)))


def finished(cfg: RunConfig) -> bool:
    """The run's last held-out evaluation is of the final policy version."""
    evals = _evaluations(cfg)
    return bool(evals) and int(evals[-1]["eval/policy_version"]) == cfg.cluster.iterations


def read_result(cfg: RunConfig, method: Method, seed: int, seconds: float) -> RunResult:
    """A finished run's first (after the cold start) and last (after RL) held-out evaluation."""
    evals = _evaluations(cfg)
    first, last = ({k: v for k, v in r.items() if k.startswith("eval/")} for r in (evals[0], evals[-1]))
    return RunResult(method.slug, seed, str(_run_path(cfg)), True, first, last, seconds)


def run_compare(
    base: str | None,
    overrides: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    name: str,
    pipeline: Callable[[RunConfig], int] | None = None,
) -> int:
    """Run (or reuse) every (method, seed) pipeline, then print and write the comparison table."""
    if pipeline is None:
        from cluster.commands.pipeline import run_pipeline as pipeline
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {list(METHODS)}")
    root = Path(load_config(base, list(overrides)).cluster.output_dir).expanduser() / name
    # every config is validated before the first run starts: a bad override fails in a second, not an hour in
    configs = [(m, s, run_config(base, overrides, METHODS[m], s, root)) for m in methods for s in seeds]
    root.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    for m, s, cfg in configs:
        results.append(_run_one(cfg, METHODS[m], s, pipeline))
        _write(root, results)
    table = comparison_table(results, methods)
    print(table)
    print(f"comparison: {root / 'compare.md'}")
    return 0 if all(r.ok for r in results) else 1


def _run_one(cfg: RunConfig, method: Method, seed: int, pipeline: Callable[[RunConfig], int]) -> RunResult:
    label = f"{method.name}, seed {seed}"
    if finished(cfg):
        print(f"== {label}: finished earlier, reusing {_run_path(cfg)}")
        return read_result(cfg, method, seed, 0.0)
    print(f"== {label}: {_run_path(cfg)}")
    start = time.perf_counter()
    try:
        status = pipeline(cfg)
        error = (
            None if status == 0 and finished(cfg) else f"pipeline exited {status} without a final evaluation"
        )
    except Exception as err:  # one failed run must not lose the others: it is reported in the table
        traceback.print_exc()
        error = f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    if error:
        print(f"== {label}: FAILED ({error})")
        return RunResult(method.slug, seed, str(_run_path(cfg)), False, seconds=seconds, error=error)
    print(f"== {label}: done in {seconds:.0f} s")
    return read_result(cfg, method, seed, seconds)


def _write(root: Path, results: list[RunResult]) -> None:
    methods = list(dict.fromkeys(r.method for r in results))
    (root / "compare.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    (root / "compare.md").write_text(comparison_table(results, methods) + "\n")


def mean_std(values: Sequence[float]) -> str:
    """`mean ± std` in percent of fractions (sample std; just the mean for one value; – for none)."""
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def comparison_table(results: Sequence[RunResult], methods: Sequence[str]) -> str:
    """Paper-style table of the finished runs: accuracy after RL per held-out set, A^I / A^O / A, the
    in-domain format rate after RL and A^I after the cold start, mean ± std over seeds (percent)."""
    done = [r for r in results if r.ok]
    if not done:
        return "no finished run to compare"
    names = datasets(done[0].after)
    head = ["method", "seeds", *names, "A^I", "A^O", "A", f"format {names[0]}", "A^I after cold start"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for slug in methods:
        runs = [r for r in done if r.method == slug]
        failed = sum(1 for r in results if r.method == slug and not r.ok)
        seeds = f"{len(runs)}" + (f" ({failed} failed)" if failed else "")

        def cell(key: str, which: str = "after", runs: list[RunResult] = runs) -> str:
            values = [getattr(r, which)[key] for r in runs if key in getattr(r, which)]
            return mean_std(values)

        def cell_percent(key: str, which: str = "after", runs: list[RunResult] = runs) -> str:
            values = [getattr(r, which)[key] / 100 for r in runs if getattr(r, which).get(key) is not None]
            return mean_std(values)

        row = [METHODS[slug].name, seeds, *(cell(f"eval/{n}/accuracy") for n in names)]
        row += [cell_percent("eval/A^I"), cell_percent("eval/A^O"), cell_percent("eval/A")]
        row += [cell(f"eval/{names[0]}/format_rate"), cell_percent("eval/A^I", "before")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
