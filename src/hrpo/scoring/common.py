r"""Where the answer is in a completion: the text after the answer marker, ``\boxed{}`` answers, the text after
'answer is', chat-template tokens and the leading clause of an answer. Shared by every answer family."""

from __future__ import annotations

import re


def text_after_marker(completion: str, marker: str) -> str | None:
    """Text after the last ``marker`` (stripped, one trailing '.' dropped), or None when the marker is absent."""
    if marker not in completion:
        return None
    text = completion.rsplit(marker, 1)[1].strip()
    return text[:-1].strip() if text.endswith(".") else text


def marker_count_ok(completion: str, marker: str) -> bool:
    """The training format rule of the reference: the marker occurs exactly once."""
    return completion.count(marker) == 1


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` / ``\fbox{...}`` (braces balanced), or of ``\boxed 5``; else None."""
    spans = boxed_spans(text)
    return spans[-1][2] if spans else None


_BOXED = re.compile(r"\\boxed|\\fbox")


def _boxed_content(text: str, i: int) -> tuple[str, int] | None:
    """The argument of a ``\\boxed`` whose name ends at ``i`` and the index after it (None: no or unbalanced one)."""
    rest = text[i:]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        token = rest.strip().split("$")[0].split()
        return (token[0], text.index(token[0], i) + len(token[0])) if token else None
    opening = re.match(r"\s*\{", rest)
    if not opening:
        return None
    depth, start = 0, i + opening.end() - 1
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:j], j + 1
    return None


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    r"""Every top-level ``\boxed{}`` / ``\fbox{}`` in ``text`` as (start, end, content)."""
    spans, i = [], 0
    while (m := _BOXED.search(text, i)):
        found = _boxed_content(text, m.end())
        if found is None:
            i = m.end()
            continue
        spans.append((m.start(), found[1], found[0]))
        i = found[1]
    return spans


_BOX_GAP = 40  # at most this many characters (no line break, no sentence end) between boxes of one answer


def _joins_boxes(gap: str) -> bool:
    r"""The text between two boxes makes them one answer: short, on one line, not a sentence end, and any
    words in it include 'and' / 'or' (", ", " and ", "\quad \text{or} \quad"; not " is wrong, see ")."""
    if len(gap) > _BOX_GAP or "\n" in gap or re.search(r"[.!?]\s", gap):
        return False
    words = set(re.findall(r"(?<!\\)\b[A-Za-z]{2,}\b", gap)) - {"text", "quad", "qquad"}
    return not words or bool(words & {"and", "or"})


def boxed_group(text: str) -> list[str]:
    r"""The contents of the last ``\boxed{}`` and of the boxes just before it that belong to the same answer
    (joined by a short gap such as ", ", " and " or ``\quad``: "\boxed{3} and \boxed{-1}" -> ["3", "-1"])."""
    spans = boxed_spans(text)
    if not spans:
        return []
    group = [spans[-1]]
    for span in reversed(spans[:-1]):
        if not _joins_boxes(text[span[1]:group[0][0]]):
            break
        group.insert(0, span)
    return [content for _, _, content in group]


def boxed_answer(text: str) -> str | None:
    r"""The boxed answer of ``text``: the content of its box, or "\boxed{a}, \boxed{b}" for several boxes that
    form one answer (kept boxed so that :func:`math_equal` compares them as a set); None without a box."""
    group = boxed_group(text)
    if len(group) > 1:
        return ", ".join(f"\\boxed{{{item.strip()}}}" for item in group)
    return group[0].strip() if group else None


_ANSWER_LEAD = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*", re.IGNORECASE)


def after_answer_phrase(text: str) -> str:
    """The text after the last 'answer is' / 'answer:' (the whole text when there is none)."""
    matches = list(_ANSWER_LEAD.finditer(text))
    return text[matches[-1].end():] if matches else text


def _strip_markdown(text: str) -> str:
    return re.sub(r"\*\*|__|`", "", text)


_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>")


def before_special_token(text: str) -> str:
    """The text before the first chat-template token such as ``<|im_start|>`` (what follows is not the answer)."""
    return _SPECIAL_TOKEN.split(text, 1)[0]


# $$...$$, $...$, \(...\), \[...\]; an escaped \$ (a dollar sign, as in $\$14$) is no delimiter
_DELIMS = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)

# where the statement of an answer ends: a line break, the end of a sentence, or an explanation that follows it
_CLAUSE_END = re.compile(r"\n|[.!?](?=\s+[A-Z(\[])|[.!?]\s*$|,?\s+(?:because|since)\b|\s+\((?=[A-Za-z]{2,})")


def answer_clause(text: str) -> str:
    r"""The leading clause of an answer text: up to the first line break, sentence end, 'because'/'since' or
    parenthesised remark, ignoring those inside ``$...$`` / ``\[...\]`` spans ("42. Check: 40 + 2 = 42" -> "42")."""
    text = text.strip()
    masked = _DELIMS.sub(lambda m: "$" * len(m[0]), text)
    end = _CLAUSE_END.search(masked)
    return (text[:end.start()] if end else text).strip()
