"""Property tests (Hypothesis): the chat API never answers 5xx to any body, and zip extraction /
upload naming never write outside their folder, whatever the names.

Bounded for the test run (profile "ci": 40 examples per property). The longer fuzz run:

    HYPOTHESIS_PROFILE=fuzz MOE_SUITE_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest -q \
        tests/test_fuzz.py --hypothesis-show-statistics
"""
import dataclasses
import json
import os
import tempfile
import zipfile
import warnings
from pathlib import Path
from urllib.parse import quote

import pytest
from chat_fakes import make_assistant
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps import server
from apps.customer_service.assistant import shared_assistant
from apps.customer_service.store import StoreLimits
from apps.settings import Settings
from apps.web.uploads import safe_filename

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=int(os.environ.get("MOE_SUITE_FUZZ_EXAMPLES", "2000")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
_assistant = make_assistant(_tmp / "chat.sqlite3", limits=StoreLimits(max_sessions=100_000))


@pytest.fixture(scope="module")
def client():
    apps = [dataclasses.replace(a, page=None) for a in server.APPS if a.name == "chat"]
    app = server.create_app(apps, Settings(upload_dir=_tmp / "uploads", rate_limit_per_minute=0))
    app.dependency_overrides[shared_assistant] = lambda: _assistant
    return TestClient(app, raise_server_exceptions=False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
session_ids = st.one_of(st.text(max_size=70), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True))
messages = st.text(max_size=2100)  # any code point, lone surrogates included, around the 2,000 limit
bodies = st.one_of(
    st.fixed_dictionaries({"message": messages}, optional={"session_id": session_ids}),
    st.fixed_dictionaries({}, optional={"message": json_values, "session_id": json_values}),
    json_values)


@given(body=bodies)
def test_chat_api_never_answers_5xx_to_json(client, body):
    text = json.dumps(body)  # ensure_ascii: lone surrogates travel as \\udXXX escapes; NaN/Infinity as literals
    r = client.post("/api/v1/chat", content=text, headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 413, 422, 429)


@given(raw=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", "",
                                                                  "multipart/form-data; boundary=x"]))
def test_chat_api_never_answers_5xx_to_bytes(client, raw, content_type):
    r = client.post("/api/v1/chat", content=raw, headers={"content-type": content_type} if content_type else {})
    assert r.status_code < 500, r.text


@given(path=st.text(max_size=40))
def test_session_history_never_answers_5xx(client, path):
    r = client.get("/api/v1/chat/sessions/" + quote(path, safe=""))
    assert r.status_code < 500


name_parts = st.sampled_from(["..", ".", "", "a", "b.md", "C:", "\\", "/", "\x00", "~", "é", " ", ".hidden"])
member_names = st.lists(name_parts, min_size=1, max_size=6).map("/".join) | st.text(max_size=30)


@given(names=st.lists(member_names, min_size=1, max_size=5))
def test_safe_extract_zip_never_writes_outside(names):
    archive = pytest.importorskip("data_connectors.archive")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "in.zip"
        with zipfile.ZipFile(path, "w") as z, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are part of the test
            for n, name in enumerate(names):
                try:
                    z.writestr(zipfile.ZipInfo(name), f"member {n}")
                except (ValueError, UnicodeEncodeError, IndexError):
                    pass  # zipfile itself refuses some names
        dest = tmp / "a" / "dest"
        try:
            files = archive.safe_extract_zip(path, dest)
        except archive.ArchiveError:
            files = []
        root = dest.resolve()
        assert all(f.resolve().is_relative_to(root) for f in files)
        assert not [p for p in tmp.rglob("*")
                    if p.is_file() and p != path and not p.resolve().is_relative_to(root)]


@given(name=st.text(max_size=400))
def test_safe_filename_is_one_plain_component(name):
    out = safe_filename(name)
    assert out and "/" not in out and "\\" not in out and "\x00" not in out and out not in (".", "..")
    assert len(out.encode("utf-8", "surrogatepass")) <= 200 and not out.startswith(".")


# ---- the DICOM reader: damaged files give DicomReadError (or a volume), never another exception ----

def _seed_series() -> list[bytes]:
    """A tiny valid CT series (4 slices of 16 x 16) as bytes, written once for every example."""
    from apps.medical_imaging.synth import SynthConfig, make_study, write_study_dicom

    folder = _tmp / "dicom-seed"
    if not folder.exists():
        cfg = SynthConfig(shape_zyx=(4, 16, 16), spacing_zyx=(5.0, 20.0, 20.0), nodules_per_study=(0, 0))
        write_study_dicom(make_study(0, seed=0, cfg=cfg), folder)
    return [p.read_bytes() for p in sorted(folder.rglob("*.dcm"))]


mutations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**20), st.binary(min_size=1, max_size=8)),
                     min_size=1, max_size=6)


@given(edits=mutations, cut=st.one_of(st.none(), st.integers(0, 2**20)))
def test_dicom_reader_refuses_damaged_files_cleanly(edits, cut):
    from data_connectors.dicom import DicomReadError, load_volume

    files = [bytearray(b) for b in _seed_series()]
    for which, offset, data in edits:  # overwrite bytes anywhere (header, tags, pixel data)
        f = files[which]
        at = offset % len(f)
        f[at:at + len(data)] = data
    if cut is not None:  # and truncate one file
        files[cut % len(files)] = files[cut % len(files)][: cut % len(files[cut % len(files)])]
    with tempfile.TemporaryDirectory(dir=_tmp) as folder:
        for n, f in enumerate(files):
            Path(folder, f"{n}.dcm").write_bytes(bytes(f))
        try:
            volume = load_volume(folder)
        except DicomReadError:
            return
        assert volume.hu_ZYX.ndim == 3 and volume.hu_ZYX.size > 0
