"""Reading a free-text radiology report: nodule mentions (size, lobe, negation) and their embeddings.

    reading = read_report("6 mm nodule in the right upper lobe. No nodule in the left lung.")
    reading.mentions          # [Mention(size_mm=6.0, lobe="right upper lobe", negated=False, ...), ...]
    reading.embeddings_MD     # [M, 384] the text stream's sentence vectors of the mentions (for fusion)

Rules find what rules do well: numbers and units ("8 x 6 mm", "1.2 cm"), lobe names and their
abbreviations, and negation cues with a scope ("no nodule", "without", "has resolved", "no longer
seen"; "no change" is not a negation). Each clause that names a nodule-like finding is one mention.
The meaning of the whole clause reaches the detector as the core's text stream (MiniLM-shaped, MoE
FFNs, task "report_reading") sentence vector, which the fusion network learns to use. An empty or
absent report gives no mentions, and the detector then runs on the image alone.
"""
from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")
EMBED_DIM = 384  # the text stream's width

_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20}
_NUM = r"(?:\d+(?:[.,]\d+)?|" + "|".join(_NUMBER_WORDS) + r")"
_UNIT = r"(mm|cm|millimet(?:er|re)s?|centimet(?:er|re)s?)\b"
# "8 mm", "8mm", "1.2 cm", "8 x 6 mm", "8 x 6 x 5 mm", "8 by 6 mm", "eight millimeter"
_SIZE = re.compile(rf"\b({_NUM}(?:\s*(?:x|×|by|\*)\s*{_NUM}){{0,2}})\s*[-–]?\s*{_UNIT}", re.I)
# A size that is no nodule's size now: an earlier one ("previously 5 mm", "from 5 mm"), ...
# (right after the cue: "the previously seen 5 mm nodule" is 5 mm now)
_EARLIER = re.compile(r"(?:\b(?:previously|(?<!ranging\s)(?<!range\s)from|compared\s+(?:to|with))\s*"
                      r"(?:measur\w*\s+|at\s+)?\(?|\(\s*prior:?)\s*$", re.I)
# ... or one dated after it ("4 mm on the prior exam", "(4 mm on 2023-01-05)", "4 mm in 2021")
_EARLIER_AFTER = re.compile(r"^\s*\)?\s*(?:on|in|at)\s+(?:the\s+)?(?:prior|previous|earlier|last|comparison|"
                            r"baseline|\d{4}\b|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b)", re.I)
# ... a solid component's or a scan's ("with a 4 mm solid component", "on 5 mm slices")
_NOT_A_NODULE_SIZE = re.compile(r"^\s*-?\s*(?:(?:thin|thick|axial|contiguous|slice|section)\s+)?(?:solid\s+"
                                r"(?:component|portion|part)|slices?|sections?|collimation|thickness|reconstructions?|"
                                r"increments?|cavit\w*|from|away|below|above|beneath|(?:anterior|posterior|superior|"
                                r"inferior|lateral|medial|cephalad|caudal|deep)\s+(?:to|of|from))\b", re.I)
# ... or a part's or a margin's named before it ("solid component of 4 mm", "± 1 mm") ...
_PART_BEFORE = re.compile(r"(?:\bsolid\s+(?:component|portion|part)s?\s*(?:of|measuring|:)?|±|\+/-)\s*$", re.I)
# ... or, in a denial, a threshold ("no nodules > 4 mm" denies larger ones, not those of 4 mm)
_THRESHOLD_BEFORE = re.compile(r"(?:[>≥]|\b(?:larger|greater|bigger|more)\s+than|\bover|\bexceeding|\babove)\s*$",
                               re.I)
# "6 mm in long axis and 4 mm in short axis": one nodule's two axes
_AXIS = re.compile(r"^\s*(?:in\s+(?:the\s+)?)?(?:long|short|longest|shortest|maximal|minimal)\s+(?:axis|"
                   r"diameter|dimension)\b", re.I)
_FINDING = re.compile(r"\b(nodul\w*|micronodul\w*|opacit\w*|lesion\w*|mass(?:es)?|ground[- ]glass|ggos?|"
                      r"part[- ]solid|granulom\w*|densit(?:y|ies)|spot\w*)\b", re.I)
