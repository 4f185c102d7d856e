"""The video studio page (apps/video_generation/page.py): it builds, and its handlers run on tiny input."""
import gradio as gr
import numpy as np
import pytest

from apps.video_generation import page, world
from apps.video_generation.shots import detect_shots


def test_page_builds_with_three_tabs():
    blocks = page.build()
    assert isinstance(blocks, gr.Blocks)
    tabs = [b.label for b in blocks.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == ["Generate", "Caption", "Stylize"]


def _two_scene_clip():
    script = world.Script([world.Scene([world.SceneObject("star", "yellow", "left")], "night", "static", 1.0),
                           world.Scene([world.SceneObject("heart", "red", "up")], "beach", "pan_right", 1.0)])
    return script, *world.render_script(script, 12, (72, 128))


def test_timeline_and_thumbnails():
    script, frames, cuts = _two_scene_clip()
    fig = page.timeline_figure(script.scenes, cuts, 12.0, len(frames))
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 2  # one bar per scene
    strip = page.thumbnail_strip(frames, detect_shots(frames, 12.0), height=40)
    assert strip.shape[0] == 40 and strip.shape[1] > 2 * 60 and strip.dtype == np.uint8


def test_caption_handler_on_a_tiny_clip(tmp_path, monkeypatch):
    from data_connectors.video import write_video

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    _, frames, cuts = _two_scene_clip()
    path = write_video(frames, tmp_path / "clip.mp4", 12.0)
    rows, strip, summary = page.caption(str(path), progress=lambda *a, **k: None)
    assert len(rows) == 2 and rows[1][1] == pytest.approx(cuts[0] / 12.0, abs=0.1)
    assert all(isinstance(r[3], str) and r[3] for r in rows) and strip.ndim == 3 and "2 shot" in summary
    with pytest.raises(gr.Error):
        page.caption(None, progress=lambda *a, **k: None)


def test_experts_text_reads_the_forms_a_studio_may_report():
    assert page._experts_text({"time": {0: 0.7, 3: 0.3}}) == "time: #0 (0.70), #3 (0.30)"
    assert page._experts_text(["a", "b"]) == "a, b"


def test_stylize_handler_goes_by_content_not_suffix(tmp_path, monkeypatch):
    # an MP4 named .jpg is a video and gives a video out; a PNG named .mp4 is a picture and gives a picture
    from data_connectors.video import probe_video, read_image, write_image, write_video

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    clip = write_video(rng.integers(0, 256, (4, 32, 48, 3), dtype=np.uint8), tmp_path / "c.mp4", 8.0)
    clip = clip.rename(tmp_path / "clip.jpg")
    image, video, _ = page.stylize(str(clip), "cartoon", "", None, progress=lambda *a, **k: None)
    assert image is None and video.endswith(".mp4") and probe_video(video).frames == 4
    pic = write_image(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), tmp_path / "p.png")
    pic = pic.rename(tmp_path / "pic.mp4")
    image, video, _ = page.stylize(str(pic), "cartoon", "", None, progress=lambda *a, **k: None)
    assert video is None and image.endswith(".png") and read_image(image).shape == (32, 48, 3)


def test_stylize_handler_shows_the_source_warnings(tmp_path, monkeypatch):
    from data_connectors.video import ffmpeg_exe, write_video

    if ffmpeg_exe() is None:
        pytest.skip("needs the imageio-ffmpeg binary")
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 64, 3), dtype=np.uint8)   # incompressible
    whole = write_video(noise, tmp_path / "whole.mp4", fps=24)       # faststart: the index comes first
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    image, video, details = page.stylize(str(cut), "smooth", "", None, progress=lambda *a, **k: None)
    assert image is None and video.endswith(".mp4")
    assert "routed by **name**" in details and "warning:" in details and "truncated" in details
