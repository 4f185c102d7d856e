"""`moe-suite video ...` and `bench video` commands, and the HTTP API's limits."""
import json

import pytest

from apps.cli import build_parser, main
from apps.video_generation import generator as G
from apps.video_generation import planner as P

SHIPPED = (G.DEFAULT_PATH / "config.json").is_file() and (P.DEFAULT_PATH / "config.json").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="no shipped planner/generator checkpoints")


def test_every_video_command_is_registered():
    parser = build_parser()
    for argv in (["video", "generate", "a red ball", "--out", "x.mp4"], ["video", "train-planner"],
                 ["video", "train-generator"], ["video", "eval-planner", "--json"], ["video", "caption", "x.mp4"],
                 ["video", "eval", "--json"], ["video", "stylize", "x.mp4", "--style", "pencil", "--out", "y.mp4"],
                 ["bench", "video", "--json"]):
        assert callable(parser.parse_args(argv).handler)


def test_generate_bad_input_exits_2(tmp_path, capsys):
    assert main(["video", "generate", "", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["video", "generate", "a red ball", "--fps", "99", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "fps" in capsys.readouterr().err
    assert main(["video", "generate", "a red ball", "--resolution", "8k", "--out", str(tmp_path / "x.mp4")]) == 2
    assert not any(tmp_path.iterdir())



def test_caption_of_a_folder_or_a_missing_file_exits_2(tmp_path, capsys):
    assert main(["video", "caption", str(tmp_path)]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert main(["video", "caption", str(tmp_path / "gone.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err


@needs_shipped
def test_generate_json(tmp_path, capsys):
    out = tmp_path / "clip.webm"
    assert main(["video", "generate", "a green star spins in the sky, then a pink heart falls at sunset",
                 "--seconds", "1", "--fps", "8", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["path"] == str(out) and out.stat().st_size > 0
    assert result["frames"] == 8 and len(result["script"]["scenes"]) == len(result["cut_frames"]) + 1
    assert {"planning_s", "generation_s", "encoding_s", "total_s"} <= set(result["timings"])


def test_generate_no_lexicon_leaves_the_prompt_to_the_planner(tmp_path, capsys):
    prompt = "a maroon ball plummets on the seashore"
    for flag, read_as in (([], {"maroon", "plummets", "on the seashore"}), (["--no-lexicon"], set())):
        assert main(["video", "generate", prompt, "--seconds", "1", "--fps", "8", "--out",
                     str(tmp_path / "clip.mp4"), "--allow-guesses", "--json", *flag]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert {r["original"] for r in result["understanding"]["read_as"]} == read_as


def test_api_rejects_bad_requests():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from apps.video_generation.api import router

    app = FastAPI()
    app.include_router(router, prefix="/api/v1/video")
    client = TestClient(app)
    for body in ({"prompt": ""}, {"prompt": "x" * 10_000}, {"prompt": "a red ball", "seconds": 500},
                 {"prompt": "a red ball", "resolution": "4k"}, {"prompt": "a red ball", "format": "avi"}):
        r = client.post("/api/v1/video/generate", json=body)
        assert r.status_code == 422, body
    assert client.get("/api/v1/video/files/..%2Fsecret").status_code == 404


@needs_shipped
def test_api_generates_and_serves(tmp_path, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from apps.video_generation.api import router

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path))
    app = FastAPI()
    app.include_router(router, prefix="/api/v1/video")
    client = TestClient(app)
    r = client.post("/api/v1/video/generate", json={"prompt": "a red ball moves left on the beach",
                                                     "seconds": 1, "fps": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    video = client.get(body["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4" and len(video.content) > 100
    assert client.get(body["preview_url"]).headers["content-type"] == "image/gif"
    assert len(body["cut_frames"]) == len(body["script"]["scenes"]) - 1
