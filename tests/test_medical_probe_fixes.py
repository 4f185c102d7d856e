"""Defects a black-box probe of the nodule app found, each on a tiny study the test builds: study keys that
collide (volume files, sanitised folder names), --anonymize leaks, a slice without rescale, slice files lost to
an interrupted copy, decoder warnings without a file name, a two-image scout read as 'a single slice'. Then
what a review of those fixes found (R1-R6): a folder added beside a finished study took its key, volume files
finished under the previous version's keys were recomputed, --anonymize masked substrings ('<input>terrupted')
and missed lost files' names and patient words in another case, decoder warnings were caught in a way that is
not thread-safe, an empty lock file counted as a lost slice and empty rescale values read 1024 HU bright. Then
what the final review found (F2-F12): lowercase folder names left unscrubbed, a showwarning hook lost after a
catch_warnings(record=True), pydicom's log lines printed anonymously, a moved volume file recomputed, two
collision suffixes, a file's name choosing its 'truncated' wording, SR UIDs unrelated to findings' hashes."""
import csv
import json
import logging
import shutil
import threading
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import RLELossless, generate_uid
from test_dicom_reading import N, ct_slice, ramp_planes, write_series
from test_medical_pipeline import dataset  # noqa: F401 - tiny synthetic studies and an untrained tiny detector

from apps.medical_imaging.batch import (DONE, BatchConfig, Scrub, StudyEntry, _claim_keys, _generic, _hash, discover,
                                        run_batch)
from data_connectors import dicom
from data_connectors.dicom import DicomReadError, is_volume_series, load_series, load_volume, scan_folder

Z = np.arange(6) * 2.0


def _run(dataset, source, out, **kw):  # noqa: F811
    root, _ = dataset
    return run_batch(BatchConfig(input=source, out=out, detector=root / "detector", progress=False,
                                 overlays=False, **kw))


def _studies(dataset):  # noqa: F811
    root, _ = dataset
    return sorted((root / "data" / "studies").iterdir())


def _nifti(study, path):
    vol = load_volume(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.hu_ZYX.transpose(2, 1, 0)), ras), path)


# ------------------------------------------------------------------------------------------ D2: volume file keys


def test_volume_file_is_keyed_by_its_whole_name(tmp_path):
    """A LUNA16-style file is keyed by its seriesuid (its name without the suffix), not by '1'."""
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"
    for name, key in ((f"{uid}.mhd", uid), (f"{uid}.nii.gz", uid), ("ct.nii.gz", "ct"), ("scan.v2.NRRD", "scan.v2")):
        (tmp_path / name).write_bytes(b"")
        entries, _ = discover(BatchConfig(input=tmp_path / name, out=tmp_path / "out"))
        assert [e.key for e in entries] == [key]


def test_same_named_volume_files_in_two_folders_get_two_keys_and_resume(dataset, tmp_path):  # noqa: F811
    first, second = _studies(dataset)[:2]
    _nifti(first, tmp_path / "case1" / "ct.nii.gz")
    _nifti(second, tmp_path / "case2" / "ct.nii.gz")
    out = tmp_path / "out"
    for case in ("case1", "case2"):
        summary = _run(dataset, tmp_path / case / "ct.nii.gz", out)
        assert (summary["processed"], summary["skipped_done"]) == (1, 0), summary
    assert summary["studies_done"] == 2
    docs = sorted(out.glob("studies/*/findings.json"))
    assert [d.parent.name for d in docs][0] == "ct" and len(docs) == 2   # the first keeps the plain key
    for case in ("case2", "case1"):   # reruns find their own results, in either order
        summary = _run(dataset, tmp_path / case / "ct.nii.gz", out)
        assert (summary["processed"], summary["skipped_done"], summary["studies_done"]) == (0, 1, 2), summary


# ------------------------------------------------------------------------------------------ D1: folder keys


def test_folders_differing_by_space_and_underscore_get_distinct_keys(dataset, tmp_path):  # noqa: F811
    first, second = _studies(dataset)[:2]
    shutil.copytree(first, tmp_path / "in" / "Study 1")
    shutil.copytree(second, tmp_path / "in" / "Study_1")
    entries, _ = discover(BatchConfig(input=tmp_path / "in", out=tmp_path / "out"))
    keys = {e.source: e.key for e in entries}
    assert keys["Study_1"] == "Study_1" and keys["Study 1"].startswith("Study_1-") and len(set(keys.values())) == 2
    summary = _run(dataset, tmp_path / "in", tmp_path / "out")
    assert (summary["processed"], summary["studies_done"]) == (2, 2), summary
    uids = {json.loads(p.read_text())["series_uid"] for p in (tmp_path / "out").glob("studies/*/findings.json")}
    assert len(uids) == 2


def test_a_key_holding_another_inputs_results_is_not_reused(dataset, tmp_path):  # noqa: F811
    """The same folder name under two input trees, different series: the second run does not skip it as done."""
    first, second = _studies(dataset)[:2]
    shutil.copytree(first, tmp_path / "a" / "case")
    shutil.copytree(second, tmp_path / "b" / "case")
    _run(dataset, tmp_path / "a", tmp_path / "out")
    summary = _run(dataset, tmp_path / "b", tmp_path / "out")
    assert (summary["processed"], summary["skipped_done"], summary["studies_done"]) == (1, 0, 2), summary


# ------------------------------------------------------------------------------------------ D3: anonymize