# A generic finding word (opacity, density, spot) naming something else: consolidation, scarring...
_GENERIC_FINDING = re.compile(r"^(?:opacit|densit|spot)", re.I)
_NOT_NODULAR = re.compile(r"\b(consolidat\w*|atelecta\w*|tree[- ]in[- ]bud|scar\w*|infect\w*|inflammat\w*|"
                          r"pneumoni\w*|fibro\w*|emphysem\w*|bronchiectas\w*|edema|oedema|effusion)\b", re.I)
_NODULAR_NOT_NODULE = re.compile(r"\bnodular\s+(?:scar\w*|thicken\w*|pleural|septal|interstitial|contour|margin\w*)",
                                 re.I)
_ABBREV = {"rul": "right upper lobe", "rml": "right middle lobe", "rll": "right lower lobe",
           "lul": "left upper lobe", "lll": "left lower lobe"}
_SIDE_WORDS = {"right": "right", "rt": "right", "r": "right", "left": "left", "lt": "left", "l": "left"}
_AND_LOBES = r"(?=(?:\s*,\s*|\s+(?:and|or)\s+)(?:(?:right|left)\s+)?(?:upper|middle|lower)\s+lobes\b)"
_LOBE_PATTERNS = (
    (re.compile(r"\b(right|left|rt|lt|r|l)\.?[\s-]+(upper|middle|lower)\s+lobes?\b", re.I),
     lambda m: (_SIDE_WORDS[m[1].lower()], m[2])),
    (re.compile(r"\b(middle)\s+lobes?\b", re.I), lambda m: ("right", m[1])),   # only the right lung has one
    # "right upper and left lower lobes", "left upper and lower lobes": the first lobe, and the second's side
    (re.compile(rf"\b(right|left)\s+(upper|middle|lower){_AND_LOBES}", re.I), lambda m: (m[1], m[2])),
    (re.compile(r"\b(right|left)\s+(?:upper|middle|lower)(?:\s*,\s*|\s+(?:and|or)\s+)(?P<at>upper|middle|lower)\s+"
                r"lobes\b", re.I), lambda m: (m[1], m[2])),
    (re.compile(r"\b(upper|middle|lower)\s+lobes?\s+of\s+the\s+(right|left)\b", re.I), lambda m: (m[2], m[1])),
    (re.compile(r"\b(right|left)\s+(?:lung\s+)?(apex|apical|base|basal|basilar)\b", re.I),
     lambda m: (m[1], "upper" if m[2].lower().startswith("ap") else "lower")),
    (re.compile(r"\b(RUL|RML|RLL|LUL|LLL)\b", re.I), lambda m: tuple(_ABBREV[m[1].lower()].split()[:2])),
    (re.compile(r"\blingul\w*\b", re.I), lambda m: ("left", "upper")),
)
_SIDE = re.compile(r"\b(right|left)\b(?!\s+(?:ventricle|atri\w+|kidney|adrenal|breast|hilum|hilar))", re.I)
# Cues that negate a finding named after them in the same clause ...
_NEG_BEFORE = re.compile(r"\b(no|not|without|negative\s+for|free\s+of|absence\s+of|absent|rather\s+than|"
                         r"resolution\s+of|resolved|ruled?\s+out|neither|nor|clear\s+of)\b", re.I)
# ... or after it ("the nodule has resolved", "is no longer seen", "is not identified").
# ("not present on the prior" says the finding is new; "Nodules: none" is a template's denial)
_NEG_AFTER = re.compile(r"\b(resolved|no\s+longer|not\s+(?:seen|identified|visuali[sz]ed|present|appreciated|"
                        r"demonstrated|evident|detected)(?!\s+(?:on\s+(?:the\s+)?prior|previously|before|on\s+the\s+"
                        r"previous))|(?:is|are|was|were)\s+absent|disappeared|gone)\b"
                        r"|^\s*:\s*(?:none|absent|negative|nil)\b"
                        r"|^[^:.]{0,30}:\s*(?:none|no|nil|absent|negative|n/?a|0)\s*\.?\s*$", re.I)
