"""Uploads kept under one temporary folder: a folder per request, removed after it; the whole
area removed at exit. File names are reduced to a safe base name, sizes are enforced while copying.

In an API route:

    from apps.web.uploads import RequestUploads, request_uploads

    @router.post("/studies")
    async def diagnose(files: list[UploadFile], uploads: RequestUploads = Depends(request_uploads)):
        paths = await uploads.save_all(files)   # under uploads.folder, gone after the request

A name like "../../etc/passwd" is stored as "passwd", "C:\\x\\scan.dcm" as "scan.dcm"; a file over
`max_bytes` raises UploadTooLarge (a ValueError; the route answers 413) and leaves nothing behind.
"""
from __future__ import annotations

import atexit
import functools
import os
import re
import secrets
import shutil
import tempfile
import unicodedata
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

if TYPE_CHECKING:
    from fastapi import UploadFile

MAX_NAME_BYTES = 200  # below every common file system's 255-byte limit, with room for "-1" suffixes
CHUNK_BYTES = 1 << 20


class UploadTooLarge(ValueError):
    """An uploaded file is over the size limit."""


def safe_filename(name: str | None, default: str = "upload") -> str:
    """The base name of `name` (either separator), NFC, without control/format characters or NUL,
    leading dots or characters Windows forbids, at most `MAX_NAME_BYTES` bytes (the extension kept);
    `default` when nothing is left."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in unicodedata.normalize("NFC", base) if not unicodedata.category(c).startswith("C"))
    base = re.sub(r'[<>:"|?*]', "_", base).strip().lstrip(".").strip()
    if not base:
        return default
    stem, dot, ext = base.rpartition(".") if "." in base else (base, "", "")
    ext = ext[:16]
    while len((stem + dot + ext).encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return (stem + dot + ext) if stem else default


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class UploadArea:
    """This process's folder under `root` (mode 0700): per-request folders in it, all removed at exit.
    Folders left by processes that died without cleaning up (kill -9) are removed on creation."""

    def __init__(self, root: str | Path):
        Path(root).mkdir(parents=True, exist_ok=True)
        for stale in Path(root).iterdir():
            pid, _, rest = stale.name.partition("-")
            if stale.is_dir() and pid.isdigit() and rest and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
        atexit.register(self.cleanup)

    @contextmanager
    def request_dir(self) -> Iterator[Path]:
        """A new empty folder, removed with its contents when the block ends. The area's own folder is made again
        (mode 0700) if something removed it, e.g. a cleaner of old temporary files under a long-running server."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="req-", dir=self.root))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RequestUploads:
    """Where one request's uploads go and how large each may be."""
    folder: Path
    max_bytes: int

    def path_for(self, filename: str | None) -> Path:
        """A new path in `folder` for `filename` (made safe; a random "-xxxxxx" added on collisions)."""
        name = safe_filename(filename)
        path = self.folder / name
        stem, suffix = path.stem, path.suffix
        while path.exists():
            path = self.folder / f"{stem}-{secrets.token_hex(3)}{suffix}"
        if path.resolve().parent != self.folder.resolve():  # cannot happen after safe_filename; be sure
            raise ValueError(f"upload name {filename!r} escapes the upload folder")
        return path

    async def save(self, upload: UploadFile) -> Path:
        """Copy `upload` into `folder` in chunks; UploadTooLarge past `max_bytes` (nothing kept)."""
        path, size = self.path_for(upload.filename), 0
        out = open(path, "xb")   # outside the try: a file that exists already is never removed here
        try:
            with out:
                while chunk := await upload.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadTooLarge(f"upload {safe_filename(upload.filename)!r} is over "
                                             f"{self.max_bytes} bytes")
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def save_all(self, uploads: Iterable[UploadFile]) -> list[Path]:
        try:
            return [await self.save(u) for u in uploads]
        except UploadTooLarge as exc:
            raise HTTPException(413, str(exc)) from None


@functools.cache
def _fallback_area() -> UploadArea:
    """One area per process for routers mounted outside the suite's server (no `app.state.uploads`)."""
    return UploadArea(Path(tempfile.gettempdir()) / "moe-suite-uploads")


async def request_uploads(request: Request) -> AsyncIterator[RequestUploads]:
    """FastAPI dependency: a RequestUploads in a fresh folder of the server's upload area, removed
    after the request. Outside the suite's server (no `app.state.uploads`) a temporary area is used."""
    state = request.app.state
    area: UploadArea = getattr(state, "uploads", None) or _fallback_area()
    settings = getattr(state, "settings", None)
    max_bytes = settings.max_upload_bytes if settings is not None else 200 << 20
    with area.request_dir() as folder:
        yield RequestUploads(folder, max_bytes)
