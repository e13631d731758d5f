"""Text parsing for EMO-R3's rewards (METHOD.md §2-§3). Pure: stdlib only.

Every function here accepts any `str` text and never raises on it; "not found" is `None`. (Only an
unknown `style` argument of `coherence_span` raises `ValueError`.)

Every function reads model output (up to the rollout's token cap, tens of KiB) and runs in time linear
in its length: no pattern here can rescan the rest of the text from each start position. The release's
regexes are kept in the docstrings as the definition; tests check these functions against them.
"""

from __future__ import annotations

import re
from typing import Literal

# METHOD.md §3: whitespace around `<`, `>` and `/` is removed before accuracy and format are scored
# (released as `\s*(<|>|/)\s*` → the char, which removes every whitespace run touching one of them).
# A run after a tag character, or a whole run before one; the second branch starts only where a run
# starts, so a run followed by anything else is scanned once, not once per position (linear time).
_TAG_WHITESPACE = re.compile(r"(?<=[<>/])\s+|(?<!\s)\s+(?=[<>/])")

# METHOD.md §3, R_coh and R_cons spans as released: they start at `<step1>` and end at the first
# `</step2>` (included) or `<step2>` (excluded) after it.
_STEP1 = "<step1>"
_STEP2_CLOSE = "</step2>"
_STEP2_OPEN = "<step2>"

# The "echo" coherence span (not in the release) tolerates whitespace inside the tags. Each pattern
# matches one tag, so a search scans the text once.
_ECHO_OPEN = re.compile(r"<\s*step1\s*>")
_ECHO_CLOSE = re.compile(r"<\s*/\s*step2\s*>")
_ECHO_STOP = re.compile(r"<\s*step3\s*>|\\boxed\{")

_BOX_OPEN = "\\boxed{"
_BRACE_TOKENS = re.compile(r"\\boxed\{|[{}]")

CoherenceSpanStyle = Literal["release", "echo"]


def normalize_whitespace(text: str) -> str:
    """Drop whitespace around `<`, `>` and `/` (METHOD.md §3: `\\s*(<|>|/)\\s*` → the char itself)."""
    return _TAG_WHITESPACE.sub("", text)


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` in `text`, braces matched; `None` if there is none.

    METHOD.md §3 (accuracy). "Last" means the complete box that *starts* last, so in a nested
    `\\boxed{a \\boxed{b}}` the inner box (`b`) wins, as with the release's `rfind`. A box whose
    braces never close is not a box: it is ignored and an earlier complete box is used (the release
    would report no answer in that case). The content is returned verbatim, not stripped.
    A `}` with no open brace is ignored; braces are not escaped by a backslash.
    """
    stack: list[int] = []  # per open brace: index where its box content starts, or -1 for a plain brace
    best_start, best_end = -1, -1
    for token in _BRACE_TOKENS.finditer(text):
        if token.group() == "}":
            start = stack.pop() if stack else -1
            if start > best_start:
                best_start, best_end = start, token.start()
        else:
            stack.append(token.end() if token.group() == _BOX_OPEN else -1)
    if best_start < 0:
        return None
    return text[best_start:best_end]


def coherence_span(response: str, style: CoherenceSpanStyle = "release") -> str | None:
    """The reasoning the coherence reflection reads (METHOD.md §3, R_coh), or `None` if absent.

    Both styles search the decoded response as is (no whitespace normalization).

    - "release" (default): regex `(<step1>.*?</step2>)`, dot-all, tags included, as released. When
      the model echoes the tag lines and writes its content after them, step-2 content is lost.
    - "echo": like "release", from the first `<step1>` through the first `</step2>` after it, except
      that these tags may contain whitespace (`< step1 >`, `< / step2 >`); then the span is extended
      past that `</step2>` up to just before the first following `<step3>` (whitespace allowed in
      the tag); if there is none, up to just before the first following `\\boxed{`; if there is
      none either, to the end of the response. Trailing whitespace of the span is dropped, so a
      response with its content inside the tags gets the same span as "release".
    """
    try:
        find_span = _COHERENCE_SPAN_STYLES[style]
    except KeyError:
        raise ValueError(
            f"unknown coherence span style {style!r}; expected one of {sorted(_COHERENCE_SPAN_STYLES)}"
        ) from None
    return find_span(response)


def _release_coherence_span(response: str) -> str | None:
    """The "release" style of `coherence_span`: the first `<step1>` through the first `</step2>` after it.

    That is what `(<step1>.*?</step2>)` finds: if the first `<step1>` has no `</step2>` after it, no
    later one has.
    """
    start = response.find(_STEP1)
    end = response.find(_STEP2_CLOSE, start + len(_STEP1)) if start >= 0 else -1
    return response[start : end + len(_STEP2_CLOSE)] if end >= 0 else None


def _echo_coherence_span(response: str) -> str | None:
    """The "echo" style of `coherence_span`: the first opening tag, the first closing tag after it."""
    opening = _ECHO_OPEN.search(response)
    closing = _ECHO_CLOSE.search(response, opening.end()) if opening else None
    if closing is None:
        return None
    stop = _ECHO_STOP.search(response, closing.end())
    end = stop.start() if stop else len(response)
    return response[opening.start() : closing.end()] + response[closing.end() : end].rstrip()


_COHERENCE_SPAN_STYLES = {"release": _release_coherence_span, "echo": _echo_coherence_span}


def consistency_span(response: str) -> str | None:
    """The reasoning the consistency reflection reads (METHOD.md §3, R_cons), or `None` if absent.

    Regex `(<step1>.*?)(?=<step2>)`, dot-all, on the decoded response, as released: from `<step1>`
    up to just before the first `<step2>`; step-1 content is kept in both writing styles. Found as the
    first `<step1>` and the first `<step2>` after it, which is what the regex finds.
    """
    start = response.find(_STEP1)
    end = response.find(_STEP2_OPEN, start + len(_STEP1)) if start >= 0 else -1
    return response[start:end] if end >= 0 else None
