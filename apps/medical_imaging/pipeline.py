"""One study in, its findings out: detection (image + optional report), malignancy, the files.

    models = Models.load()                                   # detector + malignancy model (None if missing)
    result = diagnose(volume, report_text, models)           # StudyResult: findings, mentions, timings
    write_study(result, volume, out_dir, overlays=True, sr=False)   # findings.json, PNGs, optional SR

Research software, not a medical device: every output says so (DISCLAIMER).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .detection import NoduleDetector, load_detector
from .report import ReportReading, language_warning, read_report

DISCLAIMER = ("Research software, not a medical device: not for diagnosis or treatment decisions. "
              "Findings must be reviewed by a qualified radiologist.")
# Slices further apart than this get a warning with the findings: the detector was trained on 2.5 mm slices, and on
# synthetic studies with 5 mm slices its sensitivity at 1 false positive per scan fell from 0.91 to 0.75 (model card).
THICK_SLICE_MM = 3.0


@dataclass
class Finding:
    nodule_id: int
    x_mm: float
    y_mm: float
    z_mm: float
    i: float                          # voxel indices in the study's own volume (see data_connectors.dicom)
    j: float
    k: float
    diameter_mm: float
    probability: float                # P(nodule), report fused when a report was given
    probability_image_only: float
    malignancy: float | None          # P(malignant), None when the malignancy model is unavailable
    malignancy_note: str
    lobe: str                         # estimated from the position in the lungs
    kind: str                         # "solid" | "ground_glass" (from the centre's HU)
    key_slices: list[int]             # k indices through the nodule, centre first
    report_sentence: str | None       # the report clause that agrees with this finding


@dataclass
class StudyResult:
    findings: list[Finding]
    mentions: list[dict]
    report_given: bool
    candidates: int
    seconds: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Models:
    """The detector and the malignancy model, loaded once per process."""

    def __init__(self, detector: NoduleDetector, malignancy=None, malignancy_error: str | None = None):
        self.detector = detector
        self.malignancy = malignancy
        self.malignancy_error = malignancy_error

    @classmethod
    def load(cls, detector_path: str | Path | None = None) -> Models:
        detector = load_detector(detector_path)
        try:
            from .malignancy import load_default_malignancy_model
            malignancy, error = load_default_malignancy_model(), None
        except (ImportError, FileNotFoundError, ValueError) as exc:
            malignancy, error = None, f"malignancy model unavailable ({type(exc).__name__}: {exc})"
        return cls(detector, malignancy, error)


def _malignancy(models: Models, hu_ZYX: np.ndarray, spacing_zyx, findings: list[Finding]) -> None:
    if not findings:
        return
    if models.malignancy is None:
        for f in findings:
            f.malignancy_note = models.malignancy_error or "malignancy model unavailable"
        return
    from .malignancy import crop_around

    size = models.malignancy.cfg.crop_mm + 8
    crops = [(crop_around(hu_ZYX, spacing_zyx, (f.i, f.j, f.k), size), (1.0, 1.0, 1.0)) for f in findings]
    cubes, diameters, measures = models.malignancy.prepare_many(crops, [f.diameter_mm for f in findings])
    probs = models.malignancy.predict_cubes(cubes, diameters, measures)
    terms = models.malignancy.measure_terms(measures)
    threshold = float(models.malignancy.threshold)
    for n, (f, p) in enumerate(zip(findings, probs)):
        f.malignancy = round(float(p), 4)
        call = "suspicious" if p >= threshold else "likely benign"
        f.malignancy_note = (f"{call}: P(malignant) {p:.2f} (operating point {threshold:.2f}) from the 3D "
                             f"malignancy model on a {models.malignancy.cfg.crop_mm} mm crop; "
                             f"{f.kind.replace('_', '-')} nodule, {f.diameter_mm:.0f} mm, {f.lobe}")
        if terms is not None:
            f.malignancy_note += "; measures that move it most (logit terms): " + _strongest_terms(terms[n])


def _strongest_terms(terms_M: np.ndarray, count: int = 2) -> str:
    """'segment sd hu +0.9, ball max hu -0.6': the measures with the largest logit terms, signed."""
    from .malignancy import MEASURE_NAMES

    order = np.argsort(-np.abs(terms_M))[:count]
    return ", ".join(f"{MEASURE_NAMES[i].replace('_', ' ')} {terms_M[i]:+.1f}" for i in order)


def diagnose(volume, report_text: str | None, models: Models, threshold: float | None = None) -> StudyResult:
    """Findings of one CTVolume (data_connectors.dicom) with its optional report text."""
    t0 = time.perf_counter()
    reading: ReportReading = read_report(report_text)
    t1 = time.perf_counter()
    detector = models.detector
    cs = detector.candidates(volume.hu_ZYX, volume.affine)
    t2 = time.perf_counter()
    threshold = detector.cfg.threshold if threshold is None else threshold
    detections = detector.detect_candidates(cs, reading, threshold)
    t3 = time.perf_counter()
    ijk_N3 = volume.to_voxel(np.array([d.xyz_mm for d in detections])) if detections else np.zeros((0, 3))
    spacing_z = float(volume.spacing_zyx[0])
    findings = []
    for n, (d, ijk) in enumerate(zip(detections, ijk_N3)):
        k_c = int(np.clip(round(ijk[2]), 0, volume.hu_ZYX.shape[0] - 1))
        half = max(0, int(d.diameter_mm / 2 / spacing_z))
        around = [k for k in (k_c - half // 2, k_c + half // 2) if k != k_c and 0 <= k < volume.hu_ZYX.shape[0]]
        sentence = reading.mentions[d.mention].sentence if d.mention is not None else None
        findings.append(Finding(
            nodule_id=n, x_mm=round(d.xyz_mm[0], 2), y_mm=round(d.xyz_mm[1], 2), z_mm=round(d.xyz_mm[2], 2),
            i=round(float(ijk[0]), 2), j=round(float(ijk[1]), 2), k=round(float(ijk[2]), 2),
            diameter_mm=float(d.diameter_mm), probability=round(d.probability, 4),
            probability_image_only=round(d.probability_image_only, 4), malignancy=None, malignancy_note="",
            lobe=d.lobe, kind="solid" if d.candidate.center_hu > -300 else "ground_glass",
            key_slices=[k_c, *around], report_sentence=sentence))
    _malignancy(models, volume.hu_ZYX, volume.spacing_zyx, findings)
    t4 = time.perf_counter()
    warnings = list(getattr(volume, "warnings", []))
    if language := language_warning(report_text, reading):
        warnings.append(language)
    if not cs.grid.lung_ZYX.any():
        warnings.append("no lungs found (no large air-filled region inside the body): no candidates")
    if max(volume.spacing_zyx) > THICK_SLICE_MM:
        warnings.append(f"voxels {max(volume.spacing_zyx):.1f} mm apart along an axis: the detector was trained on "
                        f"2.5 mm slices and finds fewer nodules with more false positives on thicker ones "
                        f"(synthetic 5 mm slices: sensitivity at 1 false positive per scan 0.75 against 0.91)")
    return StudyResult(findings, [m.to_dict() for m in reading.mentions], bool((report_text or "").strip()),
                       len(cs.candidates), {"report": round(t1 - t0, 3), "candidates": round(t2 - t1, 3),
                                            "rating": round(t3 - t2, 3), "malignancy": round(t4 - t3, 3),
                                            "total": round(t4 - t0, 3)}, warnings)


def findings_json(result: StudyResult, study: str, series_uid: str, study_uid: str, shape, spacing_zyx,
                  report_file: str | None = None) -> dict:
    """The findings document; report_file names the report file read (None: none, or typed text)."""
    return {"disclaimer": DISCLAIMER, "study": study, "series_uid": series_uid, "study_uid": study_uid,
            "shape_zyx": list(shape), "spacing_zyx": [float(s) for s in spacing_zyx],
            "report_given": result.report_given, "report_file": report_file, "report_mentions": result.mentions,
            "candidates": result.candidates, "findings": [asdict(f) for f in result.findings],
            "warnings": result.warnings, "seconds": result.seconds}


def write_study(result: StudyResult, volume, folder: Path, study: str, series_uid: str, study_uid: str,
                overlays: bool = True, sr: bool = False, anonymize: bool = False,
                report_file: str | None = None) -> list[Path]:
    """findings.json, key-slice PNGs (overlays/) and optionally sr.dcm into `folder` (which must exist)."""
    written = []
    doc = findings_json(result, study, series_uid, study_uid, volume.hu_ZYX.shape, volume.spacing_zyx,
                        report_file)
    if overlays:
        from .overlays import write_overlays
        doc["overlays"] = [p.name for p in write_overlays(volume.hu_ZYX, volume.spacing_zyx, result.findings,
                                                         folder / "overlays")]
    if sr:
        from .structured_report import write_sr
        written.append(write_sr(volume, result, folder / "sr.dcm", anonymized_id=study if anonymize else None))
    path = folder / "findings.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    written.append(path)
    return written


_SHARED: Models | None = None


def shared_models() -> Models:
    """One Models per process, for the page and the API."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Models.load()
    return _SHARED


