"""What the studio understood of a prompt (apps/video_generation/understanding.py): fake per-token
probabilities check each rule on its own; the shipped planner checks the studio end to end (CLI JSON,
HTTP API, page) and that a prompt naming nothing it knows is refused before rendering."""
import json

import numpy as np
import pytest

from apps.video_generation import generator as G
from apps.video_generation import planner as P
from apps.video_generation import understanding as U
from apps.video_generation.world import Scene, SceneObject, Script

SHIPPED = (G.DEFAULT_PATH / "config.json").is_file() and (P.DEFAULT_PATH / "config.json").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="no shipped planner/generator checkpoints")
ON, OFF = 0.05, 0.95


def fake_plan(prompt: str, tags: dict[str, dict[str, tuple[str, float]]], script: Script,
              object_starts: tuple[str, ...] = ()) -> P.Plan:
    """A Plan of `prompt` (one token per word, [CLS]/[SEP] around) whose reader tagged words as given:
    tags[word] = {attribute: (value, probability)}; every other word names nothing."""
    import re
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", prompt)]
    offsets = [(0, 0), *spans, (0, 0)]
    T = len(offsets)
    probs = {}
    for attr, values in P.ATTRIBUTES.items():
        p = np.zeros((T, len(values) + 1))
        p[:, 0] = OFF
        p[:, 1:] = (1 - OFF) / len(values)
        for t, (a, b) in enumerate(offsets):
            tag = tags.get(prompt[a:b], {}).get(attr) if b > a else None
            if tag:
                p[t, 0] = ON
                p[t, 1:] = (1 - ON - tag[1]) / max(1, len(values) - 1)
                p[t, 1 + values.index(tag[0])] = tag[1]
        probs[attr] = p
    p_obj = np.array([0.9 if b > a and prompt[a:b] in object_starts else 0.01 for a, b in offsets])
    scene_id = np.array([-1] + [0] * (T - 2) + [-1])
    return P.Plan(script, [], [], [], {}, P.PlanReading(offsets, probs, p_obj, scene_id))


def one(shape="circle", colour="red", motion="still", background="studio", camera="static") -> Script:
    return Script([Scene([SceneObject(shape, colour, motion)], background, camera)])


def test_named_values_are_read_with_their_words_and_unknown_words_listed():
    prompt = "a red ball rolls left next to an elephant at night"
    plan = fake_plan(prompt, {"red": {"colour": ("red", 0.99)}, "ball": {"shape": ("circle", 0.98)},
                              "left": {"motion": ("left", 0.9)}, "night": {"background": ("night", 0.95)}},
                     one(motion="left", background="night"))
    u = U.understand(prompt, plan)
    o = u.scenes[0]["objects"][0]
    assert (o["shape"].status, o["shape"].words, o["shape"].confidence) == ("read", ["ball"], 0.98)
    assert o["colour"].words == ["red"] and o["motion"].status == "read"
    assert u.scenes[0]["background"].words == ["night"]
    assert u.scenes[0]["camera"].status == "default"          # no camera word: static by default
    assert u.unrecognised_words == ["elephant"]               # "rolls" belongs to the world's "rolls left"
    assert u.understood_objects and not any(g["status"] == "guessed" for g in u.guessed)
    d = json.loads(json.dumps(u.to_dict()))
    assert d["unrecognised_words"] == ["elephant"] and "red circle moves left" in d["summary"]
    assert {"scene": 1, "object": None, "attribute": "camera", "value": "static", "status": "default"}.items() \
        <= next(g for g in d["guessed"] if g["attribute"] == "camera").items()


def test_a_verb_shared_by_joined_mentions_is_read_from_its_words():
    prompt = "a red ball and a blue box bounce"
    tags = {"red": {"colour": ("red", 0.99)}, "ball": {"shape": ("circle", 0.98)},
            "blue": {"colour": ("blue", 0.99)}, "box": {"shape": ("square", 0.97)},
            "bounce": {"motion": ("bounce", 0.95)}}
    script = Script([Scene([SceneObject("circle", "red", "bounce"), SceneObject("square", "blue", "bounce")],
                           "studio", "static")])
    plan = fake_plan(prompt, tags, script)
    plan.reading.link_T = P.link_words_T(prompt, plan.reading.offsets)
    first = U.understand(prompt, plan).scenes[0]["objects"][0]["motion"]
    assert (first.status, first.words) == ("read", ["bounce"])
    plan.reading.link_T = None                                   # without the joining words: a guess
    assert U.understand(prompt, plan).scenes[0]["objects"][0]["motion"].status == "guessed"


