"""The captioner's motion stage: evidence measured through the camera, the stage's known answers,
a tiny fit and its checkpoint round trip, the CLI."""
import json

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


def test_unfitted_stage_keeps_the_heads_answer_and_a_fitted_one_decides():
    torch.manual_seed(0)
    cfg = cap.CaptionerConfig(**TINY, motion_frames=3)
    stage = cap.MotionStage(cfg)
    n, e = 5, cap.MOTION_EVIDENCE
    logp = torch.randn(n, len(cfg.motions)).log_softmax(-1)
    out = stage(logp, torch.rand(n, len(cfg.cameras)), torch.randn(n, e))
    assert torch.equal(out, logp)
    # A stage whose last layer says "left" makes every predicted object move left.
    model = cap.CaptionModel(cfg)
    with torch.no_grad():
        model.motion_stage.mlp[-1].bias[cfg.motions.index("left")] = 100.0
    rng = np.random.default_rng(1)
    clips = [world.render_scene(world.sample_scene(rng), 6, (36, 64), seed=i) for i in range(3)]
    preds = cap.Captioner(model).predict(clips)
    assert all(o["motion"] == "left" for p in preds for o in p.attributes["objects"])
    model.motion_stage = None
    assert any(o["motion"] != "left" for p in cap.Captioner(model).predict(clips) for o in p.attributes["objects"])


def test_tiny_fit_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    start = cap.Captioner(cap.CaptionModel(cap.CaptionerConfig(**TINY)), np.zeros(5), np.ones(5))
    mc = cap.MotionStageConfig(frames=3, hidden=8, clips=24, val_clips=8, epochs=3)
    fitted, metrics = cap.fit_motion_stage(start, mc)
    assert start.model.motion_stage is None and start.cfg.motion_frames == 0     # the start is left alone
    assert fitted.cfg.motion_frames == 3 and fitted.model.motion_stage is not None
    assert metrics["fit_objects"] >= 24 and 0.0 <= metrics["motion_accuracy_stage"] <= 1.0
    assert 0 <= metrics["best_epoch"] <= 3 and fitted.metadata["motion_stage"] == metrics
    with torch.no_grad():   # a stage that answers (3 epochs on noise may keep the zero start)
        fitted.model.motion_stage.mlp[-1].weight.normal_()
    cap.save_captioner(fitted, tmp_path / "c")
    loaded = cap.Captioner.load(tmp_path / "c")
    assert loaded.cfg.motion_frames == 3 and loaded.model.motion_stage is not None
    rng = np.random.default_rng(5)
    clips = [world.render_scene(world.sample_scene(rng), 6, (36, 64), seed=i) for i in range(3)]
    with torch.no_grad():
        probs = {k: v.softmax(-1) for k, v in fitted._encode(clips)[2].logits.items()}
        inputs = fitted.motion_stage_inputs(clips, probs)
        want, got = fitted.model.motion_stage(*inputs), loaded.model.motion_stage(*inputs)
    assert not torch.equal(want, inputs[0]) and torch.allclose(got, want, atol=0.05)   # stored in float16
    assert len(loaded.predict(clips)) == 3


def test_fit_motion_stage_command(tmp_path, capsys):
    from apps.cli import main

    torch.manual_seed(0)
    start = cap.Captioner(cap.CaptionModel(cap.CaptionerConfig(**TINY)))   # no frame statistics: saved without
    cap.save_captioner(start, tmp_path / "c")
    (tmp_path / "c" / "MODEL_CARD.md").write_text("card")
    main(["video", "fit-motion-stage", "--captioner", str(tmp_path / "c"), "--out", str(tmp_path / "c"),
          "--frames", "3", "--clips", "16", "--val-clips", "8", "--epochs", "2", "--eval-clips", "4", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"motion_accuracy_heads", "motion_accuracy_stage", "held_out_heads_only", "held_out_with_stage"} <= set(out)
    assert (tmp_path / "c" / "MODEL_CARD.md").read_text() == "card"              # the card survives the rewrite
    assert cap.Captioner.load(tmp_path / "c").cfg.motion_frames == 3
    with pytest.raises(SystemExit):
        main(["video", "fit-motion-stage", "--out", str(tmp_path / "d"), "--frames", "0"])
