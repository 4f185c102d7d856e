"""Whole workflows of the video studio that a black-box probe found broken: styled generation held the whole
clip in memory, long clips were captioned short without a word in the JSON, the page captioned on another
clock than the CLI, the API read server paths as styles, page outputs piled up, list-shaped prompts."""
import argparse
import json

import numpy as np
import pytest

from apps.video_generation import generator as G
from apps.video_generation import planner as P
from data_connectors import video
from data_connectors.video import write_video
from test_video_probe_fixes import _ffmpeg, needs_ffmpeg  # the same ffmpeg helpers

SHIPPED = (G.DEFAULT_PATH / "config.json").is_file() and (P.DEFAULT_PATH / "config.json").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="no shipped planner/generator checkpoints")
NO_PROGRESS = lambda *a, **k: None  # noqa: E731


def _two_colour_clip(n: int = 12, hw=(48, 64)) -> np.ndarray:
    red, blue = np.zeros((n, *hw, 3), np.uint8), np.zeros((n, *hw, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    red[:, 10:20, 10:20], blue[:, 30:40, 40:50] = 255, 255
    return np.concatenate([red, blue])


# ---- defect 1: a styled clip streams through the styliser into the encoder ----

class _CountingGenerator(G.Generator):
    """The shipped generator, counting the frames its script stream has handed out."""
    produced = 0

    def script_frames(self, script, fps, size_hw):
        frames_it, cuts = super().script_frames(script, fps, size_hw)

        def counted():
            for frame in frames_it:
                self.produced += 1
                yield frame
        return counted(), cuts


@needs_shipped
def test_styled_generation_streams_frame_by_frame(tmp_path, monkeypatch):
    from apps.video_generation import studio

    gen = _CountingGenerator(G.load_generator().model)
    ahead: list[int] = []   # frames generated but not yet taken by the encoder, at each frame it takes
    real_write = video.write_video

    def watching_writer(frames, path, fps, **kw):
        assert not isinstance(frames, (np.ndarray, list)), "the encoder was handed the whole clip at once"

        def watch():
            for i, frame in enumerate(frames):
                ahead.append(gen.produced - i)
                yield frame
        return real_write(watch(), path, fps, **kw)

    monkeypatch.setattr(video, "write_video", watching_writer)
    result = studio.generate_video("a red ball rolls left on a beach", seconds=2, resolution="360p", fps=8,
                                   style="pencil", out=tmp_path / "x.mp4", generator=gen)
    assert result.frames == 16 and len(ahead) == 16 and max(ahead) <= 2
    assert result.style_experts and "style_s" in result.timings
    assert video.probe_video(result.path).frames == 16 and result.preview_path.is_file()


def test_clip_stylizer_stream_is_lazy():
    from apps.video_generation import style

    clip = style.synthetic_clip(6, (64, 96))
    pulled = []

    def source():
        for i, f in enumerate(clip):
            pulled.append(i)
            yield f
    stylizer = style.clip_stylizer("smooth", clip[style.fit_indices(len(clip), 3)])
    stream = stylizer.stream(source())
    first = next(stream)
    assert first.shape == clip[0].shape and pulled == [0]
    assert len(list(stream)) == 5 and pulled == list(range(6))


# ---- defect 2: a clip longer than the frame cap says which span was captioned ----

@needs_ffmpeg
def test_caption_json_names_the_span_of_a_clip_cut_short(tmp_path, monkeypatch, capsys):
    from apps.video_generation import captioner, cli

    path = write_video(np.concatenate([_two_colour_clip(12)] * 2), tmp_path / "long.mp4", 12.0)   # 48 frames, 4 s
    monkeypatch.setattr(captioner, "MAX_CAPTION_FRAMES", 24)
    cli.caption(argparse.Namespace(file=path, json=True))
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["shots"][-1]["end_s"] == pytest.approx(2.0, abs=0.01)
    assert out["warnings"] == ["captioned the first 2.0 s of 4.0 s (24 of 48 frames)"]
    # the page says the same
    from apps.video_generation import page
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    _, _, summary = page.caption(str(path), progress=NO_PROGRESS)
    assert "captioned the first 2.0 s of 4.0 s (24 of 48 frames)" in summary


# ---- defect 4: the page's Caption tab reads the file as the CLI does ----

@needs_ffmpeg
def test_page_and_cli_caption_a_variable_rate_clip_alike(tmp_path, monkeypatch):
    from apps.video_generation import page
    from apps.video_generation.captioner import caption_file

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    src = write_video(_two_colour_clip(), tmp_path / "cfr.mp4", fps=12)
    vfr = tmp_path / "phone.mp4"   # 12 red frames, a 1 s gap in the stream, 12 blue: the cut is at 2.0 s
    _ffmpeg("-i", src, "-vf", "setpts='(N+12*gte(N,12))/(12*TB)'", "-fps_mode", "vfr", "-c:v", "libx264", vfr)
    cli_shots = [(s.start_s, s.end_s, s.caption) for s in caption_file(vfr).shots]
    rows, strip, summary = page.caption(str(vfr), progress=NO_PROGRESS)
    assert [(r[1], r[2], r[3]) for r in rows] == cli_shots
    assert cli_shots[1][0] == pytest.approx(2.0, abs=0.01) and strip.ndim == 3


@needs_ffmpeg
def test_page_caption_shows_the_file_warnings(tmp_path, monkeypatch):
    from apps.video_generation import page

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 64, 3), dtype=np.uint8)   # incompressible
    whole = write_video(noise, tmp_path / "whole.mp4", fps=24)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _, _, summary = page.caption(str(cut), progress=NO_PROGRESS)
    assert "warning" in summary and "truncated" in summary