def test_a_weak_reading_of_an_unknown_word_is_a_guess_and_nothing_known_is_an_error():
    prompt = "a purple car"
    plan = fake_plan(prompt, {"purple": {"colour": ("purple", 0.99)}, "car": {"shape": ("2", 0.46)}},
                     one(shape="2", colour="purple"))
    u = U.understand(prompt, plan)
    shape = u.scenes[0]["objects"][0]["shape"]
    assert (shape.status, shape.source) == ("guessed", "car")
    assert "car" in u.unrecognised_words and u.understood_objects     # the colour was read
    U.check_understood(prompt, u)

    plan = fake_plan("hello world", {"world": {"shape": ("circle", 0.62)}}, one())
    u = U.understand("hello world", plan)
    assert not u.understood_objects and u.unrecognised_words == ["hello", "world"]
    with pytest.raises(U.NothingUnderstoodError, match="no shape or colour"):
        U.check_understood("hello world", u)


def test_a_function_word_alone_never_carries_a_value():
    # the reader tags the article "a" as a star with p 0.9: not a word for a star, so it is a guess
    plan = fake_plan("a thing", {"a": {"shape": ("star", 0.9)}}, one(shape="star"))
    assert U.understand("a thing", plan).scenes[0]["objects"][0]["shape"].status == "guessed"


def test_direction_words_tell_their_motions_apart():
    # a word counts for a value when at most two values of its attribute use it, over every wording split:
    # "up" names the upward motion and the bounce ("bobs up and down") and must stay a word of both
    value_words = U.world_vocabulary()[1]
    assert "up" in value_words[("motion", "up")] and "up" in value_words[("motion", "bounce")]
    assert "left" in value_words[("motion", "left")] and "the" not in value_words[("motion", "left")]


def test_plurals_of_known_phrasings_are_read():
    # p 0.77 is under READ_MIN: the word is read because "stars" is the plural of the world's "star"
    for prompt, word, shape in [("stars at night", "stars", "star"), ("hearts", "hearts", "heart"),
                                ("squares on the beach", "squares", "square")]:
        plan = fake_plan(prompt, {word: {"shape": (shape, 0.77)}}, one(shape=shape))
        u = U.understand(prompt, plan)
        assert (u.scenes[0]["objects"][0]["shape"].status, u.scenes[0]["objects"][0]["shape"].words) == \
            ("read", [word]), prompt
        U.check_understood(prompt, u)
    assert U.in_vocabulary("boxes", {"box"}) and U.in_vocabulary("skies", {"sky"})
    for plural, singular in [("rhombi", "rhombus"), ("leaves", "leaf"), ("knives", "knife"), ("mice", "mouse"),
                             ("snowmen", "snowman"), ("waves", "wave"), ("vertices", "vertex")]:
        assert U.in_vocabulary(plural, {singular}), plural
    assert not U.in_vocabulary("cars", {"star"})


def test_a_background_word_is_no_colour_and_only_naming_words_are_used():
    # "grass" is a world phrasing of both green and the grass background: here it is the scene's background
    prompt = "a dog on the grass"
    tags = {"dog": {"background": ("grass", 0.72)}, "on": {"background": ("grass", 0.99)},
            "the": {"background": ("grass", 0.99)},
            "grass": {"colour": ("green", 0.51), "background": ("grass", 0.99)}}
    u = U.understand(prompt, fake_plan(prompt, tags, one(colour="green", background="grass")))
    assert u.scenes[0]["objects"][0]["colour"].status == "guessed"
    assert u.scenes[0]["background"].words == ["grass"]     # "dog", leaning the same way, names nothing
    assert not u.understood_objects and u.unrecognised_words == ["dog"]
    with pytest.raises(U.NothingUnderstoodError, match="not understood: dog"):
        U.check_understood(prompt, u)

    prompt = "a green ball on the grass"
    tags = {"green": {"colour": ("green", 0.99)}, "ball": {"shape": ("circle", 0.99)}, **tags}
    u = U.understand(prompt, fake_plan(prompt, tags, one(colour="green", background="grass")))
    assert u.scenes[0]["objects"][0]["colour"].words == ["green"] and u.understood_objects


def test_a_word_leaning_to_a_read_colour_is_not_its_word():
    # "car" leans to red (0.75, under READ_MIN) right after "red": red is read from "red" alone
    prompt = "a red car"
    u = U.understand(prompt, fake_plan(prompt, {"red": {"colour": ("red", 0.99)},
                                                "car": {"colour": ("red", 0.75), "shape": ("2", 0.46)}},
                                       one(shape="2")))
    assert u.scenes[0]["objects"][0]["colour"].words == ["red"] and u.unrecognised_words == ["car"]


