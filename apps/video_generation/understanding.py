"""What the studio understood of a prompt: which words carried each planned attribute and how sure the
planner was, which attributes it guessed or left at their default, which words it did not know or read
and dropped, and warnings (non-English text, symbols, negations, counts, text past the planner's limit).

    plan = load_planner().plan("a red car and a purple elephant", 3.0)
    u = understand(prompt, plan)
    u.understood_objects        # True: the colours were read ("red", "purple"); no shape word is known
    u.unrecognised_words        # ["car", "elephant"]: the shapes are guesses
    u.to_dict(), u.markdown()   # JSON (CLI/API) and the page's "understood as" lines

Everything is read off the planner's own per-token probabilities (Plan.reading) and the decoder's own
object split (Planner._object_spans), so it describes the decision the planner made, for any prompt.
The word lists come from the synthetic world's phrasings (world.py) and scikit-learn's English stop
words, never from a list of example prompts.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import asdict, dataclass, field

import numpy as np

from core.text.language import looks_english

from . import world

# A value is "read" when a content word backs it with at least READ_MIN, or with at least TAGGED when the
# word is one of the world's own phrasings of that value. Measured on the shipped planner (25 prompts per
# held-out set, seed 7; and "a <random vocabulary word>" x 60): correct shapes from known phrasings have
# p >= 0.83 in 90% of cases, while a random word reaches some value with p >= 0.76 in a quarter of cases
# and >= 0.87 in a tenth: confidence alone cannot tell them apart, hence the vocabulary check.
READ_MIN = 0.8
TAGGED = 0.5          # a token whose "names none" probability is below this names some value of the attribute
NEUTRAL = {"motion": "still", "background": "studio", "camera": "static"}   # what an unnamed attribute is
SCENE_ATTRS = ("background", "camera")
NEGATIONS = frozenset({"no", "not", "without", "never", "nor", "none", "don't", "doesn't", "isn't", "aren't",
                       "won't", "shouldn't", "mustn't", "can't", "cannot", "neither"})
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
NUMBER_WORDS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty")   # counts past the digits ("twenty red balls")
QUANTITIES = frozenset({"many", "several", "some", "few", "multiple", "numerous", "lots", "couple", "dozen",
                        "dozens", "pair", "hundreds", "thousands", "countless", "various", "both"})


_IRREGULAR_PLURALS = {"mice": "mouse", "geese": "goose", "feet": "foot", "teeth": "tooth", "dice": "die",
                      "children": "child", "people": "person", "oxen": "ox", "women": "woman", "men": "man"}
_PLURAL_ENDINGS = (("ies", "y"), ("ves", "f"), ("ves", "fe"), ("men", "man"), ("i", "us"), ("ices", "ex"),
                   ("es", ""), ("s", ""))


def singulars(word: str) -> set[str]:
    """`word` (lower case) and the singulars it may be the plural of ("skies" -> "sky", "leaves" -> "leaf",
    "rhombi" -> "rhombus", "mice" -> "mouse"); a guess by ending, so some are not words."""
    out = {word, _IRREGULAR_PLURALS.get(word, word)}
    out.update(word[:-len(end)] + single for end, single in _PLURAL_ENDINGS
               if word.endswith(end) and len(word) > len(end) + 1)
    return out


def in_vocabulary(word: str, vocabulary) -> bool:
    """`word` (lower case) or its singular ("stars" -> "star", "boxes" -> "box", "rhombi" -> "rhombus") is
    in `vocabulary`: the world's phrasings are singular, prompts often are not. A verb's plural form
    ("roll" of "two balls roll") is known when its singular ("rolls") is."""
    return any(w in vocabulary for w in singulars(word)) or \
        (len(word) >= 3 and (word + "s" in vocabulary or word + "es" in vocabulary))


class NothingUnderstoodError(ValueError):
    """The prompt names nothing the studio can draw (no shape or colour word it knows)."""

    def __init__(self, message: str, understanding: Understanding):
        super().__init__(message)
        self.understanding = understanding


@dataclass
class Reading:
    """One planned attribute: the value, how it was decided and from which words."""
    value: str
    status: str                      # "read" (words named it), "guessed" (weak or no words), "default", "requested"
    words: list[str] = field(default_factory=list)   # the prompt words that named this value
    confidence: float = 0.0          # the planner's best probability for the value over the words it looked at
    source: str | None = None        # for a guess: the word the guess came from


@dataclass
class Understanding:
    scenes: list[dict]                       # per scene: {"objects": [{attr: Reading}], "background", "camera"}
    style: Reading | None
    unrecognised_words: list[str]            # content words outside the world's vocabulary that carry nothing
    ignored_words: list[str]                 # words read as a value that the plan does not use
    guessed: list[dict]                      # {"scene", "object", "attribute", "value", "status", ...}, 1-based
    warnings: list[str]
    understood_objects: bool                 # some object's shape or colour was read from the prompt
    read_as: list[dict] = field(default_factory=list)   # prompt_lexicon's rewrites: {original, replacement, attribute}

    def to_dict(self) -> dict:
        return {"understood_objects": self.understood_objects, "summary": self.summary(),
                "scenes": [{k: ([{a: asdict(r) for a, r in o.items()} for o in v] if k == "objects" else asdict(v))
                            for k, v in s.items()} for s in self.scenes],
                "style": asdict(self.style) if self.style else None,
                "unrecognised_words": self.unrecognised_words, "ignored_words": self.ignored_words,
                "guessed": self.guessed, "warnings": self.warnings, "read_as": self.read_as}

    def summary(self) -> str:
        """One line: each scene as understood, guessed values marked '?', defaults '*'."""
        mark = {"read": "", "requested": "", "guessed": "?", "default": "*"}

        def show(r: Reading, text: str | None = None) -> str:
            return (text or r.value) + mark[r.status]
        parts = []
        for k, s in enumerate(self.scenes):
            objs = " and ".join(f"{show(o['colour'])} {show(o['shape'], world.shape_noun(o['shape'].value))} "
                                f"{show(o['motion'], world.MOTION_PHRASES[o['motion'].value])}" for o in s["objects"])
            parts.append(f"scene {k + 1}: {objs}, background {show(s['background'])}, "
                         f"camera {show(s['camera'], s['camera'].value.replace('_', ' '))}")
        line = "; ".join(parts)
        if self.style:
            line += f"; style {show(self.style)}"
        return line + " (? guessed, * default: not in the prompt)"

    def markdown(self) -> str:
        """The page's lines under the video."""
        read = []
        for s in self.scenes:
            for o in s["objects"]:
                read += [f"{'/'.join(r.words)!r} → {a} {r.value} ({r.confidence:.0%})" for a, r in o.items()
                         if r.status == "read"]
            read += [f"{'/'.join(s[a].words)!r} → {a} {s[a].value} ({s[a].confidence:.0%})" for a in SCENE_ATTRS
                     if s[a].status == "read"]
        lines = [f"**Understood as:** {self.summary()}"]
        if self.read_as:
            lines.append("**Read through the lexicon:** " + "; ".join(
                f"{r['original']!r} as {r['replacement'].strip(' ,')!r}" for r in self.read_as))
        if read:
            lines.append("**Read from your words:** " + "; ".join(dict.fromkeys(read)))
        if guesses := self.guesses_text():
            lines.append("**Guessed:** " + guesses)
        lines += [f"⚠ {w}" for w in self.warnings]
        return "\n\n".join(lines)

    def guesses_text(self) -> str:
        """The values guessed (not defaulted), one clause each; "" when none."""
        return "; ".join(guess_text(g) for g in self.guessed if g["status"] == "guessed")


