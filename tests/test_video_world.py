"""The synthetic world: rendering puts the right things in the right places, motions and cameras move
them the right way, cuts land where planned, splits and phrasings keep their held-out promises."""
import re

import numpy as np
import pytest

from apps.video_generation import world
from apps.video_generation.world import Scene, SceneObject, Script

SIZE = (72, 128)


def colour_mask(frames, colour, tol=40):
    rgb = np.array(world.COLOURS[colour], np.int16)
    return (np.abs(frames.astype(np.int16) - rgb).max(-1) < tol)


def centroid(mask_HW):
    ys, xs = np.nonzero(mask_HW)
    assert xs.size > 0, "object not found"
    return xs.mean() / mask_HW.shape[1], ys.mean() / mask_HW.shape[0]


def test_render_shape_dtype_and_colour_at_centre():
    scene = Scene([SceneObject("square", "red", "still")], "studio", "static", 1.0)
    frames = world.render_scene(scene, 4, SIZE)
    assert frames.shape == (4, *SIZE, 3) and frames.dtype == np.uint8
    cx, cy = centroid(colour_mask(frames[0], "red"))
    ax, ay = world.object_slots(1, 0)[0]
    assert abs(cx - ax) < 0.05 and abs(cy - ay) < 0.05
    assert np.abs(frames[0, int(ay * SIZE[0]), int(ax * SIZE[1])].astype(int) - world.COLOURS["red"]).max() < 30
    assert not colour_mask(frames[0], "blue").any()


@pytest.mark.parametrize("motion,axis,sign", [("left", 0, -1), ("right", 0, 1), ("up", 1, -1), ("down", 1, 1)])
def test_motion_moves_the_centroid(motion, axis, sign):
    scene = Scene([SceneObject("circle", "yellow", motion)], "night", "static", 1.0)
    frames = world.render_scene(scene, 8, SIZE)
    first, last = centroid(colour_mask(frames[0], "yellow")), centroid(colour_mask(frames[-1], "yellow"))
    assert sign * (last[axis] - first[axis]) > 0.1
    assert abs(last[1 - axis] - first[1 - axis]) < 0.03


def test_grow_and_shrink_change_area():
    for motion, sign in (("grow", 1), ("shrink", -1)):
        frames = world.render_scene(Scene([SceneObject("star", "green", motion)], "sky", "static"), 6, SIZE)
        a0, a1 = colour_mask(frames[0], "green").sum(), colour_mask(frames[-1], "green").sum()
        assert sign * (a1 - a0) > 0.5 * min(a0, a1)


def test_pan_moves_the_world_the_other_way():
    scene = Scene([SceneObject("square", "pink", "still")], "beach", "pan_right", 1.0)
    frames = world.render_scene(scene, 6, SIZE)
    x0, x1 = centroid(colour_mask(frames[0], "pink"))[0], centroid(colour_mask(frames[-1], "pink"))[0]
    assert x1 < x0 - 0.1  # the camera pans right, so the still object slides left on screen


def test_backgrounds_look_distinct():
    means = np.array([world.render_background(b, SIZE).reshape(-1, 3).mean(0) for b in world.BACKGROUNDS])
    d = np.abs(means[:, None] - means[None]).sum(-1) + np.eye(len(means)) * 1e9
    assert d.min() > 20


@pytest.mark.parametrize("background,level", [("sky", 200), ("night", 50)])
def test_backdrop_is_the_same_at_every_resolution(background, level):
    """A 1080p plate shrunk to 360p has the clouds and stars of the 360p plate of its seed, not those of
    another seed: the checker re-renders a clip's backdrop at the size it checks."""
    import cv2

    def bright(img):   # clouds and stars (a shrunk star is spread over up to 4 pixels), within a pixel
        return cv2.dilate((img.min(-1) > level).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)

    small = world.render_background(background, (360, 960), seed=1)
    shrunk = cv2.resize(world.render_background(background, (1080, 2880), seed=1), (960, 360),
                        interpolation=cv2.INTER_AREA)
    other = world.render_background(background, (360, 960), seed=2)
    marks = (small.min(-1) > 200) & (np.abs(np.arange(960) - 0.85 * 960) > 40)[None, :]   # moon left out
    assert bright(shrunk)[marks].mean() > 0.9
    assert bright(other)[marks].mean() < 0.5


def test_cuts_land_at_planned_frames():
    script = Script([Scene([SceneObject("circle", "red", "left")], "beach", "static", 1.0),
                     Scene([SceneObject("triangle", "blue", "up")], "night", "static", 0.5),
                     Scene([SceneObject("7", "white", "rotate")], "grass", "zoom_in", 0.7)])
    frames, cuts = world.render_script(script, fps=10, size_hw=SIZE)
    assert cuts == [10, 15] and len(frames) == 22
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean((1, 2, 3))
    assert set(np.argsort(diffs)[-2:] + 1) == {10, 15}


