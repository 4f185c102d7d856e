"""The planner's decoding (per-token probabilities -> objects, scenes, camera): synthetic probabilities, no
model, so each rule is checked on its own; plus the evidence-only reader pass on a tiny untrained model."""
import re

import numpy as np
import pytest
import torch

from apps.video_generation import planner as P

ON, OFF = 0.05, 0.95   # "none" probability of a token that names / does not name an attribute


def tokens(*words: tuple[str, dict[str, str]]) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(token rows, probs, p_object_start) for words given as (text, {attribute: value, "start": "object"})."""
    T = len(words)
    probs = {}
    for attr, values in P.ATTRIBUTES.items():
        p = np.zeros((T, len(values) + 1))
        for t, (_, tags) in enumerate(words):
            if attr in tags:
                p[t, 0] = ON
                p[t, 1 + values.index(tags[attr])] = 1 - ON
            else:
                p[t, 0] = OFF
                p[t, 1:] = (1 - OFF) / len(values)
        probs[attr] = p
    p_obj = np.array([0.9 if tags.get("start") == "object" else 0.01 for _, tags in words])
    return np.arange(T), probs, p_obj


def read(words, decode=None, link_T=None):
    toks, probs, p_obj = tokens(*words)
    planner = P.Planner.__new__(P.Planner)   # decoding only: no model needed
    planner.decode = decode or P.DecodeConfig()
    scene, _ = planner._read_scene(toks, p_obj, probs, link_T)
    return scene


def triples(scene):
    return [(o.shape, o.colour, o.motion) for o in scene.objects]


def test_an_article_read_as_a_digit_does_not_make_an_object():
    # "a single blue box moves left": "single" tagged as the digit 1, but it names no colour and no motion
    scene = read([("a", {"start": "object"}), ("single", {"shape": "1"}), ("blue", {"colour": "blue"}),
                  ("box", {"shape": "square"}), ("moves", {"motion": "left"}), ("left", {"motion": "left"})])
    assert triples(scene) == [("square", "blue", "left")]


def test_a_word_names_only_the_attribute_it_names_most_surely():
    # "a ball moves left", a short prompt: "moves" also read as a shape (0.7) and a colour (0.6), but surely a
    # motion, "ball" also as a motion (0.9) but surely a shape: one mention, not a second object opened by
    # the colour reading of "moves"
    words = [("a", {"start": "object"}), ("ball", {"shape": "circle", "motion": "left"}),
             ("moves", {"shape": "circle", "colour": "purple", "motion": "left"}), ("left", {"motion": "left"})]
    toks, probs, p_obj = tokens(*words)
    probs["motion"][1, 0] = 0.1
    probs["shape"][2, 0], probs["colour"][2, 0], probs["motion"][2, 0] = 0.3, 0.4, 0.0
    planner = P.Planner.__new__(P.Planner)
    planner.decode = P.DecodeConfig()
    scene, _ = planner._read_scene(toks, p_obj, probs)
    assert [(o.shape, o.motion) for o in scene.objects] == [("circle", "left")]


def links(words) -> np.ndarray:
    """link_words_T of the words joined by spaces, one token per word."""
    prompt, offsets = "", []
    for w, _ in words:
        offsets.append((len(prompt), len(prompt) + len(w)))
        prompt += w + " "
    return P.link_words_T(prompt, offsets)


def test_mentions_joined_before_one_verb_share_it():
    # "an orange triangle and a blue circle move up": the verb after the second mention is the first one's too
    words = [("an", {"start": "object"}), ("orange", {"colour": "orange"}), ("triangle", {"shape": "triangle"}),
             ("and", {}), ("a", {"start": "object"}), ("blue", {"colour": "blue"}), ("circle", {"shape": "circle"}),
             ("move", {"motion": "up"}), ("up", {"motion": "up"})]
    assert triples(read(words, link_T=links(words))) == [("triangle", "orange", "up"), ("circle", "blue", "up")]
    comma = words[:3] + [(",", {})] + words[3:]                  # "an orange triangle, and a blue circle move up"
    assert triples(read(comma, link_T=links(comma)))[0] == ("triangle", "orange", "up")
    # a word between the shape and the joiner that nothing read ("inert"): an unread motion, not a shared verb
    words.insert(3, ("inert", {}))
    assert read(words, link_T=links(words)).objects[0].motion != "up"
    assert P._word_at("Two  RED-balls", 7) == "red" and P._word_at("a ball", 0) == "a"
    assert P.link_words_T("a ball, and", [(0, 0), (2, 6), (6, 7), (8, 11)]).tolist() == [False, False, True, True]


def test_two_coloured_objects_without_a_predicted_start_are_two_mentions():
    scene = read([("a", {"start": "object"}), ("red", {"colour": "red"}), ("ball", {"shape": "circle"}),
                  ("rises", {"motion": "up"}), ("with", {}), ("a", {}), ("blue", {"colour": "blue"}),
                  ("box", {"shape": "square"}), ("falls", {"motion": "down"})])
    assert triples(scene) == [("circle", "red", "up"), ("square", "blue", "down")]


def test_an_unseen_shape_word_keeps_its_object():
    # "a red crate rolls left plus a blue ball rises": "crate" unread (no shape tag) but coloured and started;
    # its shape is a guess from words naming nothing else, never the stated length "for 4 seconds"
    words = [("a", {"start": "object"}), ("red", {"colour": "red"}), ("crate", {}), ("rolls", {"motion": "left"}),
             ("plus", {}), ("a", {"start": "object"}), ("blue", {"colour": "blue"}), ("ball", {"shape": "circle"}),
             ("rises", {"motion": "up"}), ("for", {}), ("4", {"seconds": "4"}), ("seconds", {"seconds": "4"})]
    toks, probs, p_obj = tokens(*words)
    probs["shape"][2, 1 + P.ATTRIBUTES["shape"].index("square")] = 0.04    # weak guess on "crate"
    probs["shape"][10, 1 + P.ATTRIBUTES["shape"].index("4")] = 0.049     # the length's digit, stronger
    planner = P.Planner.__new__(P.Planner)
    planner.decode = P.DecodeConfig()
    scene, _ = planner._read_scene(toks, p_obj, probs)
    assert triples(scene) == [("square", "red", "left"), ("circle", "blue", "up")]


def test_stray_starts_and_split_mentions_are_merged():
    # "a red | ball moves left, dolly | out": a start inside the mention and one on the camera words
    scene = read([("a", {"start": "object"}), ("red", {"colour": "red"}),
                  ("ball", {"shape": "circle", "start": "object"}), ("moves", {"motion": "left"}),
                  ("left", {"motion": "left"}), ("dolly", {"start": "object"}), ("out", {"camera": "zoom_out"})])
    assert triples(scene) == [("circle", "red", "left")] and scene.camera == "zoom_out"


def test_camera_move_needs_its_minimum_and_to_beat_static():
    cams = P.ATTRIBUTES["camera"]
    planner = P.Planner.__new__(P.Planner)
    planner.decode = P.DecodeConfig(camera_min=0.05, camera_margin=0.0)

    def cam(static: float, zoom_in: float) -> str:
        p_RC = np.zeros((2, len(cams)))
        p_RC[0, cams.index("static")] = static
        p_RC[1, cams.index("zoom_in")] = zoom_in
        return planner._camera(p_RC)[0]

    assert cam(0.0, 0.3) == "zoom_in"          # unsure, but the only move named and no sign of a still camera
    assert cam(0.0, 0.02) == "static"          # below the minimum: nothing named, a static camera
    assert cam(0.6, 0.3) == "static"           # "static" is the stronger reading
    planner.decode = P.DecodeConfig(camera_min=0.5)
    assert cam(0.0, 0.3) == "static"           # the old fixed threshold
    assert planner._camera(np.zeros((0, len(cams))))[0] == "static"


def test_a_scene_joiner_between_objects_opens_a_scene():
    prompt = "a red ball rolls left, THEN a blue box rises. Next to it, NOW a pink star"
    offsets = [(0, 0)] + [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", prompt)]
    words = [prompt[a:b] for a, b in offsets]
    cuts = P.scene_joiner_cuts(prompt, offsets)
    assert [(words[a], words[b]) for a, b in cuts] == [("THEN", "a")]   # not "next" of "next to", not "now"
    cut = cuts[0][1]
    object_T = np.array([1.0 if w in ("ball", "box", "star") else 0.0 for w in words])
    no_motion_T = np.zeros(len(words), bool)
    assert P._split_at_joiners([1], cuts, object_T, no_motion_T, 4) == [1, cut]
    assert P._split_at_joiners([1], cuts, object_T, no_motion_T, 1) == [1]                 # the scene cap
    no_object_after = object_T.copy()
    no_object_after[cut:] = 0.0                                                          # "..., then slowly."
    assert P._split_at_joiners([1], cuts, no_object_after, no_motion_T, 4) == [1]
    assert P._split_at_joiners([1, cut], cuts, object_T, no_motion_T, 4) == [1, cut]      # already a start
    assert P._split_at_joiners([1, cut + 1], cuts, object_T, no_motion_T, 4) == [1, cut + 1]   # a word off
    adverb_T = no_motion_T.copy()
    adverb_T[cut] = True                                               # "... falls and then | bounces, a blue box"
    assert P._split_at_joiners([1], cuts, object_T, adverb_T, 4) == [1]
    text = "a ball, then it cuts to a box"                              # overlapping joiners: the longest one
    offs = [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]
    assert [text[offs[b][0]:offs[b][1]] for _, b in P.scene_joiner_cuts(text, offs)] == ["a"]
    assert [b for _, b in P.scene_joiner_cuts(text, offs)] == [7]


def test_objectless_scenes_merge_but_coloured_ones_stay():
    conf_T = np.array([0.0, 0.9, 0.0, 0.0, 0.0, 0.7, 0.0, 0.0])   # objects at tokens 1 and 5
    # 3..4 names nothing: it joins the next scene (which then starts at 3)
    assert P._merge_objectless_scenes([1, 3, 5], 8, conf_T) == [1, 3]
    assert P._merge_objectless_scenes([1, 5, 7], 8, conf_T) == [1, 5]   # the last names nothing: joins the previous
    assert P._merge_objectless_scenes([1], 8, conf_T) == [1]


def test_the_first_word_always_opens_a_scene():
    """An unknown opening gets no start of its own: a start found only at the second scene must still make
    two scenes (before, the words up to it joined that start's scene: one scene)."""
    special_T = np.array([True, False, False, False, False, False, False, True])
    p_T = np.array([0.0, 0.1, 0.2, 0.1, 0.9, 0.3, 0.6, 0.0])
    named_T = np.ones(8)                                                 # every token names an object
    assert P._scene_starts(p_T, special_T, 0.5, 4, named_T) == [1, 4, 6]
    assert P._scene_starts(p_T, special_T, 0.5, 2, named_T) == [1, 4]    # the most confident others
    p_T[1] = 0.95
    assert P._scene_starts(p_T, special_T, 0.5, 4, named_T) == [1, 4, 6]  # a found first start is not doubled
    assert P._scene_starts(p_T, np.ones(8, bool), 0.5, 4, named_T) == []
    ids = P.scene_ids_from_starts(np.isin(np.arange(8), [1, 4]).astype(int), special_T)
    assert ids.tolist() == [-1, 0, 0, 0, 1, 1, 1, -1]


def test_an_opening_that_names_nothing_costs_no_scene():
    """Four scenes after an opening that names nothing ("the footage depicts"): the opening joins the first
    scene and all four stay (the scene cap counts after the merge)."""
    T = 12
    special_T = np.zeros(T, bool)
    p_T = np.zeros(T)
    p_T[[3, 5, 7, 9]] = 0.9
    named_T = np.zeros(T)
    named_T[[4, 6, 8, 10]] = 0.9                                         # the opening, tokens 0-2, names nothing
    assert P._scene_starts(p_T, special_T, 0.5, 4, named_T) == [0, 5, 7, 9]
    p_T[11] = 0.6                                                        # a fifth start: the least sure goes
    named_T[11] = 0.9
    assert P._scene_starts(p_T, special_T, 0.5, 4, named_T) == [0, 5, 7, 9]


def test_a_scene_naming_two_backgrounds_or_two_cameras_is_split():
    T = 12
    p_start_T = np.full(T, 0.1)
    p_start_T[5] = 0.4                                   # the most confident start between the two phrases
    object_T = np.zeros(T)
    object_T[[2, 7]] = 0.9                               # an object on each side
    two_T, none_T = np.zeros(T), np.zeros(T)
    two_T[[3, 8, 9]] = 0.9                               # two runs: token 3, tokens 8-9
    assert P._split_double_settings([1], T, p_start_T, object_T, [two_T, none_T], 4) == [1, 5]
    assert P._split_double_settings([1], T, p_start_T, object_T, [none_T, two_T], 4) == [1, 5]   # cameras too
    assert P._split_double_settings([1], T, p_start_T, object_T, [none_T, none_T], 4) == [1]
    assert P._split_double_settings([1], T, p_start_T, object_T, [two_T], 1) == [1]              # max scenes
    object_T[7] = 0.0                                    # nothing named after the cut: one scene
    assert P._split_double_settings([1], T, p_start_T, object_T, [two_T], 4) == [1]