def guess_text(g: dict) -> str:
    """One `guessed` entry as text."""
    where = f"scene {g['scene']}" + (f" object {g['object']}" if g.get("object") else "")
    src = f" from {g['source']!r}" if g.get("source") else ""
    return f"{where} {g['attribute']} {g['value']}{src} ({g['confidence']:.0%}, {g['why']})"


# ---------------------------------------------------------------- vocabulary from the world

@functools.cache
def world_vocabulary() -> tuple[frozenset[str], dict[tuple[str, str], frozenset[str]], frozenset[str]]:
    """(function words, value words, known words): function words are those world prompts use outside
    value phrases (articles, joiners, frames, stated lengths) plus scikit-learn's English stop words;
    known words are every word of every phrasing (never "not understood"); value words[(attr, value)] are
    the words of the phrasings of that value (all splits) that at most two values of the attribute use
    ("left", "rolls", "up": yes; "the", "a", "camera", "digit": no, they tell no value apart)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from .planner import ATTRIBUTES

    structure: set[str] = set()
    rng = np.random.default_rng(0)
    for split in world.SPLITS:
        for _ in range(300):
            text, spans = world.script_to_prompt_spans(world.sample_script(rng), rng, split)
            values = [(a, b) for a, b, label in spans if ":" in label and not label.startswith("seconds:")]
            for m in _WORD.finditer(text.lower()):
                if not any(a <= m.start() < b for a, b in values):
                    structure.add(m.group())
    value_words, uses = {}, {}
    for attr in world.PHRASED_ATTRIBUTES:
        for value in ATTRIBUTES[attr]:
            phrases = [p for s in world.SPLITS for p in world.phrase_words(attr, value, s)] + [value]
            value_words[(attr, value)] = frozenset(w for p in phrases for w in _WORD.findall(p.lower()))
            for w in value_words[(attr, value)]:
                uses[(attr, w)] = uses.get((attr, w), 0) + 1
    known = frozenset(w for ws in value_words.values() for w in ws)
    value_words = {(a, v): frozenset(w for w in ws if uses[(a, w)] <= 2) for (a, v), ws in value_words.items()}
    return frozenset(structure | set(ENGLISH_STOP_WORDS)), value_words, known


# ---------------------------------------------------------------- reading a plan

@dataclass(eq=False)
class _Word:
    text: str
    start: int
    end: int
    tokens: list[int]


def _words(prompt: str, offsets: list[tuple[int, int]]) -> list[_Word]:
    out = []
    for m in _WORD.finditer(prompt):
        toks = [t for t, (a, b) in enumerate(offsets) if b > a and a < m.end() and b > m.start()]
        out.append(_Word(m.group(), m.start(), m.end(), toks))
    return out


def _symbols(prompt: str) -> list[str]:
    """Emoji and other symbols (Unicode category S*), which the studio cannot read."""
    return list(dict.fromkeys(ch for ch in prompt if unicodedata.category(ch).startswith("S")
                              and ch not in "+=<>$%^`|~"))


def understand(prompt: str, plan, style: str | None = None) -> Understanding:
    """Explain `plan` (planner.Plan with its reading) of `prompt`; `style`: the style the caller asked for."""
    from .planner import ATTRIBUTES, Planner

    reading = plan.reading
    if reading is None:
        raise ValueError("plan has no reading (planner.Plan.reading): plan it with planner.Planner.plan")
    function, value_words, known_words = world_vocabulary()
    probs, offsets = reading.probs, reading.offsets
    words = _words(prompt, offsets)
    word_of = {t: w for w in words for t in w.tokens}
    index = {w.start: j for j, w in enumerate(words)}

    def carries(w: _Word, attr: str, value: str) -> bool:
        low = w.text.lower()
        return low not in function or in_vocabulary(low, value_words.get((attr, value), ()))

    def tagged(t: int, attr: str, c: int) -> bool:
        return probs[attr][t, 0] < TAGGED and int(np.argmax(probs[attr][t, 1:])) == c

    used: set[int] = set()   # word starts that carry a planned value

    def reading_of(attr: str, value: str, rows: np.ndarray, taken: frozenset[int] = frozenset()) -> Reading:
        return read_words(attr, value, rows, taken)[0]

    def read_words(attr: str, value: str, rows: np.ndarray, taken: frozenset[int]) -> tuple[Reading, list[_Word]]:
        """The reading of `value` over token `rows` and the tagged words that name it (empty unless "read");
        `taken`: starts of words read as another attribute (the scene's background), which cannot name
        this one ("grass" of "on the grass" is no green)."""
        rows = np.array([t for t in rows if int(t) not in word_of or word_of[int(t)].start not in taken], dtype=int)
        if rows.size == 0:
            return Reading(value, "default" if NEUTRAL.get(attr) == value else "guessed"), []
        c = ATTRIBUTES[attr].index(value)
        p_R = probs[attr][rows, 1 + c]
        conf = float(p_R.max())
        source = word_of.get(int(rows[int(np.argmax(p_R))]))
        tagged_words = list(dict.fromkeys(word_of[int(t)] for t in rows if int(t) in word_of
                                          and tagged(int(t), attr, c)))
        ws = list(dict.fromkeys(w.text for w in tagged_words))
        strong = {word_of[int(t)] for t in rows if int(t) in word_of and probs[attr][int(t), 1 + c] >= READ_MIN}
        known = value_words.get((attr, value), frozenset())
        carriers = [w for w in tagged_words if carries(w, attr, value)
                    and (w in strong or in_vocabulary(w.text.lower(), known))]
        if carriers:
            # only the words that name the value are used: the carriers and their phrase's other words
            # ("rolls" of "rolls left", tagged or not, within two words), but no other word the reader leaned
            # the same way ("car" after "red") and no far word of another phrase ("green" of "green field")
            near = {j for w in carriers for j in range(index[w.start] - 2, index[w.start] + 3)}
            phrase = [word_of[int(t)] for t in rows if int(t) in word_of and index[word_of[int(t)].start] in near
                      and in_vocabulary(word_of[int(t)].text.lower(), known)]
            named_by = sorted(dict.fromkeys([*carriers, *phrase]), key=lambda w: w.start)
            used.update(w.start for w in named_by)
            ws = list(dict.fromkeys(w.text for w in named_by))
            return Reading(value, "read", ws, round(conf, 4)), carriers
        named = bool((probs[attr][rows, 0] < TAGGED).any())
        if not named and NEUTRAL.get(attr) == value:
            return Reading(value, "default", [], round(conf, 4)), []
        return Reading(value, "guessed", ws, round(conf, 4), source.text if source else None), []

    scenes, guessed = [], []
    for k, scene in enumerate(plan.script.scenes):
        toks = np.flatnonzero(reading.scene_id_T == k)
        spans = Planner._object_spans(toks, reading.p_object_start_T, probs)
        if len(spans) != len(scene.objects):   # cannot happen with the shipped decoder; stay honest if it does
            spans = [(toks, toks)] * len(scene.objects)
        background, scenery_words = read_words("background", scene.background, toks, frozenset())
        scenery = frozenset(w.start for w in scenery_words)   # words read as the background name no colour
        motion_rows = Planner.motion_rows(spans, probs, reading.link_T)   # a shared verb is read where it stands
        objects = []
        for i, (obj, (rows, shape_rows)) in enumerate(zip(scene.objects, spans)):
            o = {"shape": reading_of("shape", obj.shape, shape_rows),
                 "colour": reading_of("colour", obj.colour, rows, scenery),
                 "motion": reading_of("motion", obj.motion, motion_rows[i])}
            objects.append(o)
            for attr, r in o.items():
                if r.status in ("guessed", "default"):
                    guessed.append(_guess(k, i, attr, r, rows, probs))
        rows_of = {"background": toks, "camera": Planner.camera_rows(toks, probs)}   # as the planner reads them
        s = {"objects": objects, "background": background,
             "camera": reading_of("camera", scene.camera, rows_of["camera"])}
        for attr in SCENE_ATTRS:
            if s[attr].status in ("guessed", "default"):
                guessed.append(_guess(k, None, attr, s[attr], rows_of[attr], probs))
        scenes.append(s)
        # a stated length ("for 3 seconds") is read by the time axis: its words are used
        for t in toks:
            p = probs["seconds"][t]
            if p[0] < TAGGED and p[1:].max() >= READ_MIN and int(t) in word_of:
                used.add(word_of[int(t)].start)

    style_reading = None
    if style is not None:
        style_reading = Reading(style, "requested")
    elif plan.script.style is not None:
        style_reading = reading_of("style", plan.script.style, np.array(sorted(word_of)))

    if style is None and plan.script.style is not None:
        # "painting" of "in the style of an oil painting" names the style too: only words of the phrase the
        # planner read as the style (from its first to its last style-tagged word), never the world's colour,
        # shape or motion words ("black", "heart" of a style's description)
        described = style_words(plan.script.style)
        tagged_at = [j for j, w in enumerate(words) if any(probs["style"][t, 0] < TAGGED for t in w.tokens)]
        scene_words = frozenset(w for (a, _), ws in value_words.items() if a in ("colour", "shape", "motion")
                                for w in ws)
        if tagged_at:
            used.update(w.start for w in words[tagged_at[0]:tagged_at[-1] + 1] if w.text.lower() in described
                        and not in_vocabulary(w.text.lower(), scene_words))

    # words: read confidently somewhere but unused; content words read nowhere
    unrecognised, ignored = [], []
    for w in words:
        low = w.text.lower()
        if w.start in used or not w.tokens:
            continue
        best = [(attr, ATTRIBUTES[attr][int(np.argmax(probs[attr][t, 1:]))], float(probs[attr][t, 1:].max()))
                for t in w.tokens for attr in ATTRIBUTES if probs[attr][t, 0] < TAGGED]
        if any(p >= READ_MIN and carries(w, a, v) for a, v, p in best) and low not in function:
            ignored.append(w.text)
        elif low not in function and not in_vocabulary(low, known_words):
            unrecognised.append(w.text)   # a word of the world's phrasings (or its plural) is known
    unrecognised, ignored = list(dict.fromkeys(unrecognised)), list(dict.fromkeys(ignored))

    understood = any(o[a].status == "read" for s in scenes for o in s["objects"] for a in ("shape", "colour"))
    warnings = _warnings(prompt, words, offsets, probs, function, unrecognised, ignored, used, understood, scenes)
    return Understanding(scenes, style_reading, unrecognised, ignored, guessed, warnings, understood)


@functools.lru_cache(maxsize=1)
def shape_words() -> frozenset[str]:
    """Words of the world's shape phrasings that tell shapes apart ("ball", "square", "heart"), singular."""
    from .planner import ATTRIBUTES

    value_words = world_vocabulary()[1]
    return frozenset(w for v in ATTRIBUTES["shape"] for w in value_words.get(("shape", v), ()) if not w.isdigit())


@functools.lru_cache(maxsize=1)
def shape_nouns() -> frozenset[str]:
    """The shape_words that are a whole shape phrasing on their own ("ball", "star", "cube"), singular: the
    nouns that name a shape by themselves (not "big" of "big ball", "outline" of "heart outline", no digit
    or number word)."""
    single = {p.lower() for sp in world.SPLITS for v in world.SHAPES for p in world.phrase_words("shape", v, sp)
              if " " not in p.strip()}
    return frozenset(w for w in single & shape_words() if not w.isdigit() and w not in world.DIGIT_WORDS)


@functools.lru_cache(maxsize=64)
def style_words(style: str) -> frozenset[str]:
    """Content words that describe the style expert `style` names (its name, aliases and descriptions:
    "painting" for oil); empty when `style` is a description rather than a name."""
    from .style import EXPERTS, default_router

    name = default_router().names.get("_".join(style.strip().lower().replace("-", " ").split()))
    if name is None:
        return frozenset()
    expert = EXPERTS[name]
    text = " ".join([name, *expert.aliases, *expert.descriptions]).replace("_", " ").lower()
    function = world_vocabulary()[0]
    return frozenset(w for w in _WORD.findall(text) if w not in function)


def _guess(k: int, i: int | None, attr: str, r: Reading, rows: np.ndarray, probs: dict) -> dict:
    named = rows.size > 0 and bool((probs[attr][rows, 0] < TAGGED).any())
    why = ("not in the prompt" if r.status == "default" else
           f"no {attr} word found" if not named else "weak reading")
    return {"scene": k + 1, "object": None if i is None else i + 1, "attribute": attr, "value": r.value,
            "status": r.status, "confidence": r.confidence, "source": r.source, "why": why}


def _warnings(prompt: str, words: list[_Word], offsets, probs, function: frozenset[str], unrecognised: list[str],
              ignored: list[str], used: set[int], understood: bool, scenes: list[dict]) -> list[str]:
    out = []
    symbols = _symbols(prompt)
    if symbols:
        out.append(f"symbols and emoji are not read: {' '.join(symbols)}")
    foreign = [w.text for w in words if any(ord(ch) > 127 and ch.isalpha() for ch in w.text)]
    if foreign:
        out.append(f"words with non-English letters are not read: {', '.join(dict.fromkeys(foreign))}; "
                   "the studio reads English only")
    elif not looks_english(prompt) or (len(words) >= 3 and not any(w.text.lower() in function for w in words)
                                       and len(unrecognised) >= 2 * len(words) / 3):
        out.append("the prompt does not look like English (function words of another language, or none of "
                   "English and most words unknown); the studio reads English only")
    if not understood:
        out.append("no shape or colour word was understood: every object in the video is a guess")
    # an object whose shape and colour were both guessed: no word named it, the planner made it up
    invented = [f"scene {k + 1} object {i + 1} ({o['colour'].value} {world.shape_noun(o['shape'].value)})"
                for k, sc in enumerate(scenes) for i, o in enumerate(sc["objects"])
                if o["shape"].status != "read" and o["colour"].status != "read"]
    if invented and understood:   # (nothing understood at all has its own warning)
        out.append(f"made up by the planner, no word of the prompt names them: {', '.join(invented)}")
    if unrecognised:
        out.append(f"{len(unrecognised)} word(s) not understood (nothing in the video comes from them but "
                   f"guesses): {', '.join(unrecognised)}")
    if ignored:
        full = len(scenes) >= world.MAX_SCENES or any(len(s["objects"]) >= world.MAX_OBJECTS for s in scenes)
        if full:   # a limit was reached: it is the likely reason
            out.append(f"read but not used (a scene holds at most {world.MAX_OBJECTS} objects, a video at most "
                       f"{world.MAX_SCENES} scenes): {', '.join(ignored)}")
        else:
            out.append(f"read but not used: {', '.join(ignored)} (the plan has no place for them; check the "
                       "result)")
    # negations: the planner has no notion of "not"; flag a negation right before words it read as a value
    # (unless the negation is itself part of a value phrase: "does not move" is the world's "still")
    def names_value(v: _Word) -> bool:
        return any(probs[a][t, 0] < TAGGED for t in v.tokens for a in probs)
    for j, w in enumerate(words):
        if w.text.lower() not in NEGATIONS or w.start in used:
            continue
        after = [v for v in words[j + 1:j + 4] if v.start in used or names_value(v)]
        if after:
            out.append(f"negation {w.text!r} is not understood: {' '.join(v.text for v in after)!r} after it was "
                       "read as asked for; check the result")
    # counts: a number or quantity word before a shape word ("three red balls", "2 stars", "many balls") still
    # draws one object (or the digit itself): the studio draws one object per mention
    numbers = (set(world.DIGIT_WORDS) | set(NUMBER_WORDS)) - {"one", "zero"}
    nouns = shape_nouns()
    for j, a in enumerate(words):
        low = a.text.lower()
        number = low in numbers or (a.text.isdigit() and int(a.text) > 1)
        if not number and low not in QUANTITIES:
            continue
        for b in words[j + 1:j + 4]:   # "three red balls": a colour word may stand between
            noun = b.text.lower()   # a shape word of the world or its plural ("p" of "3 p.m." is none)
            plural = noun not in nouns and in_vocabulary(noun, nouns)
            if noun in function or not (plural or noun in nouns):
                continue
            if plural or (number and b is words[j + 1]):
                phrase = prompt[a.start:b.end]
                out.append(f"counts are not understood: {phrase!r} draws one object (the studio draws one object "
                           f"per mention; name each one, e.g. 'a red ball and a blue ball'"
                           + (f"; {a.text!r} may be read as the digit itself)" if number else ")"))
                break
    last = max((b for a, b in offsets if b > a), default=0)
    cut = [w.text for w in words if w.start >= last]
    if cut:
        out.append(f"the prompt is longer than the planner reads: the last {len(cut)} word(s), from "
                   f"{cut[0]!r} on, were not read")
    return out


def check_understood(prompt: str, u: Understanding) -> None:
    """NothingUnderstoodError when no object's shape or colour was read (the video would be a random one)."""
    if u.understood_objects:
        return
    known = ", ".join(world.SHAPES[:6]) + ", digits 0-9"
    colours = ", ".join(world.COLOURS)
    extra = [w for w in u.warnings if "English" in w or "symbols" in w]
    raise NothingUnderstoodError(
        f"prompt {prompt[:80]!r}: no shape or colour the studio knows was understood"
        + (f" (not understood: {', '.join(u.unrecognised_words[:12])})" if u.unrecognised_words else "")
        + (f"; {'; '.join(extra)}" if extra else "")
        + f". Name an object of its world, e.g. 'a red ball rolls left on a beach' (shapes: {known}; colours: "
        f"{colours}); or ask for a guess anyway (API allow_guesses, page 'render a guess anyway', CLI "
        "--allow-guesses).", u)
