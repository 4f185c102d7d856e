"""The captioner's stages: motion evidence measured through the camera, shape crops at the shot's own
resolution, the stages' known answers, a tiny fit and its checkpoint round trip, the CLI."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from apps.video_generation import captioner as cap
from apps.video_generation import world

TINY = dict(frames=4, height=32, width=48, dim=32, patch=4, stem_widths=(8, 16), vision_layers=1, vision_experts=2,
            heads=2, decoder_layers=1, num_experts=2, top_k=1, expert_hidden=32, crop=16, crop_widths=(8, 16))


# motion_evidence's columns
SCREEN_DX, SCREEN_DY, SCREEN_DAREA, WORLD_DX, WORLD_DY, WORLD_DAREA, BOUNCE, STEP_X, STEP_Y, IOU_MIN, IOU_MEAN, \
    SIZE_CHANGE, SEEN, REGION_DX, REGION_DY, REGION_DSIZE = range(cap.MOTION_EVIDENCE)


def _evidence(shape: str, motion: str, camera: str, frames: int = 7, colour: str = "red") -> np.ndarray:
    cfg = cap.CaptionerConfig(motion_frames=frames)
    scene = world.Scene([world.SceneObject(shape, "red", motion)], "studio", camera, 1.0)
    clip = world.render_scene(scene, 25, (144, 256), seed=3)
    return cap.motion_evidence(clip, cfg, camera)[cfg.colours.index(colour)]


def test_motion_evidence_undoes_the_camera():
    still_pan = _evidence("square", "still", "pan_left")
    assert still_pan.shape == (cap.MOTION_EVIDENCE,) and still_pan[SEEN] == 1.0
    assert still_pan[SCREEN_DX] > 0.15 and abs(still_pan[WORLD_DX]) < 0.03      # slides on screen, stands in the world
    assert abs(still_pan[REGION_DX]) < 0.03
    right = _evidence("square", "right", "pan_left")
    assert right[WORLD_DX] > 0.2 and right[REGION_DX] > 0.2                    # a real move survives the inverse
    still_zoom = _evidence("square", "still", "zoom_in")
    assert still_zoom[SCREEN_DAREA] > 0.5 and abs(still_zoom[WORLD_DAREA]) < 0.2   # grows on screen only
    assert abs(still_zoom[REGION_DSIZE]) < 0.1
    grow = _evidence("square", "grow", "zoom_in")
    assert grow[WORLD_DAREA] > 0.5 and grow[REGION_DSIZE] > 0.25
    bounce, up = _evidence("square", "bounce", "static"), _evidence("square", "up", "static")
    assert bounce[BOUNCE] > 2 * up[BOUNCE] and up[WORLD_DY] < -0.1
    assert not _evidence("square", "still", "static", colour="blue").any()     # an absent colour: zeros


def test_motion_evidence_tells_a_turning_triangle_from_a_still_one():
    # At 4 frames a full turn is sampled every 120 degrees, where a triangle looks unmoved; at 7 it is not.
    still, turning = _evidence("triangle", "still", "static"), _evidence("triangle", "rotate", "static")
    assert still[IOU_MIN] > 0.9 and turning[IOU_MEAN] < 0.8, (still, turning)
    assert _evidence("triangle", "rotate", "static", frames=4)[IOU_MIN] > 0.9


def test_backdrop_pixels_are_the_shared_backdrop_and_never_the_object():
    scene = world.Scene([world.SceneObject("square", "white", "left")], "sky", "zoom_in", 1.0)
    clip = world.render_scene(scene, 20, (96, 160), seed=3)
    idx = cap.sample_indices(20, 5)
    known = cap.backdrop_pixels(clip[idx], "sky", "zoom_in", idx, 20, 12.0)
    scale, shift = world.camera_transform("zoom_in", 20)
    plate = world.background_plate("sky", (96, 160), 3)   # with this seed's clouds
    views = np.stack([world.camera_view(plate, (96, 160), scale[i], shift[i]) for i in idx]).astype(int)
    drawn = np.abs(clip[idx].astype(int) - views).max(-1) > 40
    clouds = np.abs(views - np.stack([world.camera_view(world.background_plate("sky", (96, 160), details=False),
                                                         (96, 160), scale[i], shift[i]) for i in idx])).max(-1) > 40
    assert drawn.any() and clouds.any()
    assert not known[drawn].any() and not known[clouds & ~drawn].any()   # the object and the seed's clouds stay
    assert known[~drawn & ~clouds].mean() > 0.97


def test_the_clouds_of_a_studio_seed_are_backdrop_and_no_other_seeds():
    idx = cap.sample_indices(20, 5)

    def sky(seed, background="sky"):
        scene = world.Scene([world.SceneObject("square", "white", "left")], background, "pan_left", 1.0)
        return world.render_scene(scene, 20, (96, 160), seed=seed)[idx]

    assert cap.details_seed(sky(2), "sky", "pan_left", idx, 20, seeds=4) == 2
    assert cap.details_seed(sky(2), "sky", "pan_left", idx, 20, seeds=2) is None      # not among those searched
    assert cap.details_seed(sky(1234), "sky", "pan_left", idx, 20, seeds=4) is None   # another seed's clouds
    assert cap.details_seed(sky(2, "studio"), "studio", "pan_left", idx, 20, seeds=4) is None
    clip = sky(2)
    plain, seeded = (cap.backdrop_pixels(clip, "sky", "pan_left", idx, 20, 12.0, seed) for seed in (None, 2))
    views = np.stack(world.background_views("sky", "pan_left", 20, idx, (96, 160), seed=2)).astype(int)
    clouds = np.abs(views - np.stack(world.background_views("sky", "pan_left", 20, idx, (96, 160),
                                                             details=False))).max(-1) > 40
    drawn = np.abs(clip.astype(int) - views).max(-1) > 40
    assert clouds.any() and not plain[clouds & ~drawn].any() and seeded[clouds & ~drawn].mean() > 0.95
    assert not seeded[drawn].any()                                                     # the object stays
    with pytest.raises(ValueError, match="stage_backdrop_seeds"):
        cap.CaptionerConfig(stage_backdrop_seeds=-1)


def test_the_backdrop_seed_is_searched_once_per_shot():
    scene = world.Scene([world.SceneObject("square", "white", "left")], "sky", "pan_left", 1.0)
    shot = world.render_scene(scene, 20, (180, 320), seed=2)
    cfg = cap.CaptionerConfig(motion_frames=7, stage_backdrop_de=8, stage_backdrop_seeds=4)
    assert cap.shot_details_seed(shot, cfg, "pan_left", "sky") == 2
    assert cap.shot_details_seed(shot, replace(cfg, stage_backdrop_seeds=0), "pan_left", "sky") is None
    assert cap.shot_details_seed(shot, replace(cfg, stage_backdrop_de=0), "pan_left", "sky") is None
    assert cap.shot_details_seed(shot, cfg, "pan_left", "beach") is None       # no seeded details
    assert cap.shot_details_seed(shot, cfg, "pan_left", None) is None
    # the stages measure with that seed's clouds left out: the same as given the seed by hand
    white = cfg.colours.index("white")
    found = cap.motion_evidence(shot, cfg, "pan_left", "sky", cap.shot_details_seed(shot, cfg, "pan_left", "sky"))
    np.testing.assert_array_equal(found, cap.motion_evidence(shot, cfg, "pan_left", "sky", 2))
    assert not np.array_equal(found[white], cap.motion_evidence(shot, cfg, "pan_left", "sky", None)[white])


def test_stage_masks_without_the_backdrop_see_the_sunset_star_as_the_studio_one():
    # A yellow star at sunset: the sun is yellow too, and larger, so the stages' largest yellow region is the
    # sun; with the backdrop left out, the masks and shape crops are those of the same star in the studio.
    idx = cap.sample_indices(9, 3)
    with_sun, without_sun = (cap.CaptionerConfig(shape_crop=32, shape_frames=3, stage_backdrop_de=de) for de in (0, 12))
    yellow = with_sun.colours.index("yellow")
    clips = {bg: world.render_scene(world.Scene([world.SceneObject("star", "yellow", "left")], bg, "pan_right", 1.0),
                                    9, (180, 320), seed=1) for bg in ("sunset", "studio")}
    masks = {(bg, c.stage_backdrop_de): cap._stage_masks(clip[idx], idx, 9, c, "pan_right", bg)[yellow]
             for bg, clip in clips.items() for c in (with_sun, without_sun)}
    assert masks["sunset", 0].sum() > 2 * masks["studio", 0].sum()
    assert np.array_equal(masks["sunset", 12], masks["studio", 0])
    assert np.array_equal(masks["studio", 12], masks["studio", 0])

    def silhouettes(bg, c):   # the yellow crops' mask channel (the grey channel shows the backdrop)
        return cap.shape_crops(clips[bg], c, "pan_right", bg)[yellow, :, 0]

    assert np.array_equal(silhouettes("sunset", without_sun), silhouettes("studio", with_sun))
    assert not np.array_equal(silhouettes("sunset", with_sun), silhouettes("studio", with_sun))
    with pytest.raises(ValueError, match="stage_backdrop_de"):
        cap.CaptionerConfig(stage_backdrop_de=-1)


def test_stages_measure_without_the_heads_background_at_the_models_input_size():
    # motion_evidence resizes the shot to the model's input: the sunset star still reads as the studio one.
    plain, without = cap.CaptionerConfig(motion_frames=7), cap.CaptionerConfig(motion_frames=7, stage_backdrop_de=12)
    yellow = plain.colours.index("yellow")
    clips = {bg: world.render_scene(world.Scene([world.SceneObject("star", "yellow", "left")], bg, "zoom_in", 1.0),
                                    25, (180, 320), seed=1) for bg in ("sunset", "studio")}
    studio = cap.motion_evidence(clips["studio"], plain, "zoom_in")[yellow]
    np.testing.assert_allclose(cap.motion_evidence(clips["sunset"], without, "zoom_in", "sunset")[yellow], studio,
                               atol=1e-6)
    assert np.abs(cap.motion_evidence(clips["sunset"], plain, "zoom_in", "sunset")[yellow] - studio).max() > 0.3
    # stage_inputs measures under the heads' most likely background and camera.
    cfg = cap.CaptionerConfig(**TINY, motion_frames=7, stage_backdrop_de=12)
    captioner = cap.Captioner(cap.CaptionModel(cfg))
    O = len(cfg.colours)
    for background in ("sunset", "studio"):
        probs = {"motion": torch.full((1, O, len(cfg.motions)), 1 / len(cfg.motions)),
                 "camera": torch.nn.functional.one_hot(torch.tensor([cfg.cameras.index("zoom_in")]),
                                                      len(cfg.cameras)).float(),
                 "background": torch.nn.functional.one_hot(torch.tensor([cfg.backgrounds.index(background)]),
                                                          len(cfg.backgrounds)).float()}
        evidence = captioner.stage_inputs([clips["sunset"]], probs)["motion"][2][0].numpy()
        np.testing.assert_array_equal(evidence, cap.motion_evidence(clips["sunset"], cfg, "zoom_in", background))
    assert not np.array_equal(cap.motion_evidence(clips["sunset"], cfg, "zoom_in", "sunset"),
                              cap.motion_evidence(clips["sunset"], cfg, "zoom_in", "studio"))


def test_shape_crops_are_cut_at_the_shots_own_resolution():
    cfg = cap.CaptionerConfig(shape_crop=32, shape_frames=3)
    scene = world.Scene([world.SceneObject("7", "red", "still")], "studio", "static", 1.0)
    clip = world.render_scene(scene, 9, (180, 320), seed=1)
    crops = cap.shape_crops(clip, cfg)
    assert crops.shape == (len(cfg.colours), 3, cap.CROP_CHANNELS, 32, 32) and crops.dtype == np.uint8
    red, blue = cfg.colours.index("red"), cfg.colours.index("blue")
    assert crops[red, :, 0].max() == 255 and not crops[blue].any()
    # The same 7 cut from the model's 96x160 input: a blurrier silhouette (more grey edge pixels in the mask).
    small = cap.object_crops(cap.sample_frames(clip, cfg)[:1], cap.colour_masks(
        cap.sample_frames(clip, cfg)[:1], [world.COLOURS[c] for c in cfg.colours]), 32, 1)[0][red, 0, 0, 0]
    edge = lambda m: ((m > 0) & (m < 255)).mean()
    assert edge(crops[red, 0, 0]) < edge(small)
    # A 1080p shot is scaled down to twice the model's input height before cutting.
    big = cap.shape_crops(world.render_scene(scene, 3, (1080, 1920), seed=1), cfg)
    assert big[red, :, 0].max() == 255


def _tiny_clips(n: int, seed: int, frames: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [world.render_scene(world.sample_scene(rng), frames, (36, 64), seed=i) for i in range(n)]


def test_unfitted_stages_keep_the_heads_answer_and_fitted_ones_decide():
    torch.manual_seed(0)
    cfg = cap.CaptionerConfig(**TINY, motion_frames=3, shape_crop=16, shape_frames=2)
    n = 5
    logp = torch.randn(n, len(cfg.motions)).log_softmax(-1)
    assert torch.equal(cap.MotionStage(cfg)(logp, torch.rand(n, len(cfg.cameras)), torch.randn(n, cap.MOTION_EVIDENCE)),
                       logp)
    shape_logp = torch.randn(n, len(cfg.shapes) - 1).log_softmax(-1)
    crops = torch.randint(0, 256, (n, 2, cap.CROP_CHANNELS, 16, 16), dtype=torch.uint8)
    assert torch.equal(cap.ShapeStage(cfg)(shape_logp, crops), shape_logp)
    model = cap.CaptionModel(cfg)
    clips = _tiny_clips(3, 1)
    heads = cap.Captioner(model).predict(clips)
    # Stages whose last layers say "left" and "star" make every predicted object a star moving left, and
    # leave which colours hold an object (the heads' "none") as it was.
    star = [s for s in cfg.shapes if s != cap.NONE_SHAPE].index("star")
    with torch.no_grad():
        model.motion_stage.mlp[-1].bias[cfg.motions.index("left")] = 100.0
        model.shape_stage.mlp[-1].bias[star] = 100.0
    staged = cap.Captioner(model).predict(clips)
    for h, p in zip(heads, staged):
        assert [o["colour"] for o in p.attributes["objects"]] == [o["colour"] for o in h.attributes["objects"]]
        assert all(o["motion"] == "left" and o["shape"] == "star" for o in p.attributes["objects"])
    assert any(o["motion"] != "left" or o["shape"] != "star" for h in heads for o in h.attributes["objects"])
    # A slot the heads call empty stays empty, however sure the shape stage is of a shape.
    B, O, S = len(clips), len(cfg.colours), len(cfg.shapes)
    shape = torch.zeros(B, O, S)
    none = cfg.none_index
    shape[..., none], shape[..., 0], shape[..., 1] = 0.4, 0.3, 0.3
    probs = {"shape": shape, "motion": torch.full((B, O, len(cfg.motions)), 1 / len(cfg.motions)),
             "camera": torch.full((B, len(cfg.cameras)), 1 / len(cfg.cameras))}
    assert torch.equal(cap.Captioner(model).stage_probs(clips, probs)["shape"], shape)
    shape[..., none] = 0.2
    staged = cap.Captioner(model).stage_probs(clips, probs)["shape"]
    assert (staged.argmax(-1) == cfg.shapes.index("star")).all() and torch.allclose(staged[..., none], shape[..., none])
    alone = cap.Captioner(model).without_stages()
    assert [p.attributes for p in alone.predict(clips)] == [h.attributes for h in heads]
    assert model.motion_stage is not None and model.cfg.motion_frames == 3        # the original keeps its stages
    alone.model.register_buffer("extra_E", torch.zeros(1))                       # ... and its own registries
    assert "extra_E" not in dict(model.named_buffers()) and "stages" not in alone.metadata


def test_none_is_taken_out_and_put_back_at_its_place():
    cfg = cap.CaptionerConfig(shapes=("circle", cap.NONE_SHAPE, "square", "star"))
    x = torch.rand(2, 3, 4)
    objects = cap._object_shapes(x, cfg)
    assert torch.equal(objects, x[..., [0, 2, 3]])
    assert torch.equal(cap._with_none(objects, x[..., 1:2], 1), x)


def test_tiny_fit_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    start = cap.Captioner(cap.CaptionModel(cap.CaptionerConfig(**TINY)), np.zeros(5), np.ones(5))
    sc = cap.StageConfig(motion_frames=3, motion_hidden=8, shape_crop=16, shape_frames=2, clips=24, val_clips=8,
                         motion_epochs=3, shape_epochs=1)
    fitted, metrics = cap.fit_stages(start, sc)
    assert start.model.motion_stage is None and start.cfg.motion_frames == 0     # the start is left alone
    assert fitted.cfg.motion_frames == 3 and fitted.cfg.shape_crop == 16
    for name in ("motion", "shape"):
        m = metrics[name]
        assert m["fit_objects"] >= 24 and 0.0 <= m["accuracy_stage"] <= 1.0 and 0 <= m["best_epoch"] <= 3
    with torch.no_grad():   # stages that answer (a few epochs on noise may keep the zero start)
        fitted.model.motion_stage.mlp[-1].weight.normal_()
        fitted.model.shape_stage.mlp[-1].weight.normal_()
    cap.save_captioner(fitted, tmp_path / "c")
    loaded = cap.Captioner.load(tmp_path / "c")
    assert loaded.metadata["stages"] == metrics and loaded.metadata["stages"] is not metrics
    clips = _tiny_clips(3, 5)
    with torch.no_grad():
        probs = cap._head_probs(fitted._encode(clips)[2])
        want, got = fitted.stage_probs(clips, probs), loaded.stage_probs(clips, probs)
    assert set(want) == {"motion", "shape"} and not torch.allclose(want["motion"], probs["motion"])
    for name in want:   # stored in float16
        assert torch.allclose(got[name], want[name], atol=0.02) and torch.allclose(want[name].sum(-1), torch.ones(1))
    assert len(loaded.predict(clips)) == 3


def test_fit_stages_command(tmp_path, capsys):
    from apps.cli import main

    torch.manual_seed(0)
    start = cap.Captioner(cap.CaptionModel(cap.CaptionerConfig(**TINY)))   # no frame statistics: saved without
    cap.save_captioner(start, tmp_path / "c")
    (tmp_path / "c" / "MODEL_CARD.md").write_text("card")
    main(["video", "fit-stages", "--captioner", str(tmp_path / "c"), "--out", str(tmp_path / "c"),
          "--motion-frames", "3", "--shape-crop", "0", "--clips", "16", "--val-clips", "8", "--eval-clips", "4",
          "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"motion", "held_out_heads_only", "held_out_with_stages"} <= set(out) and "shape" not in out
    assert (tmp_path / "c" / "MODEL_CARD.md").read_text() == "card"              # the card survives the rewrite
    loaded = cap.Captioner.load(tmp_path / "c")
    assert loaded.cfg.motion_frames == 3 and loaded.model.shape_stage is None
    with pytest.raises(SystemExit):
        main(["video", "fit-stages", "--out", str(tmp_path / "d"), "--clips", "0"])
    for bad in (30, -8):
        with pytest.raises(ValueError, match="shape_crop"):
            cap.CaptionerConfig(shape_crop=bad)
    with pytest.raises(ValueError, match="motion_hidden"):
        cap.CaptionerConfig(motion_frames=3, motion_hidden=0)