@needs_shipped
def test_frames_drawn_at_indices_are_the_streamed_frames():
    from apps.video_generation import world

    gen = G.load_generator()
    script = world.Script([world.Scene([world.SceneObject("star", "yellow", "left")], "night", "zoom_in", 0.5),
                           world.Scene([world.SceneObject("heart", "red", "up")], "beach", "pan_right", 0.5)])
    streamed = np.stack(list(gen.script_frames(script, 8, (36, 64))[0]))
    idx = [0, 3, 4, 7]
    assert np.array_equal(gen.script_frames_at(script, 8, (36, 64), idx), streamed[idx])


# ---- defect 5: the HTTP API takes style names and descriptions, never a server path ----

def _api_client(tmp_path, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from apps.video_generation.api import router

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    app = FastAPI()
    app.include_router(router, prefix="/api/v1/video")
    return TestClient(app)


@pytest.mark.parametrize("style", ["/etc/passwd", "/etc/nonexist.png", "../secret/ref.jpg", "C:\\pics\\ref.png",
                                   "~/ref.png", "ref.png", "file:///etc/hosts", "./ref", "C:/pics/ref",
                                   "\\\\server\\share\\ref", "  /etc/hosts", "photos/ref.JPG"])
def test_api_refuses_a_style_that_names_a_file(tmp_path, monkeypatch, style):
    from apps.video_generation import studio

    called = []
    monkeypatch.setattr(studio, "generate_video", lambda *a, **k: called.append(1))
    r = _api_client(tmp_path, monkeypatch).post("/api/v1/video/generate", json={"prompt": "a red ball",
                                                                               "style": style})
    assert r.status_code == 422 and "names and descriptions" in r.text and not called
    assert "readable" not in r.text and "no such" not in r.text   # nothing said about the server's files


@needs_shipped
def test_api_style_text_that_is_also_a_server_file_is_read_as_text(tmp_path, monkeypatch):
    # a relative name that happens to exist in the server's working folder is still only a description
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "pencil", format="PNG")
    from apps.video_generation import style as S
    route = S.default_router().route("pencil", files=False)
    assert route.source == "name" and route.weights == {"pencil": 1.0}
    assert S.default_router().route("pencil").source == "reference"   # the CLI still reads files
    client = _api_client(tmp_path, monkeypatch)
    r = client.post("/api/v1/video/generate", json={"prompt": "a red ball", "style": "pencil", "seconds": 0.5,
                                                    "fps": 8})
    assert r.status_code == 200, r.text
    assert r.json()["style_experts"] == {"pencil": 1.0}


