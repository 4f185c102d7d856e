"""Video and image files in and out: `read_video`, `iter_video`, `write_video`, `write_preview`, `read_image`.

Frames are uint8 RGB numpy arrays, [F, H, W, 3] for a clip and [H, W, 3] for one frame.

    frames_FHW3, fps = read_video("clip.mp4", max_side=640)      # downscaled on read, aspect kept
    write_video(frames_FHW3, "out.mp4", fps=24)                  # H.264 yuv420p MP4, plays in every browser
    write_preview(frames_FHW3, "out.gif")                        # small animated GIF (or .png/.jpg thumbnail)

Encoding, measured here (72 frames of 1920x1080, 2 CPU cores shared with other users, 2026-11-29; rerun
with `bench_encoding()`): the ffmpeg binary packaged by the imageio-ffmpeg wheel, fed raw yuv420p, took
0.65-0.8 s with libx264 `-preset ultrafast` and 0.8-1.2 s with libvpx-vp9 `-deadline realtime -cpu-used 8`;
OpenCV's own writers took 2.9-5.7 s (VP8) and 9.9 s (VP9), and OpenCV has no H.264 encoder. So
`codec="auto"` means H.264 (yuv420p, faststart) for .mp4, the default for every caller, and VP9 via ffmpeg
for .webm; "vp8" is OpenCV's writer, kept as the path that needs no ffmpeg binary. Odd widths/heights are
padded by one edge pixel (yuv420p needs even sides). Every write goes to a temporary file beside the target
and is renamed into place when complete.

Reading uses OpenCV's FFmpeg backend (it decodes H.264, HEVC, VP8, VP9, MJPEG, ProRes, GIF; it applies the
rotation of portrait phone clips); when OpenCV cannot open or decode a file (AV1 here), and for interlaced
streams (which OpenCV 5 silently returns as black frames), the packaged ffmpeg reads it, deinterlacing with
yadif. `iter_video_timed` / `read_video_timed` also give each frame's presentation time, which differs from
frame / fps in variable-frame-rate clips (phones, screen recordings); `steady_rate` tells whether a clip keeps
to its nominal rate and `constant_rate` re-times one that does not for a constant-rate file. `copy_audio` carries a source's sound
over to a re-encoded video. Every problem raises VideoError naming the file (audio-only files, with or
without cover art, truncated MP4s without their index, bytes that are no video at all get their own
messages). A file's content, not its name, says whether it is a still image or a video (an MP4 saved as
.jpg is a video). HDR clips (HLG / PQ transfer, as phones record) are read through ffmpeg's zscale, tone
mapped to SDR BT.709 (`hdr_transfer`, `hdr_warning`); missing matrix / primaries tags are taken as BT.2020,
and a file zscale still cannot convert is read as it is, with a warning. `sample_aspect` gives an anamorphic
clip's pixel aspect (MP4 or Matroska/WebM), which `write_video(..., sar=)` stores; `decode_shortfall` words a
file whose decoding stops clearly short of the duration its container states (truncated), by timestamps, so
that a complete variable-frame-rate Matroska file is not one. Written files get the mode a plain write gives
(0666 less the umask).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

MAX_SIDE = 4096            # largest width or height written or accepted on read without max_side
MAX_FPS = 240.0            # frame-rate bounds accepted for writing and reading
MIN_FPS = 0.1
MAX_READ_BYTES = 4 << 30   # read_video refuses to build an array larger than this (use iter_video / max_side)
CODECS = ("auto", "h264", "vp9", "vp8")
_SUFFIX_CODECS = {".mp4": ("h264",), ".webm": ("vp9", "vp8")}
WRITE_SUFFIXES = tuple(_SUFFIX_CODECS)   # video containers write_video writes
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")   # an MP4/MOV's first box types (bytes 4-8)
_IMAGE_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}   # still images read
WRITE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")   # still images written
VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v", ".gif", ".mpg", ".mpeg", ".wmv", ".ts"}  # read


class VideoError(ValueError):
    """A video or image file that cannot be read or written; the message starts with "path: "."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


@dataclass
class VideoInfo:
    path: Path
    fps: float
    frames: int
    width: int
    height: int
    seconds: float
    codec: str = ""   # FourCC as OpenCV reports it ("h264", "VP90", ...), or "" if unknown


# ---------------------------------------------------------------- reading


