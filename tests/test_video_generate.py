"""Generation: the learned layout and sprites at a tiny resolution, generate_video end to end to a
playable file, and the documented limits."""
import math
import time

import numpy as np
import pytest
import torch

from apps.video_generation import generator as G
from apps.video_generation import planner as P
from apps.video_generation import studio, world
from apps.video_generation.world import Scene, SceneObject

SHIPPED = (G.DEFAULT_PATH / "config.json").is_file() and (P.DEFAULT_PATH / "config.json").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="no shipped planner/generator checkpoints")
SIZE = (72, 128)


TINY = G.GeneratorConfig(sprite_px=32, embed_dim=16, layout_hidden=32)


def _losses(model):
    motion, count, anchor, t, target = G.layout_batch(np.random.default_rng(9), 256)
    with torch.no_grad():
        layout = G.layout_loss(model.layout(motion, count, anchor, t), target).item()
        tgt, idx = G.sprite_targets(G.sprite_pairs()[:40], TINY.sprite_px)
        alpha = (G.sprite_rgba(model, idx[:, 0], idx[:, 1])[:, 3] - tgt[:, 3]).abs().mean().item()
    return layout, alpha


def test_tiny_training_run_learns_and_draws_frames():
    torch.manual_seed(0)
    before = _losses(G.GeneratorModel(TINY))
    model = G.train_generator(TINY, G.GeneratorTrainConfig(layout_steps=120, sprite_steps=40, batch_size=32,
                                                           lr=1e-2), log=lambda s: None)
    after = _losses(model)
    assert after[0] < 0.3 * before[0] and after[1] < 0.7 * before[1]
    gen = G.Generator(model)
    scene = Scene([SceneObject("square", "red", "right"), SceneObject("star", "blue", "still")], "studio", "pan_left")
    frames = np.stack(list(gen.scene_frames(scene, 5, SIZE)))
    assert frames.shape == (5, *SIZE, 3) and frames.dtype == np.uint8


def test_untrained_generator_does_not_move_objects_right():
    """The motion comes from the learned network, not from the renderer."""
    torch.manual_seed(0)
    gen = G.Generator(G.GeneratorModel(TINY))
    scene = Scene([SceneObject("square", "red", "right")], "studio", "static")
    x = gen.draft(scene, 6).layouts[0][:, 0]
    assert abs(x[-1] - x[0]) < 0.2


@needs_shipped
def test_shipped_generator_matches_the_world_on_held_out_combos():
    gen = G.load_generator()
    for motion, axis, sign in (("left", 0, -1), ("up", 1, -1), ("right", 0, 1)):
        lay = gen.draft(Scene([SceneObject("heart", "cyan", motion)], "grass", "static"), 8).layouts[0]
        assert sign * (lay[-1, axis] - lay[0, axis]) > 0.2
    metrics = G.evaluate_generator(gen, n_scenes=6, seed=3, size_hw=SIZE, frames=6)
    assert metrics["layout_mae_frame_fraction"] < 0.03
    assert metrics["frame_psnr_db"] > 20
    assert metrics["heldout_sprite_iou"] > 0.8


@needs_shipped
def test_generate_video_end_to_end(tmp_path):
    from data_connectors.video import probe_video, read_video

    out = tmp_path / "clip.mp4"
    r = studio.generate_video("a red ball moves left on the beach, then a blue square moves up at night",
                              seconds=2.0, resolution="360p", fps=8, out=out)
    info = probe_video(r.path)
    assert (info.width, info.height, info.frames) == (640, 360, 16)
    assert r.preview_path.is_file() and r.preview_path.suffix == ".gif"
    assert len(r.script.scenes) == 2 and len(r.cut_frames) == 1 and 0 < r.cut_frames[0] < 16
    assert len(r.experts) == 2 and r.experts[0]["text_experts"]
    frames, _ = read_video(r.path)
    cut = r.cut_frames[0]
    jump = np.abs(frames[cut].astype(int) - frames[cut - 1].astype(int)).mean()
    steady = np.abs(frames[1].astype(int) - frames[0].astype(int)).mean()
    assert jump > 3 * steady + 5       # the scene changes at the planned cut
    for key in ("planning_s", "generation_s", "encoding_s", "total_s"):
        assert r.timings[key] >= 0


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": ""}, "empty"),
    ({"prompt": "   "}, "empty"),
    ({"prompt": "a red ball " * 1000}, "characters"),
    ({"seconds": 0.1}, "seconds"),
    ({"seconds": 25}, "seconds"),
    ({"seconds": math.nan}, "seconds"),
    ({"fps": 4}, "fps"),
    ({"fps": 60}, "fps"),
    ({"fps": 12.5}, "fps"),
    ({"resolution": "4k"}, "resolution"),
    ({"out": "clip.avi"}, "out"),
])
def test_bad_requests_fail_fast_with_clear_errors(tmp_path, kwargs, match):
    args = {"prompt": "a red ball moves left", "seconds": 2.0, "resolution": "360p", "fps": 12,
            "out": tmp_path / "x.mp4", **kwargs}
    if isinstance(args["out"], str):
        args["out"] = tmp_path / args["out"]
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        studio.generate_video(args.pop("prompt"), **args)
    assert time.perf_counter() - t0 < 1.0
    assert not any(tmp_path.iterdir())


def test_missing_output_folder(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        studio.generate_video("a red ball", out=tmp_path / "nope" / "x.mp4")


@needs_shipped
def test_generate_video_with_a_style(tmp_path):
    r = studio.generate_video("a green star spins in the sky", seconds=1.0, fps=8, style="pencil",
                              out=tmp_path / "styled.mp4")
    assert r.script.style == "pencil" and r.style_experts and "style_s" in r.timings
    plain = studio.generate_video("a green star spins in the sky", seconds=1.0, fps=8, style="pencil",
                                  apply_style=False, out=tmp_path / "plain.mp4")
    assert plain.style_experts == {} and "style_s" not in plain.timings