# "no change", "not changed", "no significant growth": about the finding's course, not its existence.
_PSEUDO_NEG = re.compile(r"\b(?:no|not|without)\s+(?:\w+\s+){0,2}?(?:change\w*|growth|increase\w*|enlarg\w*|"
                         r"interval|significant\s+change|concerning\s+features?|calcification|spiculation|"
                         r"cavitation|suspicious)\b", re.I)
# "No suspicious pulmonary nodules", "no new or enlarging nodules": words that would read as a pseudo-negation
# ("no suspicious features", "no enlargement") deny the finding itself when they qualify it directly.
_DENIAL = re.compile(r"\b(?:no|without|negative\s+for)\s+(?:(?:new|suspicious|enlarging|growing|concerning|"
                     r"worrisome|discrete|definite|significant|additional|other|pulmonary|lung|solid|measurable|"
                     r"focal|dominant)(?:\s*,|\s+or|\s+and)?\s+)+$", re.I)
# Organs outside the lungs that a chest CT also shows: a lesion, mass or nodule there is no lung nodule.
_ELSEWHERE = re.compile(r"\b(liver|hepatic|kidneys?|renal|adrenals?|thyroid|breasts?|spleen|splenic|pancrea\w*|"
                        r"bones?|osseous|vertebra\w*|abdom\w*|skin|subcutaneous|mediastin\w*|o?esophag\w*|ribs?|"
                        r"axill\w*|stern\w*|chest\s+wall|pericardi\w*|thym\w*)\b", re.I)
_IN_LUNG = re.compile(r"\b(lungs?|\w*pulmonary|lingul\w*|pleura\w*|subpleural|fissur\w*|perifissural)\b", re.I)
_CLAUSE_SPLIT = re.compile(r";|\s+(?:but|however|whereas|while)\s+|,\s+(?:and\s+)?(?=(?:an?|the|another|"
                           r"a\s+second|a\s+third|no|one|two)\b)|\s+and\s+(?=(?:an?|another|no)\s|there\s+"
                           r"(?:is|are|was|were)\b)", re.I)
# "No nodules except for a 5 mm nodule in the RUL": what the exception names is the finding
_EXCEPT = re.compile(r"\b(?:no|without)\b[^,;.]{0,120}?\b(?:except(?:\s+for)?|apart\s+from|other\s+than|aside\s+from|"
                     r"besides)\s+", re.I)
# "No effusion or pneumothorax, 4 mm nodule in the RUL": a size after a comma starts a finding of its own
_SIZED_AFTER_COMMA = re.compile(rf",\s+(?=(?:(?:small|tiny|new|stable|solid|additional|another|an?)\s+){{0,2}}"
                                rf"{_NUM}\s*[-–]?\s*{_UNIT})", re.I)
# "The right middle lobe is clear": a lobe reported free of findings, though no finding is named.
_CLEAR = re.compile(r"\b(?:is|are|remains?|appears?)\s+(?:otherwise\s+)?clear\b", re.I)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)")
# A period that ends an abbreviation, not a sentence ("approx. 6 mm", "Se. 3, Im. 45", "Rt. lower lobe")
_ABBREVIATION_END = re.compile(r"\b(?:approx|appr|ca|se|ser|im|img|vs|fig|rt|lt|dr|cf|diam|meas|e\.g|i\.e)\.$", re.I)
_NUMBER_ABBREVIATION = re.compile(r"\b(?:image|series|slice|nodule|lesion|img|im|se)\s+no\.$", re.I)   # "image no. 45"
# Sections that name findings without reporting them ("INDICATION: follow-up of a lung nodule")
_ASIDE_SECTION = re.compile(r"^(?:clinical\s+)?(?:indications?|history|reason(?:\s+for\s+(?:the\s+)?(?:exam\w*|"
                            r"study|scan|referral))?|clinical\s+(?:information|data|details|question)|technique|"
                            r"protocol)\s*:", re.I)
