"""Is a text English? A cheap check shared by the apps: the chat answers a message in another language
with "I only understand English" instead of a random intent, and the video studio warns that it reads
English only.

    looks_english("I lost my card")                 # True
    looks_english("Je voudrais bloquer ma carte")   # False: French function words, no English ones
    looks_english("我的卡丢了")                       # False: mostly letters outside the Latin script

Two signals, no model: the share of letters outside the Latin script, and common words of other
European languages outnumbering English function words. The word lists hold only words that are not
also common English words ("he", "a", "in", "die", "no" are left out); a tie counts as English, and a
message without English words needs two foreign ones. Capitalised words inside a sentence ("Le Mans",
"Les") and all-caps tokens ("ES", "DAS") are taken for names. Names can still trip it, so the
chat uses it only to word a reply that would be "not understood" anyway, and the studio only to warn.
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
tarjeta cuenta karte konto carta cartão conta kaart rekening perdido perdi perso verloren bloquer bloccare
mia mio esta
""".split()) - ENGLISH_WORDS - frozenset(  # also English words, abbreviations or fillers
    "son come per con com os ai ta ton er den im yo ha pour comment dove met van del non um y o".split())

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")  # "un-block" and "can't" stay one word
_ENGLISH_PHRASES = re.compile(r"\bet al\b", re.IGNORECASE)   # Latin inside English, not French/Spanish


def looks_english(text: str) -> bool:
    """False when most letters of `text` are outside the Latin script, or when function words of
    other languages (French, German, Spanish, Italian, Portuguese, Dutch) outnumber English ones
    (and are at least two when there are no English ones); True otherwise (including text without
    letters). All-caps tokens ("ES", "DAS") and capitalised words inside a sentence ("Les", "Mon")
    are taken for names or abbreviations and not counted as foreign."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return True
    if sum(ord(c) > LATIN_END for c in letters) > MAX_OTHER_SCRIPT * len(letters):
        return False
    text = _ENGLISH_PHRASES.sub(" ", text)
    english = other = 0
    for match in _WORD.finditer(text):
        word, lower = match.group(), match.group().lower()
        if lower in ENGLISH_WORDS:
            english += 1
        elif lower in OTHER_WORDS and not (len(word) > 1 and word.isupper()) and not (
                word[0].isupper() and not _sentence_start(text, match.start())):
            other += 1
    return other <= english or (english == 0 and other < 2)


def _sentence_start(text: str, at: int) -> bool:
    """True when the word at `at` begins `text` or follows ".", "!", "?" or a line break."""
    before = text[:at].rstrip(" \t\"'(¡¿")
    return not before or before[-1] in ".!?:;\n"
