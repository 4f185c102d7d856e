"""BLEU-4, the pixel attribute checker, cut matching and `video eval` (apps/video_generation/evaluation.py)."""
import math

import numpy as np
import pytest

from apps.video_generation import world
from apps.video_generation.evaluation import check_scene, corpus_bleu, cut_hits, evaluate


def test_bleu_known_answers():
    same = "a red circle moves left on the beach ; the camera is static .".split()
    assert corpus_bleu([same], [[same]]) == pytest.approx(1.0)
    # Clipped precisions 5/6, 3/5, 2/4, 1/3; hypothesis 6 words, reference 7: brevity exp(1 - 7/6).
    hyp, ref = "a b c d e f".split(), "a b c d x f g".split()
    assert corpus_bleu([hyp], [[ref]]) == pytest.approx(math.exp(1 - 7 / 6) * (1 / 12) ** 0.25)
    # Longer than the reference: no brevity penalty; repeated words are clipped to the reference count.
    hyp, ref = "the the the cat sat on mat".split(), "the cat sat on the mat".split()
    # 1-grams: the x3 clipped to 2, cat, sat, on, mat -> 6/7; 2-grams: the cat, cat sat, sat on -> 3/6;
    # 3-grams: the cat sat, cat sat on -> 2/5; 4-grams: the cat sat on -> 1/4.
    assert corpus_bleu([hyp], [[ref]]) == pytest.approx((6 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25)
    assert corpus_bleu([["a", "b", "c"]], [[["x", "y", "z", "w"]]]) == 0.0


def test_bleu_is_corpus_level_and_takes_several_references():
    a, b = "p q r s t".split(), "u v w x y".split()
    # Counts are summed over the corpus before dividing (not an average of sentence scores).
    score = corpus_bleu([a, b], [[a], ["u v w k y".split()]])
    assert score == pytest.approx(((5 + 4) / 10 * (4 + 2) / 8 * (3 + 1) / 6 * (2 + 0) / 4) ** 0.25)
    # A second reference can only add matches; the closest reference length sets the brevity.
    assert corpus_bleu([b], [["u v w k y".split(), b]]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        corpus_bleu([a], [])


def test_cut_hits_match_each_found_cut_once():
    assert cut_hits([24, 48], [25, 47]) == (2, 0)
    assert cut_hits([24, 48], [27, 48, 60]) == (1, 2)   # 27 is 3 frames off
    assert cut_hits([24, 25], [24]) == (1, 0)           # one found cut serves one planned cut


def _scene(motion="left", colour="red", camera="static", background="sky"):
    return world.Scene([world.SceneObject("square", colour, motion)], background, camera, 2.0)


def test_pixel_checker_confirms_truth_and_rejects_wrong_scripts():
    for scene in (_scene(), _scene("grow", "yellow", "pan_left", "night"), _scene("bounce", "blue", "zoom_in", "grass")):
        frames = world.render_scene(scene, 24, (90, 160), seed=3)
        assert check_scene(frames, scene) == {"background": True, "colours": True, "motion": True}, scene
    frames = world.render_scene(_scene(), 24, (90, 160))
    assert not check_scene(frames, _scene("right"))["motion"]
    assert not check_scene(frames, _scene(colour="green"))["colours"]
    assert not check_scene(frames, _scene(camera="pan_right"))["motion"]  # the camera changes the path
    assert not check_scene(frames, _scene(background="beach"))["background"]


def test_pixel_checker_confirms_white_objects_by_the_foam_of_a_resized_beach():
    """Rendered at twice the checked size and shrunk (as `video eval` reads 360p clips at 320 wide), the
    beach's foam lines land a pixel off the checker's own rendering; the old pixel-to-pixel comparison took
    them for a white object and rejected all three true scenes."""
    import cv2

    def shrunk(scene, seed):
        frames = world.render_scene(scene, 24, (180, 320), seed)
        return np.stack([cv2.resize(f, (160, 90), interpolation=cv2.INTER_AREA) for f in frames])

    white = world.SceneObject("7", "white", "still")
    cases = ((world.Scene([world.SceneObject("0", "white", "grow")], "beach", "static"), 0),
             (world.Scene([world.SceneObject("diamond", "white", "still")], "beach", "zoom_in"), 1),
             (world.Scene([white, world.SceneObject("square", "yellow", "still")], "beach", "pan_left"), 1))
    for scene, seed in cases:
        assert check_scene(shrunk(scene, seed), scene) == {"background": True, "colours": True, "motion": True}, scene
    # ... and still rejects what the frames do not show.
    frames = shrunk(*cases[2])
    for wrong in (world.Scene([white, world.SceneObject("square", "yellow", "left")], "beach", "pan_left"),
                  world.Scene([white, world.SceneObject("square", "yellow", "still")], "beach", "static"),
                  world.Scene([world.SceneObject("7", "white", "up"), world.SceneObject("square", "yellow", "still")],
                              "beach", "pan_left")):
        assert not check_scene(frames, wrong)["motion"], wrong
    assert not check_scene(frames, world.Scene([world.SceneObject("7", "pink", "still")], "beach", "pan_left"))[
        "colours"]


def test_evaluate_at_tiny_size_returns_every_key():
    out = evaluate(n_prompts=0, n_clips=4, seed=0)
    for key in ("cut_accuracy_rendered", "false_cuts_per_clip_rendered", "checker_pass_rate_on_ground_truth",
                "seconds", "seed"):
        assert key in out, key
    assert 0.0 <= out["cut_accuracy_rendered"] <= 1.0
    assert ("caption_attribute_accuracy" in out and "bleu4" in out) or out["captioner"].startswith("skipped")
    with pytest.raises(ValueError, match="n_clips"):
        evaluate(n_prompts=0, n_clips=-1, seed=0)


def test_generated_videos_are_checked_unstyled(monkeypatch):
    from apps.video_generation import evaluation

    calls = []

    def fake_generate(prompt, **kwargs):
        calls.append(kwargs)
        raise FileNotFoundError("no generator checkpoint in this test")

    monkeypatch.setattr(evaluation, "_generator", lambda: (fake_generate, None))
    out = evaluate(n_prompts=1, n_clips=0, seed=0)
    assert out["generation"].startswith("skipped") and calls and calls[0]["apply_style"] is False


def test_train_wording_diagnostic_separates_wording_from_the_chain(monkeypatch):
    """Every held-out script is generated twice, once per wording; a fake studio that reads only the training
    wording right shows up as planner_exact_train_wording 1 against planner_exact 0, and the checker
    confirms its train-wording videos but not the others."""
    from types import SimpleNamespace

    from apps.video_generation import captioner, evaluation
    from data_connectors.video import write_video

    written: dict[str, tuple[world.Script, str]] = {}
    real = world.script_to_prompt

    def recording(script, rng, split="train"):
        prompt = real(script, rng, split)
        written[prompt] = (script, split)
        return prompt

    lexicon_passed = set()

    def fake_generate(prompt, seconds, resolution, fps, out, apply_style, allow_guesses, lexicon):
        lexicon_passed.add(lexicon)
        script, split = written[prompt]
        if split != "train":   # misread: every object takes another colour
            names = list(world.COLOURS)
            script = world.Script([world.Scene([world.SceneObject(
                o.shape, names[(names.index(o.colour) + 4) % len(names)], o.motion) for o in s.objects],
                s.background, s.camera, s.seconds) for s in script.scenes])
        frames, cuts = world.render_script(script, fps, (90, 160))
        write_video(frames, out, fps)
        return SimpleNamespace(path=out, script=script, cut_frames=cuts)

    monkeypatch.setattr(world, "script_to_prompt", recording)
    monkeypatch.setattr(evaluation, "_generator", lambda: (fake_generate, None))
    monkeypatch.setattr(captioner, "shared_captioner", lambda: None)
    out = evaluate(n_prompts=2, n_clips=0, seed=0, fps=8)
    assert sorted(split for _, split in written.values()) == ["test", "test", "train", "train"]
    assert out["planner_exact_train_wording"] == 1.0 and out["planner_exact"] == 0.0
    assert out["consistency_checker_train_wording"] > out["consistency_checker"] == 0.0
    # no captioner here: the joint figure (captioner and checker) is 0 for both wordings, yet reported
    assert out["text_video_consistency_train_wording"] == out["text_video_consistency"] == 0.0
    assert lexicon_passed == {True} and out["lexicon"] is True   # the studio as users get it, by default
    assert evaluate(n_prompts=1, n_clips=0, seed=0, fps=8, lexicon=False)["lexicon"] is False
    assert lexicon_passed == {True, False}