_HEADER_ONLY = re.compile(r"^[^.]{1,40}:$")
_LABELLED = re.compile(r"^[A-Za-z][\w /&-]{0,40}:")   # a sentence opening with a section's label
_BARE_DENIAL = re.compile(r"^(?:none|no|nil|absent|negative|n/?a|0|not\s+(?:seen|present|identified))\.?$", re.I)
# "It measures 6 mm": a size for the finding of the sentence before
_IT_MEASURES = re.compile(r"^(?:it|this|which)\s+(?:now\s+|currently\s+)?(?:measures?|is)\b", re.I)


# Density a clause gives its finding (Fleischner / Lung-RADS terms); subsolid is tried first ("part-solid").
_SUBSOLID = re.compile(r"\b(ground[- ]?glass|ggos?|ggns?|sub-?solid|non-?solid|part[- ]?solid|semi-?solid)\b", re.I)
_SOLID = re.compile(r"\b(solid|soft[- ]tissue(?:\s+density)?|calcifi\w*)\b", re.I)


def parse_density(clause: str) -> str | None:
    """"subsolid" (ground-glass, part-solid, nonsolid), "solid", or None when the clause does not say."""
    if _SUBSOLID.search(clause):
        return "subsolid"
    return "solid" if _SOLID.search(clause) else None


@dataclass
class Mention:
    sentence: str                 # the clause naming the finding
    sentence_index: int           # index of its sentence in the report
    size_mm: float | None         # mean of the given dimensions, in mm (None: no size given)
    lobe: str | None              # one of LOBES (None: not given or only the side)
    side: str | None              # "right" | "left" | None
    negated: bool                 # the clause says the finding is absent or gone
    density: str | None = None    # "subsolid" | "solid" | None (not said): see parse_density

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReportReading:
    sentences: list[str]
    mentions: list[Mention]
    embeddings_MD: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBED_DIM), np.float32))

    @property
    def empty(self) -> bool:
        return not self.mentions


def split_sentences(text: str) -> list[str]:
    return [sentence for _, sentence in _paragraph_sentences(text)]


def _paragraph_sentences(text: str) -> list[tuple[int, str]]:
    """(paragraph index, sentence) of a report's sentences; a heading on a line of its own ("FINDINGS:") is a
    paragraph of its own, and so is each row of a table."""
    text = re.sub(r"\r\n?", "\n", text or "")   # Windows and old Mac line ends; HL7 segments end with "\r"
    text = re.sub(r"(?<=[a-z])-[ \t]*\n[ \t]*(?=[a-z])", "", text)   # "nod-\nule": a word broken at a line end
    # a table's row (cells split by "|" or tabs inside the line, not an indent) is a paragraph, cells split by "|"
    text = re.sub(r"^([^\n]*\S[ ]*[|\t][ \t]*\S[^\n]*)\r?\n", r"\1\n\n", text, flags=re.M)
    text = re.sub(r"(?<=\S)[ ]*\t[ \t]*(?=\S)", " | ", text)
    text = re.sub(r"[ \t\r\f\v]+", " ", text).strip()
    text = re.sub(r"^([^\n.]{1,40}:)[ ]*\n", r"\1\n\n", text, flags=re.M)
    out: list[tuple[int, str]] = []
    for p_i, paragraph in enumerate(re.split(r"\n\s*\n", text)):
        joined: list[str] = []
        for part in _SENTENCE_SPLIT.split(paragraph):
            part = part.strip(" \n-*•") if part else ""
            if not part:
                continue
            # an abbreviation's period ends no sentence (the end of the text so far is enough to look at)
            if joined and (_ABBREVIATION_END.search(joined[-1][-16:])
                           or (_NUMBER_ABBREVIATION.search(joined[-1][-24:]) and part[:1].isdigit())):
                joined[-1] += " " + part
            else:
                joined.append(part)
        out += [(p_i, sentence) for sentence in joined]
    return out


def _number(token: str) -> float:
    token = token.lower().replace(",", ".")
    return float(_NUMBER_WORDS.get(token, token))


