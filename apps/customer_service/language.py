"""Is a message English? A cheap check for the dialogue, so that a message in another language gets
"I only understand English" instead of a random intent.

    looks_english("I lost my card")                 # True
    looks_english("Je voudrais bloquer ma carte")   # False: French function words, no English ones
    looks_english("我的卡丢了")                       # False: mostly letters outside the Latin script

Two signals, no model: the share of letters outside the Latin script, and common function words of
other European languages outweighing English ones. The word lists hold only words that are not also
common English words ("he", "a", "in", "die", "no" are left out), and a capitalised word before
another ("El Paso") is taken for a name. Names can still trip it, so the dialogue asks only when the
intent model did not confidently understand the message.
"""
from __future__ import annotations

import re

LATIN_END = 0x024F          # letters above Basic Latin ... Latin Extended-B count as another script
MAX_OTHER_SCRIPT = 0.5      # a message with more of its letters in another script is not English

ENGLISH_WORDS = frozenset("""
i you we they it my your our their me us him her them this that these those is are was were be been am
do does did have has had will would can could should shall may might must not the an and or but if of
to for with on at by from about into over what when where why how which who whom there here please
a as in so he she
""".split())

OTHER_WORDS = frozenset("""
je tu il elle nous vous ils elles le les un une des du au aux est et mon ma mes ton ta tes son sa ses
pour avec dans pas ne que qui sur mais ou où comment pourquoi voudrais veux suis ai avez êtes cette ce
ich du er sie wir ihr und der das ist nicht mein meine meinen ein eine einen mit für zu auf habe haben
bitte wie warum wo was ich kann können möchte dem den des im bei nach von oder aber auch noch sehr
el los las y es mi mis tu tus su sus por para con una uno del al pero qué cómo dónde porque quiero tengo
puedo está estoy son muy yo también
il lo gli della dello degli che non sono ho hai ha vorrei perché dove come questo questa per
o os as um uma meu minha não com você estou tenho quero obrigado
het een ik jij wij zij niet mijn met voor van ook
""".split()) - ENGLISH_WORDS - frozenset(  # also English words, abbreviations or fillers
    "son come per con com os ai ta ton er den im yo ha pour comment dove met van del non um y o".split())

_WORD = re.compile(r"[^\W\d_]+")


def looks_english(text: str) -> bool:
    """False when most letters of `text` are outside the Latin script, or when function words of
    other languages (French, German, Spanish, Italian, Portuguese, Dutch) are at least as many as
    English ones; True otherwise (including text without letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return True
    if sum(ord(c) > LATIN_END for c in letters) > MAX_OTHER_SCRIPT * len(letters):
        return False
    words = _WORD.findall(text)
    # "El Paso", "Los Angeles", "Le Mans": a capitalised word before another starts a name, not a phrase
    names = {i for i in range(len(words) - 1) if words[i][0].isupper() and words[i + 1][0].isupper()}
    lower = [w.lower() for w in words]
    other = sum(w in OTHER_WORDS for i, w in enumerate(lower) if i not in names)
    return other == 0 or sum(w in ENGLISH_WORDS for w in lower) > other
