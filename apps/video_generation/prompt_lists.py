"""Scene lists in a prompt, rewritten into the prose the planner was trained on before it reads them.

    restructure("1. a red ball rolls left on a beach 2. a blue square rises at night").text
    # -> "a red ball rolls left on a beach, then cut to a blue square rises at night"

Numbered lists ("1. ... 2. ..."), labels ("Scene 1: ...", "Shot 2 - ...") and one scene per line are
joined by the planner's own scene joiner, with the enumerators removed: the planner reads a bare "1" as
the digit 1 and never saw list layouts. Free prose is left as it is (the planner splits it itself).
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
                     r"|(?P<n2>\d{1,2})[.)])\s+(?=\S)", re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*\u2022]\s+")
# a line that starts like this continues the line before it (a wrapped sentence, not a new scene)
_CONTINUES = frozenset({"on", "in", "at", "and", "while", "with", "under", "over", "near", "across", "into",
                        "then", "as", "from", "to", "during", "before", "after"})


@dataclass
class StructuredPrompt:
    text: str                                          # what the planner reads
    items: list[str] = field(default_factory=list)     # the scenes the prompt lists (empty: prose)
    dropped: list[str] = field(default_factory=list)   # listed scenes past world.MAX_SCENES, left out

    def warnings(self) -> list[str]:
        if not self.dropped:
            return []
        first = world.MAX_SCENES + 1
        names = "; ".join(f"{first + i}: {item!r}" for i, item in enumerate(self.dropped))
        return [f"a video holds at most {world.MAX_SCENES} scenes: the prompt lists {len(self.items)}, "
                f"scene(s) {names} left out"]


_LEAD = re.compile(r"^(?:and\s+)?(?:then|next|after that|finally)\b[,:]?\s*", re.IGNORECASE)


def _clean(item: str) -> str:
    """One listed scene: single spaces, no end punctuation, no joiner of its own ("then ...")."""
    return _LEAD.sub("", " ".join(item.split()).strip(" .;,"))


def _numbered(text: str) -> list[str] | None:
    """The items of a numbered or labelled list, or None when `text` is no such list."""
    marks = list(_MARKER.finditer(text))
    if not marks or marks[0].start() != 0:
        return None
    numbers = [int(m["n1"] or m["n2"]) for m in marks]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return None
    labelled = all(m["label"] for m in marks)
    if len(marks) < 2 and not labelled:   # a lone "3. a red ball" may well be a digit
        return None
    ends = [m.start() for m in marks[1:]] + [len(text)]
    items = [_clean(text[m.end():end]) for m, end in zip(marks, ends)]
    return items if all(items) else None


def restructure(prompt: str) -> StructuredPrompt:
    """Rewrite a prompt that lists its scenes into the planner's joined prose; prose comes back unchanged."""
    lines = [_BULLET.sub("", line).strip() for line in prompt.splitlines()]
    lines = [line for line in lines if line]
    items = _numbered("\n".join(lines))
    if items is None and len(lines) >= 2:
        items = []
        for line in lines:
            first = line.split(maxsplit=1)[0].lower()
            if items and first in _CONTINUES:
                items[-1] = f"{items[-1]} {line}"
            else:
                items.append(line)
        items = [_clean(i) for i in items if _clean(i)]
        if len(items) < 2:
            return StructuredPrompt(" ".join(" ".join(lines).split()))
    if not items:
        return StructuredPrompt(prompt)
    kept = items[:world.MAX_SCENES]
    return StructuredPrompt(JOINER.join(kept), items, items[world.MAX_SCENES:])


def plan_listed(planner, listed: StructuredPrompt, seconds: float, style: str | None = None):
    """The planner's Plan of `listed.text`. When the prompt listed its scenes and the planner's reading of the
    joined text has another number of scenes (it splits background-less items poorly: four such items
    joined give one scene), each listed scene is planned on its own, with an equal share of `seconds`, and
    the plans are joined: scenes, experts, and the reading shifted onto listed.text, so that understanding
    reads the words of every scene as usual."""
    plan = planner.plan(listed.text, seconds, style=style)
    kept = listed.items[:world.MAX_SCENES]
    if len(kept) < 2 or len(plan.script.scenes) == len(kept):
        return plan
    parts = [planner.plan(item, seconds / len(kept), style=style) for item in kept]
    if sum(len(p.script.scenes) for p in parts) > world.MAX_SCENES:
        return plan
    return _joined(parts, kept, style)


def _joined(parts: list, items: list[str], style: str | None):
    """One Plan from plans of items[i] laid end to end, its reading on JOINER.join(items)."""
    import numpy as np

    from .planner import Plan, PlanReading

    offsets, probs, p_obj, scene_id, scenes, experts, confidence = [], {}, [], [], [], [], []
    start = 0
    for part, item in zip(parts, items):
        r = part.reading
        offsets += [(a + start, b + start) if b > a else (a, b) for a, b in r.offsets]
        for attr, p in r.probs.items():
            probs.setdefault(attr, []).append(p)
        p_obj.append(r.p_object_start_T)
        scene_id.append(np.where(r.scene_id_T >= 0, r.scene_id_T + len(scenes), r.scene_id_T))
        scenes += part.script.scenes
        experts += part.experts
        confidence += part.confidence
        start += len(item) + len(JOINER)
    named = style if style is not None else next((p.script.style for p in parts if p.script.style), None)
    cuts = [float(c) for c in np.cumsum([s.seconds for s in scenes])[:-1]]
    timings = {k: sum(p.timings_ms.get(k, 0.0) for p in parts) for k in parts[0].timings_ms}
    reading = PlanReading(offsets, {a: np.concatenate(ps) for a, ps in probs.items()}, np.concatenate(p_obj),
                          np.concatenate(scene_id))
    return Plan(world.Script(scenes, named), cuts, experts, confidence, timings, reading)