def test_splits_keep_held_out_combos_apart():
    rng = np.random.default_rng(0)
    train = [(o.shape, o.colour, o.motion) for _ in range(300) for o in world.sample_scene(rng, "train").objects]
    test = [(o.shape, o.colour, o.motion) for _ in range(100) for o in world.sample_scene(rng, "test").objects]
    assert not set(train) & world.HELD_OUT_COMBOS
    assert set(test) <= world.HELD_OUT_COMBOS
    # every shape, colour and motion is still seen in training
    for i, values in enumerate((world.SHAPES, world.COLOURS, world.MOTIONS)):
        assert {t[i] for t in train} == set(values)


def test_test_phrasing_uses_words_training_never_sees():
    rng = np.random.default_rng(1)
    train = " ".join(world.script_to_prompt(world.sample_script(rng), rng, "train") for _ in range(300))
    test = " ".join(world.script_to_prompt(world.sample_script(rng), rng, "test") for _ in range(100))
    for word in ("crimson", "disc", "followed by", "we see", "drifting"):
        assert word not in train
    assert "followed by" in test or "later on" in test


def _phrase_words(split: str) -> set[str]:
    lists = [world.phrase_words(a, v, split) for a in world._WORDS for v in world._WORDS[a]]
    lists += [world.phrase_options(o, split) for o in (world.SCENE_JOINERS, world.OBJECT_JOINERS, world._ARTICLES)]
    lists.append([re.sub(r"\{\w+\}", " ", f) for f in world._STATES.get(split, world._STATES["train"])])   # frames
    return {w for phrases in lists for p in phrases for w in re.findall(r"[a-z0-9'-]+", p.lower())}


# Words both the held-out and the training phrasings use: function words, the values' own names and digits.
_SHARED_WORDS = {"a", "an", "the", "to", "in", "on", "at", "and", "is", "with", "by", "as", "after", "there", "goes", "see",
                 "shot", "panning", "moving", "dark", "camera", "shape", "up", "down", "left", "right",
                 *world.COLOURS, *world.SHAPES, *world.DIGIT_WORDS, *world.BACKGROUNDS, *world.STYLES_IN_PROMPTS}


def test_held_out_and_validation_words_are_never_training_words():
    train, val, test = _phrase_words("train"), _phrase_words("val"), _phrase_words("test")
    novel = _phrase_words("novel")
    assert test & (train | val) <= _SHARED_WORDS, sorted(test & (train | val) - _SHARED_WORDS)
    # the novel wording is unseen too, and spends none of the test wording
    assert novel & (train | val | test) <= _SHARED_WORDS, sorted(novel & (train | val | test) - _SHARED_WORDS)
    for attr, values in world._WORDS.items():
        for value in values:
            fit, held = world.phrase_words(attr, value, "train"), world.phrase_words(attr, value, "val")
            assert fit and held and not set(fit) & set(held) or len(values[value][0]) < 4, (attr, value)
            assert not set(world.phrase_words(attr, value, "test")) & set(fit + held) - {""}
            assert world.phrase_words(attr, value, "novel"), (attr, value)
    with pytest.raises(ValueError, match="split"):
        world.phrase_words("colour", "red", "dev")


def test_novel_prompts_use_their_own_frames_and_joiners():
    rng = np.random.default_rng(3)
    novel = [world.script_to_prompt(world.sample_script(rng), rng, "novel") for _ in range(100)]
    text = " ".join(novel)
    assert "the footage depicts" in text or " appears " in text
    assert any(j in text for j in world.phrase_options(world.SCENE_JOINERS, "novel"))
    assert not any(w in text for w in ("slowly", "quickly", "followed by", "we see"))   # no manner words, no test


def test_prompt_spans_label_what_they_cover():
    rng = np.random.default_rng(2)
    script = world.sample_script(rng)
    text, spans = world.script_to_prompt_spans(script, rng)
    labels = [lab for _, _, lab in spans]
    assert labels.count("scene") == len(script.scenes)
    assert labels.count("object") == sum(len(s.objects) for s in script.scenes)
    for a, b, lab in spans:
        if lab.startswith("colour:"):
            assert text[a:b] in world.phrase_words("colour", lab.split(":")[1], "train")


def test_caption_and_validation():
    scene = Scene([SceneObject("circle", "orange", "left"), SceneObject("3", "blue", "grow")], "beach", "pan_right")
    assert world.caption_scene(scene) == ("an orange circle moves left and a blue digit 3 grows on the beach; "
                                          "the camera pans right.")
    with pytest.raises(ValueError, match="colour"):
        SceneObject("circle", "mauve", "left")
    with pytest.raises(ValueError, match="camera"):
        Scene([SceneObject("circle", "red", "left")], "beach", "dolly")
    assert Script.from_dict(Script([scene], "pencil").to_dict()) == Script([scene], "pencil")