# ---- defect 6: page outputs are pruned as the API's are, and Gradio's copies get deleted ----

def test_page_outputs_keep_only_the_newest(tmp_path, monkeypatch):
    from apps.video_generation import api, page
    from data_connectors.video import write_image

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(page, "MAX_FILES", 3)
    pic = write_image(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8), tmp_path / "p.png")
    made = [page.stylize(str(pic), "cartoon", "", None, progress=NO_PROGRESS)[0] for _ in range(5)]
    left = sorted(p.name for p in page._out_dir().iterdir())
    assert len(left) == 3 and {p.split("/")[-1] for p in made[-3:]} == set(left)
    assert page.keep_newest is api.keep_newest   # one pruning rule for the page and the API
    blocks = page.build()
    frequency, age = blocks.delete_cache   # Gradio deletes its own copies of the results
    assert 0 < frequency <= age


# ---- defect 3: scene lists are rewritten into the planner's joined prose ----

TWO = "a red ball rolls left on a beach, then cut to a blue square rises at night"


@pytest.mark.parametrize("prompt", [
    "1. a red ball rolls left on a beach 2. a blue square rises at night",
    "1) a red ball rolls left on a beach.\n2) a blue square rises at night.",
    "Scene 1: a red ball rolls left on a beach. Scene 2: a blue square rises at night.",
    "shot 1 - a red ball rolls left on a beach\nshot 2 - then a blue square rises at night",
    "a red ball rolls left on a beach\na blue square rises at night\n",
    "- a red ball rolls left on a beach\n- a blue square rises at night",
    "a red ball rolls left\non a beach\na blue square rises at night",   # a wrapped line continues its scene
    "1 - a red ball rolls left on a beach\n2 - a blue square rises at night",
    "1: a red ball rolls left on a beach\n2: a blue square rises at night"])
def test_scene_lists_become_joined_prose(prompt):
    from apps.video_generation.prompt_lists import restructure

    s = restructure(prompt)
    assert s.text == TWO and len(s.items) == 2 and not s.dropped and not s.warnings()


@pytest.mark.parametrize("prompt", ["a red ball rolls left, then a blue square rises",
                                    "a green digit 7. A blue square rises at night.",
                                    "3. a red ball", "a red ball 1. a blue square 2. a star"])
def test_prose_and_lone_numbers_are_left_alone(prompt):
    from apps.video_generation.prompt_lists import restructure

    assert restructure(prompt).text == prompt and restructure(prompt).items == []


def test_listed_scenes_past_the_limit_are_named():
    from apps.video_generation.prompt_lists import restructure

    items = ["a red ball rolls left", "a blue square rises", "a green star spins", "a pink heart falls",
             "a white triangle grows in the studio"]
    s = restructure("\n".join(f"{i + 1}. {t}" for i, t in enumerate(items)))
    assert s.text == ", then cut to ".join(items[:4]) and s.dropped == items[4:]
    assert "5: 'a white triangle grows in the studio'" in s.warnings()[0]


@needs_shipped
def test_numbered_list_plans_its_scenes_without_an_invented_digit(tmp_path):
    from apps.video_generation import studio

    r = studio.generate_video("1. a red ball rolls left on a beach 2. a blue square rises at night",
                              seconds=0.5, fps=8, out=tmp_path / "x.mp4")
    objects = [(o.colour, o.shape) for s in r.script.scenes for o in s.objects]
    assert objects == [("red", "circle"), ("blue", "square")]
    assert not any("at most" in w for w in r.to_dict()["warnings"])


