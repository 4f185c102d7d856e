"""data_connectors.video: encode/decode round trips, browser-playable codecs, bad files -> VideoError."""
import subprocess

import cv2
import numpy as np
import pytest

from data_connectors.video import (VideoError, bench_encoding, ffmpeg_exe, iter_video, probe_video, read_image,
                                   read_video, write_image, write_preview, write_video)


def moving_clip(frames=12, h=64, w=96):
    """A smooth gradient with a white square moving right: easy to encode, with a known mean colour."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 200 // w + 20, yy * 200 // h + 20, np.full_like(xx, 90)], -1).astype(np.uint8)
    clip = np.repeat(base[None], frames, axis=0)
    for i in range(frames):
        clip[i, 20:36, 4 + 4 * i:20 + 4 * i] = 255
    return clip


CODECS = [("h264", ".mp4", "h264"), ("vp9", ".webm", "VP90"), ("vp8", ".webm", "VP80")]


@pytest.mark.parametrize("codec,suffix,fourcc", CODECS)
def test_round_trip(tmp_path, codec, suffix, fourcc):
    clip = moving_clip()
    path = write_video(clip, tmp_path / f"clip{suffix}", fps=12, codec=codec)
    info = probe_video(path)
    assert (info.frames, info.width, info.height, info.fps) == (12, 96, 64, 12.0)
    assert info.codec == fourcc and info.seconds == pytest.approx(1.0)
    back, fps = read_video(path)
    assert back.shape == clip.shape and back.dtype == np.uint8 and fps == 12.0
    assert np.abs(back.reshape(-1, 3).mean(0) - clip.reshape(-1, 3).mean(0)).max() < 3.0  # mean colour per channel
    assert np.abs(back.astype(int) - clip).mean() < 6.0
    # the square is where it was put (decoded frames are in order)
    assert back[-1, 28, 4 + 4 * 11 + 8].min() > 200 and back[0, 28, 4 + 4 * 11 + 8].min() < 200
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_mp4_is_h264_yuv420p_faststart(tmp_path):
    """Browser-playable: the packaged ffmpeg's own inspection says h264 (avc1) in yuv420p, moov before mdat."""
    path = write_video(moving_clip(4), tmp_path / "clip.mp4", fps=24)
    text = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    assert "Video: h264" in text and "avc1" in text and "yuv420p" in text
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")


def test_iterable_input_odd_size_and_limits(tmp_path):
    clip = moving_clip(5, h=33, w=47)
    path = write_video(iter(clip), tmp_path / "odd.mp4", fps=10)  # a generator works; odd sides padded by one
    frames, fps = read_video(path)
    assert frames.shape == (5, 34, 48, 3) and fps == 10.0
    assert np.abs(frames[:, :33, :47].astype(int) - clip).mean() < 8.0
    assert read_video(path, max_frames=2)[0].shape[0] == 2
    assert read_video(path, max_side=24)[0].shape == (5, 17, 24, 3)
    assert sum(1 for _ in iter_video(path, max_frames=3)) == 3


@pytest.mark.parametrize("frames,name,fps,codec,message", [
    ([], "a.mp4", 24, "auto", "no frames"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], "a.mp4", 24, "auto", "one size"),
    ([np.zeros((8, 8, 3), np.float32)], "a.mp4", 24, "auto", "uint8 RGB"),
    ([np.zeros((8, 8), np.uint8)], "a.mp4", 24, "auto", "uint8 RGB"),
    ([np.zeros((8, 8, 3), np.uint8)], "a.avi", 24, "auto", "suffix"),
    ([np.zeros((8, 8, 3), np.uint8)], "a.mp4", 24, "vp9", "does not go in"),
    ([np.zeros((8, 8, 3), np.uint8)], "a.mp4", 24, "mpeg2", "unknown codec"),
    ([np.zeros((8, 8, 3), np.uint8)], "a.mp4", 0, "auto", "fps"),
    ([np.zeros((8, 8, 3), np.uint8)], "a.mp4", 10_000, "auto", "fps"),
    ([np.zeros((8, 8, 3), np.uint8)], "nofolder/a.mp4", 24, "auto", "does not exist"),
])
def test_write_errors_leave_nothing(tmp_path, frames, name, fps, codec, message):
    with pytest.raises(VideoError, match=message):
        write_video(frames, tmp_path / name, fps, codec=codec)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file(tmp_path):
    path = write_video(moving_clip(3), tmp_path / "keep.mp4", fps=24)
    before = path.read_bytes()
    with pytest.raises(VideoError):
        write_video([moving_clip(1)[0], np.zeros((4, 4, 3), np.uint8)], path, fps=24)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_bad_video_files(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="zero bytes"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all " * 200)
    with pytest.raises(VideoError, match="junk.mp4: unreadable"):
        probe_video(tmp_path / "junk.mp4")
    with pytest.raises(VideoError, match="junk.mp4"):
        iter_video(tmp_path / "junk.mp4")  # raises at the call, not on the first frame
    good = write_video(moving_clip(6), tmp_path / "good.mp4", fps=24).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 3])  # truncated download
    with pytest.raises(VideoError, match="cut.mp4"):
        read_video(tmp_path / "cut.mp4")
    with pytest.raises(VideoError, match="not a file"):
        probe_video(tmp_path)


