"""Words the planner never saw, rewritten into words it was trained on before it reads a prompt.

    rewritten = rewrite_prompt("a crimson sphere plummeting at the seashore")
    rewritten.text      # "a red circle moving down on the beach" (with the shipped lexicon)
    rewritten.replaced  # [Replacement("crimson", "red", "colour"), ...]

The planner's reader carries unseen words through their MiniLM embeddings, which place rare synonyms
poorly ("plummeting" lies nearer to bouncing than to falling). The lexicon (LEXICON_PATH, a TSV of
attribute, value, phrase; written from general knowledge of English, blind to the evaluation wordings:
see its header) holds common English phrases for each value of the world, and joiners between scenes and
between objects. A phrase of it is rewritten into one phrase of that value the planner was trained on
(`canonical`), longest phrases first, never across a line break (prompt_lists reads lines) and never when
the phrase is a training phrase itself or the lexicon gives it two values. A place named by a bare noun
takes its preposition, article and up to two words before it along ("on a sandy shore" -> "on the
beach"), a camera move its subject ("the camera pulls back" -> "the camera zooms out").
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import world
from .prompt_lists import JOINER

LEXICON_PATH = Path(__file__).resolve().parents[2] / "assets" / "video_generation" / "prompt_lexicon.tsv"
# Each motion as a phrase the planner was fitted on, in the third person and in the -ing form ("a ball plunging").
MOTION_FORMS: dict[str, tuple[str, str]] = {
    "left": ("moves left", "heading left"), "right": ("moves right", "heading right"), "up": ("rises", "moving up"),
    "down": ("falls", "moving down"), "still": ("stays still", "sitting still"), "grow": ("grows", "expanding"),
    "shrink": ("shrinks", "contracting"), "rotate": ("spins", "spinning"), "bounce": ("bounces", "jumping"),
}
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")
_PREPOSITIONS = frozenset({"at", "on", "in", "by", "under", "beneath", "below", "underneath", "during", "near",
                           "over", "across", "through", "against", "before", "inside", "into", "onto", "upon",
                           "along", "beside", "amid", "amidst", "among", "within", "above", "around"})
_ARTICLES = frozenset({"a", "an", "the", "some", "this", "that"})
_CAMERA_SUBJECT = re.compile(r"(?:\b(?:the|a|an)[ \t]+)?\b(?:camera|lens|view|shot|frame|framing)"
                             r"(?:[ \t]+(?:is|stays|remains|keeps|holds))?[ \t]+$", re.IGNORECASE)
# An object's motion said of the camera ("the camera is immobile", "the view drifts left") is a camera move.
_CAMERA_OF_MOTION = {"still": "static", "left": "pan_left", "right": "pan_right"}
_JOINER_EDGES = " \t,;:"


@dataclass(frozen=True)
class Replacement:
    original: str      # the prompt's words, as written
    replacement: str   # the training phrase put in their place
    attribute: str     # "shape", "colour", ..., or "joiner"


@dataclass
class RewrittenPrompt:
    text: str
    replaced: list[Replacement] = field(default_factory=list)


def canonical(attribute: str, value: str, phrase: str) -> str:
    """The training phrase that stands in for `phrase`, a lexicon phrase of (attribute, value)."""
    if attribute == "shape":
        return world.shape_noun(value)
    if attribute == "colour":
        return value
    if attribute == "motion":
        if re.fullmatch(r"\w+wards?", phrase) and value in ("left", "right", "up", "down"):
            return value   # a direction alone ("settling downward"): its verb stays
        third, ing = MOTION_FORMS[value]
        return ing if phrase.split()[0].endswith("ing") else third
    if attribute == "background":
        return world.BACKGROUND_PHRASES[value]
    if attribute == "camera":
        return world.CAMERA_PHRASES[value]
    if attribute == "joiner":
        return JOINER   # object joiners are never rewritten (load_lexicon)
    raise ValueError(f"no canonical phrase for attribute {attribute!r}")


def _training_phrases() -> set[str]:
    """Every phrase any value, joiner or article is trained with (lower case)."""
    known = {p.lower() for a in world.PHRASED_ATTRIBUTES for v in _values(a) for p in world.phrase_words(a, v, "train")}
    known |= {p.lower().strip(" ,:") for p in world.phrase_options(world.SCENE_JOINERS, "train")}
    known |= {p.lower() for p in world.phrase_options(world.OBJECT_JOINERS, "train")}
    return known


def _values(attribute: str) -> tuple[str, ...]:
    from .planner import ATTRIBUTES
    return ATTRIBUTES[attribute]


def _rows(path: Path):
    """(attribute, value, phrase) rows of the TSV, digit templates expanded for every digit."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{path.name}:{n}: want attribute<TAB>value<TAB>phrase, got {line!r}")
        attribute, value, phrase = parts[0].lower(), parts[1].lower(), " ".join(parts[2].lower().split())
        if attribute == "shape" and value == "digit":
            for d, w in zip(world.DIGITS, world.DIGIT_WORDS):
                yield attribute, d, phrase.replace("{d}", d).replace("{w}", w)
            continue
        if attribute != "joiner" and value not in _values(attribute):
            raise ValueError(f"{path.name}:{n}: {value!r} is no {attribute} value")
        yield attribute, value, phrase


