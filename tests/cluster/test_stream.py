from cluster.stream import PromptStream, StreamState


def test_batches_cover_each_epoch_once_before_repeating():
    stream = PromptStream(list(range(10)), 4, seed=1)
    seen = stream.next_batch() + stream.next_batch()
    seen += stream.next_batch()[:2]
    assert sorted(seen) == list(range(10))


def test_resume_continues_at_the_exact_next_batch_across_an_epoch_boundary():
    reference = PromptStream(list(range(10)), 4, seed=3)
    batches = [reference.next_batch() for _ in range(6)]
    first = PromptStream(list(range(10)), 4, seed=3)
    for _ in range(5):  # 20 items: stops exactly at the end of epoch 1
        first.next_batch()
    resumed = PromptStream(
        list(range(10)), 4, seed=3, state=StreamState(first.state.epoch, first.state.index)
    )
    assert resumed.next_batch() == batches[5]


def test_epochs_are_shuffled_differently_and_seeded():
    a = PromptStream(list(range(50)), 50, seed=0)
    b = PromptStream(list(range(50)), 50, seed=0)
    assert a.next_batch() == b.next_batch()
    assert a.next_batch() != b.items  # epoch 1 is a different permutation than the identity
