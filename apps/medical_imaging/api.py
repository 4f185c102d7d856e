"""The nodule-diagnosis JSON API, mounted by the server at /api/v1/medical.

    POST /api/v1/medical/diagnose   multipart: file=<zip of one study's DICOM files>, report=<optional text>
                                    -> findings JSON (pipeline.findings_json, with the disclaimer)

Errors: an upload over MAX_UPLOAD_BYTES -> 413; an unsafe zip (escaping paths, bomb) -> 400; no readable
CT series in it, or a bad report -> 422. Handlers are plain functions: FastAPI runs them in its thread pool.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, File, Form, HTTPException, UploadFile

MAX_UPLOAD_BYTES = 512 * 1024 * 1024   # compressed upload
MAX_REPORT_CHARS = 100_000
_CHUNK = 1024 * 1024

router = APIRouter()


@router.post("/diagnose", summary="Find and rate lung nodules in a zipped CT study (research use only)",
             responses={400: {"description": "unsafe zip"}, 413: {"description": "upload too large"},
                        422: {"description": "no readable CT series, or a bad report"}})
def diagnose_upload(file: UploadFile = File(..., description="zip of one study's DICOM files"),
                    report: str | None = Form(None, description="the radiologist's free-text report")) -> dict:
    from data_connectors.archive import UnsafeArchiveError

    from .pipeline import diagnose, findings_json, load_upload, shared_models

    if report is not None and len(report) > MAX_REPORT_CHARS:
        raise HTTPException(422, f"report longer than {MAX_REPORT_CHARS} characters")
    with tempfile.TemporaryDirectory(prefix="medical-api-") as tmp:
        path = Path(tmp) / "upload.zip"
        size = 0
        with open(path, "wb") as out:
            while chunk := file.file.read(_CHUNK):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise HTTPException(413, f"upload over {MAX_UPLOAD_BYTES} bytes")
                out.write(chunk)
        try:
            volume = load_upload(path)
        except UnsafeArchiveError as exc:
            raise HTTPException(400, str(exc)) from None
        except ValueError as exc:   # DicomReadError, a zip that is not one
            raise HTTPException(422, str(exc)) from None
    result = diagnose(volume, report, shared_models())
    return findings_json(result, study=(file.filename or "upload").rsplit(".", 1)[0], series_uid=volume.series_uid,
                         study_uid=volume.study_uid, shape=volume.hu_ZYX.shape, spacing_zyx=volume.spacing_zyx)
