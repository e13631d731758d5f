"""`emo-r3 bench reasoning`: step 2 of hand-written responses judged against a known scene, the shares
over a set of verdicts, and a run directory read end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.reasoning import Verdict, judge, run, run_verdicts, summarize
from cluster.cli import main
from cluster.config import ConfigError, load_config, to_yaml
from cluster.embedded.responses import grpo_response, set_response
from cluster.embedded.scenes import Scene

# contentment, with the mountain and the stars borrowed from awe (a 3–2 scene)
SCENE = Scene(
    "emoset", "contentment", ("blue_sky", "sand", "calm", "mountain", "stars"), "awe", ("object", "accent")
)
CUES = SCENE.cue_dict()
SLOTS = ("object", "accent")
STEP1 = set_response(SCENE).split("</step1>")[0] + "</step1>\n"
TAIL = "<step3>The emotion is positive with low arousal.</step3>\n"


def step2(text: str, answer: str = "contentment") -> str:
    return f"{STEP1}<step2>{text}</step2>\n{TAIL}\\boxed{{{answer}}}"


def test_the_reference_responses_are_faithful_and_right() -> None:
    assert judge(set_response(SCENE), "emoset", CUES) == Verdict(SLOTS, True, False, True, False, False)
    assert judge(grpo_response(SCENE), "emoset", CUES) == Verdict(SLOTS, True, False, True, False, False)
    agreeing = Scene(
        "emoset", "awe", ("violet_sky", "lake", "amazed", "mountain", "stars"), "contentment", ()
    )
    assert judge(set_response(agreeing), "emoset", agreeing.cue_dict()) == Verdict(
        (), True, False, True, False, False
    )


@pytest.mark.parametrize(
    ("text", "answer", "expected"),
    [
        # one of the two borrowed cues: not faithful, nothing absent
        (
            "The stars feels like awe, but most cues suggest contentment, so ...",
            "contentment",
            Verdict(SLOTS, True, False, False, False, False),
        ),
        # a cue the image does not show
        (
            "The fireworks feels like awe, but most cues suggest contentment, so ...",
            "awe",
            Verdict(SLOTS, False, True, False, True, False),
        ),
        # a mixed image called unanimous
        (
            "All cues agree, so a viewer would feel calm.",
            "contentment",
            Verdict(SLOTS, True, False, False, False, False),
        ),
        # neither reference form, and a label outside the pair
        ("I think it is nice.", "fear", Verdict(SLOTS, False, False, False, False, True)),
        # something that is no cue
        (
            "The happy dog feels like awe, but most cues suggest contentment.",
            "contentment",
            Verdict(SLOTS, True, False, False, False, True),
        ),
    ],
)
def test_step2_is_checked_against_the_scene(text: str, answer: str, expected: Verdict) -> None:
    assert judge(step2(text, answer), "emoset", CUES) == expected


def test_a_response_without_step2_or_answer_is_wrong_and_not_judged_for_faithfulness() -> None:
    assert judge("The scene shows a calm face.", "emoset", CUES) == Verdict(
        SLOTS, False, False, None, False, False
    )


def test_summary_shares() -> None:
    verdicts = [
        Verdict(("sky", "face"), True, False, True, False, False),
        Verdict(("sky", "accent"), False, True, False, True, False),
        Verdict(("accent",), True, False, False, False, True),
        Verdict(("sky",), False, False, None, False, False),
    ]
    summary = summarize(verdicts)
    assert summary["rollouts"] == 4 and summary["accuracy"] == 0.5
    assert summary["wrong_is_partner"] == 0.5  # one of the two wrong answers is the partner
    assert summary["faithful"] == pytest.approx(1 / 3)  # of the three with a step 2
    assert summary["accuracy_faithful"] == 1.0 and summary["accuracy_unfaithful"] == 0.5
    assert summary["names_absent_cue"] == pytest.approx(1 / 3) and summary["odd_step2"] == pytest.approx(
        1 / 3
    )
    assert summary["accuracy_by_borrowed"] == {1: 0.5, 2: 0.5}
    # slot -> [accuracy, rollouts] over the images that borrow it
    assert summary["accuracy_by_borrowed_slot"] == {
        "sky": [pytest.approx(1 / 3), 3],
        "face": [1.0, 1],
        "accent": [0.5, 2],
    }
    assert summarize([])["accuracy"] is None


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run directory as the trainer leaves it: its config and dumped rollouts (reference answers for
    the first 6 samples, then the same 6 answered with their borrowed cues' label)."""
    from cluster.sources import resolve_source

    monkeypatch.setenv("EMO_R3_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(
        None, ["data.synthetic.n_train=16", "data.synthetic.n_test=8", "data.synthetic.size=56"]
    )
    rows = [
        json.loads(line) for line in Path(resolve_source(cfg.data.train, cfg.data)).read_text().splitlines()
    ]
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    dumped = [
        {"iteration": 0, "sample_id": r["id"], "label": r["answer"], "response": r["response"]}
        for r in rows[:6]
    ]
    for r in rows[:6]:
        partner = next(
            label for label, share in zip(r["labels"], r["label_dist"], strict=True) if 0 < share < 0.5
        )
        wrong = r["response"].replace(f"\\boxed{{{r['answer']}}}", f"\\boxed{{{partner}}}")
        dumped.append({"iteration": 1, "sample_id": r["id"], "label": r["answer"], "response": wrong})
    (run / "rollouts.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dumped))
    return run


def test_a_run_directory_is_read_end_to_end(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert [i for i, _ in run_verdicts(run_dir)] == [0] * 6 + [1] * 6
    [result] = run([str(run_dir)], tmp_path / "out.json")
    assert result["accuracy"] == 0.5 and result["wrong_is_partner"] == 1.0
    assert result["faithful"] == 1.0 and result["accuracy_faithful"] == 0.5
    assert json.loads((tmp_path / "out.json").read_text())[0]["rollouts"] == 12
    printed = capsys.readouterr().out
    assert "| 12 | 50.0% | 100.0% | 100.0% |" in printed
    # each image is dumped once answered right and once with the partner: 50% whichever slot it borrows
    by_slot = result["accuracy_by_borrowed_slot"]
    assert by_slot and all(accuracy == 0.5 and n % 2 == 0 for accuracy, n in by_slot.values())
    assert "accuracy on the images whose partner cue is in the slot" in printed
    assert all(f"50.0% ({n})" in printed for _, n in by_slot.values())
    # iteration 0 holds the right answers, iteration 1 the partner's
    before, after = run([str(run_dir)], None, split=1)
    assert (before["iterations"], before["accuracy"], after["iterations"], after["accuracy"]) == (
        "< 1",
        1.0,
        ">= 1",
        0.0,
    )
    assert main(["bench", "reasoning", str(run_dir), "--split", "1"]) == 0
    assert f"| {run_dir} (iterations >= 1) | 6 | 0.0% |" in capsys.readouterr().out


def test_a_run_without_rollouts_or_on_real_data_is_a_clear_error(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    assert main(["bench", "reasoning", str(tmp_path)]) == 2
    assert "rollouts.jsonl" in capsys.readouterr().err
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("")
    cfg = load_config(None, [f"data.train={manifest}"])
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    with pytest.raises(ConfigError, match="only synthetic data"):
        run_verdicts(run_dir)


def test_the_answer_is_read_as_the_accuracy_reward_reads_it() -> None:
    from rewards.rules import accuracy_reward

    # an unclosed box before the real one: the reward counts the last complete box
    nested = set_response(SCENE).replace(
        "\\boxed{contentment}", "\\boxed{ low arousal.\n\\boxed{contentment}"
    )
    assert accuracy_reward(nested, "contentment") == 1.0
    assert judge(nested, "emoset", CUES).right
    assert not judge(nested.replace("{contentment}", "{contentment"), "emoset", CUES).right  # no complete box


def test_an_eval_folder_is_judged_per_data_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`emo-r3 eval`'s output (eval.json naming the sources, one response per held-out sample) is read
    like a run: the reference answers are right and faithful, the partner's answers wrong."""
    from cluster.held_out import responses_filename
    from cluster.sources import resolve_source

    monkeypatch.setenv("EMO_R3_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(None, ["data.synthetic.n_train=8", "data.synthetic.n_test=8", "data.synthetic.size=56"])
    folder = tmp_path / "eval"
    folder.mkdir()
    record = {"sources": {"emoset:test": "synthetic:emoset:test"}, "data": cfg.data.model_dump(mode="json")}
    (folder / "eval.json").write_text(json.dumps(record))
    rows = [
        json.loads(line)
        for line in Path(resolve_source("synthetic:emoset:test", cfg.data)).read_text().splitlines()
    ]
    lines = []
    for i, row in enumerate(rows):
        response = row["response"]
        if i % 2:  # every other sample answered with another label
            wrong = next(label for label in row["labels"] if label != row["answer"])
            response = response.replace(f"\\boxed{{{row['answer']}}}", f"\\boxed{{{wrong}}}")
        lines.append(json.dumps({"sample_id": row["id"], "answer": row["answer"], "response": response}))
    (folder / responses_filename("emoset:test")).write_text("\n".join(lines) + "\n")
    [result] = run([str(folder)], None, split=4)  # no iterations in an evaluation: one row
    assert result["run"] == f"{folder} emoset:test" and "iterations" not in result
    assert result["rollouts"] == 8 and result["accuracy"] == 0.5 and result["faithful"] == 1.0
    assert f"| {folder} emoset:test | 8 | 50.0% |" in capsys.readouterr().out
    *_, pooled = run([str(folder), str(folder)], None)  # several folders: pooled per data set
    assert pooled["run"] == "all emoset:test" and pooled["rollouts"] == 16
    record["sources"] = {"x.jsonl": str(tmp_path / "x.jsonl")}
    (folder / "eval.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="no synthetic data set"):
        run([str(folder)], None)