def operating_point() -> float:
    """The shared detector's threshold: the page's default, as it is the batch's and the API's. Read from the
    checkpoint's config (no weights) while the models are not loaded yet, so that building the page stays fast."""
    if _SHARED is not None:
        return float(_SHARED.detector.cfg.threshold)
    from core.checkpoint import read_checkpoint_info

    from .detection import DEFAULT_DIR

    return float(read_checkpoint_info(DEFAULT_DIR).config.threshold)


MAX_UNZIPPED_BYTES = 2 * 1024 ** 3   # an uploaded zip may expand to at most this much


@dataclass
class UploadedStudy:
    volume: object                    # data_connectors.dicom.CTVolume
    report_text: str | None = None    # a report file found inside the zip
    report_name: str | None = None    # its name inside the zip


def load_upload(zip_path: str | Path):
    """The CT volume in an uploaded zip (load_upload_study's, without the report)."""
    return load_upload_study(zip_path).volume


def strip_suffix(name: str, suffixes: Iterable[str]) -> str:
    """`name` without the longest of `suffixes` it ends with (any case): 'CT.NII.GZ' -> 'CT'."""
    low = name.lower()
    suffix = max((x for x in suffixes if low.endswith(x)), key=len, default="")
    return name[:len(name) - len(suffix)]


