"""HTTP API of the video studio (mounted by apps/server.py at /api/v1/video).

    POST /generate  {"prompt": "...", "seconds": 3, "resolution": "360p", "fps": 24, "style": null}
        "style" is a style name or a description; a value that names a file (style.path_like: starts
        with "/", "./", "../", "~/", "C:\\" or "C:/", holds "://", or ends in an image suffix) -> 422 (the
        API reads no files of the server's; reference pictures go through the page or the CLI). Other text
        ("sci-fi/neon", "n/a") is a description: one that matches no style -> 422 saying so.
        -> {"id", "video_url", "preview_url" (absolute URLs), "script", "cut_frames", "experts", "timings",
            "understanding" (which words carried each planned value, guesses, unknown words), "warnings", ...}
        "experts" per scene: "text_experts" {id: mean gate weight over the scene's tokens} (top-2 gates,
        renormalised: they add up to 1); "time_experts" {block * 4 + expert: mean gate weight over the
        scene's time slots} (two blocks; top-1 gates, not renormalised: each block's weights add up to the
        mean probability of its chosen expert, under 1).
        A prompt naming no shape or colour the studio understands -> 422 with detail {"error",
        "understanding"}, unless "allow_guesses": true.
    GET  /files/{name}  -> the video (video/mp4) or preview (image/gif); HEAD too, Range requests give 206

Limits are the studio's (studio.py); a request outside them gets 422 with the message. Generation
runs in a worker thread, one at a time (the machine has few cores), and files live in the cache
folder (apps.settings.cache_dir() / "video"), keeping the newest MAX_FILES.
"""
from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, field_validator

from .studio import MAX_FILES, MAX_FPS, MAX_PROMPT_CHARS, MAX_SECONDS, MIN_FPS, MIN_SECONDS, keep_newest
from .style import path_like

# a clip, its preview_path_for, or a preview named the older way ("<id>.preview.gif"): pruned and served alike
_NAME = re.compile(r"^[0-9a-f]{32}(?:\.(?:mp4|webm)(?:\.preview\.gif)?|\.preview\.gif)$")
_lock = asyncio.Lock()

router = APIRouter(tags=["video"])


class GenerateRequest(BaseModel):
    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS * 5, description=f"1..{MAX_PROMPT_CHARS} characters")
    seconds: float = Field(3.0, description=f"{MIN_SECONDS}..{MAX_SECONDS}")
    resolution: str = Field("360p", description="360p, 720p or 1080p")
    fps: int = Field(24, description=f"{MIN_FPS}..{MAX_FPS}")
    style: str | None = Field(None, description="style name or description (a server file path is refused: "
                                                "the API takes no reference images)")
    format: str = Field("mp4", description="mp4 (H.264) or webm (VP9)")
    allow_guesses: bool = Field(False, description="render even when no shape or colour word was understood")

    @field_validator("style")
    @classmethod
    def _style_is_text(cls, style: str | None) -> str | None:
        if style is not None and path_like(style):
            raise ValueError("style: the API takes style names and descriptions only (e.g. 'pencil', 'like a "
                             "charcoal drawing'), not file paths; a reference image cannot be named by a path "
                             "here (the page's Stylize tab and the CLI take reference pictures)")
        return style


def files_dir() -> Path:
    from apps.settings import cache_dir
    folder = Path(cache_dir()) / "video"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _prune(folder: Path) -> None:
    keep_newest(folder, MAX_FILES, _NAME)


@router.post("/generate")
async def generate(req: GenerateRequest, request: Request) -> dict:
    from .studio import NothingUnderstoodError, generate_video

    if req.format not in ("mp4", "webm"):
        raise HTTPException(422, f"format must be mp4 or webm, got {req.format!r}")
    folder = files_dir()
    vid = uuid.uuid4().hex
    out = folder / f"{vid}.{req.format}"
    async with _lock:
        try:
            result = await asyncio.to_thread(generate_video, req.prompt, seconds=req.seconds,
                                             resolution=req.resolution, fps=req.fps, style=req.style, out=out,
                                             allow_guesses=req.allow_guesses, style_files=False)
        except NothingUnderstoodError as exc:
            raise HTTPException(422, {"error": str(exc), "understanding": exc.understanding.to_dict()}) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
    _prune(folder)
    body = result.to_dict()
    body.pop("path"), body.pop("preview_path")
    return {"id": vid, "video_url": str(request.url_for("files", name=out.name)),
            "preview_url": str(request.url_for("files", name=result.preview_path.name)), **body}


@router.api_route("/files/{name}", methods=["GET", "HEAD"])
async def files(name: str) -> FileResponse:
    if not _NAME.match(name):
        raise HTTPException(404, "no such file")
    path = files_dir() / name
    if not path.is_file():
        raise HTTPException(404, "no such file")
    media = {".mp4": "video/mp4", ".webm": "video/webm", ".gif": "image/gif"}[path.suffix]   # HEAD: headers only
    return FileResponse(path, media_type=media)