def ffmpeg_exe() -> str | None:
    """The ffmpeg binary shipped by the imageio-ffmpeg wheel (or $IMAGEIO_FFMPEG_EXE), None if absent."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # the wheel is optional: missing package or binary
        return None


def _looks_like_video(head: bytes) -> bool:
    """Whether a file's first bytes are those of a video container: ISO BMFF (MP4/MOV/M4V/3GP: a box type at
    bytes 4-8), Matroska/WebM, AVI, MPEG program stream / video elementary stream, ASF (WMV), FLV."""
    return (head[4:8] in (*_ISO_BOXES, b"pnot")
            or head.startswith((b"\x1a\x45\xdf\xa3", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", b"FLV\x01",
                                b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"))
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI "))


def still_image_kind(path: str | Path) -> str | None:
    """"PNG"/"JPEG"/... when the file is a still image, else None. The content decides: image magic bytes make
    it an image whatever its name, a video container's make it a video whatever its name (an MP4 saved as
    .jpg); only content that is neither falls back to the suffix."""
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, kind in _IMAGE_MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if _looks_like_video(head):
        return None
    path = Path(path)
    return path.suffix.lower().lstrip(".").upper() if path.suffix.lower() in IMAGE_SUFFIXES else None


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise VideoError(path, "no such file")
    if not path.is_file():
        raise VideoError(path, "not a file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (zero bytes)")
    kind = still_image_kind(path)
    if kind is not None:
        raise VideoError(path, f"this is a still image ({kind}), not a video; use read_image for images")
    streams, report = _ffmpeg_header(path)
    if streams and "Video" not in streams:  # before OpenCV, which would decode a cover picture as a video
        _no_video(path, streams, report)
    return path


def _no_video(path: Path, streams: frozenset[str], report: str) -> None:
    cover = " and a cover picture" if "(attached pic)" in report else ""
    raise VideoError(path, f"no video stream (the file holds only {' and '.join(sorted(streams)).lower()}{cover})")


def _fourcc(cap: cv2.VideoCapture) -> str:
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    return "".join(chr((code >> 8 * i) & 0xFF) for i in range(4)).strip("\x00 ") if code > 0 else ""


def _open_cv(path: Path) -> cv2.VideoCapture | None:
    """An OpenCV capture at the first frame, if OpenCV can decode that frame, else None (ffmpeg reads it).
    Interlaced streams (camcorder AVCHD .mts, broadcast MPEG-2 .ts/.mpg) go to ffmpeg too: OpenCV 5's FFmpeg
    backend cannot convert them ("Cannot convert interlaced to progressive") and returns black or stale
    garbage frames with no error."""
    if _interlaced(path) or hdr_transfer(path) is not None:
        return None
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    ok = cap.isOpened() and cap.grab()
    cap.release()
    if not ok:
        return None
    return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)  # reopened rather than seeking back (exact on any codec)


_INTERLACED_RE = re.compile(r"\b(top|bottom)( coded)? first\b")  # ffmpeg's field orders other than progressive


def _interlaced(path: Path) -> bool:
    """Whether ffmpeg reports the (first) video stream as interlaced: any field order but progressive ("top
    first", "bottom first", "top coded first (swapped)", "bottom coded first (swapped)")."""
    video = _video_lines(_ffmpeg_header(path)[1])
    return bool(video) and _INTERLACED_RE.search(video[0]) is not None


def _check_fps(path: Path, fps: float) -> float:
    if not (MIN_FPS <= fps <= MAX_FPS) or not np.isfinite(fps):
        raise VideoError(path, f"implausible frame rate {fps!r} (accepted: {MIN_FPS}..{MAX_FPS} fps)")
    return float(fps)


def _ffmpeg_header(path: Path) -> tuple[frozenset[str], str]:
    """(the kinds of stream ffmpeg sees in the file, {"Video", "Audio", ...}, and its report as text); the set
    is empty when it cannot tell or there is no ffmpeg. One `ffmpeg -i` (~50 ms) per file version, remembered."""
    return _ffmpeg_header_cached(*_version(path))


def _version(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns): the key under which ffmpeg's findings on one file version are kept."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=256)
def _ffmpeg_header_cached(path: str, size: int, mtime_ns: int) -> tuple[frozenset[str], str]:
    exe = ffmpeg_exe()
    if exe is None:
        return frozenset(), ""
    try:
        run = subprocess.run([exe, "-hide_banner", "-i", path], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset(), ""
    text = run.stderr.decode(errors="replace")
    # a cover picture (an MP3 / M4A's album art) is a "Video" stream marked "(attached pic)": no video
    kinds = {kind for kind in ("Audio", "Subtitle", "Data") if f": {kind}:" in text}
    if _video_lines(text):
        kinds.add("Video")
    return frozenset(kinds), text


def _video_lines(report: str) -> list[str]:
    """ffmpeg's description lines of the real video streams in its report (cover pictures left out)."""
    return [line for line in report.splitlines() if ": Video:" in line and "(attached pic)" not in line]


HDR_TRANSFERS = {"arib-std-b67": "HLG", "smpte2084": "PQ"}   # ffmpeg's names of HDR transfer characteristics


def hdr_transfer(path: str | Path) -> str | None:
    """"HLG" or "PQ" when the first video stream is tagged with an HDR transfer characteristic (phones record
    HLG by default), else None."""
    video = _video_lines(_ffmpeg_header(Path(path))[1])
    if video:
        for name, kind in HDR_TRANSFERS.items():
            if re.search(rf"[(/ ]{name}[,/)]", video[0]):
                return kind
    return None


def hdr_warning(path: str | Path) -> str | None:
    """What to tell the user about an HDR source (None for SDR): that it is read tone mapped to SDR BT.709, or,
    when this ffmpeg cannot do that, that its colours will be wrong."""
    kind = hdr_transfer(path)
    if kind is None:
        return None
    tag = next(k for k, v in HDR_TRANSFERS.items() if v == kind)
    _, problem = _hdr_conversion(Path(path))
    if problem is not None:
        return (f"{path}: HDR video ({kind}, {tag}): ffmpeg could not convert it to SDR ({problem}); read as it "
                "is, colours are wrong")
    return f"{path}: HDR video ({kind}, {tag}): read converted to SDR BT.709"


def sample_aspect(path: str | Path) -> tuple[int, int] | None:
    """The first video stream's sample (pixel) aspect ratio (num, den) when it is not square (anamorphic
    DV / DVD / HDV footage: 480x360 shown as 16:9 has SAR 4:3), else None."""
    video = _video_lines(_ffmpeg_header(Path(path))[1])
    # "[SAR 4:3 DAR 16:9]" for MP4/MOV; Matroska/WebM print it bare: "160x120, SAR 213:160 DAR 71:40"
    m = re.search(r"\bSAR (\d+):(\d+) DAR\b", video[0]) if video else None
    if m is None:
        return None
    num, den = int(m.group(1)), int(m.group(2))
    return None if num < 1 or den < 1 or num == den else (num, den)


def decode_shortfall(info: VideoInfo, decoded_frames: int, last_time: float | None = None) -> str | None:
    """A warning when decoding stopped clearly short of the container's end (a truncated download, a copy cut
    short: the index promises more than the bytes hold), else None. Fewer frames than the header's count is
    not enough: in a Matroska/WebM file OpenCV's "frame count" is duration x nominal rate, which a
    variable-frame-rate clip never reaches; the frames must also end clearly before the container's duration.
    `last_time` is the last decoded frame's presentation time (s from the first); without it, the time of
    packet number `decoded_frames` (demuxed, no decoding). Without a duration or packet times, the count decides."""
    if info.frames - decoded_frames <= max(2, 0.05 * info.frames):
        return None   # all frames there (a GIF's last frame may be held long past its own time: no shortfall)
    duration = _container_seconds(info.path)   # the longest stream's: an audio track may outlast the video
    duration = None if duration is None else min(duration, info.seconds)
    if last_time is None and decoded_frames >= 1:
        times = _packet_times(info.path)
        if times is not None and len(times):
            last_time = float(times[min(decoded_frames, len(times)) - 1])
    if duration is None or last_time is None:
        return (f"{info.path}: only {decoded_frames} of the {info.frames} frames its header lists could be decoded "
                f"({decoded_frames / info.fps:.2f} of {info.seconds:.2f} s); the file looks truncated or damaged, or "
                f"its header overstates its length")
    reached = last_time + 1.0 / info.fps   # the last frame lasts about one nominal frame interval
    if duration - reached <= max(2.0 / info.fps, 0.05 * duration):
        return None
    return (f"{info.path}: decoding stopped at {reached:.2f} of the {duration:.2f} s its header lists "
            f"({decoded_frames} frames decoded); the file looks truncated or damaged, or its header overstates "
            f"its length")


def _container_seconds(path: Path) -> float | None:
    """The duration ffmpeg reads from the container header ("Duration: 00:01:02.50"), None when it has none."""
    m = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", _ffmpeg_header(path)[1])
    if m is None:
        return None
    seconds = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return seconds if seconds > 0 else None


def _probe_ffmpeg(path: Path) -> VideoInfo:
    exe = ffmpeg_exe()
    if exe is None:
        raise VideoError(path, "OpenCV cannot decode this file and no ffmpeg binary is available")
    report = _ffmpeg_header(path)[1]   # callers have run _check_file: the file has a video stream
    if "moov atom not found" in report:
        with open(path, "rb") as f:
            box = f.read(12)[4:8]
        if box in _ISO_BOXES:  # it does start as an MP4/MOV
            raise VideoError(path, "unreadable MP4/MOV: its index (moov atom) is missing; the file is truncated "
                                   "or was not finished being written")
        raise VideoError(path, "unreadable: not a video (the content is not MP4/MOV, nor anything else ffmpeg "
                               "reads)")
    try:
        meta, frames, seconds = _ffmpeg_counts(*_version(path))
    except (RuntimeError, StopIteration, OSError) as e:
        raise VideoError(path, f"unreadable video ({str(e).strip().splitlines()[-1] if str(e).strip() else e})")
    width, height = meta["size"]
    fps = _check_fps(path, float(meta.get("fps") or 0.0))
    if frames < 1:
        raise VideoError(path, "the video has no frames")
    return VideoInfo(path, fps, int(frames), int(width), int(height), float(seconds), meta.get("codec", ""))


@lru_cache(maxsize=64)
def _ffmpeg_counts(path: str, size: int, mtime_ns: int) -> tuple[dict, int, float]:
    """(ffmpeg's stream metadata, frame count, seconds) of one file version: counting decodes the whole
    file, so a file probed again (caption, then read; stylize's passes) is counted once."""
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(path)
    meta = next(gen)
    gen.close()
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(path)
    return meta, frames, seconds


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, frame count, size and codec of a video file; VideoError if it is not a readable video."""
    path = _check_file(path)
    cap = _open_cv(path)
    if cap is None:
        return _probe_ffmpeg(path)
    try:
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = _check_fps(path, cap.get(cv2.CAP_PROP_FPS))
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if frames <= 0:  # some containers do not store it: count by demuxing (no decode)
            frames = 0
            while cap.grab():
                frames += 1
        codec = _fourcc(cap)
    finally:
        cap.release()
    if width < 1 or height < 1 or frames < 1:
        raise VideoError(path, f"no decodable frames (size {width}x{height}, {frames} frames)")
    return VideoInfo(path, fps, frames, width, height, frames / fps, codec)


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """(w, h) to resize to so that the longer side is at most max_side, or None to keep the size."""
    if max_side is None or max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def iter_video_timed(path: str | Path, max_frames: int | None = None,
                     max_side: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """iter_video, each frame with its presentation time in seconds from the container (variable frame rate
    footage, phone clips, GIFs with uneven delays: frame i is not always at i / fps)."""
    if max_frames is not None and max_frames < 1:
        raise VideoError(path, f"max_frames must be >= 1, got {max_frames}")
    if max_side is not None and max_side < 8:
        raise VideoError(path, f"max_side must be >= 8, got {max_side}")
    path = _check_file(path)
    cap = _open_cv(path)  # checked here, not on the first next(), so that errors come at the call
    if cap is not None:
        return _iter_cv(cap, max_frames, max_side)
    info = _probe_ffmpeg(path)  # raises a clear VideoError if ffmpeg cannot read it either
    return _iter_ffmpeg(path, max_frames, _scaled_size(info.width, info.height, max_side), info.fps, info.frames)


def steady_rate(times_F: np.ndarray, fps: float) -> float | None:
    """None when frame i of a clip is shown at i / fps (within half a frame) throughout; otherwise (variable
    frame rate: phones, screen recordings) the rate of its typical frame interval, at which constant_rate
    re-times it."""
    if len(times_F) < 2 or np.abs(times_F - np.arange(len(times_F)) / fps).max() <= 0.5 / fps:
        return None
    step = float(np.median(np.diff(times_F)))
    return float(np.clip(1.0 / step, 1.0, 120.0)) if step > 0 else None


def constant_rate(timed: Iterable[tuple[float, np.ndarray]], fps: float) -> Iterable[np.ndarray]:
    """Frames with their times -> frames at a constant `fps` that show, at every tick n / fps, the frame on
    screen then (repeated over a long gap, skipped within a burst), so that a variable-frame-rate clip keeps
    its timing in a constant-rate file. The last frame lasts one tick."""
    tick = 0
    held: np.ndarray | None = None
    for t, frame in timed:
        while held is not None and tick / fps < t - 1e-6:  # ticks before this frame's time show the previous one
            yield held
            tick += 1
        held = frame
    if held is not None:
        yield held


def iter_video(path: str | Path, max_frames: int | None = None, max_side: int | None = None) -> Iterator[np.ndarray]:
    """Frames [H, W, 3] uint8 RGB one at a time (constant memory), at most max_frames, longer side <= max_side."""
    timed = iter_video_timed(path, max_frames, max_side)
    return (frame for _, frame in timed)


def _iter_cv(cap: cv2.VideoCapture, max_frames: int | None, max_side: int | None
             ) -> Iterator[tuple[float, np.ndarray]]:
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        n, last_t, t0 = 0, -1.0, None
        while max_frames is None or n < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            t0 = t if t0 is None else t0  # times from the first frame (containers may start later than 0)
            t -= t0
            if not np.isfinite(t) or t <= last_t:  # no (or a repeated) timestamp: one frame after the last
                t = last_t + 1.0 / fps if n else 0.0
            last_t = t
            size = _scaled_size(bgr.shape[1], bgr.shape[0], max_side)
            if size is not None:
                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            yield t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            n += 1
    finally:
        cap.release()


def _iter_ffmpeg(path: Path, max_frames: int | None, size: tuple[int, int] | None,
                 fps: float, frames: int) -> Iterator[tuple[float, np.ndarray]]:
    """Frames through the packaged ffmpeg, scaled to `size` (w, h) there (less to pipe), interlaced footage
    deinterlaced (yadif, one frame out per frame in) rather than analysed with its combing. Every decoded
    frame comes out once (no frame-rate conversion); its time is its packet's presentation time (one
    demux-only ffmpeg pass) when the packets match the `frames` decoded one to one, else n / fps (exact for
    constant frame rate only: a variable-rate clip whose packets do not match gets evenly spaced times)."""
    import imageio_ffmpeg
    filters = (["yadif"] if _interlaced(path) else []) + _tone_map(path) + (
        [f"scale={size[0]}:{size[1]}:flags=area"] if size else [])
    times = _packet_times(path)
    if times is not None and len(times) != frames:
        times = None
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=[
        "-fps_mode", "passthrough", *(["-vf", ",".join(filters)] if filters else [])])
    try:
        width, height = next(gen)["size"]   # the output size: ffmpeg has scaled already
        for n, buf in enumerate(gen):
            if max_frames is not None and n >= max_frames:
                break
            t = float(times[n]) if times is not None and n < len(times) else n / fps
            yield t, np.frombuffer(buf, np.uint8).reshape(height, width, 3).copy()
    except (OSError, RuntimeError, StopIteration) as e:  # imageio-ffmpeg's errors carry ffmpeg's whole log
        lines = [re.sub(r"^\[[^\]]*\]\s*", "", ln.strip()) for ln in str(e).splitlines() if ln.strip()]
        said = next((ln for ln in lines[1:] if "error" in ln.lower()), lines[0] if lines else type(e).__name__)
        raise VideoError(path, f"ffmpeg could not decode it ({said})") from None
    finally:
        gen.close()


def _tone_map(path: Path) -> list[str]:
    """ffmpeg filters bringing an HDR stream to SDR BT.709 (what OpenCV, which ignores the transfer tags,
    gets wrong: washed-out, desaturated colours), or [] when there is nothing to convert or this ffmpeg cannot
    convert this file (then it is read as it is; hdr_warning says so). HLG is made to be shown as SDR directly
    (zscale converts transfer, matrix and primaries); PQ's absolute highlights are tone mapped (Hable) in
    linear light first. Needs the zscale filter (libzimg), which the imageio-ffmpeg build has."""
    return _hdr_conversion(path)[0]


def _hdr_conversion(path: Path) -> tuple[list[str], str | None]:
    """(chain, problem): the zscale chain bringing this file's HDR video to SDR and None when ffmpeg converts
    the file through it; ([], None) for SDR video (nothing to convert); ([], what stops it) when this ffmpeg
    cannot convert the file (no zscale filter, or ffmpeg's error on this file's tags)."""
    kind = hdr_transfer(path)
    if kind is None:
        return [], None
    if not _ffmpeg_has_filter("zscale"):
        return [], "this ffmpeg has no zscale filter"
    chain = _tone_map_chain(kind, _hdr_input_tags(_video_lines(_ffmpeg_header(path)[1])[0]))
    error = _tone_map_error(path, tuple(chain))
    return (chain, None) if error is None else ([], error)


def _hdr_input_tags(video_line: str) -> str:
    """zscale input options for the colour tags an HDR stream lacks: a clip tagged only by its transfer curve
    (an HLG / PQ encode without matrix or primaries tags) leaves zscale with "no path between colorspaces";
    HDR video is BT.2020 (non-constant luminance) in limited range unless it says otherwise."""
    tags = re.search(r"([\w-]+)/([\w-]+)/(?:arib-std-b67|smpte2084)\b", video_line)
    matrix, primaries = (tags.group(1), tags.group(2)) if tags else ("unknown", "unknown")
    opts = []
    if matrix in ("unknown", "reserved"):
        opts.append("min=2020_ncl")
    if primaries in ("unknown", "reserved"):
        opts.append("pin=2020")
    if not re.search(r"\((tv|pc)\b", video_line):
        opts.append("rin=limited")
    return ":".join(opts)


def _tone_map_chain(kind: str, inputs: str) -> list[str]:
    first = f":{inputs}" if inputs else ""
    if kind == "HLG":
        return [f"zscale=t=bt709:m=bt709:p=bt709:r=tv{first}", "format=yuv420p"]
    # linear light keeps the input's primaries: named too when the source lacks the tag (else no path again)
    keep = ":p=2020" if "pin=" in inputs else ""
    return [f"zscale=t=linear:npl=100{first}{keep}", "format=gbrpf32le", "zscale=p=bt709",
            "tonemap=tonemap=hable:desat=0", "zscale=t=bt709:m=bt709:r=tv", "format=yuv420p"]


def _tone_map_error(path: Path, chain: tuple[str, ...]) -> str | None:
    """None when ffmpeg converts the file's first frames through `chain`, else its last error line. Tried once
    per file version (~0.1 s): zscale refuses some tag combinations, and the reader then falls back to the
    plain read rather than failing."""
    return _tone_map_error_cached(*_version(path), chain)


@lru_cache(maxsize=64)
def _tone_map_error_cached(path: str, size: int, mtime_ns: int, chain: tuple[str, ...]) -> str | None:
    try:
        run = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", path, "-map", "0:v:0",
                              "-frames:v", "2", "-vf", ",".join(chain), "-f", "null", "-"],
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    err = re.sub(r"^\[[^\]]*\]\s*", "", run.stderr.decode(errors="replace").strip())   # "[Parsed_zscale_0 @ ..]"
    return None if run.returncode == 0 else (err.splitlines()[0] if err else f"ffmpeg exited with {run.returncode}")


@lru_cache(maxsize=8)
def _ffmpeg_has_filter(name: str) -> bool:
    exe = ffmpeg_exe()
    if exe is None:
        return False
    try:
        run = subprocess.run([exe, "-hide_banner", "-filters"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(rf"^\s*\S+\s+{re.escape(name)}\s", run.stdout.decode(errors="replace"), re.M) is not None


def _packet_times(path: Path) -> np.ndarray | None:
    """Presentation times (s, from the first) of the first video stream's packets in presentation order,
    read by demuxing alone (ffmpeg's framecrc listing; no decoding); None when ffmpeg cannot list them all.
    Listed once per file version."""
    times = _packet_times_cached(*_version(path))
    return None if times is None else times.copy()


@lru_cache(maxsize=64)
def _packet_times_cached(path: str, size: int, mtime_ns: int) -> np.ndarray | None:
    exe = ffmpeg_exe()
    if exe is None:
        return None
    try:
        run = subprocess.run([exe, "-hide_banner", "-loglevel", "error", "-i", str(path), "-map", "0:v:0",
                              "-c", "copy", "-f", "framecrc", "-"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = run.stdout.decode(errors="replace")
    tb = re.search(r"^#tb 0: (\d+)/(\d+)$", text, re.M)
    if run.returncode != 0 or tb is None:
        return None
    pts = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 3 or not cols[2].lstrip("-").isdigit():  # NOPTS: no clock to read
            return None
        pts.append(int(cols[2]))
    if not pts:
        return None
    pts_N = np.sort(np.array(pts, np.int64))
    return (pts_N - pts_N[0]) * int(tb.group(1)) / int(tb.group(2))


def read_video(path: str | Path, max_frames: int | None = None,
               max_side: int | None = None) -> tuple[np.ndarray, float]:
    """(frames [F, H, W, 3] uint8 RGB, fps). max_frames / max_side bound the memory; a clip whose decoded
    array would exceed MAX_READ_BYTES raises VideoError (read it with iter_video or a smaller max_side)."""
    frames_FHW3, fps, _ = read_video_timed(path, max_frames, max_side)
    return frames_FHW3, fps


def read_video_timed(path: str | Path, max_frames: int | None = None,
                     max_side: int | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """read_video plus each frame's presentation time in seconds, times_F (see iter_video_timed)."""
    info = probe_video(path)
    size = _scaled_size(info.width, info.height, max_side) or (info.width, info.height)
    n = info.frames if max_frames is None else min(info.frames, max_frames)
    if n * size[0] * size[1] * 3 > MAX_READ_BYTES:
        raise VideoError(path, f"{n} frames of {size[0]}x{size[1]} would take {n * size[0] * size[1] * 3 >> 20} MiB;"
                               " pass max_frames / max_side or use iter_video")
    timed = list(iter_video_timed(path, max_frames=max_frames, max_side=max_side))
    if not timed:
        raise VideoError(path, "no decodable frames")
    return np.stack([f for _, f in timed]), info.fps, np.array([t for t, _ in timed])


def read_image(path: str | Path) -> np.ndarray:
    """An image file as [H, W, 3] uint8 RGB: grey expanded, 16-bit scaled, CMYK converted, EXIF orientation
    applied, and transparency composited over white (what a viewer shows; the colour a transparent pixel
    happens to store is arbitrary). VideoError naming the file if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "no such image file")
    data = np.fromfile(path, np.uint8)
    if data.size == 0:
        raise VideoError(path, "empty image file (zero bytes)")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies EXIF orientation, converts CMYK / grey / 16-bit
    if bgr is None:  # formats OpenCV lacks (GIF, ...): Pillow, if it can
        try:
            from PIL import Image
            with Image.open(path) as im:
                im.seek(0)
                rgba = np.asarray(im.convert("RGBA")).copy()
        except Exception as e:
            raise VideoError(path, f"not a readable image ({type(e).__name__}: {e})") from None
        return _over_white(rgba[..., :3], rgba[..., 3].astype(np.float32) / 255.0)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if _may_have_alpha(data):  # a second decode keeping alpha (IMREAD_UNCHANGED skips EXIF orientation)
        raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if raw is not None and raw.ndim == 3 and raw.shape[2] in (2, 4) and raw.shape[:2] == rgb.shape[:2]:
            alpha = raw[..., -1].astype(np.float32) / float(np.iinfo(raw.dtype).max if raw.dtype.kind == "u" else 1)
            rgb = _over_white(rgb, alpha)
    return rgb


def _may_have_alpha(data: np.ndarray) -> bool:
    """Whether an encoded image can carry transparency, from its header alone: PNG by colour type or a tRNS
    chunk, WebP by its VP8X / VP8L alpha flag; TIFF and GIF are assumed to (their headers do not say cheaply);
    JPEG, BMP and the rest cannot."""
    head = data[:64].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) > 25 and head[25] in (4, 6):  # IHDR colour type: grey + alpha, RGBA
            return True
        pos, n = 8, len(data)
        while pos + 8 <= n:  # the chunks before the pixel data: a tRNS there makes a colour transparent
            length, kind = int.from_bytes(data[pos:pos + 4].tobytes(), "big"), data[pos + 4:pos + 8].tobytes()
            if kind == b"tRNS":
                return True
            if kind in (b"IDAT", b"IEND"):
                return False
            pos += 12 + length
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        if head[12:16] == b"VP8X":
            return len(head) > 20 and bool(head[20] & 0x10)
        if head[12:16] == b"VP8L":  # 0x2f, then 14 bits width-1, 14 bits height-1, 1 bit alpha_is_used
            return len(head) > 25 and bool(int.from_bytes(head[21:25], "little") >> 28 & 1)
        return False  # simple lossy VP8: no alpha
    return head[:4] in (b"II*\x00", b"MM\x00*", b"GIF8")


def _over_white(rgb_HW3: np.ndarray, alpha_HW: np.ndarray) -> np.ndarray:
    """rgb composited over a white background by alpha in [0, 1] (unchanged where fully opaque)."""
    if alpha_HW.min() >= 1.0:
        return rgb_HW3
    a = np.clip(alpha_HW, 0.0, 1.0)[..., None]
    return (rgb_HW3.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- writing


def _check_frame(path: Path, frame: np.ndarray, index: int, size_hw: tuple[int, int] | None) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise VideoError(path, f"frame {index} must be a uint8 RGB array [H, W, 3], got {desc}")
    if size_hw is not None and frame.shape[:2] != size_hw:
        raise VideoError(path, f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                               f"frame 0 was {size_hw[1]}x{size_hw[0]}: all frames must have one size")


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad an odd height/width by repeating the last row/column (yuv420p needs even sides)."""
    ph, pw = frame.shape[0] % 2, frame.shape[1] % 2
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else frame


def _pick_codec(path: Path, codec: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIX_CODECS:
        raise VideoError(path, f"unsupported video suffix {suffix!r} (use {' or '.join(_SUFFIX_CODECS)})")
    if codec not in CODECS:
        raise VideoError(path, f"unknown codec {codec!r} (choose from {', '.join(CODECS)})")
    if codec == "auto":
        codec = _SUFFIX_CODECS[suffix][0]
        if codec != "h264" and ffmpeg_exe() is None:
            codec = "vp8"
    if codec not in _SUFFIX_CODECS[suffix]:
        raise VideoError(path, f"codec {codec!r} does not go in a {suffix} file "
                               f"({suffix} takes {', '.join(_SUFFIX_CODECS[suffix])})")
    if codec in ("h264", "vp9") and ffmpeg_exe() is None:
        raise VideoError(path, f"codec {codec!r} needs the imageio-ffmpeg wheel's ffmpeg binary, which is missing")
    return codec


def _ffmpeg_args(codec: str) -> list[str]:
    if codec == "h264":  # fastest preset; yuv420p + faststart so that every browser plays it while loading
        return ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", "-f", "mp4"]
    return ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1",
            "-b:v", "0", "-crf", "33", "-pix_fmt", "yuv420p", "-f", "webm"]


class _FFmpegSink:
    """Frames piped into the packaged ffmpeg as raw yuv420p: OpenCV's RGB->I420 conversion (BT.601, as
    ffmpeg's default) halves the bytes piped and took the 1080p x 72 H.264 encode from ~1.0 s to ~0.55 s."""

    def __init__(self, out: Path, codec: str, width: int, height: int, fps: float,
                 sar: tuple[int, int] | None = None):
        self.log = tempfile.TemporaryFile()
        setsar = ["-vf", f"setsar={sar[0]}/{sar[1]}"] if sar else []   # stored pixel aspect (anamorphic)
        cmd = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p",
               "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-", "-an", *setsar, *_ffmpeg_args(codec), str(out)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.log)

    def write(self, rgb: np.ndarray) -> None:
        self.proc.stdin.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).data)

    def close(self) -> str | None:
        """Finish; the ffmpeg error text if it failed, else None."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self.proc.wait(timeout=600)
        self.log.seek(0)
        err = self.log.read().decode(errors="replace").strip()
        self.log.close()
        return None if rc == 0 else (err.splitlines()[-1] if err else f"ffmpeg exited with {rc}")

    def abort(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


class _OpenCVSink:
    """OpenCV's own VP8 WebM writer (no ffmpeg binary needed; slower)."""

    def __init__(self, out: Path, width: int, height: int, fps: float):
        self.writer = cv2.VideoWriter(str(out), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"VP80"), fps, (width, height))
        if not self.writer.isOpened():
            raise VideoError(out, "OpenCV could not open a VP8 WebM writer")

    def write(self, rgb: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> str | None:
        self.writer.release()
        return None

    def abort(self) -> None:
        self.writer.release()


def _umask() -> int:
    """The process's umask (read from /proc on Linux; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> Path:
    """An empty temporary file in path's folder, to be renamed onto `path` when complete. mkstemp makes it
    0600; it gets the mode a plain open() would give a new file (0666 less the umask), so that what is renamed
    into place is as readable as any other file written here."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp_name)


def write_video(frames_FHW3: np.ndarray | Iterable[np.ndarray], path: str | Path, fps: float, *,
                codec: str = "auto", sar: tuple[int, int] | None = None) -> Path:
    """Encode frames (an array [F, H, W, 3] or any iterable of [H, W, 3] uint8 RGB) to a browser-playable
    .mp4 (H.264) or .webm (VP9, or VP8 through OpenCV); returns the path. `sar` (num, den) stores a
    non-square sample aspect ratio (frames of an anamorphic source keep their display shape; see
    sample_aspect); OpenCV's VP8 writer cannot store one. Atomic: the target only appears, complete, when
    encoding succeeded; on any error nothing is left behind."""
    path = Path(path)
    codec = _pick_codec(path, codec)
    if sar is not None and not (len(sar) == 2 and all(isinstance(x, (int, np.integer)) and 0 < x < 1 << 16
                                                      for x in sar)):
        raise VideoError(path, f"sar must be two positive integers (num, den), got {sar!r}")
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise VideoError(path, f"fps must be a number, got {fps!r}") from None
    if not (MIN_FPS <= fps <= MAX_FPS):
        raise VideoError(path, f"fps {fps:g} out of range ({MIN_FPS}..{MAX_FPS})")
    if not path.parent.is_dir():
        raise VideoError(path, f"folder {path.parent} does not exist")
    tmp = _temp_beside(path)
    sink, size_hw, count = None, None, 0
    try:
        for frame in frames_FHW3:
            _check_frame(path, frame, count, size_hw)
            if sink is None:
                size_hw = frame.shape[:2]
                if max(size_hw) > MAX_SIDE:
                    raise VideoError(path, f"frames of {size_hw[1]}x{size_hw[0]} exceed the {MAX_SIDE}-pixel limit")
                h, w = _even(frame).shape[:2]
                sink = _OpenCVSink(tmp, w, h, fps) if codec == "vp8" else _FFmpegSink(tmp, codec, w, h, fps, sar)
            sink.write(_even(frame))
            count += 1
        if sink is None:
            raise VideoError(path, "no frames to write")
        error, sink = sink.close(), None
        if error is not None:
            raise VideoError(path, f"encoding failed: {error}")
        if tmp.stat().st_size == 0:
            raise VideoError(path, "encoding produced an empty file")
        os.replace(tmp, path)
        return path
    except BrokenPipeError:
        raise VideoError(path, f"encoding failed: ffmpeg stopped ({sink.close() if sink else ''})") from None
    finally:
        if sink is not None:
            sink.abort()
        tmp.unlink(missing_ok=True)


def copy_audio(video: str | Path, source: str | Path) -> bool:
    """Give `video` (an .mp4/.webm this module wrote) the first audio track of `source`, in place and atomically:
    the video stream is copied as it is, the audio encoded to AAC (.mp4) or Opus (.webm) and cut to the video's
    length (a shorter track leaves the rest silent). False, with the video left untouched, when the source has no
    audio, no ffmpeg binary is available, `video` is not a readable video, or the audio cannot be decoded (a
    truncated file); True when the track was added."""
    video, source = Path(video), Path(source)
    exe = ffmpeg_exe()
    if exe is None or "Audio" not in _ffmpeg_header(source)[0]:
        return False
    codec = ["-c:a", "aac", "-b:a", "160k"] if video.suffix.lower() == ".mp4" else ["-c:a", "libopus", "-b:a", "128k"]
    tmp_name = str(_temp_beside(video))
    try:
        cmd = [exe, "-y", "-hide_banner", "-loglevel", "error", "-i", str(video), "-i", str(source),
               "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", *codec,
               "-t", f"{probe_video(video).seconds:.6f}"]  # not -shortest: a short track must not cut the video
        if video.suffix.lower() == ".mp4":
            cmd += ["-movflags", "+faststart"]
        run = subprocess.run([*cmd, tmp_name], capture_output=True, timeout=600)
        if run.returncode != 0 or Path(tmp_name).stat().st_size == 0:
            return False
        os.replace(tmp_name, video)
        return True
    except (OSError, subprocess.TimeoutExpired, VideoError):  # VideoError: `video` itself is unreadable
        return False
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def bench_encoding(frames: int = 72, size_hw: tuple[int, int] = (1080, 1920), fps: float = 24,
                   codecs: tuple[str, ...] = ("h264", "vp9", "vp8"), folder: str | Path | None = None) -> dict:
    """Seconds to encode a synthetic moving clip with each codec, side by side in one process:
    {"encode_s_h264": .., "size_kb_h264": .., ...}; the clip is a gradient with two moving shapes."""
    import time
    h, w = size_hw
    yy, xx = np.mgrid[0:h, 0:w]
    base_HW3 = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 120)], -1).astype(np.uint8)
    clip_FHW3 = np.repeat(base_HW3[None], frames, axis=0)
    for i, frame in enumerate(clip_FHW3):
        cv2.circle(frame, (w // 10 + i * w // 100, h // 2), h // 9, (220, 30, 30), -1)
        cv2.rectangle(frame, (w * 3 // 4 - i * w // 200, h // 5), (w * 3 // 4 - i * w // 200 + h // 5, h * 2 // 5),
                      (30, 30, 220), -1)
    out: dict = {"frames": frames, "width": w, "height": h}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for codec in codecs:
            path = Path(tmp) / f"bench.{'mp4' if codec == 'h264' else 'webm'}"
            t0 = time.perf_counter()
            write_video(clip_FHW3, path, fps, codec=codec)
            out[f"encode_s_{codec}"] = round(time.perf_counter() - t0, 3)
            out[f"size_kb_{codec}"] = path.stat().st_size // 1024
    return out


def _atomic_save(path: Path, save) -> Path:
    """Write `path` by save(tmp) to a temporary file beside it, renamed into place when complete."""
    tmp_name = _temp_beside(path)
    try:
        save(Path(tmp_name))
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return path


def write_image(rgb_HW3: np.ndarray, path: str | Path) -> Path:
    """Save one uint8 RGB frame in a WRITE_IMAGE_SUFFIXES format (atomic)."""
    path = Path(path)
    _check_frame(path, rgb_HW3, 0, None)
    if path.suffix.lower() not in WRITE_IMAGE_SUFFIXES:
        raise VideoError(path, f"unsupported image suffix {path.suffix!r} (use {', '.join(WRITE_IMAGE_SUFFIXES)})")
    if not path.parent.is_dir():
        raise VideoError(path, f"folder {path.parent} does not exist")

    def save(tmp: Path) -> None:
        ok, buf = cv2.imencode(path.suffix.lower(), cv2.cvtColor(rgb_HW3, cv2.COLOR_RGB2BGR))
        if not ok:
            raise VideoError(path, "image encoding failed")
        tmp.write_bytes(buf.tobytes())
    return _atomic_save(path, save)


def write_preview(frames_FHW3: np.ndarray, path: str | Path, *, max_side: int = 320, fps: float = 8) -> Path:
    """A small preview: an animated .gif (at most 48 frames, evenly sampled, shown at `fps`), or the middle
    frame as a .png / .jpg thumbnail. The longer side is scaled down to max_side."""
    path = Path(path)
    frames_FHW3 = np.asarray(frames_FHW3)
    if frames_FHW3.ndim == 3:
        frames_FHW3 = frames_FHW3[None]
    if frames_FHW3.ndim != 4 or frames_FHW3.shape[0] == 0:
        raise VideoError(path, f"preview needs frames [F, H, W, 3] with F >= 1, got shape {frames_FHW3.shape}")
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".png", ".jpg", ".jpeg"):
        raise VideoError(path, f"unsupported preview suffix {suffix!r} (use .gif, .png or .jpg)")
    if not (MIN_FPS <= fps <= 50):
        raise VideoError(path, f"preview fps {fps} out of range ({MIN_FPS}..50)")
    h, w = frames_FHW3.shape[1:3]
    size = _scaled_size(w, h, max_side) or (w, h)
    if suffix != ".gif":
        mid = frames_FHW3[len(frames_FHW3) // 2]
        _check_frame(path, mid, len(frames_FHW3) // 2, None)
        return write_image(cv2.resize(mid, size, interpolation=cv2.INTER_AREA), path)
    from PIL import Image
    if not path.parent.is_dir():
        raise VideoError(path, f"folder {path.parent} does not exist")
    pick = np.unique(np.linspace(0, len(frames_FHW3) - 1, min(48, len(frames_FHW3))).round().astype(int))
    small = [cv2.resize(frames_FHW3[i], size, interpolation=cv2.INTER_AREA) for i in pick]
    for i, frame in zip(pick, small):
        _check_frame(path, frame, int(i), small[0].shape[:2])
    # one palette for the whole clip (from a mosaic of the frames): no palette flicker, and much faster
    mosaic = Image.fromarray(np.concatenate(small[:: max(1, len(small) // 8)], axis=0))
    palette = mosaic.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in small]

    def save(tmp: Path) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=round(1000 / fps), optimize=False)
    return _atomic_save(path, save)