def test_warnings_for_symbols_foreign_words_negations_counts_and_unused_words():
    prompt = "🚗 une étoile rouge"
    u = U.understand(prompt, fake_plan(prompt, {}, one()))
    text = " ".join(u.warnings)
    assert "🚗" in text and "étoile" in text and "English" in text and not u.understood_objects

    prompt = "a red ball with no camera zoom"
    u = U.understand(prompt, fake_plan(prompt, {"red": {"colour": ("red", 0.99)}, "ball": {"shape": ("circle", 0.99)},
                                                "zoom": {"camera": ("zoom_in", 0.9)}}, one(camera="zoom_in")))
    assert any("negation 'no'" in w and "zoom" in w for w in u.warnings)

    prompt = "three red balls"
    u = U.understand(prompt, fake_plan(prompt, {"three": {"shape": ("3", 0.8)}, "red": {"colour": ("red", 0.99)},
                                                "balls": {"shape": ("circle", 0.7)}}, one(shape="3")))
    # a colour between the count and the plural shape word: still a count the studio cannot follow
    assert any("counts are not understood: 'three red balls'" in w for w in u.warnings)
    prompt = "red three balls"
    u = U.understand(prompt, fake_plan(prompt, {"three": {"shape": ("3", 0.8)}, "red": {"colour": ("red", 0.99)},
                                                "balls": {"shape": ("circle", 0.7)}}, one(shape="3")))
    assert any("counts are not understood: 'three balls'" in w for w in u.warnings)

    # a word read confidently in a part of the prompt the plan dropped (past the object limit)
    prompt = "a red ball and a blue box"
    plan = fake_plan(prompt, {"red": {"colour": ("red", 0.99)}, "ball": {"shape": ("circle", 0.99)},
                              "blue": {"colour": ("blue", 0.99)}, "box": {"shape": ("square", 0.99)}}, one())
    plan.reading.scene_id_T[5:-1] = 1     # tokens of "a blue box" belong to no planned scene
    u = U.understand(prompt, plan)
    assert u.ignored_words == ["blue", "box"] and any("not used" in w for w in u.warnings)


def test_a_number_before_a_word_that_is_no_shape_noun_is_no_count():
    # "p" of "3 p.m." leans to a shape, but names none: no count warning
    prompt = "a red ball rolls left at 3 p.m."
    tags = {"red": {"colour": ("red", 0.99)}, "ball": {"shape": ("circle", 0.99)}, "left": {"motion": ("left", 0.95)},
            "3": {"shape": ("3", 0.9)}, "p.m.": {"shape": ("2", 0.6)}}
    u = U.understand(prompt, fake_plan(prompt, tags, one(motion="left")))
    assert not any("count" in w for w in u.warnings), u.warnings
    prompt = "twenty red balls"   # number words past the digits count too
    u = U.understand(prompt, fake_plan(prompt, {"red": {"colour": ("red", 0.99)},
                                                "balls": {"shape": ("circle", 0.9)}}, one()))
    assert any("'twenty red balls' draws one object" in w for w in u.warnings)


def test_style_words_count_only_inside_the_style_phrase_read_from_the_prompt():
    # "white" describes pencil drawings, but here it is a colour the plan dropped: it stays "read but not used"
    prompt = "a red ball and a white star in pencil style"
    tags = {"red": {"colour": ("red", 0.99)}, "ball": {"shape": ("circle", 0.99)},
            "white": {"colour": ("white", 0.95)}, "pencil": {"style": ("pencil", 0.95)}}
    script = Script(one().scenes, "pencil")
    assert "white" in U.style_words("pencil")
    for style in (None, "pencil"):
        u = U.understand(prompt, fake_plan(prompt, tags, script), style=style)
        assert "white" in u.ignored_words, (style, u.ignored_words)
    # a style word inside the phrase the planner read as the style is understood; asked for by name, not
    prompt = "a red ball, pencil sketch"
    tags = {"red": {"colour": ("red", 0.99)}, "ball": {"shape": ("circle", 0.99)},
            "pencil": {"style": ("pencil", 0.95)}, "sketch": {"style": ("pencil", 0.95)}}
    u = U.understand(prompt, fake_plan(prompt, tags, script))
    assert "sketch" not in u.unrecognised_words + u.ignored_words


def test_a_plan_without_its_reading_is_refused():
    with pytest.raises(ValueError, match="reading"):
        U.understand("a red ball", P.Plan(one(), [], [], []))


@needs_shipped
def test_shipped_planner_explains_a_mixed_prompt():
    prompt = "a red ball rolls left on the beach and a purple elephant"
    u = U.understand(prompt, P.load_planner().plan(prompt, 2.0))
    assert "elephant" in u.unrecognised_words and "ball" not in u.unrecognised_words
    o = u.scenes[0]["objects"][0]
    assert (o["shape"].value, o["shape"].status, o["colour"].words) == ("circle", "read", ["red"])
    assert u.scenes[0]["background"].value == "beach" and u.scenes[0]["background"].status == "read"


