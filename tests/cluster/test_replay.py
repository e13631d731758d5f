import json
from collections import Counter

import pytest

from cluster.config import load_config
from cluster.data.sample import Sample
from cluster.replay import ReplayBuffer
from cluster.stream import PromptStream
from cluster.train import next_batch

LABELS = ("anger", "fear")


def _samples(n: int) -> list[Sample]:
    return [Sample(f"s{i:02d}", "x.png", "q", LABELS, "fear") for i in range(n)]


def test_only_prompts_whose_latest_group_was_mixed_stay_buffered():
    buffer = ReplayBuffer(_samples(6), 0.25, seed=0)
    buffer.update(
        [("s00", [1, 0, 0, 0]), ("s01", [1, 1, 1, 1]), ("s02", [0, 0, 0, 0]), ("s03", [1, 1, 0, 1])]
    )
    assert buffer.state() == {"s00": 0.25, "s03": 0.75}
    # s00 answered right every time now: out; s03 mixed again: its new accuracy; s04 unscorable: unknown
    buffer.update([("s00", [1, 1, 1, 1]), ("s03", [1, 0, 0, 0]), ("s04", [])])
    assert buffer.state() == {"s03": 0.25}
    buffer.update([("s03", [0, 0, 0, 0]), ("elsewhere", [1, 0])])
    assert buffer.state() == {}


def test_quota_is_the_share_of_the_batch_but_never_more_than_is_buffered():
    buffer = ReplayBuffer(_samples(8), 0.25, seed=0)
    assert buffer.quota(16) == 0
    buffer.update([(f"s{i:02d}", [1, 0]) for i in range(3)])
    assert buffer.quota(16) == 3
    buffer.update([(f"s{i:02d}", [1, 0]) for i in range(8)])
    assert buffer.quota(16) == 4
    assert ReplayBuffer(_samples(8), 0.0, seed=0).quota(16) == 0
    with pytest.raises(ValueError, match="replay share"):
        ReplayBuffer(_samples(2), 1.0, seed=0)


def test_the_prompts_missed_most_are_drawn_most_and_never_twice_in_one_draw():
    buffer = ReplayBuffer(_samples(4), 0.5, seed=0)
    # right in 1 of 8 (missed 7/8) ... right in 7 of 8 (missed 1/8)
    buffer.update(
        [("s00", [1] + [0] * 7), ("s01", [1] * 4 + [0] * 4), ("s02", [1] * 7 + [0]), ("s03", [1, 0])]
    )
    counts = Counter()
    for iteration in range(2000):
        drawn = [s.sample_id for s in buffer.draw(iteration, 2, exclude=["s03"])]
        assert len(drawn) == len(set(drawn)) == 2 and "s03" not in drawn
        counts.update(drawn)
    assert counts["s00"] > counts["s01"] > counts["s02"] > 0
    # seeded by (seed, iteration): the same draw again, another on the next iteration or seed
    assert buffer.draw(5, 2) == buffer.draw(5, 2)
    other = ReplayBuffer(_samples(4), 0.5, seed=1, state=buffer.state())
    assert any(buffer.draw(i, 2) != other.draw(i, 2) for i in range(10))


def test_a_restored_buffer_draws_what_the_original_would_have():
    samples = _samples(10)
    buffer = ReplayBuffer(samples, 0.3, seed=4)
    buffer.update([(f"s{i:02d}", [1, 0, 0]) for i in range(0, 10, 2)])
    saved = json.loads(json.dumps({"replay": buffer.state()}))["replay"]
    restored = ReplayBuffer(samples, 0.3, seed=4, state=saved)
    assert [restored.draw(i, 3) for i in range(5)] == [buffer.draw(i, 3) for i in range(5)]
    # a checkpoint of another data set: entries for samples that no longer exist are dropped
    assert ReplayBuffer(samples[:3], 0.3, seed=4, state=saved).state() == {"s00": 1 / 3, "s02": 1 / 3}


def test_a_batch_is_the_streams_prompts_then_the_replayed_ones_without_doubles():
    samples = _samples(6)
    stream = PromptStream(samples, 4, seed=0)
    buffer = ReplayBuffer(samples, 0.5, seed=0)
    first, replayed = next_batch(stream, buffer, 0)
    assert replayed == 0 and len(first) == 4  # nothing buffered yet: all from the stream
    buffer.update([(s.sample_id, [1, 0]) for s in first])
    second, replayed = next_batch(stream, buffer, 1)
    ids = [s.sample_id for s in second]
    # the epoch's last two, then two replayed from the first batch
    assert replayed == 2 and len(set(ids)) == 4 and set(ids[2:]) <= {s.sample_id for s in first}
    assert {s.sample_id for s in first} | set(ids[:2]) == {s.sample_id for s in samples}
    # the buffered prompts are the ones the stream gives next: the stream tops the batch up instead
    stream, peek = PromptStream(samples, 4, seed=1), PromptStream(samples, 4, seed=1)
    upcoming = peek.next_batch(2)
    buffer = ReplayBuffer(samples, 0.5, seed=0)
    buffer.update([(s.sample_id, [1, 0]) for s in upcoming])
    batch, replayed = next_batch(stream, buffer, 0)
    assert replayed == 0 and batch[:2] == upcoming and batch[2:] == peek.next_batch(2)


def test_replay_share_is_a_data_setting_below_one():
    assert load_config(None, ["data.replay_share=0.25"]).data.replay_share == 0.25
    with pytest.raises(Exception, match="replay_share"):
        load_config(None, ["data.replay_share=1.0"])