@needs_shipped
def test_limit_warning_only_when_a_limit_was_reached():
    from apps.video_generation.planner import load_planner
    from apps.video_generation.understanding import understand

    prompt = "a red ball and another red ball roll left"
    plan = load_planner().plan(prompt, 1.0)
    u = understand(prompt, plan)
    assert len(plan.script.scenes) < 4 and all(len(s.objects) < 3 for s in plan.script.scenes)
    assert not any("at most" in w for w in u.warnings)
    assert u.ignored_words and any(w.startswith("read but not used") for w in u.warnings)   # said, no limit blamed


# ---- defects 12, 13, 10, 7: page limits, style words, --out a folder, counts ----

def test_page_uses_the_studio_limits_and_takes_style_descriptions():
    import gradio as gr

    from apps.video_generation import page, studio

    blocks = page.build()
    sliders = {b.label: b for b in blocks.blocks.values() if isinstance(b, gr.Slider)}
    assert (sliders["seconds"].minimum, sliders["seconds"].maximum) == (studio.MIN_SECONDS, studio.MAX_SECONDS)
    assert (sliders["fps"].minimum, sliders["fps"].maximum) == (studio.MIN_FPS, studio.MAX_FPS)
    style = next(b for b in blocks.blocks.values() if isinstance(b, gr.Dropdown) and b.label.startswith("style ("))
    assert style.allow_custom_value
    assert style.preprocess("like a charcoal drawing") == "like a charcoal drawing"


def test_out_naming_a_folder_exits_2(tmp_path, capsys):
    from apps.cli import main

    (tmp_path / "clip.mp4").mkdir()
    assert main(["video", "generate", "a red ball", "--out", str(tmp_path / "clip.mp4")]) == 2
    err = capsys.readouterr().err
    assert "clip.mp4" in err and "is a folder" in err and "Traceback" not in err


@needs_shipped
@pytest.mark.parametrize("prompt", ["three red balls roll left on a beach", "2 red balls roll left",
                                    "many red balls roll left", "a red ball and several blue stars",
                                    "twenty red balls roll left"])
def test_counts_get_a_warning(prompt):
    from apps.video_generation.planner import load_planner
    from apps.video_generation.understanding import understand

    u = understand(prompt, load_planner().plan(prompt, 1.0))
    assert any("one object per mention" in w for w in u.warnings), u.warnings
    assert "roll" not in u.unrecognised_words   # the plural verb of "rolls"


@needs_shipped
def test_no_count_warning_without_a_count():
    from apps.video_generation.planner import load_planner
    from apps.video_generation.understanding import understand

    for prompt in ("a red ball rolls left and a green digit 3 spins", "a red ball and a blue star on a beach",
                   "a red ball rolls left for two seconds", "a red ball rolls left at 3 p.m."):
        u = understand(prompt, load_planner().plan(prompt, 1.0))
        assert not any("count" in w for w in u.warnings), (prompt, u.warnings)


@needs_shipped
def test_words_of_the_planned_style_are_understood():
    from apps.video_generation.planner import load_planner
    from apps.video_generation.understanding import understand

    prompt = "a red ball rolls left in the style of an oil painting"
    plan = load_planner().plan(prompt, 1.0)
    u = understand(prompt, plan)
    assert plan.script.style == "oil" and "painting" not in u.unrecognised_words
    assert not any("painting" in w for w in u.warnings)


# ---- defects 11, 15: previews per output file, HEAD on the files route ----

def test_mp4_and_webm_of_one_name_get_their_own_previews(tmp_path):
    from apps.video_generation.studio import preview_path_for

    mp4, webm = preview_path_for(tmp_path / "x.mp4"), preview_path_for(tmp_path / "x.webm")
    assert mp4 != webm and mp4.suffix == webm.suffix == ".gif" and mp4.parent == tmp_path


