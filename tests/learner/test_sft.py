"""Cold-start SFT examples on the real tiny-model processor and synthetic samples; the schedule over
steps, ranks and micro-batches; the token-mean NLL by hand."""

import math
import random
from dataclasses import replace
from functools import partial

import pytest
import torch

from cluster.cold_start import (
    NO,
    YES,
    balanced_subset,
    build_examples,
    example_texts,
    scene_prefix,
    scene_texts,
)
from cluster.config import DataConfig
from cluster.data.images import load_image
from cluster.data.manifest import load_dataset
from cluster.embedded.synthetic import generate
from cluster.settings import image_policy
from learner.batch import IMAGE_PAD, TrainRollout, collate, split
from learner.config import SftConfig
from learner.sft import (
    ANSWER,
    COHERENCE,
    CONSISTENCY,
    END_OF_TURN,
    SCENE,
    check_vision_alignment,
    encode,
    epoch_minibatches,
    nll_loss,
    rank_shards,
)
from rewards.parsing import coherence_span, consistency_span
from rewards.prompts import LABEL_SETS, build_user_text

LOADER = partial(load_image, policy=image_policy(DataConfig()))
CFG = SftConfig(reflection_share=1.0, seed=3)  # 8 samples → 4 coherence, 2 yes, 2 no


@pytest.fixture(scope="module")
def processor(random_init_tiny_model):
    from learner.policy import load_processor

    # the embedded model's tokenizer and image processor (the caption pretraining changes weights only)
    return load_processor(random_init_tiny_model)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    train, _ = generate(
        tmp_path_factory.mktemp("synthetic"),
        style="emoset",
        n_train=8,
        n_test=0,
        seed=0,
        size=112,
        ambiguity=0.25,
        two_borrowed=0.5,
    )
    return load_dataset(train, label_set="emoset").samples


@pytest.fixture(scope="module")
def examples(samples, processor):
    return build_examples(samples, processor, CFG, "set", LOADER)


def test_image_placeholders_match_the_grid_of_each_image(examples, processor):
    pad = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    merge = processor.image_processor.merge_size
    for example in examples:
        have = example.prompt_token_ids.count(pad)
        if example.image is None:
            assert have == 0
            continue
        grid = processor.image_processor(images=[LOADER(example.image)], return_tensors="pt")[
            "image_grid_thw"
        ]
        assert have == int(grid.prod()) // merge**2 > 0


def test_answer_prompts_are_the_chat_templated_question_and_targets_end_the_turn(
    examples, samples, processor
):
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert all(e.target_token_ids[-1] == end for e in examples)
    answers = [e for e in examples if e.task == ANSWER]
    assert len(answers) == len(samples)
    for example, sample in zip(answers, samples, strict=True):
        assert tokenizer.decode(example.target_token_ids[:-1]) == sample.response
        prompt = tokenizer.decode(example.prompt_token_ids)
        assert prompt.endswith(
            build_user_text(sample.question, "set") + "<|im_end|>\n<|im_start|>assistant\n"
        )


def test_scene_prefix_ends_with_the_description_in_either_response_form():
    description = "The scene shows a dark sky above wet mud."
    rest = "<step2>It feels like fear.</step2>\n<step3>Negative.</step3>\n\\boxed{fear}"
    assert (
        scene_prefix(f"<step1>{description}</step1>\n{rest}", description) == f"<step1>{description}</step1>"
    )
    think = f"<think>{description} It feels like fear.</think> \\boxed{{fear}}"
    assert scene_prefix(think, description) == f"<think>{description}"
    assert scene_prefix(think, "The scene shows a bright sun.") is None
    assert scene_prefix(think, "") is None


def test_scene_examples_are_the_task_prompt_and_a_prefix_the_model_is_not_taught_to_stop_after(
    samples, processor
):
    tokenizer = processor.tokenizer
    sample = samples[0]
    prefix = sample.response[: sample.response.index("</step1>") + len("</step1>")]
    (text,) = scene_texts([(sample, prefix)], "set")
    scene = encode(text, processor, LOADER)
    assert scene.task == SCENE and scene.image == sample.image
    assert tokenizer.decode(scene.target_token_ids) == prefix  # no <|im_end|>
    (answer,) = [e for e in build_examples([sample], processor, CFG, "set", LOADER) if e.task == ANSWER]
    assert scene.prompt_token_ids == answer.prompt_token_ids
    assert answer.target_token_ids[: len(scene.target_token_ids)] == scene.target_token_ids


def test_reflection_examples_answer_label_yes_and_no(examples, processor):
    targets = {
        task: sorted(processor.tokenizer.decode(e.target_token_ids[:-1]) for e in examples if e.task == task)
        for task in (COHERENCE, CONSISTENCY)
    }
    assert len(targets[COHERENCE]) == 4 and all(t in LABEL_SETS["emoset"] for t in targets[COHERENCE])
    assert targets[CONSISTENCY] == [NO, NO, YES, YES]
    assert all(e.image is None for e in examples if e.task == COHERENCE)
    assert all(e.image is not None for e in examples if e.task == CONSISTENCY)