def parse_size_mm(match: re.Match) -> float:
    """Mean of the dimensions of a size match, in mm."""
    dims = [_number(t) for t in re.split(r"\s*(?:x|×|by|\*)\s*", match[1], flags=re.I) if t]
    scale = 10.0 if match[2].lower().startswith(("cm", "centi")) else 1.0
    return float(np.mean(dims)) * scale


def _lobes_named(clause: str) -> list[tuple[int, str, str]]:
    """(start, lobe, side) of each lobe named in a clause, in order."""
    found = []
    for pattern, to_parts in _LOBE_PATTERNS:
        for m in pattern.finditer(clause):
            side, part = (s.lower() for s in to_parts(m))
            if side == "left" and part == "middle":
                part = "upper"  # the left lung has no middle lobe; the lingula belongs to the upper
            found.append((m.start("at" if "at" in pattern.groupindex else 0), f"{side} {part} lobe", side))
    return sorted(found)


def parse_lobe(clause: str) -> tuple[str | None, str | None]:
    """(lobe, side) named in a clause; the first lobe named wins."""
    if found := _lobes_named(clause):
        _, lobe, side = found[0]
        return lobe, side
    m = _SIDE.search(clause)
    return None, (m[1].lower() if m else None)


def is_negated(clause: str, finding_start: int, finding_end: int) -> bool:
    """Whether the finding at clause[finding_start:finding_end] is negated by a cue in its scope: one
    before it within the clause (pseudo-negations like "no change" excluded), or one after it."""
    if _DENIAL.search(clause[:finding_start]):
        return True
    before = _PSEUDO_NEG.sub(" ", clause[:finding_start])
    if any(len(before[m.end():].split()) <= 6 for m in _NEG_BEFORE.finditer(before)):
        return True
    return bool(_NEG_AFTER.search(_PSEUDO_NEG.sub(" ", clause[finding_end:])))


def _clauses(sentence: str) -> list[str]:
    clauses = []
    for clause in _CLAUSE_SPLIT.split(_EXCEPT.sub("", sentence)):
        # a negation's scope ends where a sized finding of its own follows a comma
        parts = _SIZED_AFTER_COMMA.split(clause) if clause and _NEG_BEFORE.search(clause) else [clause]
        clauses += [c.strip(" ,") for c in parts if c and c.strip(" ,")]
    return clauses


def find_mentions(text: str) -> tuple[list[str], list[Mention]]:
    """(sentences, mentions) of a report; one mention per size in a finding clause (or one, unsized)."""
    numbered = _paragraph_sentences(text)
    sentences = [sentence for _, sentence in numbered]
    mentions: list[Mention] = []
    # A heading on its own line scopes the paragraph after it; one inline ("INDICATION: follow-up of a nodule")
    # its own paragraph. Indication / history / technique sections name nodules without reporting them.
    aside_to = -1                                  # the last paragraph of an aside section
    section_lobe: tuple[str, str, int] | None = None   # "RIGHT UPPER LOBE:" places its paragraph: (lobe, side, p)
    for s_i, (p_i, sentence) in enumerate(numbered):
        heading = _HEADER_ONLY.match(sentence)
        if heading or _LABELLED.match(sentence):
            aside_to = (p_i + bool(heading)) if _ASIDE_SECTION.match(sentence) else -1
        if heading:
            lobe, side = parse_lobe(sentence)
            finding = _FINDING.search(sentence)
            section_lobe = (lobe, side, p_i + 1) if lobe is not None and finding is None else None
            if finding and aside_to < 0 and s_i + 1 < len(sentences) and _BARE_DENIAL.match(sentences[s_i + 1]):
                mentions.append(Mention(sentence, s_i, None, lobe, side, True))   # "NODULES:" / "None."
            continue   # a heading names what follows; it reports nothing itself
        if p_i <= aside_to:
            continue
        placed = section_lobe[:2] if section_lobe and section_lobe[2] == p_i else None
        if (mentions and mentions[-1].sentence_index == s_i - 1 and not mentions[-1].negated
                and _IT_MEASURES.match(sentence) and not _FINDING.search(sentence)
                and (sizes := _nodule_sizes(sentence))):
            # "A nodule is seen in the RUL. It measures 6 mm." (a size already given only by "now measures")
            if mentions[-1].size_mm is None or re.match(r"\S+\s+(?:now|currently)\b", sentence, re.I):
                mentions[-1].size_mm = sizes[-1][2]
            continue
        for clause in _clauses(sentence):
            mentions += _clause_mentions(clause, s_i, placed)
    return sentences, mentions