def named_as(message: str, path: Path, name: str) -> str:
    """`message` with the file `path` (its full path, then its bare file name) called `name`: an error about
    a stored upload or a report tells its reader nothing of the server's folders."""
    return message.replace(str(path), name).replace(path.name, name)


def upload_name(filename: str | None) -> str:
    """The study name of an uploaded file's name: 'ct.nii.gz' -> 'ct', 'study.zip' -> 'study'."""
    from data_connectors.dicom import VOLUME_SUFFIXES

    return strip_suffix(Path(filename or "upload").name, (*VOLUME_SUFFIXES, ".zip")) or "upload"


def load_upload_file(path: str | Path, filename: str | None = None) -> UploadedStudy:
    """An upload as sent: a zip (load_upload_study), or one NIfTI / NRRD / MetaImage (.mha) file, named by the
    client's `filename` (the stored copy may have another name). A bare .mhd is refused: its voxels lie in a
    second file, so zip the two."""
    import zipfile

    from data_connectors.dicom import DicomReadError, load_volume

    path, name = Path(path), Path(filename or Path(path).name).name
    low = name.lower()
    if low.endswith(".zip") or zipfile.is_zipfile(path):
        return load_upload_study(path, name)
    if low.endswith(".mhd"):
        raise DicomReadError(f"{name}: a MetaImage header keeps its voxels in a second file: upload a zip of the "
                             ".mhd and its .raw")
    if low.endswith((".nii", ".nii.gz", ".mha", ".nrrd")):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="medical-upload-") as tmp:
            local = Path(tmp) / name
            local.symlink_to(path.resolve())
            try:
                volume = load_volume(local)
            except DicomReadError as exc:
                raise DicomReadError(named_as(str(exc).replace(tmp + os.sep, ""), path, name)) from None
        return UploadedStudy(volume)
    raise DicomReadError(f"{name}: not a zip; upload a zip of one study's DICOM files (or one NIfTI / NRRD / "
                         "MetaImage file)")


