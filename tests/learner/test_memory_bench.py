"""`emo-r3 bench learner-memory` on a small micro-batch: every variant measures a peak in its own
process and gives the former full-logits path's loss and gradients (the numbers are the benchmark's)."""

from benchmarks.learner_memory import BEFORE, CHECKPOINTED, CHUNKED, Setup, run
from cluster.cli import build_parser


def test_every_variant_measures_its_peak_and_gives_the_full_logits_loss_and_gradients(tmp_path, capsys):
    setup = Setup(rows=2, completion_tokens=48, prompt_tokens=8, layers=1, chunk_tokens=16)
    results = run(setup, tmp_path / "memory.json")
    assert list(results) == [BEFORE, CHUNKED, CHECKPOINTED]
    for variant in (CHUNKED, CHECKPOINTED):
        assert results[variant]["loss"] == results[BEFORE]["loss"]
        assert results[variant]["max_grad_diff"] <= 1e-6 * results[BEFORE]["grad_max"]
    # the parameters' gradients alone are 2 × 151,936 × 256 floats: 297 MiB
    assert all(numbers["peak_mib"] > 290 for numbers in results.values())
    table = capsys.readouterr().out
    assert "| chunked + gradient checkpointing |" in table and (tmp_path / "memory.json").is_file()


def test_the_command_takes_the_setup():
    args = build_parser().parse_args(["bench", "learner-memory", "--rows", "8", "--tokens", "512"])
    assert (args.rows, args.tokens, args.prompt_tokens, args.layers, args.chunk_tokens) == (
        8,
        512,
        32,
        12,
        1024,
    )
