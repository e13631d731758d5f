"""`emo-r3 bench loop`'s report: every variant's stages side by side and the ratios it promises."""

from benchmarks.loop import VARIANTS, format_result


def test_the_report_prints_every_variant_and_ratio():
    stages = {
        name: {"timing_s/generate": 1.0 + i, "timing_s/train": 2.0 * (i + 1), "timing_s/iteration": 4.0 + i}
        for i, name in enumerate(VARIANTS)
    }
    result = {
        "stages": stages,
        "rollout_vs_raw_vllm": {"worker_tokens_per_s": 900.0, "raw_tokens_per_s": 1000.0, "ratio": 0.9},
        "weight_push_s": {"1_engines": 0.2, "2_engines": 0.4},
        "reflection_ratio": 0.8,
        "chunking_ratio": 1.5,
        "prompt_sharing_ratio": 4.0,
        "peak_memory_gb": 9.5,
        "wall_s": 120.0,
    }
    report = format_result(result)
    assert "| with reflection | without reflection | chunks of 4 | full prompts |" in report
    assert "| timing_s/train | 2.00 | 4.00 | 6.00 | 8.00 |" in report
    assert "with / without reflection: 0.80x" in report
    assert "one call per rollout worker: 1.50x" in report
    assert "each distinct prompt once: 4.00x" in report
    assert "ratio 0.90" in report and "2 engines 0.400 s" in report
