"""Reference responses for synthetic scenes, grounded in the cues actually drawn. Pure: stdlib only.

SET form (METHOD.md §2): `<step1>` the visible cues, `<step2>` how a viewer would feel (naming the
borrowed cues when the scene is mixed), `<step3>` valence and arousal, then `\\boxed{label}`. The
GRPO-baseline form puts the same three parts in `<think>...</think>`. The vocabulary is small and
fixed so a tiny model with a tokenizer trained on these texts can learn it.
"""

from __future__ import annotations

import re

from .scenes import CUES, STYLES, Scene

# label -> what a viewer would feel ("A viewer would ...")
FEELINGS: dict[str, str] = {
    "amusement": "find it funny and playful and want to laugh",
    "anger": "feel hostile and furious, ready to fight",
    "awe": "feel small and amazed before something vast",
    "contentment": "feel calm, safe and quietly satisfied",
    "disgust": "feel sick and want to turn away from something foul",
    "excitement": "feel thrilled and full of energy",
    "fear": "feel threatened and want to escape from danger",
    "sadness": "feel lonely and heavy, close to tears",
    "joy": "feel happy and cheerful, full of warmth",
    "surprise": "feel startled by something sudden and unexpected",
}

# label -> (valence, arousal)
AFFECT: dict[str, tuple[str, str]] = {
    "amusement": ("positive", "high"),
    "anger": ("negative", "high"),
    "awe": ("positive", "high"),
    "contentment": ("positive", "low"),
    "disgust": ("negative", "high"),
    "excitement": ("positive", "high"),
    "fear": ("negative", "high"),
    "sadness": ("negative", "low"),
    "joy": ("positive", "high"),
    "surprise": ("positive", "high"),
}


def response_parts(scene: Scene) -> tuple[str, str, str]:
    """The three SET steps of `scene`, without tags."""
    style = STYLES[scene.style]
    phrases = {slot: CUES[cue].phrase for slot, cue in scene.cue_dict().items()}
    step1 = style.scene_words.format(**phrases)
    feeling = f"a viewer would {FEELINGS[scene.label]}."
    if scene.swapped:
        borrowed = " and ".join(CUES[scene.cue_dict()[slot]].short for slot in scene.swapped)
        verb = "feels" if len(scene.swapped) == 1 else "feel"
        step2 = f"{borrowed.capitalize()} {verb} like {scene.partner}, but most cues suggest {scene.label}, so {feeling}"
    else:
        step2 = f"All cues agree, so {feeling}"
    valence, arousal = AFFECT[scene.label]
    step3 = f"The emotion is {valence} with {arousal} arousal."
    return step1, step2, step3


def set_response(scene: Scene) -> str:
    """The SET-format reference response."""
    step1, step2, step3 = response_parts(scene)
    return f"<step1>{step1}</step1>\n<step2>{step2}</step2>\n<step3>{step3}</step3>\n\\boxed{{{scene.label}}}"


def grpo_response(scene: Scene) -> str:
    """The GRPO-baseline reference response: the same parts inside `<think>`."""
    return f"<think>{' '.join(response_parts(scene))}</think> \\boxed{{{scene.label}}}"


_STEP1 = re.compile(r"<step1>(.*?)</step1>", re.S)


def scene_description(response: str) -> str:
    """Step 1 of a SET reference response without its tags: the visible cues, no emotion label."""
    found = _STEP1.search(response)
    if found is None:
        raise ValueError(f"no <step1>...</step1> in the reference response {response[:80]!r}")
    return found.group(1)