def upload_report(study: UploadedStudy, typed: str | None) -> tuple[str | None, str | None]:
    """(report text, report file) to diagnose an upload with: the report typed or sent with it, else the one
    in the zip (a warning says which was used)."""
    warnings = study.volume.warnings
    if typed and typed.strip():
        if study.report_name:
            warnings.append(f"the zip's report {study.report_name} not used: the report sent with it is")
        return typed, None
    if study.report_name:
        warnings.append(f"used the report {study.report_name} found in the zip")
        return study.report_text, study.report_name
    return None, None


def diagnose_upload(study: UploadedStudy, typed_report: str | None, filename: str, models: Models,
                    threshold: float | None = None) -> tuple[StudyResult, dict]:
    """(result, findings document) of an uploaded study sent as `filename`, with the report typed or sent
    with it, else the one in the zip (upload_report): what the page and the HTTP API both return."""
    text, report_file = upload_report(study, typed_report)
    volume = study.volume
    result = diagnose(volume, text, models, threshold)
    return result, findings_json(result, upload_name(filename), volume.series_uid, volume.study_uid,
                                 volume.hu_ZYX.shape, volume.spacing_zyx, report_file)


def load_upload_study(zip_path: str | Path, filename: str | None = None) -> UploadedStudy:
    """The CT volume in an uploaded zip of DICOM files (or of one NIfTI / MetaImage file) and the report file
    beside it, if any (a .txt/.md/.pdf/.docx/.hl7 named 'report' or after the study: _zip_report), extracted safely (data_connectors.archive) into a temporary folder
    that is removed afterwards. Several series of one study: the CT series with the most slices is taken (a
    warning names it); series of different patients or studies are refused. Errors and warnings name files
    inside the zip as "<zip name>/<member>", never the temporary folder. `filename`: the name the zip was sent
    as (its stem names the study: a report may be named after it), else the file's own."""
    import tempfile

    from data_connectors.dicom import DicomReadError

    zip_path = Path(zip_path)
    with tempfile.TemporaryDirectory(prefix="medical-upload-") as tmp:
        try:
            study = _load_unpacked(zip_path, tmp, upload_name(filename or zip_path.name))
        except DicomReadError as exc:
            raise DicomReadError(str(exc).replace(tmp, zip_path.name)) from None
    study.volume.warnings = [w.replace(tmp, zip_path.name) for w in study.volume.warnings]
    return study


