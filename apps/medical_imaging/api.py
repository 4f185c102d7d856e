"""The nodule-diagnosis JSON API, mounted by the server at /api/v1/medical.

    POST /api/v1/medical/diagnose   multipart: file=<zip of one study's DICOM files (and its report file), or one
                                    NIfTI / NRRD / .mha file>, report=<optional text; else the zip's report>
                                    -> findings JSON (pipeline.findings_json, with the disclaimer)

Errors: an upload over the server's upload limit (settings `max_upload_bytes`) -> 413; an unsafe zip
(escaping paths, bomb) -> 400; no readable CT series in it, or a sent report too long -> 422 (a report file
in the zip that cannot be read is a warning, the study diagnosed from the image). The upload is stored in
the server's upload area (apps.web.uploads) and removed after the request; the diagnosis runs in FastAPI's
thread pool.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from apps.web.uploads import RequestUploads, request_uploads

MAX_REPORT_CHARS = 100_000

router = APIRouter()


@router.post("/diagnose", summary="Find and rate lung nodules in a zipped CT study (research use only)",
             responses={400: {"description": "unsafe zip"}, 413: {"description": "upload too large"},
                        422: {"description": "no readable CT series, or a bad report"}})
async def diagnose_upload(file: UploadFile = File(..., description="zip of one study's DICOM files"),
                          report: str | None = Form(None, description="the radiologist's free-text report"),
                          uploads: RequestUploads = Depends(request_uploads)) -> dict:
    if report is not None and len(report) > MAX_REPORT_CHARS:
        raise HTTPException(422, f"report longer than {MAX_REPORT_CHARS} characters")
    [path] = await uploads.save_all([file])   # 413 past the limit, nothing kept
    return await run_in_threadpool(_diagnose_zip, path, report, file.filename or "upload.zip")


def _diagnose_zip(path: Path, report: str | None, filename: str) -> dict:
    """Diagnose a stored upload (a zip, or one NIfTI / NRRD / MetaImage file) sent as `filename`."""
    from data_connectors.archive import UnsafeArchiveError

    from .pipeline import diagnose_upload, load_upload_file, shared_models

    filename = _sent_name(filename)
    try:
        study = load_upload_file(path, filename)
    except UnsafeArchiveError as exc:
        raise HTTPException(400, _as_uploaded(exc, path, filename)) from None
    except ValueError as exc:   # DicomReadError, a zip that is not one
        raise HTTPException(422, _as_uploaded(exc, path, filename)) from None
    return diagnose_upload(study, report, filename, shared_models())[1]


def _as_uploaded(exc: Exception, path: Path, filename: str) -> str:
    """The error's message with the stored upload's path replaced by the name the client sent (load_upload
    already names files inside the zip by the zip's name): a client learns nothing of the server's folders."""
    from .pipeline import named_as

    return named_as(str(exc), path, _sent_name(filename))


def _sent_name(filename: str) -> str:
    """The upload's file name as the client sent it; a bare name without a suffix ('study') is a zip."""
    name = Path(filename).name
    return name if "." in name else f"{name}.zip"
