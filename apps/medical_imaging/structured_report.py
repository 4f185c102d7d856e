"""The findings as a DICOM Comprehensive 3D SR (TID 1500 measurement report, highdicom), for a PACS.

One planar ROI per nodule: an axial ellipse (circle of the nodule's diameter) in patient coordinates
with its diameter, P(nodule) and P(malignant) as measurements, and the research-use disclaimer as the
algorithm's name. Needs the study's DICOM slices as evidence (NIfTI / MetaImage input has none).
Anonymized (anonymized_id given): the SR refers to stand-ins of the slices that carry only their SOP class
and UIDs replaced by '2.25.' + the hash findings.json gives the UID, as a number (deterministic, so reruns agree,
and the SR's series and study match findings.json's series_uid and study_uid), the patient's name and ID replaced
by the id (the study key), and no dates, times, study ID, accession number or physician of the original study.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .pipeline import DISCLAIMER, StudyResult

_SCHEME = "99MOESUITE"   # private coding scheme of the suite's own measurements


def _evidence(volume) -> list:
    import pydicom

    from data_connectors.dicom import scan_folder

    source = Path(volume.source)
    folder = source if source.is_dir() else source.parent
    scan = scan_folder(folder)
    files = next((s.files for s in scan.series if s.series_uid == volume.series_uid), [])
    if not files:
        raise ValueError(f"{source}: no DICOM slices of series {volume.series_uid} to reference; a DICOM SR "
                         "needs DICOM input")
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _anonymous_uid(uid: str) -> str:
    """A UID derived from the hash findings.json and findings.csv give uid under --anonymize (the first 16 hex
    digits of its SHA-256, batch._hash): '2.25.' + that hash as a number, so the SR's series matches its rows."""
    from .batch import _hash

    return f"2.25.{int(_hash(uid), 16)}"


def _anonymous_evidence(evidence: list, anonymized_id: str) -> list:
    """Stand-ins of the evidence headers with nothing of the original study but the SOP class (see the module
    docstring); highdicom copies the Patient and Study modules of the first into the SR."""
    from pydicom.dataset import Dataset

    out = []
    for ds in evidence:
        stand_in = Dataset()
        stand_in.SOPClassUID = ds.SOPClassUID
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
            uid = str(ds.get(keyword, "") or "")
            if uid:
                setattr(stand_in, keyword, _anonymous_uid(uid))
        stand_in.Modality = ds.get("Modality", "CT")
        stand_in.PatientName, stand_in.PatientID = f"Anonymized^{anonymized_id}", anonymized_id
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                        "ReferringPhysicianName"):
            setattr(stand_in, keyword, "")
        out.append(stand_in)
    return out


def build_sr(volume, result: StudyResult, anonymized_id: str | None = None):
    """The highdicom Comprehensive3DSR of a study's findings (patient fields replaced when anonymized_id)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    evidence = _evidence(volume)
    if anonymized_id is not None:
        evidence = _anonymous_evidence(evidence, anonymized_id)
    frame_uid = str(evidence[0].get("FrameOfReferenceUID", "") or "")
    if not frame_uid:
        raise ValueError(f"{volume.source}: the slices have no FrameOfReferenceUID; cannot place 3D findings")
    algorithm = hd.sr.AlgorithmIdentification(name="moe-suite nodule detector (research use only)", version="1")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="moe-suite", manufacturer_name="MoE Suite"))
    mm, unitless = hd.sr.CodedConcept("mm", "UCUM", "millimeter"), hd.sr.CodedConcept("1", "UCUM", "no units")
    groups = []
    for f in result.findings:
        r = f.diameter_mm / 2
        centre = np.array([f.x_mm, f.y_mm, f.z_mm])
        ellipse = np.array([centre - [r, 0, 0], centre + [r, 0, 0], centre - [0, r, 0], centre + [0, r, 0]])
        measurements = [
            hd.sr.Measurement(name=codes.SCT.Diameter, value=float(f.diameter_mm), unit=mm, algorithm_id=algorithm),
            hd.sr.Measurement(name=hd.sr.CodedConcept("NODPROB", _SCHEME, "Probability of nodule"),
                              value=float(f.probability), unit=unitless, algorithm_id=algorithm)]
        if f.malignancy is not None:
            measurements.append(hd.sr.Measurement(
                name=hd.sr.CodedConcept("MALPROB", _SCHEME, "Probability of malignancy"),
                value=float(f.malignancy), unit=unitless, algorithm_id=algorithm))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"nodule {f.nodule_id}"),
            referenced_region=hd.sr.ImageRegion3D(hd.sr.GraphicTypeValues3D.ELLIPSE, ellipse, frame_uid),
            finding_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
            finding_sites=[hd.sr.FindingSite(hd.sr.CodedConcept("39607008", "SCT", "Lung"))],
            algorithm_id=algorithm, measurements=measurements))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("418891003", "SCT", "Computed tomography of chest"),
        imaging_measurements=groups or None)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=generate_uid(), series_number=901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="MoE Suite (research use only)",
        is_complete=True)
    sr.SeriesDescription = "Nodule findings - research use only"
    sr.ContentDescription = DISCLAIMER[:64]
    return sr


def write_sr(volume, result: StudyResult, path: Path, anonymized_id: str | None = None) -> Path:
    sr = build_sr(volume, result, anonymized_id)
    sr.save_as(path, enforce_file_format=True)
    return path
