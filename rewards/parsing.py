"""Text parsing for EMO-R3's rewards (METHOD.md §2-§3). Pure: stdlib only.

Every function here accepts any `str` text and never raises on it; "not found" is `None`. (Only an
unknown `style` argument of `coherence_span` raises `ValueError`.)
"""

from __future__ import annotations

import re
from typing import Literal

# METHOD.md §3: whitespace around `<`, `>` and `/` is removed before accuracy and format are scored.
_TAG_WHITESPACE = re.compile(r"\s*(<|>|/)\s*")

# METHOD.md §3, R_coh span as released: from `<step1>` through the first `</step2>`, tags included.
_COHERENCE_SPAN = re.compile(r"(<step1>.*?</step2>)", re.DOTALL)

# METHOD.md §3, R_cons span as released: from `<step1>` up to just before the first `<step2>`.
_CONSISTENCY_SPAN = re.compile(r"(<step1>.*?)(?=<step2>)", re.DOTALL)

# The "echo" coherence span (not in the release) tolerates whitespace inside the tags.
_ECHO_HEAD = re.compile(r"<\s*step1\s*>.*?<\s*/\s*step2\s*>", re.DOTALL)
_ECHO_STOP = re.compile(r"<\s*step3\s*>|\\boxed\{")

_BOX_OPEN = "\\boxed{"
_BRACE_TOKENS = re.compile(r"\\boxed\{|[{}]")

CoherenceSpanStyle = Literal["release", "echo"]


def normalize_whitespace(text: str) -> str:
    """Drop whitespace around `<`, `>` and `/` (METHOD.md §3: `\\s*(<|>|/)\\s*` → the char itself)."""
    return _TAG_WHITESPACE.sub(r"\1", text)


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
    """The "release" style of `coherence_span`."""
    match = _COHERENCE_SPAN.search(response)
    return match.group(1) if match else None


def _echo_coherence_span(response: str) -> str | None:
    """The "echo" style of `coherence_span`."""
    head = _ECHO_HEAD.search(response)
    if head is None:
        return None
    stop = _ECHO_STOP.search(response, head.end())
    end = stop.start() if stop else len(response)
    return response[head.start() : head.end()] + response[head.end() : end].rstrip()


_COHERENCE_SPAN_STYLES = {"release": _release_coherence_span, "echo": _echo_coherence_span}


def consistency_span(response: str) -> str | None:
    """The reasoning the consistency reflection reads (METHOD.md §3, R_cons), or `None` if absent.

    Regex `(<step1>.*?)(?=<step2>)`, dot-all, on the decoded response, as released: from `<step1>`
    up to just before the first `<step2>`; step-1 content is kept in both writing styles.
    """
    match = _CONSISTENCY_SPAN.search(response)
    return match.group(1) if match else None