@functools.cache
def load_lexicon(path: Path = LEXICON_PATH) -> dict[tuple[str, ...], tuple[str, str]]:
    """Phrase words -> (attribute, value) of every usable entry: training phrases and phrases given two
    values are left out. An absent file is an empty lexicon."""
    if not path.is_file():
        return {}
    known = _training_phrases()
    found: dict[tuple[str, ...], set[tuple[str, str]]] = {}
    for attribute, value, phrase in _rows(path):
        words = tuple(_WORD.findall(phrase))
        if attribute == "joiner" and value == "object":
            continue   # left as written: rewritten into "and" they cost the validation wording scenes (0.91 -> 0.85)
        if words and phrase not in known and not all(w.isdigit() for w in words):   # a bare "3" is a count
            found.setdefault(words, set()).add((attribute, value))
    return {words: next(iter(meanings)) for words, meanings in found.items() if len(meanings) == 1}


def _match(tokens: list[tuple[int, int, str]], text: str, i: int, words: tuple[str, ...]) -> bool:
    """Whether `words` occur at token i, each pair of them separated by spaces or tabs only."""
    if i + len(words) > len(tokens):
        return False
    for k, w in enumerate(words):
        if tokens[i + k][2] != w:
            return False
        if k and text[tokens[i + k - 1][1]:tokens[i + k][0]].strip(" \t"):
            return False
    return True


def _place_start(tokens: list[tuple[int, int, str]], text: str, i: int) -> int | None:
    """Where a place named by a bare noun at token i starts: at a preposition up to an article and two
    words before it ("on a sandy shore"); None without one (the "midnight" of "midnight blue" names no place)."""
    for back in range(1, 5):
        k = i - back
        if k < 0 or text[tokens[k][1]:tokens[k + 1][0]].strip(" \t"):
            return None
        if tokens[k][2] in _PREPOSITIONS:
            return tokens[k][0]
    return None


def _joiner_start(tokens: list[tuple[int, int, str]], text: str, i: int) -> int:
    """Where a scene joiner at token i starts: with the punctuation and the "then" / "and" before it (", and
    then cut to" is one joiner)."""
    start = tokens[i][0]
    k = i - 1
    while k >= 0 and tokens[k][2] in ("then", "and") and not text[tokens[k][1]:start].strip(_JOINER_EDGES):
        start, k = tokens[k][0], k - 1
    while start and text[start - 1] in _JOINER_EDGES:
        start -= 1
    return start


def _same(original: str, replacement: str) -> bool:
    return " ".join(_WORD.findall(original.lower())) == " ".join(_WORD.findall(replacement.lower()))


def rewrite_prompt(prompt: str, lexicon: dict[tuple[str, ...], tuple[str, str]] | None = None) -> RewrittenPrompt:
    """`prompt` with every lexicon phrase in it rewritten into its training phrase (module docstring)."""
    lexicon = load_lexicon() if lexicon is None else lexicon
    if not lexicon:
        return RewrittenPrompt(prompt)
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for words in sorted(lexicon, key=len, reverse=True):
        by_first.setdefault(words[0], []).append(words)
    tokens = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(prompt)]
    edits: list[tuple[int, int, str, str]] = []   # start, end, replacement, attribute
    i = 0
    while i < len(tokens):
        words = next((w for w in by_first.get(tokens[i][2], ()) if _match(tokens, prompt, i, w)), None)
        if words is None:
            i += 1
            continue
        attribute, value = lexicon[words]
        n = len(words)
        start, end = tokens[i][0], tokens[i + n - 1][1]
        replacement = canonical(attribute, value, " ".join(words))
        near = max(0, start - 64)   # a camera subject is a few words long: no search over the whole prefix
        subject = _CAMERA_SUBJECT.search(prompt, near, start)
        if attribute == "motion" and subject:
            if value not in _CAMERA_OF_MOTION:
                i += 1
                continue
            attribute, value = "camera", _CAMERA_OF_MOTION[value]
            replacement = canonical(attribute, value, " ".join(words))
        if attribute == "background" and words[0] not in _PREPOSITIONS:
            start = _place_start(tokens, prompt, i)
        elif attribute == "camera" and subject:
            start = subject.start()
        elif attribute == "colour" and i + n < len(tokens) and tokens[i + n][2] == value:
            replacement, end = "", tokens[i + n][0]   # "maize yellow": the hue is named already
        elif attribute == "joiner":
            start = _joiner_start(tokens, prompt, i)
            while end < len(prompt) and prompt[end] in _JOINER_EDGES:
                end += 1
            # only between clauses, with a scene before and after it ("rises and later falls" stays)
            between = prompt[start:tokens[i][0]].lstrip(" \t").startswith((",", ";"))
            if not (between and tokens[0][0] < start and prompt[end:].strip(_JOINER_EDGES + ".")):
                start = None
        if start is None or _same(prompt[start:end], replacement) or edits and start < edits[-1][1]:
            i += 1   # no place or no clauses to join, a rewrite into itself, or over the rewrite before
            continue
        edits.append((start, end, replacement, attribute))
        i += n
    text, last, replaced = [], 0, []
    for start, end, replacement, attribute in edits:
        text += [prompt[last:start], replacement]
        replaced.append(Replacement(prompt[start:end].strip(_JOINER_EDGES), replacement, attribute))
        last = end
    text.append(prompt[last:])
    return RewrittenPrompt("".join(text), replaced)
