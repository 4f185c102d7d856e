"""Scene lists in a prompt, rewritten into the prose the planner was trained on before it reads them.

    restructure("1. a red ball rolls left on a beach 2. a blue square rises at night").text
    # -> "a red ball rolls left on a beach, then cut to a blue square rises at night"

Numbered lists ("1. ... 2. ...", "1 - ..." at line starts), labels ("Scene 1: ...", "Shot 2 - ...") and
bulleted lines are joined by the planner's own scene joiner, with the enumerators removed: the planner reads
a bare "1" as the digit 1 and never saw list layouts. Bare lines are prose wrapped by the writer unless a
line names a shape of its own ("a blue square rises at night"): only such a line starts a new scene, and
never after a line that ends open ("... on the", "... a blue"). Free prose is left as it is (the planner
splits it itself).
", then cut to" rather than ", then": on the shipped planner, "a red ball rolls left, then a blue square
rises" plans one scene, the same two items joined by ", then cut to" plan two.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import world

JOINER = ", then cut to "
# an enumerator at the start of the text or after white space: "Scene 2:", "shot 3 -", "2.", "2)"
_MARKER = re.compile(r"(?:(?<=\s)|^)(?:(?P<label>scene|shot|part|step)\s*(?P<n1>\d{1,2})\s*[:.)\-\u2013]"
                     r"|(?P<n2>\d{1,2})[.)])\s+(?=\S)"
                     r"|(?:(?<=\n)|^)(?P<n3>\d{1,2})\s*[:\-\u2013]\s+(?=\S)", re.IGNORECASE)   # "2 - ..." starts a line
_BULLET = re.compile(r"^\s*[-*\u2022]\s+")
# a line that starts like this continues the line before it (a wrapped sentence, not a new scene)
_CONTINUES = frozenset({"on", "in", "at", "and", "while", "with", "under", "over", "near", "across", "into",
                        "then", "as", "from", "to", "during", "before", "after"})
# a line that ends like this is cut mid-phrase: the next line continues it ("... on the\nbeach")
_OPEN_END = frozenset({"a", "an", "the", "its", "their", "his", "her", "this", "that", "these", "those", "of",
                       "on", "in", "at", "and", "or", "but", "while", "with", "under", "near", "across", "into",
                       "onto", "through", "towards", "toward", "from", "to", "by", "for", "as", "then", "is", "are",
                       "very", "some", "another"})
_WORDS = re.compile(r"[a-z0-9]+(?:['-][a-z]+)*")
_DIGIT_SHAPE = re.compile(r"\b(?:digit|number|numeral)\s+(?:\d|" + "|".join(world.DIGIT_WORDS) + r")\b")


@dataclass
class StructuredPrompt:
    text: str                                          # what the planner reads
    items: list[str] = field(default_factory=list)     # the scenes the prompt lists (empty: prose)
    dropped: list[str] = field(default_factory=list)   # listed scenes past world.MAX_SCENES, left out
    explicit: bool = False                             # numbered, labelled or bulleted (not bare lines)

    def warnings(self) -> list[str]:
        if not self.dropped:
            return []
        first = world.MAX_SCENES + 1
        names = "; ".join(f"{first + i}: {item!r}" for i, item in enumerate(self.dropped))
        return [f"a video holds at most {world.MAX_SCENES} scenes: the prompt lists {len(self.items)}, "
                f"scene(s) {names} left out"]


_LEAD = re.compile(r"^(?:and\s+)?(?:then|next(?!\s+to\b)|after that|finally)\b[,:]?\s*", re.IGNORECASE)


def _clean(item: str) -> str:
    """One listed scene: single spaces, no end punctuation, no joiner of its own ("then ...")."""
    return _LEAD.sub("", " ".join(item.split()).strip(" .;,"))


def _numbered(text: str) -> list[str] | None:
    """The items of a numbered or labelled list, or None when `text` is no such list."""
    marks = list(_MARKER.finditer(text))
    if not marks or marks[0].start() != 0:
        return None
    numbers = [int(m["n1"] or m["n2"] or m["n3"]) for m in marks]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return None
    labelled = all(m["label"] for m in marks)
    if len(marks) < 2 and not labelled:   # a lone "3. a red ball" may well be a digit
        return None
    ends = [m.start() for m in marks[1:]] + [len(text)]
    items = [_clean(text[m.end():end]) for m, end in zip(marks, ends)]
    return items if all(items) else None


def _colour_words() -> frozenset[str]:
    """Colour words of the world's phrasings and palette, and the common ones outside it ("black")."""
    from .understanding import world_vocabulary

    value_words = world_vocabulary()[1]
    return frozenset(w for (a, _), ws in value_words.items() if a == "colour" for w in ws) | \
        frozenset(world.COLOURS) | {"black", "grey", "gray", "brown"}