@needs_shipped
def test_studio_refuses_a_prompt_it_cannot_read_unless_asked(tmp_path):
    from apps.video_generation import studio

    out = tmp_path / "x.mp4"
    with pytest.raises(studio.NothingUnderstoodError, match="no shape or colour") as exc:
        studio.generate_video("un ballon rouge", seconds=1, fps=8, out=out)
    assert not out.exists() and "ballon" in exc.value.understanding.unrecognised_words
    r = studio.generate_video("un ballon rouge", seconds=1, fps=8, out=out, allow_guesses=True)
    d = r.to_dict()
    assert out.is_file() and not d["understanding"]["understood_objects"] and d["warnings"]


@needs_shipped
def test_cli_json_and_api_carry_the_understanding(tmp_path, capsys, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from apps.cli import main
    from apps.video_generation.api import router

    assert main(["video", "generate", "a green star rises and a dog", "--seconds", "1", "--fps", "8",
                 "--out", str(tmp_path / "c.mp4"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "dog" in d["understanding"]["unrecognised_words"] and d["warnings"]
    assert d["understanding"]["scenes"][0]["objects"][0]["colour"]["words"] == ["green"]
    base = ["video", "generate", "hello world", "--seconds", "1", "--fps", "8", "--out", str(tmp_path / "g.mp4")]
    assert main(base) == 2 and "--allow-guesses" in capsys.readouterr().err
    assert main(base + ["--allow-guesses"]) == 0 and (tmp_path / "g.mp4").is_file()

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path))
    app = FastAPI()
    app.include_router(router, prefix="/api/v1/video")
    client = TestClient(app)
    r = client.post("/api/v1/video/generate", json={"prompt": "hello world", "seconds": 1, "fps": 8})
    assert r.status_code == 422 and "no shape or colour" in r.json()["detail"]["error"]
    assert r.json()["detail"]["understanding"]["unrecognised_words"] == ["hello", "world"]


@needs_shipped
def test_page_shows_what_was_understood_under_the_video(tmp_path, monkeypatch):
    import gradio as gr

    from apps.video_generation import page

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path))
    _, _, _, details = page.generate("a blue heart falls at night and an elephant", 1, "360p", 8, "",
                                     progress=lambda *a, **k: None)
    assert details.startswith("**Understood as:**") and "elephant" in details
    with pytest.raises(gr.Error, match="render a guess anyway"):
        page.generate("hello world", 1, "360p", 8, "", progress=lambda *a, **k: None)


@needs_shipped
def test_shipped_planner_reads_the_module_example_plurals_and_scenery():
    pl = P.load_planner()
    prompt = "a red car and a purple elephant"     # the example of understanding.py's docstring
    u = U.understand(prompt, pl.plan(prompt, 3.0))
    assert u.understood_objects and u.unrecognised_words == ["car", "elephant"]
    assert [o["colour"].words for o in u.scenes[0]["objects"]] == [["red"], ["purple"]]
    assert not any(o["shape"].status == "read" for o in u.scenes[0]["objects"])
    for prompt in ("stars at night", "hearts", "squares on the beach"):
        U.check_understood(prompt, U.understand(prompt, pl.plan(prompt, 3.0)))
    prompt = "a dog on the grass"
    u = U.understand(prompt, pl.plan(prompt, 3.0))
    assert "dog" in u.unrecognised_words
    with pytest.raises(U.NothingUnderstoodError):
        U.check_understood(prompt, u)


def test_the_camera_is_explained_from_the_words_the_planner_let_vote_for_it():
    # "left" reads as the ball's motion (0.95) more than as a pan (0.6): the planner's camera ignores it,
    # so the static camera is "not in the prompt", not a weak reading of "left"
    prompt = "a red ball rolling left"
    tags = {"red": {"colour": ("red", 0.99)}, "ball": {"shape": ("circle", 0.99)},
            "rolling": {"motion": ("left", 0.9)}, "left": {"motion": ("left", 0.99), "camera": ("pan_left", 0.5)}}
    plan = fake_plan(prompt, tags, one(motion="left"))
    t_left = len(prompt.split())   # [CLS] comes first
    plan.reading.probs["camera"][t_left, 0] = 0.4
    camera = U.understand(prompt, plan).scenes[0]["camera"]
    assert (camera.value, camera.status, camera.source) == ("static", "default", None)

    plan.reading.probs["camera"][t_left, 0] = 0.01   # now it reads more as a pan than as motion: it votes
    camera = U.understand(prompt, plan).scenes[0]["camera"]
    assert camera.status == "guessed" and camera.source == "left"
