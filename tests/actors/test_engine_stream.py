"""`Engine.generate_stream` yields each group as soon as it is complete, and the groups are the ones
`Engine.generate` samples for the same requests (same seeds, same engine step loop)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def engine(random_init_tiny_model):
    from actors.config import RolloutConfig
    from actors.engine import Engine, EngineSettings

    return Engine(
        EngineSettings.from_rollout(RolloutConfig(kv_cache_mib=64), str(random_init_tiny_model)), None
    )


def _requests(count: int):
    from actors.types import PromptRequest

    return [PromptRequest(i, "Describe the scene.", None, seed=100 + i) for i in range(count)]


@pytest.mark.slow
def test_streamed_groups_equal_the_batch_call_and_come_in_finishing_order(engine):
    from actors.types import SamplingSettings

    sampling = SamplingSettings(n=4, temperature=1.0, max_new_tokens=24)
    requests = _requests(6)
    batch = {g.group_id: g for g in engine.generate(requests, sampling)}
    streamed = list(engine.generate_stream(requests, sampling))
    assert sorted(g.group_id for g in streamed) == list(range(6))
    for group in streamed:
        expected = batch[group.group_id]
        assert [c.token_ids for c in group.completions] == [c.token_ids for c in expected.completions]
        assert [c.sampler_logprobs for c in group.completions] == [
            c.sampler_logprobs for c in expected.completions
        ]
        assert group.prompt_token_ids == expected.prompt_token_ids
    # generate_s is the time to the group's completion: non-decreasing in the order they came
    times = [g.generate_s for g in streamed]
    assert times == sorted(times) and times[0] > 0


@pytest.mark.slow
def test_an_abandoned_stream_leaves_nothing_running_in_the_engine(engine):
    from actors.types import SamplingSettings

    sampling = SamplingSettings(n=4, temperature=1.0, max_new_tokens=48)
    stream = engine.generate_stream(_requests(8), sampling)
    next(stream)
    stream.close()  # the caller stopped after the first group
    assert not engine.llm.llm_engine.has_unfinished_requests()
    # and the engine serves the next call normally
    assert len(engine.generate(_requests(2), sampling)) == 2
