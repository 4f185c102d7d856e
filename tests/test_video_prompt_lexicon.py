"""The prompt lexicon: words the planner never saw rewritten into its training words (prompt_lexicon.py).
Mechanics on small lexicons each test writes; the shipped file is only checked for form."""
import pytest

from apps.video_generation import planner as P
from apps.video_generation import world
from apps.video_generation.prompt_lexicon import (LEXICON_PATH, MOTION_FORMS, canonical, load_lexicon,
                                                  rewrite_prompt)

ROWS = """# a comment line
colour\tred\tcrimson
colour\tyellow\tmaize
shape\tcircle\tsphere
shape\tdigit\tnumeral {d}
shape\tdigit\t#{d}
motion\tdown\tplummeting
motion\tdown\tplummets
motion\tdown\tdownward
motion\tstill\timmobile
motion\tup\tclimbs
background\tbeach\tseashore
background\tnight\tmidnight
camera\tzoom_out\tpulls away
joiner\tscene\tlater on
joiner\tobject\ttogether with
colour\tred\tshared
shape\tsquare\tshared
colour\tred\tblue
"""


@pytest.fixture
def lexicon(tmp_path):
    path = tmp_path / "lexicon.tsv"
    path.write_text(ROWS, encoding="utf-8")
    load_lexicon.cache_clear()
    yield load_lexicon(path)
    load_lexicon.cache_clear()


def rewrite(text: str, lexicon) -> str:
    return rewrite_prompt(text, lexicon).text


def test_unseen_words_become_training_words(lexicon):
    r = rewrite_prompt("a crimson sphere plummeting on a sandy seashore", lexicon)
    assert r.text == "a red circle moving down on the beach"
    assert [(x.original, x.replacement) for x in r.replaced] == [
        ("crimson", "red"), ("sphere", "circle"), ("plummeting", "moving down"), ("on a sandy seashore", "on the beach")]
    assert rewrite("a ball plummets", lexicon) == "a ball falls"              # the verb form is kept
    assert rewrite("a ball settling downward", lexicon) == "a ball settling down"   # a direction alone
    assert rewrite("the numeral 7 climbs", lexicon) == "the digit 7 rises"


def test_what_the_lexicon_does_not_rewrite(lexicon):
    assert rewrite("a blue ball", lexicon) == "a blue ball"              # a training word, even if listed
    assert rewrite("a shared ball", lexicon) == "a shared ball"          # two values: ambiguous
    assert rewrite("a ball for 3 seconds", lexicon) == "a ball for 3 seconds"   # "#{d}": a bare numeral is a count
    assert rewrite("a midnight blue ball", lexicon) == "a midnight blue ball"   # a place needs its preposition
    assert rewrite("a ball together with a cube", lexicon) == "a ball together with a cube"   # object joiners
    assert rewrite("a crimson\nsphere", lexicon) == "a red\ncircle"      # words on their own lines still are
    assert rewrite("later on a red ball", lexicon) == "later on a red ball"   # a scene joiner needs a scene before


def test_joiners_cameras_and_repeated_hues(lexicon):
    assert rewrite("a red ball, and then later on, a sphere", lexicon) == "a red ball, then cut to a circle"
    assert rewrite("a ball rolls left and the camera pulls away", lexicon) == \
        "a ball rolls left and the camera zooms out"
    assert rewrite("a ball, the camera is immobile", lexicon) == "a ball, the camera is static"   # said of the camera
    assert rewrite("a ball, the camera plummets", lexicon) == "a ball, the camera plummets"   # no camera move of it
    assert rewrite("a maize yellow ball", lexicon) == "a yellow ball"


def test_a_scene_joiner_needs_clauses_on_both_sides(lexicon):
    """Only ", later on, ..." between two clauses is a scene joiner: a list's "2. later on ..." (restructure's
    marker, which a rewrite would hide), "rises and later on falls" and a trailing "later on" stay as written."""
    for text in ("1. a red ball falls\n2. later on a blue square rises", "a red ball rises and later on falls",
                 "a red ball falls, later on"):
        assert rewrite(text, lexicon) == text


def test_canonical_phrases_are_what_the_planner_was_trained_on():
    exemplars = set(zip(*P.exemplar_phrases()))
    index = {(a, v): i for i, (a, v) in enumerate((a, v) for a, vs in P.ATTRIBUTES.items() for v in vs)}
    for attribute in ("shape", "colour", "motion", "background", "camera"):
        for value in P.ATTRIBUTES[attribute]:
            forms = {canonical(attribute, value, p) for p in ("x", "xing")}
            for form in forms:
                assert (form, index[(attribute, value)]) in exemplars, (attribute, value, form)
    assert set(MOTION_FORMS) == set(world.MOTIONS)


def test_shipped_lexicon_reads_and_covers_every_value():
    lexicon = load_lexicon(LEXICON_PATH)
    covered = set(lexicon.values())
    for attribute in ("shape", "colour", "motion", "background", "camera"):
        for value in P.ATTRIBUTES[attribute]:
            assert (attribute, value) in covered, (attribute, value)
    assert ("joiner", "scene") in covered


def test_the_studio_reads_through_the_lexicon_and_says_so(tmp_path):
    from apps.video_generation.studio import generate_video

    prompt = "a maroon ball plummets on the seashore"
    r = generate_video(prompt, seconds=1.0, resolution="360p", fps=8, out=tmp_path / "a.mp4")
    assert {x["original"]: x["replacement"] for x in r.understanding.read_as} == {
        "maroon": "red", "plummets": "falls", "on the seashore": "on the beach"}
    assert "Read through the lexicon" in r.understanding.markdown()
    (scene,) = r.script.scenes
    assert (scene.objects[0].colour, scene.objects[0].motion, scene.background) == ("red", "down", "beach")
    plain = generate_video(prompt, seconds=1.0, resolution="360p", fps=8, out=tmp_path / "b.mp4", lexicon=False)
    assert plain.understanding.read_as == [] and "lexicon" not in plain.understanding.markdown()
