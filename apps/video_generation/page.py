"""The video studio's page: generate a clip from a script, caption an uploaded clip shot by shot,
restyle an image or a clip. The server mounts it at /video.

Heavy imports (torch, the models) happen inside the handlers, on first use.
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
from matplotlib.figure import Figure

from apps.settings import cache_dir
from data_connectors.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

from . import world
from .studio import MAX_FILES, MAX_FPS, MAX_SECONDS, MIN_FPS, MIN_SECONDS, RESOLUTIONS, keep_newest

INTRO = """\
# Video studio
Type a short script and get a playable clip (the suite's own planner and generator, trained on a
synthetic world of shapes and digits); upload a clip and get a caption per shot with time stamps;
restyle an image or a clip by a style name, a description or a reference picture.
"""
STYLIZE_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES   # what the Stylize tab takes: every format the readers read
CAPTION_COLUMNS = ["shot", "start (s)", "end (s)", "caption", "from", "confidence"]
EXPERT_COLUMNS = ["scene", "start (s)", "end (s)", "what the planner put there", "experts"]
_RESULT_NAME = re.compile(r"^[0-9a-f]{12}(\.[a-z0-9]+)+$")   # what _new_path names, and previews beside them
GRADIO_CACHE = (1800, 3600)   # Blocks(delete_cache=): every 30 min, delete Gradio's copies older than 1 h


def _out_dir() -> Path:
    folder = cache_dir() / "video-page"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _new_path(suffix: str) -> Path:
    return _out_dir() / f"{uuid.uuid4().hex[:12]}{suffix}"


def _prune() -> None:
    """Keep the newest MAX_FILES results, as the API does (Gradio's own copies go by delete_cache)."""
    keep_newest(_out_dir(), MAX_FILES, _RESULT_NAME)


def timeline_figure(scenes: list[world.Scene], cut_frames: list[int], fps: float, total_frames: int) -> Figure:
    """Scenes as coloured bars along the time axis, cuts as vertical lines, each scene labelled."""
    fig = Figure(figsize=(8, 1.6), layout="constrained")
    ax = fig.subplots()
    bounds = [0] + list(cut_frames) + [total_frames]
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        ax.barh(0, (b - a) / fps, left=a / fps, color=palette[i % len(palette)], alpha=0.55, edgecolor="black")
        label = f"{i + 1}: " + ", ".join(f"{o.colour} {world.shape_noun(o.shape)}" for o in scenes[i].objects) \
            if i < len(scenes) else f"{i + 1}"
        ax.text((a + b) / 2 / fps, 0, label, ha="center", va="center", fontsize=8)
    for c in cut_frames:
        ax.axvline(c / fps, color="black", linewidth=2)
        ax.text(c / fps, 0.48, f"cut {c / fps:.2f}s", ha="center", va="bottom", fontsize=7)
    ax.set(xlim=(0, total_frames / fps), ylim=(-0.5, 0.75), yticks=[], xlabel="seconds")
    return fig


def _experts_text(experts) -> str:
    """One scene's experts as text, whatever form the studio reports them in."""
    if isinstance(experts, dict):
        parts = []
        for name, value in experts.items():
            if isinstance(value, dict):
                top = sorted(value.items(), key=lambda kv: -kv[1])[:3]
                parts.append(f"{name}: " + ", ".join(f"#{e} ({w:.2f})" for e, w in top))
            else:
                parts.append(f"{name}: {value}")
        return "; ".join(parts)
    if isinstance(experts, (list, tuple)):
        return ", ".join(map(str, experts))
    return str(experts) if experts is not None else ""


def _scene_experts(result) -> list:
    for name in ("experts", "scene_experts", "experts_per_scene"):
        value = getattr(result, name, None)
        if value is not None:
            return list(value)
    return []


def generate(prompt: str, seconds: float, resolution: str, fps: float, style: str, allow_guesses: bool = False,
             progress=gr.Progress()) -> tuple[str, Figure, list[list], str]:
    """Prompt -> (video path, timeline figure, experts table rows, details markdown: what was understood of
    the prompt, then the clip's figures)."""
    from .studio import NothingUnderstoodError, generate_video

    if not prompt or not prompt.strip():
        raise gr.Error("Type a script, e.g. 'a red ball rolls left on a beach, then a blue square rises at night'.")
    progress(0.1, desc="planning and rendering")
    try:
        # style_files=False: a typed style is a name or a description, never a path on the server
        result = generate_video(prompt, seconds=float(seconds), resolution=resolution, fps=int(fps),
                                style=(style or "").strip() or None, out=_new_path(".mp4"),
                                allow_guesses=bool(allow_guesses), style_files=False)
    except NothingUnderstoodError as exc:
        raise gr.Error(f"{exc} Tick 'render a guess anyway' to see the planner's guess.") from None
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    _prune()
    progress(0.9, desc="drawing the timeline")
    scenes = list(result.script.scenes)
    cuts = [int(c) for c in getattr(result, "cut_frames", [])]
    from data_connectors.video import probe_video

    info = probe_video(result.path)
    bounds = [0] + cuts + [info.frames]
    experts = _scene_experts(result)
    rows = [[i + 1, round(a / info.fps, 2), round(b / info.fps, 2), world.caption_scene(scene),
             _experts_text(experts[i]) if i < len(experts) else ""]
            for i, (scene, a, b) in enumerate(zip(scenes, bounds[:-1], bounds[1:]))]
    timings = getattr(result, "timings", None) or {}
    details = f"**{len(scenes)} scene(s)**, {info.frames} frames at {info.fps:g} fps, {info.width}x{info.height}"
    if timings:
        details += " · " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items() if isinstance(v, (int, float)))
    understanding = getattr(result, "understanding", None)
    if understanding is not None:
        details = understanding.markdown() + "\n\n" + details
    return str(result.path), timeline_figure(scenes, cuts, info.fps, info.frames), rows, details