def test_files_route_answers_head(tmp_path, monkeypatch):
    from apps.video_generation import api
    from apps.video_generation.studio import preview_path_for

    client = _api_client(tmp_path, monkeypatch)
    name = "0" * 32 + ".mp4"
    (api.files_dir() / name).write_bytes(b"\0" * 100)
    preview_name = preview_path_for(api.files_dir() / name).name   # the name the API's preview_url gives
    (api.files_dir() / preview_name).write_bytes(b"GIF89a")
    head = client.head(f"/api/v1/video/files/{name}")
    assert head.status_code == 200 and head.headers["content-length"] == "100" and head.content == b""
    assert head.headers["content-type"] == "video/mp4"
    assert client.head(f"/api/v1/video/files/{preview_name}").headers["content-type"] == "image/gif"
    assert client.head("/api/v1/video/files/" + "1" * 32 + ".mp4").status_code == 404


def test_page_style_text_is_never_read_as_a_server_file(tmp_path, monkeypatch):
    import gradio as gr

    from apps.video_generation import page
    from data_connectors.video import write_image

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    ref = write_image(np.full((40, 40, 3), 90, np.uint8), tmp_path / "ref.png")   # exists on the server
    pic = write_image(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8), tmp_path / "p.png")
    with pytest.raises(gr.Error, match="names and descriptions only"):
        page.stylize(str(pic), "cartoon", str(ref), None, progress=NO_PROGRESS)
    image, _, details = page.stylize(str(pic), "cartoon", "", str(ref), progress=NO_PROGRESS)   # an upload
    assert image and "routed by **reference**" in details


@needs_shipped
def test_listed_scenes_without_backgrounds_keep_their_scenes():
    from apps.video_generation.planner import load_planner
    from apps.video_generation.prompt_lists import plan_listed, restructure
    from apps.video_generation.understanding import understand

    listed = restructure("1. a red ball rolls left\n2. a blue square rises\n3. a green star spins\n"
                         "4. a pink heart falls")
    plan = plan_listed(load_planner(), listed, 4.0)
    got = [[(o.colour, o.shape, o.motion) for o in s.objects] for s in plan.script.scenes]
    want = [("red", "circle", "left"), ("blue", "square", "up"), ("green", "star", "rotate"), ("pink", "heart", "down")]
    assert len(got) == 4 and all(w in scene for w, scene in zip(want, got))   # each listed object in its own scene
    assert sum(s.seconds for s in plan.script.scenes) == pytest.approx(4.0) and len(plan.cut_seconds) == 3
    u = understand(listed.text, plan)
    words = [o["motion"].words for s in u.scenes for o in s["objects"] if o["motion"].status == "read"]
    assert words == [["rolls", "left"], ["rises"], ["spins"], ["falls"]] and not u.ignored_words


# ---- defect 8: an object no word named is reported as made up ----

def test_an_object_no_word_named_is_reported_as_made_up():
    from test_video_understanding import fake_plan

    from apps.video_generation.understanding import understand
    from apps.video_generation.world import Scene, SceneObject, Script

    prompt = "a red car drives left"   # the plan holds a second object that no word named
    tags = {"red": {"colour": ("red", 0.99)}, "car": {"shape": ("2", 0.6)}, "left": {"motion": ("left", 0.95)}}
    two = Script([Scene([SceneObject("2", "red", "left"), SceneObject("0", "orange", "still")], "studio", "static")])
    plan = fake_plan(prompt, tags, two, object_starts=("a", "car"))
    u = understand(prompt, plan)
    made_up = [w for w in u.warnings if "made up" in w]
    assert len(made_up) == 1 and "scene 1 object 2 (orange digit 0)" in made_up[0]
    assert "object 1" not in made_up[0]   # its colour was read from "red"
    one = Script([Scene([SceneObject("2", "red", "left")], "studio", "static")])
    assert not any("made up" in w for w in understand(prompt, fake_plan(prompt, tags, one)).warnings)


# ---- review of the fixes above: wrapped prose, "next to", style texts, old previews, resized styling ----

