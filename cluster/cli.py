"""`emo-r3`: the command line. Each subcommand parses its arguments and calls one function.

Heavy imports happen inside the command functions, so `emo-r3 --help` and config errors are instant.
Exit codes (cluster.stops): 0 success; 1 the work failed (a worker died, a deadline passed, too much
went unscorable); 2 bad usage, config or data (nothing was started); 130 / 143 stopped by SIGINT /
SIGTERM. Every expected failure prints one line, `emo-r3: ...`, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cluster.config import ConfigError, load_config, to_yaml


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", help="YAML run config (default: built-in defaults = the embedded CPU default)"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. rollout.group_size=4"
    )


def cmd_config_show(args: argparse.Namespace) -> int:
    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from cluster.config import reference_markdown

    print(reference_markdown())
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from cluster.commands.data import check_command

    return check_command(
        args.path,
        label_set=args.label_set,
        workers=args.workers,
        allow_outside_paths=args.allow_outside_paths,
    )


def cmd_data_synth(args: argparse.Namespace) -> int:
    from cluster.commands.data import synth_command

    return synth_command(args.out, args.style, load_config(None, args.overrides).data.synthetic)


def cmd_model_build(args: argparse.Namespace) -> int:
    from cluster.models import resolve_model

    print(resolve_model("tiny"))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from rewards.offline import format_summary, rescore_jsonl
    from rewards.rules import RewardRules

    rules = RewardRules(
        total=args.weights, strict_yes_no=args.strict_yes_no, strict_label_match=args.strict_label
    )
    try:
        summary = rescore_jsonl(args.input, args.output, rules)
    except ValueError as err:  # the output would overwrite the input
        raise ConfigError(str(err)) from None
    print(format_summary(summary))
    return 0 if summary.n_scored else 1


def cmd_sample(args: argparse.Namespace) -> int:
    from cluster.commands.sample import run_sample

    return run_sample(load_config(args.config, args.overrides))


def cmd_train(args: argparse.Namespace) -> int:
    from cluster.train import run_train

    cfg = load_config(args.config, args.overrides)
    if args.resume and not cfg.cluster.run_name:
        raise ConfigError("--resume needs the run to resume: set cluster.run_name=NAME")
    return run_train(cfg, resume=args.resume)


def cmd_eval(args: argparse.Namespace) -> int:
    from cluster.commands.evaluate import EvalRequest, run_eval

    request = EvalRequest(
        args.model,
        args.data,
        args.in_domain,
        args.greedy,
        args.limit,
        args.max_new_tokens,
        args.prompt_style,
        args.out,
        args.seed,
    )
    return run_eval(load_config(args.config, []), request)


def cmd_sft(args: argparse.Namespace) -> int:
    from cluster.commands.sft import run_sft

    return run_sft(load_config(args.config, args.overrides))


def cmd_pipeline(args: argparse.Namespace) -> int:
    from cluster.commands.pipeline import run_pipeline

    return run_pipeline(load_config(args.config, args.overrides))


def cmd_compare(args: argparse.Namespace) -> int:
    from cluster.commands.compare import run_compare

    return run_compare(args.config, args.overrides, args.methods, args.seeds, args.name)


def cmd_scale(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cluster.scaling import parse_target, request_scale

    role, count = parse_target(args.target)
    path = request_scale(Path(args.run), role, count)
    print(f"asked {args.run} for {count} {role} workers ({path}); it applies them before its next iteration")
    return 0


def cmd_bench_loop(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.loop import SECTIONS, run

    load_config(None, args.overrides)  # fail fast on a bad override
    sections = tuple(args.sections.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"bench loop --sections: unknown {sorted(unknown)}; choose from {','.join(SECTIONS)}"
        )
    run(args.overrides, args.iterations, Path(args.out) if args.out else None, sections)
    return 0


def cmd_bench_cues(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.cues import run

    load_config(None, args.overrides)  # fail fast on a bad override
    run(args.model, args.overrides, args.limit, Path(args.out) if args.out else None)
    return 0


def cmd_bench_ban(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.ban import run

    run(args.prompts, args.group, args.tokens, args.repeats, Path(args.out) if args.out else None)
    return 0


def cmd_bench_sync(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.sync import run

    engines = tuple(int(n) for n in args.engines.split(","))
    transports = tuple(args.transports.split(","))
    out = Path(args.out) if args.out else None
    run(args.sizes.split(","), engines, transports, args.bucket_mib, args.repeats, out)
    return 0


def _add_config_commands(sub) -> None:
    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved config")
    _add_config_args(show)
    show.set_defaults(func=cmd_config_show)
    config.add_parser(
        "reference", help="print every field with its default and meaning (markdown)"
    ).set_defaults(func=cmd_config_reference)


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="data sets").add_subparsers(dest="action", required=True)
    check = data.add_parser("check", help="validate every sample and image of a manifest or folder")
    check.add_argument("path", help="JSONL/parquet manifest or class-per-folder tree")
    check.add_argument(
        "--label-set", choices=["emoset", "emotion6", "webemo"], help="for manifests without labels"
    )
    check.add_argument("--workers", type=int, default=8, help="image decoding threads")
    check.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="accept absolute image paths and paths outside the manifest's folder (data.allow_outside_paths)",
    )
    check.set_defaults(func=cmd_data_check)
    synth = data.add_parser("synth", help="generate the synthetic affective-scene data set")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--style", choices=["emoset", "emotion6"], default="emoset")
    synth.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="data.synthetic.* settings, e.g. data.synthetic.n_train=1024 (defaults: the embedded default's)",
    )
    synth.set_defaults(func=cmd_data_synth)
    model = sub.add_parser("model", help="models").add_subparsers(dest="action", required=True)
    model.add_parser("build", help="build (or find) the embedded tiny model; prints its folder").set_defaults(
        func=cmd_model_build
    )


def _add_score_command(sub) -> None:
    score = sub.add_parser("score", help="rescore a JSONL dump of rollouts offline")
    score.add_argument("--input", required=True)
    score.add_argument("--output", required=True)
    score.add_argument("--weights", choices=["release", "paper"], default="release")
    score.add_argument("--strict-yes-no", action="store_true", help="whole-word yes/no for consistency")
    score.add_argument("--strict-label", action="store_true", help="label matched as a word for coherence")
    score.set_defaults(func=cmd_score)


def _add_job_commands(sub) -> None:
    """Commands that take a run config: sample, train, sft, pipeline."""
    jobs = [
        ("sample", "sample one batch of rollouts with vLLM and score it", cmd_sample),
        ("train", "train with EMO-R3 (GRPO + SET + RER) on Ray, vLLM and DeepSpeed", cmd_train),
        ("sft", "cold-start SFT on a few reference responses; writes a checkpoint for model.path", cmd_sft),
        ("pipeline", "data, model, cold-start SFT, EMO-R3 RL, before/after evaluation", cmd_pipeline),
    ]
    for name, help_text, func in jobs:
        job = sub.add_parser(name, help=help_text)
        _add_config_args(job)
        job.set_defaults(func=func)
        if name == "train":
            job.add_argument(
                "--resume",
                action="store_true",
                help="continue the run cluster.run_name from its latest checkpoint",
            )


def _add_eval_command(sub) -> None:
    ev = sub.add_parser("eval", help="accuracy on held-out data sets, with A^I / A^O / A (METHOD.md §5)")
    ev.add_argument("--model", required=True, help="HF-format model folder (e.g. a checkpoint), or 'tiny'")
    ev.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="SRC",
        help="manifests, folders or synthetic:<style>:<split>",
    )
    ev.add_argument(
        "--in-domain", nargs="+", metavar="SRC", help="in-domain sources among --data (default: the first)"
    )
    ev.add_argument(
        "--greedy", action="store_true", help="temperature 0 instead of the release's 0.6 / top_p 0.95"
    )
    ev.add_argument("--limit", type=int, help="evaluate a seeded subset of at most N samples per source")
    ev.add_argument(
        "--max-new-tokens", type=int, help="completion length cap (default: rollout.max_new_tokens)"
    )
    ev.add_argument("--prompt-style", choices=["set", "grpo"], help="default: data.prompt_style")
    ev.add_argument("--out", help="output folder (default: <model>/eval)")
    ev.add_argument("--seed", type=int, help="sampling and subset seed (default: cluster.seed)")
    ev.add_argument("--config", "-c", help="YAML run config for data and engine settings (default: built-in)")
    ev.set_defaults(func=cmd_eval)


def _add_compare_command(sub) -> None:
    from cluster.commands.compare import METHODS

    cmp = sub.add_parser(
        "compare", help="GRPO vs SET vs SET + RER, same budget, several seeds: mean ± std table"
    )
    _add_config_args(cmp)
    cmp.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="methods to run"
    )
    cmp.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (cluster.seed and sft.seed)"
    )
    cmp.add_argument(
        "--name", default="compare", help="folder under cluster.output_dir; reruns reuse finished runs"
    )
    cmp.set_defaults(func=cmd_compare)


def cmd_bench_learner_memory(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.learner_memory import Setup, run

    setup = Setup(args.rows, args.tokens, args.prompt_tokens, args.layers, args.chunk_tokens)
    run(setup, Path(args.out) if args.out else None)
    return 0


def cmd_bench_reasoning(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.reasoning import run

    run(args.runs, Path(args.out) if args.out else None, args.split)
    return 0


def _add_bench_commands(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print numbers").add_subparsers(
        dest="action", required=True
    )
    loop = bench.add_parser(
        "loop", help="stage times, reflection cost, asynchronous throughput, worker vs raw vLLM, weight push"
    )
    loop.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every measured run"
    )
    loop.add_argument(
        "--iterations", type=int, default=3, help="measured iterations per run (after one warm-up)"
    )
    loop.add_argument(
        "--sections", default="stages,async,raw,push", help="which measurements: stages,async,raw,push"
    )
    loop.add_argument("--out", help="also write the numbers as JSON here")
    loop.set_defaults(func=cmd_bench_loop)
    cues = bench.add_parser(
        "cues", help="teacher-forced cue recall: how well a model reads the synthetic scenes"
    )
    cues.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (data.synthetic.*)")
    cues.add_argument("--model", nargs="+", default=["tiny"], help="model folders, or 'tiny' (default)")
    cues.add_argument("--limit", type=int, default=128, help="test images per style (default 128)")
    cues.add_argument("--out", help="also write the numbers as JSON here")
    cues.set_defaults(func=cmd_bench_cues)
    ban = bench.add_parser(
        "ban", help="generation speed: vision tokens banned by an allow list vs the engine's logits processor"
    )
    ban.add_argument("--prompts", type=int, default=16)
    ban.add_argument("--group", type=int, default=8, help="completions per prompt")
    ban.add_argument("--tokens", type=int, default=64, help="tokens per completion")
    ban.add_argument("--repeats", type=int, default=3, help="measured rounds (after one warm-up)")
    ban.add_argument("--out", help="also write the numbers as JSON here")
    ban.set_defaults(func=cmd_bench_ban)
    sync = bench.add_parser(
        "sync",
        help="weight-push seconds and memory vs model size, engines and transport, beside a raw broadcast",
    )
    sync.add_argument(
        "--sizes", default="5m,60m,150m", help="model sizes, comma-separated (5m, 60m, 150m, 360m, 500m)"
    )
    sync.add_argument("--engines", default="1,2,4", help="engine counts, comma-separated (at most 4)")
    sync.add_argument(
        "--transports",
        default="object_store,collective",
        help="transports (collective always: the floor's group)",
    )
    sync.add_argument("--bucket-mib", type=float, default=64, help="bucket size of the collective transport")
    sync.add_argument("--repeats", type=int, default=3, help="measured pushes per cell (after one warm-up)")
    sync.add_argument("--out", help="also write the numbers as JSON here")
    sync.set_defaults(func=cmd_bench_sync)
    memory = bench.add_parser(
        "learner-memory",
        help="peak memory of a micro-batch's loss: full-vocabulary logits vs the chunked head vs + checkpointing",
    )
    memory.add_argument("--rows", type=int, default=4, help="rollouts in the micro-batch")
    memory.add_argument("--tokens", type=int, default=1024, help="completion tokens per rollout")
    memory.add_argument("--prompt-tokens", type=int, default=32, help="prompt tokens per rollout")
    memory.add_argument("--layers", type=int, default=12, help="decoder layers (hidden size 256)")
    memory.add_argument("--chunk-tokens", type=int, default=1024, help="learner.logprob_chunk_tokens")
    memory.add_argument("--out", help="also write the numbers as JSON here")
    memory.set_defaults(func=cmd_bench_learner_memory)
    reasoning = bench.add_parser(
        "reasoning", help="runs' dumped rollouts or evaluations' responses against the synthetic scenes"
    )
    reasoning.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directories (runs/<name>) or emo-r3 eval output folders"
    )
    reasoning.add_argument(
        "--split", type=int, metavar="N", help="two rows per run: iterations before N and from N on"
    )
    reasoning.add_argument("--out", help="also write the numbers as JSON here")
    reasoning.set_defaults(func=cmd_bench_reasoning)


def _add_scale_command(sub) -> None:
    scale = sub.add_parser(
        "scale", help="grow or shrink the rollout pool of a running train job (before its next iteration)"
    )
    scale.add_argument("run", metavar="RUN", help="the run's folder, runs/<name>")
    scale.add_argument("target", metavar="rollout=N", help="how many rollout workers from now on")
    scale.set_defaults(func=cmd_scale)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emo-r3", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_config_commands,
        _add_data_commands,
        _add_score_command,
        _add_job_commands,
        _add_eval_command,
        _add_compare_command,
        _add_scale_command,
        _add_bench_commands,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cluster.stops import EXIT_CONFIG, EXIT_FAILED, RunFailed, Stopped

    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as err:
        print(f"emo-r3: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except FileNotFoundError as err:
        print(f"emo-r3: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except RunFailed as err:
        print(f"emo-r3: the run failed: {err}", file=sys.stderr)  # RunFailed says how to go on
        return EXIT_FAILED
    except Stopped as err:
        print(f"emo-r3: {err}; continue with --resume", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("emo-r3: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