def test_coherence_asks_for_the_label_of_the_sample_whose_span_it_shows(samples):
    by_span = {coherence_span(s.response): s for s in samples}
    coherence = [t for t in example_texts(samples, CFG, "set") if t.task == COHERENCE]
    for text in coherence:
        span = text.user_text.split("\nWhich emotion best describes the text above?")[0]
        assert by_span[span].answer == text.target


def test_negative_pairs_show_the_span_of_a_sample_with_another_label(samples):
    by_image = {s.image: s for s in samples}
    pairs = [t for t in example_texts(samples, CFG, "set") if t.task == CONSISTENCY]
    for text in pairs:
        (source,) = [s for s in samples if text.user_text.endswith(consistency_span(s.response))]
        same_label = source.answer == by_image[text.image].answer
        assert (text.target == YES) == (source is by_image[text.image])
        assert text.target == YES or not same_label


def test_examples_are_deterministic_by_seed_and_optional(samples):
    assert example_texts(samples, CFG, "set") == example_texts(samples, CFG, "set")
    other_seed = example_texts(samples, CFG.model_copy(update={"seed": 4}), "set")
    assert other_seed != example_texts(samples, CFG, "set")
    plain = example_texts(samples, CFG.model_copy(update={"reflection_tasks": False}), "set")
    assert [t.task for t in plain] == [ANSWER] * len(samples)


def test_examples_collate_with_the_targets_as_completions(examples, processor):
    rollouts = [e.rollout(i) for i, e in enumerate(examples)]
    batch = collate(rollouts, processor, LOADER)  # checks placeholder counts against the grids
    assert batch.mask.sum(1).tolist() == [len(e.target_token_ids) for e in examples]  # [N]
    assert batch.advantages.abs().sum() == 0 and batch.sampler_logprobs.abs().sum() == 0
    assert batch.image_grid_thw.shape[0] == sum(e.image is not None for e in examples)


def test_balanced_subset_covers_every_label_before_repeating_one(samples):
    many = [replace(s, answer=label) for s in samples for label in ("fear", "awe", "fear", "sadness")]
    subset = balanced_subset(many, 6, random.Random(0))  # 16 fear, 8 awe, 8 sadness
    assert sorted(s.answer for s in subset) == ["awe", "awe", "fear", "fear", "sadness", "sadness"]
    assert subset == balanced_subset(many, 6, random.Random(0))
    assert len(balanced_subset(many, 100, random.Random(0))) == len(many)


# ---------------------------------------------------------------------------------------------------
# Loss


def test_nll_loss_is_the_token_mean_negative_log_likelihood():
    # tokens with probability 0.5, 0.25, 0.1 (the 4th is padding): (ln 2 + ln 4 + ln 10) / 3 = 1.46068
    logprobs = torch.tensor([[0.5, 0.25], [0.1, 0.9]]).log()  # [N, T]
    mask = torch.tensor([[True, True], [True, False]])  # [N, T]
    loss, metrics = nll_loss(logprobs, mask, 3)
    assert loss.item() == pytest.approx((math.log(2) + math.log(4) + math.log(10)) / 3)
    assert metrics["loss"].item() == pytest.approx(1.46068, abs=1e-5)
    # micro-batches (or ranks) dividing by the global count sum to the mini-batch mean
    parts = [nll_loss(logprobs[i : i + 1], mask[i : i + 1], 3)[0] for i in range(2)]
    assert sum(parts).item() == pytest.approx(loss.item())


def test_nll_gradient_pushes_the_target_logprobs_up():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)  # [N, T]
    loss, _ = nll_loss(logprobs, torch.tensor([[True, True, False]]), 2)
    loss.backward()
    assert logprobs.grad.tolist() == [[-0.5, -0.5, 0.0]]  # d(−(a + b)/2)/da = −1/2; padding: 0


# ---------------------------------------------------------------------------------------------------
# Schedule


def rollout(i, image):
    return TrainRollout(i, (1, 2), (3,), (0.0,), 0.0, image, 0)


def test_epoch_minibatches_have_equal_size_and_cover_every_item():
    items = list(range(10))
    batches = epoch_minibatches(items, 4, random.Random(0))
    assert [len(b) for b in batches] == [4, 4, 4]
    assert set(sum(batches, [])) == set(items)  # the last batch is filled up with the first items


def test_rank_shards_deal_images_to_every_micro_batch_of_every_rank():
    minibatch = [rollout(i, None) for i in range(6)] + [rollout(i, f"im{i}") for i in range(6, 16)]
    shards = rank_shards(minibatch, num_ranks=2, micro_batches=4)
    assert sorted(r.group_id for shard in shards for r in shard) == list(range(16))
    assert [len(s) for s in shards] == [8, 8]
    for shard in shards:
        assert all(any(r.image is not None for r in part) for part in split(shard, 4))
    check_vision_alignment(shards, 4)


def test_vision_alignment_refuses_images_on_some_ranks_only():
    minibatch = [rollout(0, "im"), *(rollout(i, None) for i in range(1, 4))]
    shards = rank_shards(minibatch, num_ranks=2, micro_batches=2)
    with pytest.raises(ValueError, match="ZeRO-3"):
        check_vision_alignment(shards, 2)