def thumbnail_strip(frames_FHW3: np.ndarray, shots, height: int = 90) -> np.ndarray:
    """The middle frame of each shot side by side, each stamped with its start time."""
    tiles = []
    for s in shots:
        frame = frames_FHW3[(s.start_frame + s.end_frame - 1) // 2]
        w = max(1, round(frame.shape[1] * height / frame.shape[0]))
        tile = cv2.resize(frame, (w, height), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f"{s.start_s:.1f}s", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(np.pad(tile, ((0, 0), (0, 3), (0, 0))))
    return np.concatenate(tiles, axis=1) if tiles else np.zeros((height, height, 3), np.uint8)


def caption(video: str | None, progress=gr.Progress()) -> tuple[list[list], np.ndarray, str]:
    """Uploaded clip -> (per-shot caption rows, thumbnail strip, summary with the file's warnings), read
    as `moe-suite video caption` reads it (captioner.caption_file: the file's clock, the same warnings)."""
    from .captioner import caption_file

    if not video:
        raise gr.Error("Upload a clip first.")
    progress(0.05, desc="reading the clip, finding shots and captioning them")
    try:
        result = caption_file(video)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    shots = result.shots
    rows = [[s.index + 1, s.start_s, s.end_s, s.caption, s.source, round(s.confidence, 2)] for s in shots]
    summary = f"**{len(shots)} shot(s)** in {result.seconds_read:.1f} s"
    if result.warnings:
        summary += "\n\n" + "\n".join(f"- **warning:** {w}" for w in result.warnings)
    return rows, thumbnail_strip(result.frames_FHW3, shots), summary


def stylize(upload: str | None, style_name: str, description: str, reference: str | None,
            progress=gr.Progress()) -> tuple[str | None, str | None, str]:
    """Image or clip + a style (reference image > description > name) -> (image, video, details)."""
    from .style import is_still_image, stylize_file_result

    if not upload:
        raise gr.Error("Upload an image or a clip to restyle.")
    # an uploaded reference is a Path (read); typed text is a name or description only, never a server path
    style = Path(reference) if reference else \
        (description.strip() if description and description.strip() else None) or style_name
    if not style:
        raise gr.Error("Pick a style name, describe a style or upload a reference picture.")
    src = Path(upload)
    is_image = is_still_image(src)   # by content: an MP4 named .jpg is a video, and gives a video out
    progress(0.1, desc="restyling")
    try:
        path, info = stylize_file_result(src, style, _new_path(".png" if is_image else ".mp4"), style_files=False)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    _prune()
    weights = ", ".join(f"{k} {v:.2f}" for k, v in sorted(info.weights.items(), key=lambda kv: -kv[1]))
    details = f"routed by **{info.source}** to: {weights}"
    if info.warnings:   # an HDR source written as SDR, a truncated file
        details += "\n\n" + "\n".join(f"- **warning:** {w}" for w in info.warnings)
    return (str(path), None, details) if is_image else (None, str(path), details)


def _style_names() -> list[str]:
    try:
        from .style import STYLE_NAMES
        return list(STYLE_NAMES)
    except ImportError:
        return []


def build() -> gr.Blocks:
    """The video studio as a Gradio Blocks app (the server mounts it at /video)."""
    with gr.Blocks(title="Video studio", delete_cache=GRADIO_CACHE) as page:
        gr.Markdown(INTRO)
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="script", lines=3,
                                        placeholder="a red ball rolls left on a beach, then cut to a blue "
                                                    "square rising at night, in watercolor style")
                    with gr.Row():
                        seconds = gr.Slider(MIN_SECONDS, MAX_SECONDS, value=4, step=0.5, label="seconds")
                        fps = gr.Slider(MIN_FPS, MAX_FPS, value=24, step=1, label="fps")
                    with gr.Row():
                        resolution = gr.Dropdown(list(RESOLUTIONS), value="360p", label="resolution")
                        style = gr.Dropdown([""] + _style_names(), value="", allow_custom_value=True,
                                            label="style (optional): a name or a description",
                                            info="e.g. pencil, or 'like a charcoal drawing'")
                    allow_guesses = gr.Checkbox(False, label="render a guess anyway",
                                                info="when no shape or colour word of the script is understood")
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary")
                        stop_generate = gr.Button("Cancel")
                with gr.Column(scale=3):
                    video = gr.Video(label="clip", autoplay=True)
                    timeline = gr.Plot(label="timeline: scenes and cuts")
                    details = gr.Markdown(label="what the studio understood")
            experts = gr.Dataframe(headers=EXPERT_COLUMNS, label="which experts handled each scene",
                                   interactive=False)
            gr.Examples(["a red ball rolls left on a beach, then cut to a blue square rising at night",
                         "a yellow star spins in the sky while the camera zooms in",
                         "a green digit 7 grows on the grass, then a pink heart falls at sunset"], inputs=prompt)
            generating = go.click(generate, [prompt, seconds, resolution, fps, style, allow_guesses],
                                  [video, timeline, experts, details], api_name="generate")
            stop_generate.click(None, cancels=[generating], api_name=False)
        with gr.Tab("Caption"):
            with gr.Row():
                with gr.Column(scale=2):
                    clip = gr.Video(label="clip to caption", sources=["upload"])
                    with gr.Row():
                        run_caption = gr.Button("Caption", variant="primary")
                        stop_caption = gr.Button("Cancel")
                with gr.Column(scale=3):
                    summary = gr.Markdown("Each shot gets its time stamps and a caption.")
                    strip = gr.Image(label="shots (middle frame of each)", type="numpy", interactive=False)
            table = gr.Dataframe(headers=CAPTION_COLUMNS, label="captions per shot", interactive=False, wrap=True)
            captioning = run_caption.click(caption, [clip], [table, strip, summary], api_name="caption")
            stop_caption.click(None, cancels=[captioning], api_name=False)
        with gr.Tab("Stylize"):
            with gr.Row():
                with gr.Column(scale=2):
                    upload = gr.File(label="image or clip", type="filepath",
                                     file_types=sorted(STYLIZE_SUFFIXES))
                    names = _style_names()
                    style_name = gr.Dropdown(names, value=names[0] if names else None, label="style")
                    description = gr.Textbox(label="or describe a style", placeholder="e.g. soft pastel watercolour")
                    reference = gr.Image(label="or a reference picture", type="filepath")
                    with gr.Row():
                        run_style = gr.Button("Restyle", variant="primary")
                        stop_style = gr.Button("Cancel")
                with gr.Column(scale=3):
                    styled_image = gr.Image(label="result", type="filepath", interactive=False)
                    styled_video = gr.Video(label="result")
                    style_details = gr.Markdown()
            styling = run_style.click(stylize, [upload, style_name, description, reference],
                                      [styled_image, styled_video, style_details], api_name="stylize")
            stop_style.click(None, cancels=[styling], api_name=False)
    return page

