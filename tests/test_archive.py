"""safe_extract_zip against hostile archives built in tmp_path: each is refused and leaves nothing behind."""
import os
import stat
import struct
import zipfile

import pytest

from data_connectors.archive import ArchiveError, UnsafeArchiveError, safe_extract_zip


def make_zip(path, members, compression=zipfile.ZIP_DEFLATED):
    """members: (name, bytes) or (ZipInfo, bytes)."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_extracts_nested_files(tmp_path):
    z = make_zip(tmp_path / "ok.zip", [("study/a/1.dcm", b"x" * 100), ("study/b/2.dcm", os.urandom(50)),
                                       ("report.txt", b"no nodules"), ("study/empty/", b"")])
    out = safe_extract_zip(z, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in out] == ["report.txt", "study/a/1.dcm",
                                                                        "study/b/2.dcm"]
    assert (tmp_path / "out" / "report.txt").read_bytes() == b"no nodules"


@pytest.mark.parametrize("name", ["../evil.txt", "study/../../evil.txt", "..\\evil.txt", "/tmp/evil.txt",
                                  "C:/evil.txt"])
def test_path_escapes_refused(tmp_path, name):
    z = make_zip(tmp_path / "slip.zip", [("fine.txt", b"ok"), (name, b"pwned")])
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        safe_extract_zip(z, tmp_path / "out" / "deep")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_symlink_member_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = make_zip(tmp_path / "link.zip", [("a.txt", b"ok"), (info, b"/etc/passwd")])
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "out").exists()          # names are all checked before anything is written


def test_too_many_members(tmp_path):
    z = make_zip(tmp_path / "many.zip", [(f"f{n}.txt", b"x") for n in range(6)])
    with pytest.raises(UnsafeArchiveError, match="6 members"):
        safe_extract_zip(z, tmp_path / "out", max_members=5)
    assert len(safe_extract_zip(z, tmp_path / "out", max_members=6)) == 6


def test_zip_bomb_ratio_refused_while_streaming(tmp_path):
    z = make_zip(tmp_path / "bomb.zip", [("ok.txt", b"fine"), ("zeros.bin", bytes(20 * 1024 * 1024))])
    assert os.path.getsize(z) < 100_000
    with pytest.raises(UnsafeArchiveError, match="zeros.bin.*inflates"):
        safe_extract_zip(z, tmp_path / "out")
    assert listing(tmp_path / "out") == []          # the member extracted before it was removed too


def test_total_size_limit(tmp_path):
    z = make_zip(tmp_path / "big.zip", [("a.bin", os.urandom(3000)), ("b.bin", os.urandom(3000))])
    with pytest.raises(UnsafeArchiveError, match="declares 6000"):
        safe_extract_zip(z, tmp_path / "out", max_total_bytes=5000)
    assert len(safe_extract_zip(z, tmp_path / "out2", max_total_bytes=6000)) == 2


def _patch_sizes(path, name: bytes, new_size: int):
    """Overwrite the uncompressed size of member `name` in its local header and central directory entry."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x03\x04")
    while at != -1:                                   # local headers: size at +22
        if data[at + 30:at + 30 + len(name)] == name:
            data[at + 22:at + 26] = struct.pack("<I", new_size)
        at = data.find(b"PK\x03\x04", at + 4)
    at = data.find(b"PK\x01\x02")
    while at != -1:                                   # central directory: size at +24
        if data[at + 46:at + 46 + len(name)] == name:
            data[at + 24:at + 28] = struct.pack("<I", new_size)
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def test_lying_declared_size_caught_while_streaming(tmp_path):
    z = make_zip(tmp_path / "liar.zip", [("a.txt", b"ok"), ("data.bin", bytes(3 * 1024 * 1024))])
    _patch_sizes(z, b"data.bin", 10)                # claims 10 bytes, inflates to 3 MiB
    assert zipfile.ZipFile(z).getinfo("data.bin").file_size == 10
    with pytest.raises(ArchiveError, match="data.bin|CRC"):
        safe_extract_zip(z, tmp_path / "out", max_ratio=1e9)
    assert listing(tmp_path / "out") == []


def test_duplicate_names_and_corrupt_zip(tmp_path):
    with pytest.warns(UserWarning):
        z = make_zip(tmp_path / "dup.zip", [("a.txt", b"1"), ("a.txt", b"2")])
    with pytest.raises(UnsafeArchiveError, match="twice"):
        safe_extract_zip(z, tmp_path / "out")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ArchiveError, match="bad.zip"):
        safe_extract_zip(bad, tmp_path / "out")


def test_existing_files_never_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_bytes(b"mine")
    z = make_zip(tmp_path / "over.zip", [("new.txt", b"n"), ("keep.txt", b"theirs")])
    with pytest.raises(UnsafeArchiveError, match="overwrite"):
        safe_extract_zip(z, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_bytes() == b"mine" and listing(tmp_path / "out") == ["keep.txt"]


@pytest.mark.parametrize("name", ["", ".", "./"])
def test_nameless_members(tmp_path, name):
    z = make_zip(tmp_path / "noname.zip", [(zipfile.ZipInfo(name), b"x"), ("ok.txt", b"ok")])
    if name.endswith("/"):                          # a folder entry for '.': nothing to create, the rest extracts
        assert [p.name for p in safe_extract_zip(z, tmp_path / "out")] == ["ok.txt"]
    else:
        with pytest.raises(UnsafeArchiveError, match="empty name"):
            safe_extract_zip(z, tmp_path / "out")