def names_a_shape(line: str) -> bool:
    """Whether a line names a shape of the world by itself ("a blue square rises", "stars fall", "a green
    digit 7"): only such a line can be a scene of its own."""
    from .understanding import in_vocabulary, shape_nouns

    nouns = shape_nouns()
    low = line.lower()
    return any(in_vocabulary(w, nouns) for w in _WORDS.findall(low)) or bool(_DIGIT_SHAPE.search(low))


def _bare_lines(lines: list[str]) -> list[str]:
    """Bare lines grouped into scenes: a line starts a new scene only when it names a shape, does not start
    like a continuation ("while a blue square rises") and the line before does not end open ("on the",
    "a blue")."""
    colours = _colour_words()
    items: list[str] = []
    for line in lines:
        first = line.split(maxsplit=1)[0].lower()
        last = (_WORDS.findall(items[-1].lower()) or [""])[-1] if items else ""
        open_end = bool(items) and not items[-1].rstrip().endswith((".", "!", "?", ";", ",")) and \
            (last in _OPEN_END or last in colours)
        if items and (first in _CONTINUES or open_end or not names_a_shape(line)):
            items[-1] = f"{items[-1]} {line}"
        else:
            items.append(line)
    return items


def restructure(prompt: str) -> StructuredPrompt:
    """Rewrite a prompt that lists its scenes into the planner's joined prose; prose comes back unchanged
    (wrapped prose comes back on one line)."""
    raw = [line.strip() for line in prompt.splitlines()]
    raw = [line for line in raw if line]
    bulleted = len(raw) >= 2 and bool(_BULLET.match(raw[0])) and sum(bool(_BULLET.match(x)) for x in raw) >= 2
    lines = [_BULLET.sub("", line).strip() for line in raw]
    items = _numbered("\n".join(lines))
    explicit = items is not None
    if items is None and bulleted:   # each bullet a scene; a line without one continues the bullet before
        items = []
        for mark, line in zip(raw, lines):
            if items and not _BULLET.match(mark):
                items[-1] = f"{items[-1]} {line}"
            else:
                items.append(line)
        items, explicit = [_clean(i) for i in items if _clean(i)], True
    elif items is None and len(lines) >= 2:
        items = [_clean(i) for i in _bare_lines(lines) if _clean(i)]
        if len(items) < 2:   # one scene wrapped over lines: the prose on one line
            return StructuredPrompt(" ".join(" ".join(lines).split()))
    if not items:
        return StructuredPrompt(prompt)
    kept = items[:world.MAX_SCENES]
    return StructuredPrompt(JOINER.join(kept), items, items[world.MAX_SCENES:], explicit)


def plan_listed(planner, listed: StructuredPrompt, seconds: float, style: str | None = None):
    """The planner's Plan of `listed.text`. When the prompt listed its scenes explicitly (numbered, labelled or
    bulleted: bare lines are read as prose) and the planner's reading of the
    joined text has another number of scenes (it splits background-less items poorly: four such items
    joined give one scene), each listed scene is planned on its own, with an equal share of `seconds`, and
    the plans are joined: scenes, experts, and the reading shifted onto listed.text, so that understanding
    reads the words of every scene as usual."""
    plan = planner.plan(listed.text, seconds, style=style)
    kept = listed.items[:world.MAX_SCENES]
    if not listed.explicit or len(kept) < 2 or len(plan.script.scenes) == len(kept):
        return plan
    parts = [planner.plan(item, seconds / len(kept), style=style) for item in kept]
    if sum(len(p.script.scenes) for p in parts) > world.MAX_SCENES:
        return plan
    from .planner import join_plans

    return join_plans(parts, kept, JOINER, style)