def _clause_mentions(clause: str, s_i: int, section_lobe: tuple[str, str] | None) -> list[Mention]:
    """The mentions of one clause: one per nodule size it gives (or one, unsized); a lobe reported clear."""
    finding = _FINDING.search(clause)
    if finding is None:
        lobe, side = parse_lobe(clause)
        if lobe is not None and _CLEAR.search(clause):
            return [Mention(clause, s_i, None, lobe, side, True)]
        if lobe is not None and "|" in clause and (sizes := _nodule_sizes(clause)):   # a nodule table's row
            return [Mention(clause, s_i, sizes[0][2], lobe, side, False, parse_density(clause))]
        return []
    if _ELSEWHERE.search(clause) and not _IN_LUNG.search(clause) and parse_lobe(clause)[0] is None:
        return []   # "a 1 cm hypodense lesion in the liver", "right adrenal nodule", "anterior mediastinal mass"
    if ((_GENERIC_FINDING.match(finding[1]) and _NOT_NODULAR.search(clause) and not _SIZE.search(clause))
            or (finding[1].lower().startswith("nodular") and _NODULAR_NOT_NODULE.search(clause))):
        return []   # "tree-in-bud opacities", "density ... consistent with consolidation", "nodular scarring"
    negated = is_negated(clause, finding.start(), finding.end())
    sizes = _nodule_sizes(clause, negated)
    if "|" in clause and not sizes and parse_lobe(clause) == (None, None):
        return []   # a table's column headings ("| Nodule | Lobe | Size |")

    def mention(size: float | None, piece: str) -> Mention:
        lobe, side = parse_lobe(piece)
        if lobe is None and side is None:
            lobe, side = parse_lobe(clause)
        if lobe is None and side is None and section_lobe:
            lobe, side = section_lobe
        return Mention(clause, s_i, size, lobe, side, negated, parse_density(piece) or parse_density(clause))

    if len(sizes) <= 1:
        lobes = list(dict.fromkeys(lobe for _, lobe, _ in _lobes_named(clause)))
        if negated and len(lobes) > 1:   # "no nodule in the RUL or LLL" denies both
            return [Mention(clause, s_i, sizes[0][2] if sizes else None, lobe, lobe.split()[0], True,
                            parse_density(clause)) for lobe in lobes]
        return [mention(sizes[0][2] if sizes else None, clause)]
    # Several sizes in one clause: "6 mm in the RUL and 4 mm in the LLL" gives each size the text from it to
    # the next size; "RUL 6 mm, LLL 4 mm" (a lobe before the first size) the text from the lobe named
    # after the size before it.
    lobes = _lobes_named(clause)
    if not lobes or lobes[0][0] > sizes[0][0]:
        bounds = [start for start, _, _ in sizes]
    else:
        bounds = [0] + [next((at for at, _, _ in lobes if sizes[n - 1][1] <= at < sizes[n][0]), sizes[n - 1][1])
                        for n in range(1, len(sizes))]
    return [mention(size, clause[bounds[n]:(bounds[n + 1] if n + 1 < len(sizes) else len(clause))])
            for n, (_, _, size) in enumerate(sizes)]