def test_anonymize_leaves_no_path_name_uid_or_date_in_any_output(dataset, tmp_path, capfd):  # noqa: F811
    from apps.cli import main

    root, _ = dataset
    study = tmp_path / "in" / "DOE^JANE_MRN123456" / "CT_CHEST"
    shutil.copytree(_studies(dataset)[0], study)
    originals = set()
    paths = sorted(study.glob("*.dcm"))
    for n, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyID = "DOE^JANE", "MRN123456", "20190305", "STUDY4711"
        if n == len(paths) // 2:   # one slice of another size: a routine warning that names its file
            ds.Rows, ds.Columns, ds.PixelData = 4, 4, bytes(32)
        ds.save_as(p)
        originals |= {str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID),
                      str(ds.FrameOfReferenceUID)}
    lone = tmp_path / "in" / "DOE^JANE_MRN123456" / "SCOUT_X"   # fails to load: a message with a path and UID
    lone.mkdir()
    shutil.copy(paths[0], lone / "0001.dcm")
    ds = pydicom.dcmread(lone / "0001.dcm")
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(lone / "0001.dcm")
    originals.add(str(ds.SeriesInstanceUID))
    out = tmp_path / "out"
    assert main(["medical", "diagnose", str(tmp_path / "in"), "--out", str(out), "--detector", str(root / "detector"),
                 "--anonymize", "--sr", "--no-overlays", "--json"]) == 0
    std = capfd.readouterr()
    summary = json.loads(std.out.strip().splitlines()[-1])
    assert summary["processed"] == 1 and summary["failed"] == 1
    texts = {p.name: p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file()}
    texts["stdout+stderr"] = std.out + std.err
    warned = json.loads(next(out.glob("studies/*/findings.json")).read_text())["warnings"]
    assert any("another size" in w for w in warned)   # the warning is kept, its file hashed
    for where, text in texts.items():
        for secret in ("DOE", "JANE", "MRN123456", "CT_CHEST", "SCOUT_X", "0001.dcm", "20190305", "STUDY4711",
                       *originals):
            assert secret not in text, (secret, where)
    sr = pydicom.dcmread(next(out.glob("studies/*/sr.dcm")))
    assert not sr.get("StudyDate") and not sr.get("StudyID") and sr.StudyInstanceUID not in originals
    doc = json.loads(next(out.glob("studies/*/findings.json")).read_text())   # the SR matches its findings
    referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == f"2.25.{int(doc['series_uid'], 16)}" and sr.PatientID == doc["study"]
    assert sr.StudyInstanceUID == f"2.25.{int(doc['study_uid'], 16)}"


# ------------------------------------------------------------------------------------------ D4: missing rescale


def test_slice_without_rescale_uses_the_series_rescale_with_a_warning(tmp_path):
    planes = ramp_planes(Z)
    paths = write_series(tmp_path / "s", planes, [(0, 0, v) for v in Z])
    ds = pydicom.dcmread(paths[2])
    del ds.RescaleIntercept, ds.RescaleSlope
    ds.save_as(paths[2])
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX, np.stack(planes))
    assert any("RescaleIntercept" in w and paths[2].name in w for w in vol.warnings), vol.warnings


def test_slice_without_rescale_among_disagreeing_ones_is_dropped(tmp_path):
    planes = ramp_planes(Z)
    paths = write_series(tmp_path / "s", planes, [(0, 0, v) for v in Z])
    for n, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        if n == 2:
            del ds.RescaleIntercept, ds.RescaleSlope
        elif n == 4:   # the same HU, another intercept
            ds.RescaleIntercept = -1000
            ds.PixelData = (np.round(planes[n] + 1000)).astype(np.uint16).tobytes()
        ds.save_as(p)
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX, np.stack(planes), atol=1e-3)   # slice 2 interpolated from its neighbours
    assert any("ignored" in w and paths[2].name in w for w in vol.warnings), vol.warnings


def chest_planes(n: int) -> list[np.ndarray]:
    """Planes holding air (-1000), lung (-850), soft tissue (40) and bone (700) HU."""
    plane = np.full((N, N), -1000.0)
    plane[2:14, 2:14], plane[4:12, 4:8], plane[5:7, 10:12] = 40.0, -850.0, 700.0
    return [plane.copy() for _ in range(n)]


def strip_rescale(paths) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.RescaleIntercept, ds.RescaleSlope
        ds.save_as(p)


def test_series_without_any_rescale_stored_unsigned_gets_the_usual_intercept(tmp_path):
    planes = chest_planes(len(Z))
    strip_rescale(write_series(tmp_path / "s", planes, [(0, 0, v) for v in Z]))   # stored = HU + 1024
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX, np.stack(planes))        # read as stored values: 1024 HU too bright
    assert any("usual CT intercept -1024" in w for w in vol.warnings), vol.warnings


def test_series_without_any_rescale_stored_signed_hu_is_kept(tmp_path):
    planes = chest_planes(len(Z))
    strip_rescale(write_series(tmp_path / "s", planes, [(0, 0, v) for v in Z], intercept=0.0, signed=True))
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX, np.stack(planes))
    assert any("stored values read as HU" in w for w in vol.warnings), vol.warnings


def test_linked_series_folder_is_read_and_a_link_loop_is_not_followed(tmp_path):
    write_series(tmp_path / "data" / "s1", ramp_planes(Z), [(0, 0, v) for v in Z])
    root = tmp_path / "exports"
    root.mkdir()
    (root / "study1").symlink_to(tmp_path / "data" / "s1", target_is_directory=True)
    (root / "back").symlink_to(root, target_is_directory=True)          # a link up the tree: no endless walk
    scan = scan_folder(root)
    assert len(scan.series) == 1 and len(scan.series[0].files) == len(Z)
    assert [p.name for p, reason in scan.skipped if "already read" in reason] == ["back"]
    entries, errors = discover(BatchConfig(input=root, out=tmp_path / "out"))
    assert [e.source for e in entries] == ["study1"] and errors == []
