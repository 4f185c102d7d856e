"""Defects a black-box probe of the nodule app found, each on a tiny study the test builds: study keys that
collide (volume files, sanitised folder names), --anonymize leaks, a slice without rescale, slice files lost to
an interrupted copy, decoder warnings without a file name, a two-image scout read as 'a single slice'."""
import json
import shutil
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import RLELossless, generate_uid
from test_dicom_reading import N, ct_slice, ramp_planes, write_series
from test_medical_pipeline import dataset  # noqa: F401 - tiny synthetic studies and an untrained tiny detector

from apps.medical_imaging.batch import BatchConfig, discover, run_batch
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


# ------------------------------------------------------------------------------------------ D7: lost slice files


def test_empty_and_truncated_slice_files_are_reported(tmp_path):
    paths = write_series(tmp_path / "s", ramp_planes(Z), [(0, 0, v) for v in Z])
    paths[0].write_bytes(b"")                          # interrupted copies at both ends
    paths[-1].write_bytes(paths[-1].read_bytes()[:100])
    (tmp_path / "s" / "notes.txt").write_text("a stray note is no lost slice")
    vol = load_volume(tmp_path / "s")
    assert vol.hu_ZYX.shape[0] == len(Z) - 2
    assert any("2 files" in w and "missing from the volume" in w for w in vol.warnings), vol.warnings
    entries, errors = discover(BatchConfig(input=tmp_path, out=tmp_path / "out"))
    assert any("missing from the volume" in n for n in entries[0].notes)
    assert sorted(r["source"] for r in errors) == sorted(f"s/{p.name}" for p in (paths[0], paths[-1]))
    assert {r["message"].split(" (")[0] for r in errors} == {"file skipped: empty file",
                                                             "file skipped: truncated file"}


# ------------------------------------------------------------------------------------------ D5: decoder warnings


def test_decoder_warnings_land_in_the_volume_warnings_with_the_file(tmp_path):
    z = np.arange(3) * 2.0
    paths = write_series(tmp_path / "r", ramp_planes(z), [(0, 0, v) for v in z])
    for n, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        if n == 1:   # a literal run of 2 bytes past the end of the last segment (then a no-op byte): padding
            frame = next(generate_frames(ds.PixelData, number_of_frames=1)) + b"\x01\x00\x00\x80"
            ds.PixelData = encapsulate([frame])
        ds.save_as(p)
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        vol = load_volume(tmp_path / "r")
    assert np.array_equal(vol.hu_ZYX, np.stack(ramp_planes(z)))
    assert any(paths[1].name in w and "non-conformant padding" in w for w in vol.warnings), vol.warnings
    assert not [w for w in escaped if "padding" in str(w.message)]


# ------------------------------------------------------------------------------------------ D6: scouts


def _scout_pair(folder, image_type):
    uid = generate_uid()
    for k, iop in enumerate(((1, 0, 0, 0, 0, -1), (0, 1, 0, 0, 0, -1))):   # AP (coronal), lateral (sagittal)
        ds = ct_slice(np.zeros((N, N)), (0, 0, 0), series_uid=uid, instance=k + 1, iop=iop)
        ds.ImageType = image_type
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"sv{k}.dcm", enforce_file_format=True)
    return uid


def test_surview_scout_pair_is_a_localizer(tmp_path):
    _scout_pair(tmp_path / "a", ["ORIGINAL", "PRIMARY", "SURVIEW"])
    with pytest.raises(DicomReadError, match="localizer"):
        load_volume(tmp_path / "a")
    write_series(tmp_path / "a", ramp_planes(Z), [(0, 0, v) for v in Z])   # beside a CT: skipped, the CT read
    assert load_volume(tmp_path / "a").hu_ZYX.shape[0] == len(Z)


def test_scout_pair_without_marker_says_two_orientations(tmp_path):
    _scout_pair(tmp_path / "b", ["ORIGINAL", "PRIMARY", "AXIAL"])
    series = scan_folder(tmp_path / "b").series[0]
    assert not is_volume_series(series)
    with pytest.raises(DicomReadError, match="2 images in 2 orientations.*scout/localizer"):
        load_series(series)