@pytest.mark.parametrize("suffix,name", [(".png", "PNG"), (".jpg", "JPEG")])
def test_still_image_given_as_video(tmp_path, suffix, name):
    image = write_image(moving_clip(1)[0], tmp_path / f"still{suffix}")
    renamed = image.rename(tmp_path / "still.mp4")  # the suffix lies: the content is checked
    with pytest.raises(VideoError, match=f"still image \\({name}\\)"):
        read_video(renamed)


def test_read_image_and_preview(tmp_path):
    clip = moving_clip(20, h=120, w=200)
    write_image(clip[0], tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), clip[0])
    grey = cv2.imencode(".png", clip[0, :, :, 0])[1].tobytes()
    (tmp_path / "grey.png").write_bytes(grey)
    assert read_image(tmp_path / "grey.png").shape == (120, 200, 3)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff broken jpeg")
    with pytest.raises(VideoError, match="bad.jpg: not a readable image"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(VideoError, match="no such image"):
        read_image(tmp_path / "none.png")

    from PIL import Image
    gif = write_preview(clip, tmp_path / "p.gif", max_side=100, fps=10)
    with Image.open(gif) as im:
        assert im.size == (100, 60) and im.n_frames == 20 and im.info["duration"] == 100
    thumb = read_image(write_preview(clip, tmp_path / "p.png", max_side=50))
    assert thumb.shape == (30, 50, 3)
    with pytest.raises(VideoError, match="suffix"):
        write_preview(clip, tmp_path / "p.bmp")


def test_every_picture_format_stylize_offers_is_written_and_read_back(tmp_path):
    from apps.video_generation.page import STYLIZE_SUFFIXES
    from apps.video_generation.style import IMAGE_SUFFIXES as STYLIZE_OUTPUTS
    from data_connectors.video import IMAGE_SUFFIXES

    frame = moving_clip(1, h=24, w=32)[0]
    for suffix in sorted(STYLIZE_OUTPUTS):            # .tif was offered as an output and refused by write_image
        back = read_image(write_image(frame, tmp_path / f"out{suffix}"))
        assert back.shape == frame.shape and np.abs(back.astype(int) - frame).mean() < 8, suffix
    assert IMAGE_SUFFIXES <= STYLIZE_SUFFIXES          # the page takes every picture the reader reads (.pgm too)


def test_read_image_decodes_opaque_files_once_and_still_sees_transparency(tmp_path, monkeypatch):
    from PIL import Image

    import data_connectors.video as video
    decodes = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(video.cv2, "imdecode", lambda *a: decodes.append(a[1]) or real_imdecode(*a))
    rgba = np.zeros((8, 12, 4), np.uint8)
    rgba[..., 1], rgba[:4, :, 3] = 200, 255  # green, opaque in the top half only
    opaque, see_through = Image.fromarray(rgba[..., :3]), Image.fromarray(rgba, "RGBA")
    palette = Image.fromarray(rgba[..., :3]).convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))  # a transparent palette colour: a tRNS chunk
    files = {"rgb.png": (opaque, {}), "lossy.webp": (opaque, {}), "lossless.webp": (opaque, {"lossless": True}),
             "rgba.png": (see_through, {}), "rgba.webp": (see_through, {"lossless": True}),
             "trns.png": (palette, {"transparency": palette.info["transparency"]})}
    for name, (im, kw) in files.items():
        im.save(tmp_path / name, **kw)
        decodes.clear()
        img = read_image(tmp_path / name)
        assert img.shape == (8, 12, 3), name
        if name in ("rgb.png", "lossy.webp", "lossless.webp"):
            assert len(decodes) == 1 and abs(int(img[7, 0, 1]) - 200) < 8, name  # one decode, nothing composited
        else:
            assert img[7, 0].tolist() == [255, 255, 255], name  # the transparent half comes out white
    # EXIF orientation still applies to a PNG decoded once (rotate 90 clockwise: 8x12 -> 12x8)
    exif = Image.Exif()
    exif[0x0112] = 6
    opaque.save(tmp_path / "turned.png", exif=exif.tobytes())
    assert read_image(tmp_path / "turned.png").shape == (12, 8, 3)


def test_bench_encoding_small(tmp_path):
    out = bench_encoding(frames=4, size_hw=(64, 96), codecs=("h264",), folder=tmp_path)
    assert out["encode_s_h264"] > 0 and out["size_kb_h264"] >= 0 and list(tmp_path.iterdir()) == []