def _nodule_sizes(clause: str, negated: bool = False) -> list[tuple[int, int, float]]:
    """(start, end, mm) of the sizes of nodules a clause gives: not an earlier size ("previously 5 mm"), a solid
    component's or a slice thickness; "6 mm x 4 mm" is one size (their mean)."""
    sizes: list[tuple[int, int, list[float]]] = []   # (start, end, dimensions in mm)
    last_axis = False
    for m in _SIZE.finditer(clause):
        before, after = clause[:m.start()], clause[m.end():]
        if (_EARLIER.search(before) or _EARLIER_AFTER.search(after) or _PART_BEFORE.search(before)
                or _NOT_A_NODULE_SIZE.search(after) or (negated and _THRESHOLD_BEFORE.search(before))):
            continue
        axis = bool(_AXIS.search(after))
        if sizes and (re.fullmatch(r"\s*(?:x|×|by|\*)\s*", clause[sizes[-1][1]:m.start()], re.I)
                      or (axis and last_axis)):
            start, _, dims = sizes.pop()
            sizes.append((start, m.end(), [*dims, parse_size_mm(m)]))
            continue
        sizes.append((m.start(), m.end(), [parse_size_mm(m)]))
        last_axis = axis
    return [(start, end, float(np.mean(dims))) for start, end, dims in sizes]


@functools.cache
def _text_stream():
    """The core's text stream, upcycled from MiniLM (copy mode: the output is MiniLM's whatever the
    routing, so it needs no checkpoint of its own), in eval mode."""
    import torch

    from core.text import upcycle_minilm
    from core.text.classifier import default_stream

    torch.manual_seed(0)
    return upcycle_minilm(default_stream()).eval()


def embed_sentences(texts: list[str]) -> np.ndarray:
    """[N, 384] L2-normalised text-stream sentence vectors (task "report_reading")."""
    if not texts:
        return np.zeros((0, EMBED_DIM), np.float32)
    import torch

    from core.tasks import task_id
    from core.text import tokenize

    model = _text_stream()
    batch = tokenize(texts, 64)
    with torch.no_grad():
        out = model(batch.input_ids, batch.attention_mask, task_id=task_id("report_reading"))
    return torch.nn.functional.normalize(out.pooled, dim=-1).numpy().astype(np.float32)


def language_warning(text: str | None, reading: ReportReading) -> str | None:
    """A warning for a report that gave no mention and does not read as English (the reader's rules are
    English: a German or French report would pass as one naming no nodule), else None."""
    from core.text.language import looks_english

    if reading.mentions or not (text or "").strip() or looks_english(text):
        return None
    return ("the report does not read as English, and the report reader reads English only: no nodule mention "
            "was read from it, so the image alone decided")


def read_report(text: str | None, embed: bool = True) -> ReportReading:
    """Mentions of a report (None or blank: no mentions), with the sentence vectors when `embed`."""
    sentences, mentions = find_mentions(text or "")
    reading = ReportReading(sentences, mentions)
    if embed and mentions:
        reading.embeddings_MD = embed_sentences([m.sentence for m in mentions])
    return reading


# ---------------------------------------------------------------------------------------------- report files

REPORT_SUFFIXES = (".txt", ".md", ".pdf", ".docx", ".hl7")   # any case: CT.TXT is a report too; .hl7: an ORU message


class ReportFileError(ValueError):
    """A report file that cannot be read as text; the message names the file."""

    def __init__(self, path: Path, problem: str, line: int | None = None):
        super().__init__(f"{path}{'' if line is None else f':{line}'}: {problem}")


def is_report_file(path: Path) -> bool:
    return path.suffix.lower() in REPORT_SUFFIXES


def read_report_file(path: str | Path) -> str:
    """A report file's text: .txt / .md / .hl7 in UTF-8 (BOM or not), UTF-16 with a BOM or Windows-1252
    (data_connectors.text_files.decoded_file); .pdf's text layer and .docx's paragraphs through the knowledge
    readers. Unreadable, damaged (a .pdf or .docx the readers refuse), binary or blank files raise
    ReportFileError naming the file, so that callers treat them alike (the batch: image-only with a warning)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pdf", ".docx"):
        from data_connectors.knowledge import KnowledgeFormatError, read_docx, read_pdf

        try:
            docs = (read_pdf if suffix == ".pdf" else read_docx)(path)
        except KnowledgeFormatError as exc:
            problem = str(exc).removeprefix(f"{exc.path}: ")
            raise ReportFileError(path, problem) from None
        text = "\n".join(d.text for d in docs)
        if not text.strip():
            raise ReportFileError(path, "no text in it")
        return text
    from data_connectors.text_files import decoded_file

    text, _ = decoded_file(path, ReportFileError)
    return text