WRAPPED = ["a red ball rolls left on a beach\nwatercolor style", "a red ball rolls left on a beach\ncamera pans right",
           "A red ball rolls left on a beach.\nIt is night.", "a red ball rolls left\nthe camera zooms in",
           "a red ball rolls left on the\nbeach at night",
           "a red ball rolls left on a beach while a blue\nsquare rises at night",
           "a red ball rolls left\nslowly, at night", "a red ball rolls left on a beach\nwhile a blue square rises",
           "a red ball rolls left on a beach\nwatercolor style with soft outlines"]   # "outline" alone names none


@pytest.mark.parametrize("prompt", WRAPPED)
def test_wrapped_prose_is_one_line_of_prose(prompt):
    # a line starts a scene only when it names a shape of its own, after a line that does not end open
    from apps.video_generation.prompt_lists import restructure

    s = restructure(prompt)
    assert s.text == prompt.replace("\n", " ") and s.items == [] and not s.explicit


@needs_shipped
@pytest.mark.parametrize("prompt", WRAPPED[:6])
def test_wrapped_prose_plans_like_one_line(prompt):
    from apps.video_generation.planner import load_planner
    from apps.video_generation.prompt_lists import plan_listed, restructure

    planner = load_planner()
    got = plan_listed(planner, restructure(prompt), 2.0).script.to_dict()
    assert got == planner.plan(prompt.replace("\n", " "), 2.0).script.to_dict()


@pytest.mark.parametrize("prompt, items", [
    ("a red ball rolls up\na blue square falls", ["a red ball rolls up", "a blue square falls"]),
    ("A red ball rolls left on a beach,\nthe blue square rises at night.",
     ["A red ball rolls left on a beach", "the blue square rises at night"]),
    ("Red ball rolling left.\nBlue squares rising.", ["Red ball rolling left", "Blue squares rising"]),
    ("a red ball rolls left\na green digit 7 falls", ["a red ball rolls left", "a green digit 7 falls"])])
def test_a_line_naming_a_shape_is_a_scene(prompt, items):
    from apps.video_generation.prompt_lists import restructure

    s = restructure(prompt)
    assert s.items == items and not s.explicit


def test_only_explicit_lists_are_planned_item_by_item():
    from apps.video_generation.prompt_lists import plan_listed, restructure

    class OneScenePlanner:   # always reads one scene: the joined plan disagrees with a two-item list
        def __init__(self):
            self.texts = []

        def plan(self, text, seconds, style=None):
            self.texts.append(text)
            return argparse.Namespace(script=argparse.Namespace(scenes=[object()] * 3))

    planner = OneScenePlanner()
    bare = restructure("a red ball rolls left\na blue square rises")
    plan_listed(planner, bare, 2.0)
    assert planner.texts == [bare.text] and len(bare.items) == 2   # bare lines: the joined text only
    planner = OneScenePlanner()
    bulleted = restructure("- a red ball rolls left\n- a blue square rises")
    assert bulleted.explicit
    plan_listed(planner, bulleted, 2.0)   # 3 + 3 scenes planned item by item exceed the limit: the joined plan
    assert planner.texts == [bulleted.text, *bulleted.items]


def test_next_to_is_no_joiner():
    from apps.video_generation.prompt_lists import restructure

    s = restructure("1. next to a blue square a red ball rolls left 2. next a green star spins")
    assert s.items == ["next to a blue square a red ball rolls left", "a green star spins"]


@pytest.mark.parametrize("style", ["sci-fi/neon", "black/white pencil", "50/50 watercolor and oil", "n/a",
                                   "~ dreamy", "pencil ~ charcoal", "comic.PNG style"])
def test_style_descriptions_with_slashes_and_tildes_are_routed(tmp_path, monkeypatch, style):
    from apps.video_generation import studio
    from apps.video_generation.style import StyleError, StyleRouter, path_like

    assert not path_like(style)
    asked = []

    def fake_generate(*args, **kwargs):
        asked.append(kwargs)
        raise studio.GenerationError("stopped here")
    monkeypatch.setattr(studio, "generate_video", fake_generate)
    r = _api_client(tmp_path, monkeypatch).post("/api/v1/video/generate", json={"prompt": "a red ball",
                                                                               "style": style})
    assert r.status_code == 422 and "stopped here" in r.text
    assert asked[0]["style"] == style and asked[0]["style_files"] is False
    router = StyleRouter(embed=lambda texts: np.ones((len(texts), 4), np.float32) / 2)   # every text matches
    try:
        router.route(style, files=False)
    except StyleError as exc:   # "unknown style" for a lone word: a description's error, never a path's
        assert "file paths" not in str(exc)