def _zip_report(files: list[Path], tmp: str, study: str, warnings: list[str]) -> tuple[str | None, str | None]:
    """(text, name in the zip) of the report in an unpacked upload: the one report-type file (REPORT_SUFFIXES:
    .txt, .md, .pdf, .docx, .hl7) whose name says 'report' (any case) or whose stem is the study's name (the
    zip's, without .zip). Other text files (a LICENSE.txt, a README.md) are no report: ignored with a warning;
    several reports: none used."""
    from .report import ReportFileError, is_report_file, read_report_file

    texts = [f for f in files if is_report_file(f)]
    found = [f for f in texts if "report" in f.name.lower() or f.stem.lower() == study.lower()]
    ignored = [f.relative_to(tmp).as_posix() for f in texts if f not in found]
    if ignored:
        warnings.append(f"{len(ignored)} text file(s) in the zip not used as its report ({', '.join(ignored[:5])}"
                        f"{' ...' if len(ignored) > 5 else ''}): a report is named 'report' or after the study "
                        f"({study}.txt)")
    if not found:
        return None, None
    if len(found) > 1:
        names = ", ".join(f.relative_to(tmp).as_posix() for f in found[:5])
        warnings.append(f"the zip holds {len(found)} report files ({names}): none used, as it is not clear which "
                        "is this study's; keep one")
        return None, None
    name = found[0].relative_to(tmp).as_posix()
    try:
        return read_report_file(found[0]), name
    except ReportFileError as exc:
        warnings.append(f"report {name} in the zip not used: {exc}")
        return None, None


def _series_label(series) -> str:
    """'series 3 "CHEST 1.0" (120 slices)': how a message names a series, never by patient."""
    number = series.number or "?"
    description = f' "{series.description}"' if series.description else ""
    return f"series {number}{description} ({len(series.files)} slices)"


def _patients_and_studies(series_list) -> tuple[int, int]:
    """(distinct PatientIDs, distinct StudyInstanceUIDs) over some series."""
    return len({s.patient_id for s in series_list}), len({s.study_uid for s in series_list})


def _load_unpacked(zip_path: Path, tmp: str, study: str) -> UploadedStudy:
    """load_upload_study's work, in the temporary folder tmp."""
    from data_connectors.archive import safe_extract_zip
    from data_connectors.dicom import (VOLUME_SUFFIXES, DicomReadError, ct_series, load_series, load_volume,
                                       scan_folder)

    files = safe_extract_zip(zip_path, tmp, max_total_bytes=MAX_UNZIPPED_BYTES)
    notes: list[str] = []
    report, report_name = _zip_report(files, tmp, study, notes)
    images = [f for f in files if f.name.lower().endswith(VOLUME_SUFFIXES)]
    if len(images) == 1:
        volume = load_volume(images[0])
        volume.warnings += notes
        return UploadedStudy(volume, report, report_name)
    scan = scan_folder(tmp)
    ct, other = ct_series(scan.series)
    if not ct and other:
        kinds = ", ".join(sorted({s.modality for s in other}))
        raise DicomReadError(f"the zip holds no CT series, only {len(other)} of Modality {kinds}: the detector "
                             "reads CT in Hounsfield units")
    if not ct and images:
        names = ", ".join(sorted(f.name for f in images)[:5])
        raise DicomReadError(f"the zip holds {len(images)} image files ({names}) and no DICOM series; "
                             f"upload one CT volume per zip")
    if not ct:
        raise DicomReadError(f"the zip holds no DICOM series nor a {'/'.join(VOLUME_SUFFIXES)} image "
                             f"({len(scan.skipped)} files skipped)")
    if len(ct) > 1:
        patients, studies = _patients_and_studies(ct)
        if patients > 1 or studies > 1:
            what = f"{patients} patients" if patients > 1 else f"{studies} studies"
            raise DicomReadError(f"the zip holds CT series of {what} ({', '.join(map(_series_label, ct[:6]))}): "
                                 "upload one study per zip")
    series = max(ct, key=lambda s: len(s.files))
    volume = load_series(series)
    if len(ct) > 1:
        volume.warnings.append(f"the zip holds {len(ct)} CT series of one study; diagnosed the largest, "
                               f"{_series_label(series)}")
    if other:
        kinds = ", ".join(sorted({s.modality or "no Modality" for s in other}))
        volume.warnings.append(f"{len(other)} series that are not CT ignored ({kinds})")
    volume.warnings += notes
    return UploadedStudy(volume, report, report_name)
