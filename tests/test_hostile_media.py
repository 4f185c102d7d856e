"""Hostile input to the medical and video APIs, against the real server (uvicorn on a free loopback
port, in a thread): each kind a test, each answered with a clear 4xx before any model loads."""
import dataclasses
import io
import time
import zipfile

import httpx
import pytest
from http_probes import declared_only

from apps import server
from apps.settings import Settings
from apps.web.runner import serve_in_thread


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile-media")
    apps = [dataclasses.replace(a, page=None) for a in server.APPS if a.name in ("medical", "video")]
    app = server.create_app(apps, Settings(upload_dir=tmp / "uploads", max_upload_bytes=4 << 20,
                                           rate_limit_per_minute=0))
    url, stop = serve_in_thread(app)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    stop()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _diagnose(http, content: bytes, name: str = "study.zip", **form) -> httpx.Response:
    return http.post("/api/v1/medical/diagnose", files={"file": (name, content, "application/zip")}, data=form)


# ---- medical: uploads ----

@pytest.mark.parametrize("member", ["../evil.dcm", "../../etc/evil.dcm", "/tmp/evil.dcm", "a/../../evil.dcm"])
def test_zip_member_escaping_its_folder_is_refused(http, member):
    r = _diagnose(http, _zip({member: b"DICM"}))
    assert r.status_code == 400 and "evil.dcm" in r.json()["detail"]


def test_zip_bomb_is_refused(http):
    r = _diagnose(http, _zip({"zeros.dcm": bytes(64 << 20)}))  # 64 MiB of zeros in ~64 KiB
    assert r.status_code == 400 and "inflates" in r.json()["detail"]


@pytest.mark.parametrize("content, detail", [
    (b"this is not a zip", "zip"),
    (_zip({"notes.txt": b"hello", "image.png": b"\x89PNG\r\n"}), "DICOM"),
    (_zip({"slice.dcm": b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI"}), "DICOM"),  # truncated header
])
def test_uploads_without_a_readable_ct_series_get_a_clear_422(http, content, detail):
    r = _diagnose(http, content)
    assert r.status_code == 422 and detail.lower() in r.json()["detail"].lower(), r.text
    assert "/tmp" not in r.text and "upload" not in r.json()["detail"].replace("study.zip", ""), r.text


def test_error_messages_name_the_clients_zip_not_the_servers_folders(tmp_path):
    """A DICOM error inside an upload names the member inside the client's zip, not the server's upload or
    unpack folders (even with a space in their path)."""
    import shutil

    from apps.medical_imaging.api import _as_uploaded
    from apps.medical_imaging.pipeline import load_upload
    from data_connectors.dicom import DicomReadError

    import numpy as np
    from pydicom.uid import generate_uid
    from test_dicom_reading import ct_slice

    (tmp_path / "src" / "ct").mkdir(parents=True)
    uid = generate_uid()
    for z in range(3):
        ds = ct_slice(np.zeros((8, 8)), (0, 0, z), series_uid=uid, instance=z + 1)
        if z == 1:
            del ds.PixelData                                      # a slice without its pixels
        ds.save_as(tmp_path / "src" / "ct" / f"{z}.dcm", enforce_file_format=True)
    stored = tmp_path / "req dir" / "scan.zip"
    stored.parent.mkdir()
    shutil.make_archive(str(stored.with_suffix("")), "zip", tmp_path / "src")
    with pytest.raises(DicomReadError) as caught:
        load_upload(stored)
    message = _as_uploaded(caught.value, stored, "my study")
    assert "my study.zip/ct/1.dcm" in message, message
    assert str(tmp_path) not in message and "medical-upload" not in message, message
    assert _as_uploaded(ValueError(f"{stored}: not a readable zip file"), stored, "s") == "s.zip: not a readable zip file"


def test_a_corrupt_volume_upload_is_named_as_the_client_sent_it(tmp_path):
    """A NIfTI upload that is no NIfTI: the message names the client's file, not the server's stored upload
    or the folder it is read through."""
    from apps.medical_imaging.pipeline import load_upload_file
    from data_connectors.dicom import DicomReadError

    stored = tmp_path / "req dir" / "abc.upload"
    stored.parent.mkdir()
    stored.write_bytes(b"not a nifti")
    with pytest.raises(DicomReadError) as caught:
        load_upload_file(stored, "ct.nii.gz")
    message = str(caught.value)
    assert message.startswith("ct.nii.gz: cannot read image") and "/ct.nii.gz" not in message, message
    assert str(tmp_path) not in message and "abc.upload" not in message and "medical-upload" not in message


def test_oversized_upload_is_413_before_its_body_is_read(http):
    """A 5 MiB upload (limit 4 MiB) is refused on its Content-Length: the answer comes before any of
    the body is sent (declared only, since an HTTP client would still be writing when it arrives)."""
    status, _, _ = declared_only(str(http.base_url), "/api/v1/medical/diagnose", "multipart/form-data; boundary=b",
                                 5 << 20)
    assert status == 413, status


def test_oversized_report_is_422(http):
    r = _diagnose(http, _zip({"a.dcm": b"x"}), report="x" * 100_001)
    assert r.status_code == 422 and "report" in r.json()["detail"]


def test_missing_upload_is_422(http):
    r = http.post("/api/v1/medical/diagnose", data={"report": "no file"})
    assert r.status_code == 422


# ---- video: requests ----

@pytest.mark.parametrize("body, field", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "a red ball " * 1000}, "prompt"),               # 11,000 characters
    ({"prompt": "a red ball", "seconds": 1e9}, "seconds"),
    ({"prompt": "a red ball", "seconds": 0}, "seconds"),
    ({"prompt": "a red ball", "fps": 1000}, "fps"),
    ({"prompt": "a red ball", "resolution": "8k"}, "resolution"),
    ({"prompt": "a red ball", "format": "exe"}, "format"),
    ({"prompt": 5}, "prompt"),
])
def test_generate_refuses_bad_requests_fast(http, body, field):
    start = time.perf_counter()
    r = http.post("/api/v1/video/generate", json=body)
    assert r.status_code == 422 and field in r.text, r.text
    assert time.perf_counter() - start < 10  # refused before any model loads or frame is drawn


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "missing.mp4", ".hidden.mp4"])
def test_video_files_route_serves_only_its_own_files(http, name):
    assert http.get(f"/api/v1/video/files/{name}").status_code == 404