def test_keep_newest_skips_files_deleted_meanwhile(tmp_path):
    import re

    from apps.video_generation.studio import keep_newest

    for i in (0, 1, 2, 3, 9):
        (tmp_path / f"{i}.mp4").write_bytes(b"x")

    def listing():   # another request's prune deletes 9.mp4 after it was listed
        yield from sorted(tmp_path.iterdir())
        (tmp_path / "9.mp4").unlink()
    gone = keep_newest(argparse.Namespace(iterdir=listing), 2, re.compile(r"^\d\.mp4$"))
    assert len(gone) == 2 and len(list(tmp_path.iterdir())) == 2


def test_old_style_previews_are_served_and_pruned(tmp_path, monkeypatch):
    import os

    from apps.video_generation import api

    client = _api_client(tmp_path, monkeypatch)
    folder = api.files_dir()
    old = folder / ("a" * 32 + ".preview.gif")   # how previews were named before clip.mp4.preview.gif
    old.write_bytes(b"GIF89a")
    os.utime(old, (1, 1))
    r = client.get(f"/api/v1/video/files/{old.name}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    (folder / ("b" * 32 + ".mp4")).write_bytes(b"\0")
    monkeypatch.setattr(api, "MAX_FILES", 1)
    api._prune(folder)
    assert not old.exists() and (folder / ("b" * 32 + ".mp4")).exists()
    assert not api._NAME.match("a" * 32) and not api._NAME.match("a" * 32 + ".gif")


@needs_shipped
def test_styled_generation_equals_styling_the_whole_clip_when_resized(tmp_path, monkeypatch):
    import functools

    from apps.video_generation import studio
    from apps.video_generation import style as S

    taken = []
    real_write = video.write_video

    def keeping_writer(frames, path, fps, **kw):
        def keep():
            for frame in frames:
                taken.append(frame.copy())
                yield frame
        return real_write(keep(), path, fps, **kw)
    monkeypatch.setattr(video, "write_video", keeping_writer)
    small = functools.partial(S.StyleConfig, work_side=96)   # under the 640 px frames: the resize branch runs
    monkeypatch.setattr(S, "StyleConfig", small)
    gen = G.load_generator()
    r = studio.generate_video("a red ball rolls left on a beach, then cut to a blue square rises at night",
                              seconds=1.0, resolution="360p", fps=8, style="pencil", out=tmp_path / "x.mp4",
                              generator=gen)
    frames, _ = gen.script_frames(r.script, 8, studio.RESOLUTIONS["360p"])
    whole = S.stylize_frames(np.stack(list(frames)), "pencil", cfg=small())
    assert len(taken) == 8 and taken[0].shape == (360, 640, 3)
    assert np.array_equal(np.stack(taken), whole.frames) and whole.weights == r.style_experts


@needs_shipped
def test_a_prompt_in_german_is_flagged_as_not_english():
    """German prose with a known word ("Ball") and an English-looking "am" passed as English; the studio now
    shares the chat's check (core.text.language)."""
    from apps.video_generation.planner import load_planner
    from apps.video_generation.understanding import understand

    flagged = "does not look like English"
    for prompt in ("ein roter Ball rollt nach links am Strand", "eine blaue Kugel fällt in der Nacht"):
        u = understand(prompt, load_planner().plan(prompt, 1.0))
        assert any(flagged in w or "non-English letters" in w for w in u.warnings), (prompt, u.warnings)
    english = "a red ball rolls left on the beach, then cut to a blue square rising at night"
    assert not any(flagged in w for w in understand(english, load_planner().plan(english, 2.0)).warnings)
