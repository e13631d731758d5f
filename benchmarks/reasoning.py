"""Does the reasoning carry the answer? Step 2 of a run's dumped rollouts checked against the scene.

On the synthetic set every image's cues are known (the manifest's `cues` column): the gold label owns
3 or 4 of the five, the confusable partner the rest (the borrowed cues). The SET reference's step 2
names exactly the borrowed cues ("The mountain and the stars feel like awe, but most cues suggest
contentment, ..."; "All cues agree, ..." when there are none); the GRPO baseline's `<think>` form has
the same sentence after step 1's. A rollout's step 2 is *faithful* when it
names exactly the image's borrowed cues; this measures how often the policy writes such a step 2, how
often its answer is right when it does and when it does not, what the wrong answers are (the image's
partner or some other label), accuracy by how many cues are borrowed (4–1 and 3–2 scenes), and
accuracy by which slot is borrowed: a policy that counts the five cues is as right when the sky is
borrowed as when the accent is; one that answers from the largest region is not.
It reads files only: `runs/<name>/config.yaml` for the data, `runs/<name>/rollouts.jsonl` for the
responses (cluster.generation: a sample of each iteration's rollouts); or an `emo-r3 eval` output folder
(`eval.json` names the sources and data settings, `responses_<dataset>.jsonl` holds one response per
held-out sample: the larger and unsampled measurement).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.embedded.scenes import CUES, STYLES, cue_label
from rewards.paper_metrics import predict

_STEP2 = re.compile(r"<step2>(.*?)</step2>", re.S)
# the <think> form (GRPO baseline): the same parts in one paragraph, step 2 the sentence after step 1's
_THINK_STEP2 = re.compile(
    r"<think>.*?\.\s+((?:All cues agree|[A-Z][^.<]*? feels? like \w+, but)[^<]*)</think>", re.S
)
_BORROWED = re.compile(r"^(.*?) feels? like (\w+), but most cues suggest (\w+)")
_BY_SHORT = {cue.short: name for name, cue in CUES.items()}


@dataclass(frozen=True)
class Verdict:
    """One response against its scene. `faithful` is None when the response has no step 2."""

    borrowed_slots: tuple[str, ...]  # the slots that hold the partner's cues
    right: bool
    partner: bool  # the answer is the label of the image's borrowed cues
    faithful: bool | None
    named_absent: bool  # step 2 names a cue the image does not show
    odd: bool  # step 2 is in neither reference form, or names something that is no cue

    @property
    def borrowed(self) -> int:
        """Cues of the image that belong to the partner (0, 1 or 2)."""
        return len(self.borrowed_slots)


def judge(response: str, style: str, cues: Mapping[str, str]) -> Verdict:
    """Check `response` against the scene whose slot → cue is `cues` (a synthetic manifest row's)."""
    owners = [cue_label(STYLES[style], slot, cue) for slot, cue in cues.items()]
    gold = max(dict.fromkeys(owners), key=owners.count)
    borrowed = {cue for cue, owner in zip(cues.values(), owners, strict=True) if owner != gold}
    slots = tuple(slot for slot, owner in zip(cues, owners, strict=True) if owner != gold)
    partners = {owner for owner in owners if owner != gold}
    answer = predict(response, STYLES[style].labels)  # the evaluation's reading: None if unparseable
    right, partner = answer == gold, answer in partners
    step2 = _step2(response)
    if step2 is None:
        return Verdict(slots, right, partner, None, False, False)
    named = _named_cues(step2)
    if named is None:
        return Verdict(slots, right, partner, False, False, True)
    absent = not set(named) <= set(cues.values())
    return Verdict(slots, right, partner, set(named) == borrowed, absent, False)


def _step2(response: str) -> str | None:
    found = _STEP2.search(response) or _THINK_STEP2.search(response)
    return found.group(1).strip() if found else None


def _named_cues(step2: str) -> list[str] | None:
    """The cues step 2 calls borrowed ([] for "All cues agree"); None if it is in neither reference
    form or names something that is no cue."""
    if step2.startswith("All cues agree"):
        return []
    found = _BORROWED.match(step2)
    if found is None:
        return None
    phrases = [p[0].lower() + p[1:] for p in (p.strip() for p in found.group(1).split(" and ")) if p]
    if not phrases or not all(p in _BY_SHORT for p in phrases):
        return None
    return [_BY_SHORT[p] for p in phrases]


def summarize(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Shares over `verdicts`: accuracy, wrong answers that are the partner, faithful step 2, the
    accuracy with and without it, the accuracy by number of borrowed cues, and by borrowed slot
    (`accuracy_by_borrowed_slot`: slot -> [accuracy, rollouts] over the images that borrow it)."""

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    count, by_slot, by_slot_right = Counter(), Counter(), Counter()
    for v in verdicts:
        count["right"] += v.right
        count["wrong"] += not v.right
        count["wrong_partner"] += (not v.right) and v.partner
        count["step2"] += v.faithful is not None
        count["faithful"] += bool(v.faithful)
        count["faithful_right"] += bool(v.faithful) and v.right
        count["unfaithful"] += v.faithful is False
        count["unfaithful_right"] += v.faithful is False and v.right
        count["named_absent"] += v.named_absent
        count["odd"] += v.odd
        count[f"n{v.borrowed}"] += 1
        count[f"n{v.borrowed}_right"] += v.right
        for slot in v.borrowed_slots:
            by_slot[slot] += 1
            by_slot_right[slot] += v.right
    n = len(verdicts)
    return {
        "rollouts": n,
        "accuracy": share(count["right"], n),
        "wrong_is_partner": share(count["wrong_partner"], count["wrong"]),
        "faithful": share(count["faithful"], count["step2"]),
        "accuracy_faithful": share(count["faithful_right"], count["faithful"]),
        "accuracy_unfaithful": share(count["unfaithful_right"], count["unfaithful"]),
        "names_absent_cue": share(count["named_absent"], count["step2"]),
        "odd_step2": share(count["odd"], count["step2"]),
        "accuracy_by_borrowed": {
            k: share(count[f"n{k}_right"], count[f"n{k}"]) for k in (0, 1, 2) if count[f"n{k}"]
        },
        "accuracy_by_borrowed_slot": {
            slot: [share(by_slot_right[slot], n), n] for slot, n in by_slot.items()
        },
    }


def run_verdicts(run: Path) -> list[tuple[int, Verdict]]:
    """(iteration, verdict) of every dumped rollout of `run` (a run directory of a synthetic-data run)."""
    from cluster.config import SYNTHETIC_PREFIX, ConfigError, load_config

    dumped = run / "rollouts.jsonl"
    if not dumped.is_file():
        raise FileNotFoundError(f"{dumped} (not a run directory, or no iteration finished)")
    cfg = load_config(run / "config.yaml")
    if not cfg.data.train.startswith(SYNTHETIC_PREFIX):
        raise ConfigError(
            f"{run} trained on {cfg.data.train}: only synthetic data carries the cues of each image"
        )
    style, rows = _scene_cues(cfg.data.train, cfg.data)
    verdicts = []
    for line in dumped.read_text().splitlines():
        rollout = json.loads(line)
        verdicts.append((rollout["iteration"], judge(rollout["response"], style, rows[rollout["sample_id"]])))
    return verdicts


def _scene_cues(source: str, data: Any) -> tuple[str, dict[str, dict[str, str]]]:
    """The style of a synthetic `source` and its manifest's slot → cue mapping by sample id."""
    from cluster.sources import resolve_source

    cues = {}
    for line in Path(resolve_source(source, data)).read_text().splitlines():
        row = json.loads(line)
        cues[row["id"]] = row["cues"]
    return source.split(":")[1], cues


def eval_verdicts(folder: Path) -> dict[str, list[Verdict]]:
    """The verdicts of an `emo-r3 eval` output folder, by data set: its `responses_<dataset>.jsonl`
    against the scenes of each synthetic source it evaluated (held-out data, every sample once)."""
    from cluster.config import SYNTHETIC_PREFIX, ConfigError, DataConfig
    from cluster.held_out import responses_filename

    record = json.loads((folder / "eval.json").read_text())
    if "sources" not in record:
        raise ConfigError(
            f"{folder}/eval.json names no sources (written by an older emo-r3 eval): evaluate again"
        )
    data = DataConfig.model_validate(record["data"])
    verdicts = {}
    for name, source in record["sources"].items():
        if not source.startswith(SYNTHETIC_PREFIX):
            continue
        style, cues = _scene_cues(source, data)
        rows = [json.loads(line) for line in (folder / responses_filename(name)).read_text().splitlines()]
        verdicts[name] = [judge(row["response"], style, cues[row["sample_id"]]) for row in rows]
    if not verdicts:
        raise ConfigError(f"{folder} evaluated no synthetic data set: only synthetic data carries the cues")
    return verdicts


def _verdicts(given: str) -> list[tuple[str, str, list[tuple[int | None, Verdict]]]]:
    """(row name, pooled row name, verdicts) of a run directory's dumped rollouts (with their
    iterations), or of each data set of an eval folder (pooled per data set: styles differ in slots)."""
    path = Path(given)
    if (path / "eval.json").is_file():
        return [
            (f"{given} {name}", f"all {name}", [(None, v) for v in vs])
            for name, vs in eval_verdicts(path).items()
        ]
    return [(given, "all", run_verdicts(path))]


def run(runs: Sequence[str], out: Path | None, split: int | None = None) -> list[dict]:
    """One row per run (per data set of an eval folder) and, with several, the pooled rows; with
    `split`, each run's twice: iterations before `split` and from it on. Prints markdown tables."""
    rows = [row for given in runs for row in _verdicts(given)]
    per_run = {name: pairs for name, _, pairs in rows}
    for pool in dict.fromkeys(pool for _, pool, _ in rows):
        members = [pairs for _, in_pool, pairs in rows if in_pool == pool]
        if len(members) > 1:
            per_run[pool] = [pair for pairs in members for pair in pairs]
    results = []
    for name, pairs in per_run.items():
        if split is None or any(i is None for i, _ in pairs):  # an evaluation has no iterations to split
            results.append({"run": name, **summarize([v for _, v in pairs])})
            continue
        for label, keep in ((f"< {split}", lambda i: i < split), (f">= {split}", lambda i: i >= split)):
            chosen = [v for i, v in pairs if keep(i)]
            results.append({"run": name, "iterations": label, **summarize(chosen)})

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    print(
        "| run | rollouts | accuracy | wrong → partner | faithful step 2 | accuracy if faithful / not |"
        " step 2 names an absent cue / is in neither form | accuracy on 4–1 / 3–2 scenes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        by = r["accuracy_by_borrowed"]
        print(
            f"| {_row_name(r)} | {r['rollouts']} | {pct(r['accuracy'])} | {pct(r['wrong_is_partner'])} | "
            f"{pct(r['faithful'])} | {pct(r['accuracy_faithful'])} / {pct(r['accuracy_unfaithful'])} | "
            f"{pct(r['names_absent_cue'])} / {pct(r['odd_step2'])} | {pct(by.get(1))} / {pct(by.get(2))} |"
        )
    _print_by_slot(results, pct)
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _print_by_slot(results: Sequence[dict], pct) -> None:
    """Second table: accuracy over the images that borrow each slot (rollouts in parentheses)."""
    seen = {slot for r in results for slot in r["accuracy_by_borrowed_slot"]}
    slots = [
        slot for slot in dict.fromkeys(s for style in STYLES.values() for s in style.slots) if slot in seen
    ]
    if not slots:
        return
    print("\naccuracy on the images whose partner cue is in the slot (rollouts)\n")
    print("| run | " + " | ".join(slots) + " |")
    print("|---|" + "---|" * len(slots))
    for r in results:
        by = r["accuracy_by_borrowed_slot"]
        cells = [f"{pct(by[slot][0])} ({by[slot][1]})" if slot in by else "–" for slot in slots]
        print(f"| {_row_name(r)} | " + " | ".join(cells) + " |")


def _row_name(result: dict) -> str:
    return f"{result['run']} (iterations {result['iterations']})" if "iterations" in result else result["run"]
