"""Cue catalog of the synthetic affective scenes, and scene sampling. Pure: stdlib + numpy.

A scene has five cue slots. Each label owns one canonical cue per slot; with probability
`ambiguity` one or two slots take the cue of the label's confusable partner instead, so the gold
label stays the majority-cue label (3 or 4 of 5) while the image is genuinely mixed. Two styles:
"emoset" (landscape: sky, ground, round face, object, accent; EmoSet's 8 labels) and "emotion6"
(framed poster: patterned backdrop, frame, square face, object, accent; Emotion6's 6 labels).
Emotions the two label sets share keep related cues (same expressions, flies, fog, lightning...),
and joy/surprise borrow from amusement/contentment and excitement/awe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rewards.prompts import LABEL_SETS


@dataclass(frozen=True)
class Cue:
    """One visual cue: `phrase` describes it in a response, `short` refers back to it."""

    name: str
    phrase: str
    short: str


def _cues(*rows: tuple[str, str, str]) -> dict[str, Cue]:
    return {name: Cue(name, phrase, short) for name, phrase, short in rows}


CUES: dict[str, Cue] = _cues(
    # skies and grounds (emoset)
    ("yellow_sky", "a bright yellow sky", "the yellow sky"),
    ("pink_sky", "a vivid pink sky", "the pink sky"),
    ("violet_sky", "a deep violet sky", "the violet sky"),
    ("blue_sky", "a soft blue sky", "the blue sky"),
    ("red_sky", "a dark red sky", "the red sky"),
    ("night_sky", "a black night sky", "the night sky"),
    ("olive_sky", "a murky olive sky", "the olive sky"),
    ("grey_sky", "a grey cloudy sky", "the grey sky"),
    ("grass", "green grass", "the grass"),
    ("stage", "a purple stage", "the stage"),
    ("lake", "a dark blue lake", "the lake"),
    ("sand", "warm sand", "the sand"),
    ("rock", "black rock", "the black rock"),
    ("ash", "dark grey ground", "the dark ground"),
    ("mud", "brown mud", "the mud"),
    ("street", "a wet blue street", "the wet street"),
    # backdrops and frames (emotion6)
    ("red_stripes", "red and black stripes", "the red stripes"),
    ("dark_rings", "dark blue rings", "the dark rings"),
    ("green_checks", "green and brown checks", "the green checks"),
    ("sun_rays", "yellow and orange rays", "the yellow rays"),
    ("grey_wall", "a dull blue-grey wall", "the grey wall"),
    ("burst", "a bright white burst on cyan", "the bright burst"),
    ("black_frame", "a black frame", "the black frame"),
    ("grey_frame", "a grey frame", "the grey frame"),
    ("brown_frame", "a brown frame", "the brown frame"),
    ("pink_frame", "a pink frame", "the pink frame"),
    ("navy_frame", "a dark blue frame", "the dark blue frame"),
    ("orange_frame", "an orange frame", "the orange frame"),
    # faces (both styles; emotion6 draws them square)
    ("laughing", "a yellow laughing face with closed eyes and a wide open mouth", "the laughing face"),
    ("thrilled", "a yellow thrilled face with wide eyes and a big open grin", "the thrilled face"),
    ("amazed", "a pale amazed face with wide eyes and a small round mouth", "the amazed face"),
    ("calm", "a yellow calm face with closed eyes and a gentle smile", "the calm face"),
    ("angry", "a red angry face with slanted eyebrows and a tight frown", "the angry face"),
    ("scared", "a white scared face with raised eyebrows and an open mouth", "the scared face"),
    ("disgusted", "a green disgusted face with squinting eyes and a wavy mouth", "the disgusted face"),
    ("sad", "a blue sad face with a tear and a downturned mouth", "the sad face"),
    ("smiling", "a yellow smiling face with closed eyes and a big smile", "the smiling face"),
    ("surprised", "a yellow surprised face with wide eyes and a big round mouth", "the surprised face"),
    # objects
    ("balloons", "colourful balloons", "the balloons"),
    ("fireworks", "bursting fireworks", "the fireworks"),
    ("mountain", "a huge snowy mountain", "the mountain"),
    ("sun", "a warm round sun", "the sun"),
    ("flames", "orange flames", "the flames"),
    ("spider", "a big black spider against a pale moon", "the spider"),
    ("slime", "dripping green slime", "the slime"),
    ("broken_heart", "a broken heart", "the broken heart"),
    ("volcano", "an erupting volcano", "the volcano"),
    ("shadow", "a black shadow with glowing eyes", "the shadow"),
    ("rotten_apple", "a rotten brown apple", "the rotten apple"),
    ("rain_cloud", "a dark rain cloud", "the rain cloud"),
    ("gift_box", "an open gift box", "the gift box"),
    # accents
    ("confetti", "falling confetti", "the confetti"),
    ("sparkles", "golden sparkles", "the sparkles"),
    ("stars", "bright stars", "the stars"),
    ("clouds", "soft white clouds", "the white clouds"),
    ("lightning", "a yellow lightning bolt", "the lightning"),
    ("fog", "grey fog", "the fog"),
    ("flies", "buzzing flies", "the flies"),
    ("rain", "falling rain", "the rain"),
    ("hearts", "pink hearts", "the hearts"),
    ("raindrops", "big blue raindrops", "the raindrops"),
)


@dataclass(frozen=True)
class Style:
    """A rendering style: its label set, cue slots, canonical cues and confusable pairs."""

    name: str
    labels: tuple[str, ...]
    slots: tuple[str, ...]
    canonical: dict[str, tuple[str, ...]]  # label -> one cue name per slot
    confusable: dict[str, str]  # label -> the label whose cues it borrows when ambiguous
    scene_words: str  # step-1 template over the slot names


def _pairs(*pairs: tuple[str, str]) -> dict[str, str]:
    return {a: b for pair in pairs for a, b in (pair, pair[::-1])}


STYLES: dict[str, Style] = {
    "emoset": Style(
        name="emoset",
        labels=LABEL_SETS["emoset"],
        slots=("sky", "ground", "face", "object", "accent"),
        canonical={
            "amusement": ("yellow_sky", "grass", "laughing", "balloons", "confetti"),
            "anger": ("red_sky", "rock", "angry", "flames", "lightning"),
            "awe": ("violet_sky", "lake", "amazed", "mountain", "stars"),
            "contentment": ("blue_sky", "sand", "calm", "sun", "clouds"),
            "disgust": ("olive_sky", "mud", "disgusted", "slime", "flies"),
            "excitement": ("pink_sky", "stage", "thrilled", "fireworks", "sparkles"),
            "fear": ("night_sky", "ash", "scared", "spider", "fog"),
            "sadness": ("grey_sky", "street", "sad", "broken_heart", "rain"),
        },
        confusable=_pairs(
            ("awe", "contentment"), ("excitement", "amusement"), ("fear", "anger"), ("disgust", "sadness")
        ),
        scene_words="The scene shows {face} under {sky} above {ground}, with {object} and {accent}.",
    ),
    "emotion6": Style(
        name="emotion6",
        labels=LABEL_SETS["emotion6"],
        slots=("backdrop", "frame", "face", "object", "accent"),
        canonical={
            "anger": ("red_stripes", "black_frame", "angry", "volcano", "lightning"),
            "disgust": ("green_checks", "brown_frame", "disgusted", "rotten_apple", "flies"),
            "fear": ("dark_rings", "grey_frame", "scared", "shadow", "fog"),
            "joy": ("sun_rays", "pink_frame", "smiling", "balloons", "hearts"),
            "sadness": ("grey_wall", "navy_frame", "sad", "rain_cloud", "raindrops"),
            "surprise": ("burst", "orange_frame", "surprised", "gift_box", "sparkles"),
        },
        confusable=_pairs(("anger", "fear"), ("disgust", "sadness"), ("joy", "surprise")),
        scene_words="The picture shows {face} on {backdrop} inside {frame}, with {object} and {accent}.",
    ),
}


@dataclass(frozen=True)
class Scene:
    """The cues of one image. `cues[i]` fills `style.slots[i]`; `swapped` are the borrowed slots."""

    style: str
    label: str
    cues: tuple[str, ...]
    partner: str
    swapped: tuple[str, ...]

    def cue_dict(self) -> dict[str, str]:
        return dict(zip(STYLES[self.style].slots, self.cues, strict=True))

    def label_dist(self) -> tuple[float, ...]:
        """The share of cues owned by each label of the style (gold majority, partner the rest)."""
        style = STYLES[self.style]
        n_swapped = len(self.swapped)
        shares = {self.label: 1 - n_swapped / len(self.cues), self.partner: n_swapped / len(self.cues)}
        return tuple(shares.get(label, 0.0) for label in style.labels)


def cue_label(style: Style, slot: str, cue: str) -> str:
    """The label whose canonical cue `cue` is in `slot` of `style`: what that cue alone suggests."""
    index = style.slots.index(slot)
    owners = [label for label, cues in style.canonical.items() if cues[index] == cue]
    if len(owners) != 1:
        raise ValueError(
            f"cue {cue!r} in slot {slot!r} of {style.name} belongs to {owners}, not to one label"
        )
    return owners[0]


def get_style(name: str) -> Style:
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown synthetic style {name!r}; expected one of {sorted(STYLES)}") from None


def sample_scene(
    style: Style, label: str, ambiguity: float, rng: np.random.Generator, two_borrowed: float = 0.5
) -> Scene:
    """Pick the cues of one image of `label`: canonical, or 1-2 slots borrowed from the partner
    (two with probability `two_borrowed`: a 3-2 majority; else one: 4-1)."""
    cues = list(style.canonical[label])
    partner = style.confusable[label]
    swapped: tuple[str, ...] = ()
    if rng.random() < ambiguity:
        count = 1 + int(rng.random() < two_borrowed)
        slots = sorted(rng.choice(len(style.slots), size=count, replace=False).tolist())
        for slot in slots:
            cues[slot] = style.canonical[partner][slot]
        swapped = tuple(style.slots[slot] for slot in slots)
    return Scene(style.name, label, tuple(cues), partner, swapped)


def balanced_labels(style: Style, n: int, rng: np.random.Generator) -> list[str]:
    """`n` labels, each label count within one of the others, in a shuffled order."""
    labels = [style.labels[i % len(style.labels)] for i in range(n)]
    return [labels[i] for i in rng.permutation(n)]
