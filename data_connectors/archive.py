"""Safe zip extraction for uploaded studies (zip-slip, symlinks, zip bombs, member floods).

    files = safe_extract_zip("upload.zip", "work/case-1")   # -> extracted file paths, sorted

Every member name is checked before anything is written (absolute paths, drive letters, '..' escapes, symlinks
and other special files, duplicates, encrypted members, member count). Sizes are then checked while streaming:
the bytes actually decompressed are counted against the total limit and, per member, against max_ratio times
its compressed size, because the sizes a zip declares can lie. Existing files in dest_dir are never
overwritten (refused). A refused archive leaves nothing behind in dest_dir (what this call wrote is removed).
"""
from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

_CHUNK = 1 << 20
_RATIO_FLOOR = 1 << 20   # the ratio check starts once a member has produced this many bytes (tiny files
                         # compress extremely well and are harmless)


class ArchiveError(ValueError):
    """A zip that cannot be read (corrupt, truncated, encrypted); the message names it."""


class UnsafeArchiveError(ArchiveError):
    """A zip refused for safety (path escape, link, bomb, too many members); the message names the member."""


def _member_path(name: str, zip_path: Path) -> PurePosixPath:
    """The member's relative path, or UnsafeArchiveError for anything that could land outside dest_dir."""
    clean = name.replace("\\", "/")
    if "\x00" in clean:
        raise UnsafeArchiveError(f"{zip_path}: member {name!r} has a NUL byte in its name")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeArchiveError(f"{zip_path}: member {name!r} has an absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{zip_path}: member {name!r} escapes the folder ('..')")
    return PurePosixPath(*parts) if parts else PurePosixPath()


def safe_extract_zip(zip_path, dest_dir, *, max_total_bytes: int = 2 * 1024**3, max_members: int = 50_000,
                     max_ratio: float = 200.0) -> list[Path]:
    """Extract zip_path into dest_dir (created if missing) and return the extracted files, sorted.

    Raises UnsafeArchiveError (absolute or escaping paths, symlinks/special files, duplicate names, more than
    max_members members, more than max_total_bytes unpacked, a member inflating beyond max_ratio x its compressed
    size) or ArchiveError (not a zip, corrupt data, bad CRC, encrypted).
    """
    zip_path, dest = Path(zip_path), Path(dest_dir)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{zip_path}: not a readable zip file ({exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise UnsafeArchiveError(f"{zip_path}: {len(infos)} members, more than the limit of {max_members}")
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        seen: set[str] = set()
        declared = 0
        for info in infos:
            rel = _member_path(info.filename, zip_path)
            mode = info.external_attr >> 16
            if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
                raise UnsafeArchiveError(f"{zip_path}: member {info.filename!r} is {kind}")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{zip_path}: member {info.filename!r} is encrypted")
            if info.filename.endswith(("/", "\\")):          # a folder entry (ZipInfo.is_dir fails on '')
                continue
            if not rel.parts:
                raise UnsafeArchiveError(f"{zip_path}: a file member has an empty name ({info.filename!r})")
            key = str(rel).lower()
            if key in seen:
                raise UnsafeArchiveError(f"{zip_path}: member {info.filename!r} appears twice")
            seen.add(key)
            declared += info.file_size
            plan.append((info, rel))
        if declared > max_total_bytes:
            raise UnsafeArchiveError(f"{zip_path}: declares {declared} unpacked bytes, more than the limit of "
                                     f"{max_total_bytes}")

        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        created_files: list[Path] = []
        created_dirs: list[Path] = []
        total = 0
        try:
            for info, rel in plan:
                target = root.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(root):   # an existing symlink inside dest could redirect
                    raise UnsafeArchiveError(f"{zip_path}: member {info.filename!r} resolves outside {dest}")
                missing = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
                target.parent.mkdir(parents=True, exist_ok=True)
                created_dirs.extend(reversed(missing))
                if target.exists():
                    raise UnsafeArchiveError(f"{zip_path}: member {info.filename!r} would overwrite {target}")
                written = 0
                limit = max_ratio * max(info.compress_size, 1)
                with zf.open(info) as src, open(target, "xb") as out:
                    created_files.append(target)
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        total += len(chunk)
                        if total > max_total_bytes:
                            raise UnsafeArchiveError(f"{zip_path}: unpacks to more than {max_total_bytes} bytes "
                                                     f"(at member {info.filename!r})")
                        if written > _RATIO_FLOOR and written > limit:
                            raise UnsafeArchiveError(f"{zip_path}: member {info.filename!r} inflates more than "
                                                     f"{max_ratio:g}x its compressed size (zip bomb?)")
                        out.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as exc:
            _remove(created_files, created_dirs)
            raise ArchiveError(f"{zip_path}: corrupt member data ({type(exc).__name__}: {exc})") from exc
        except BaseException:
            _remove(created_files, created_dirs)
            raise
    return sorted(created_files)


def _remove(files: list[Path], dirs: list[Path]) -> None:
    """Undo a refused extraction: the files and folders this call created (deepest folders first)."""
    for f in files:
        try:
            f.unlink()
        except FileNotFoundError:
            pass
    for d in sorted(set(dirs), key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()

