"""`emo-r3 bench loop`'s report: every variant's stages side by side and the ratios it promises,
each beside its target."""

from benchmarks.loop import ASYNC_VARIANTS, VARIANTS, format_result


def test_the_report_prints_every_variant_ratio_and_target():
    stages = {
        name: {"timing_s/generate": 1.0 + i, "timing_s/train": 2.0 * (i + 1), "timing_s/iteration": 4.0 + i}
        for i, name in enumerate(VARIANTS)
    }
    asynchronous = {
        name: {"wall_s": 10.0 - i, "trained_tokens_per_s": 100.0 * (1 + i)}
        for i, name in enumerate(ASYNC_VARIANTS)
    }
    result = {
        "stages": stages,
        "async": asynchronous,
        "async_ratios": {"synchronous": 1.0, "max_staleness_1": 2.0, "max_staleness_2": 3.0},
        "rollout_vs_raw_vllm": {"worker_tokens_per_s": 900.0, "raw_tokens_per_s": 1000.0, "ratio": 0.9},
        "weight_push_s": {"1_engines": 0.2, "2_engines": 0.4},
        "reflection_ratio": 1.2,
        "prompt_sharing_ratio": 4.0,
        "peak_memory_gb": 9.5,
        "wall_s": 120.0,
    }
    report = format_result(result)
    assert "| with reflection | without reflection | full prompts |" in report
    assert "| timing_s/train | 2.00 | 4.00 | 6.00 |" in report
    assert "with / without reflection: 1.20x (target <= 1.10x: NOT met)" in report
    assert "each distinct prompt once: 4.00x" in report
    assert "| synchronous | max staleness 1 | max staleness 2 |" in report
    assert "| trained_tokens_per_s | 100.00 | 200.00 | 300.00 |" in report
    assert "max staleness 1 / synchronous: 2.00x (target >= 1.5x: met)" in report
    assert "max staleness 2 / synchronous: 3.00x" in report
    assert "ratio 0.90" in report and "2 engines 0.400 s" in report


def test_a_report_of_some_sections_prints_those_only():
    report = format_result({"weight_push_s": {"1_engines": 0.2}, "peak_memory_gb": 1.0, "wall_s": 3.0})
    assert "1 engines 0.200 s" in report and "reflection" not in report and "staleness" not in report
