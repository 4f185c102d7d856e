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
    assert np.allclose(vol.hu_ZYX, np.stack(planes))        # not 1024 HU too bright, as stored values read
    assert any("usual CT intercept -1024" in w for w in vol.warnings), vol.warnings


def test_series_without_any_rescale_stored_signed_hu_is_kept(tmp_path):
    planes = chest_planes(len(Z))
    strip_rescale(write_series(tmp_path / "s", planes, [(0, 0, v) for v in Z], intercept=0.0, signed=True))
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX, np.stack(planes))
    assert any("stored values read as HU" in w for w in vol.warnings), vol.warnings


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
                                                             "file skipped: not DICOM"}
    assert any("shorter than a DICOM preamble" in r["message"] for r in errors), errors


# ------------------------------------------------------------------------------------------ D5: decoder warnings


def _rle_series_with_padding_warning(folder):
    """3 RLE slices; the second one's pydicom decodes with a 'non-conformant padding' warning."""
    z = np.arange(3) * 2.0
    paths = write_series(folder, ramp_planes(z), [(0, 0, v) for v in z])
    for n, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        if n == 1:   # a literal run of 2 bytes past the end of the last segment (then a no-op byte): padding
            frame = next(generate_frames(ds.PixelData, number_of_frames=1)) + b"\x01\x00\x00\x80"
            ds.PixelData = encapsulate([frame])
        ds.save_as(p)
    return paths


def test_decoder_warnings_land_in_the_volume_warnings_with_the_file(tmp_path):
    paths = _rle_series_with_padding_warning(tmp_path / "r")
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        vol = load_volume(tmp_path / "r")
    assert np.array_equal(vol.hu_ZYX, np.stack(ramp_planes(np.arange(3) * 2.0)))
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


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _origins(out):
    return {p.parent.name: json.loads(p.read_text()).get("origin") for p in out.glob(f"studies/*/{DONE}")}


# ------------------------------------------------------------------------------ R1: a folder added beside a done one


def test_folder_added_beside_a_finished_one_does_not_take_its_key(dataset, tmp_path):  # noqa: F811
    """'Study 1' finished at key Study_1; 'Study_1' added later gets a hashed key and 'Study 1' is not redone."""
    first, second = _studies(dataset)[:2]
    shutil.copytree(first, tmp_path / "in" / "Study 1")
    out = tmp_path / "out"
    _run(dataset, tmp_path / "in", out)
    before = _origins(out)
    assert list(before) == ["Study_1"]
    shutil.copytree(second, tmp_path / "in" / "Study_1")
    summary = _run(dataset, tmp_path / "in", out)
    assert (summary["processed"], summary["skipped_done"], summary["studies_done"]) == (1, 1, 2), summary
    after = _origins(out)
    assert after["Study_1"] == before["Study_1"] and len(after) == 2
    rows = _csv_rows(out / "findings.csv")
    assert len({r["series_uid"] for r in rows}) == len({r["study"] for r in rows}) == 2   # no study twice


# ------------------------------------------------------------------------------ R2: old-style volume keys


def _as_previous_version(out, key, old_key, source):
    """Move a finished study to the key and done.json layout of the version before origins (342f94a~1)."""
    (out / "studies" / key).rename(out / "studies" / old_key)
    done = json.loads((out / "studies" / old_key / DONE).read_text())
    rows = [{**r, "study": old_key} for r in done["rows"]]
    (out / "studies" / old_key / DONE).write_text(json.dumps({"study": old_key, "source": source, "rows": rows,
                                                              "report": False, "seconds": 1.0}) + "\n")
    return len(rows)


LUNA_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"


@pytest.mark.parametrize("anonymize", [False, True])
def test_volume_file_done_under_its_old_key_is_not_recomputed(dataset, tmp_path, anonymize):  # noqa: F811
    vol = tmp_path / "luna" / f"{LUNA_UID}.nii.gz"
    _nifti(_studies(dataset)[0], vol)
    out = tmp_path / "out"
    _run(dataset, vol, out, anonymize=anonymize)
    new_key = _hash(LUNA_UID) if anonymize else LUNA_UID
    old_key = _hash("1") if anonymize else "1"
    n = _as_previous_version(out, new_key, old_key, old_key if anonymize else vol.name)
    assert n > 0
    summary = _run(dataset, vol, out, anonymize=anonymize)
    assert (summary["processed"], summary["skipped_done"], summary["studies_done"]) == (0, 1, 1), summary
    assert len(_csv_rows(out / "findings.csv")) == n
    if anonymize:   # another LUNA16 file (another scan: other slices) is no old result of this one
        other = tmp_path / "luna" / "1.3.6.1.4.1.14519.5.2.1.6279.6001.999.nii.gz"
        img = nib.load(vol)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 2:], img.affine), other)
        summary = _run(dataset, other, out, anonymize=True)
        assert (summary["processed"], summary["skipped_done"]) == (1, 0), summary


def test_volume_file_old_key_of_another_file_is_not_taken(dataset, tmp_path):  # noqa: F811
    vol = tmp_path / f"{LUNA_UID}.nii.gz"
    _nifti(_studies(dataset)[0], vol)
    out = tmp_path / "out"
    _run(dataset, vol, out)
    _as_previous_version(out, LUNA_UID, "1", "1.3.6.1.4.1.14519.5.2.1.6279.6001.222.nii.gz")
    summary = _run(dataset, vol, out)
    assert (summary["processed"], summary["skipped_done"]) == (1, 0), summary


# ------------------------------------------------------------------------------ R3: whole paths only


def test_anonymize_masks_paths_only_as_whole_paths_and_keeps_numbers():
    for root, study in (("in", "in/1"), ("1", "1"), ("data/in", "data/in/7")):
        entry = StudyEntry("k" * 16, "k" * 16, Path(study), "", "", [Path(study) / "IM0001"], None)
        scrub = Scrub(BatchConfig(input=Path(root), out=Path("out"), anonymize=True), entry)
        for text in ("slices lost to an interrupted copy", "the detector was trained on 2.5 mm slices",
                     "1 file beside the slices; 11 slices of 1.25 mm, 71 of 171 kept", "7 files in 17 s"):
            assert scrub(text) == text, (root, scrub(text))
        text = f"{study}/IM0002: truncated file; '{study}' has 1 series"
        expected = text if root == "1" else text.replace(study, f"<{'k' * 16}>")   # a bare '1' names nobody
        assert scrub(text) == expected, scrub(text)
    scrub = Scrub(BatchConfig(input=Path("in"), out=Path("out"), anonymize=True), folders=[Path("Smith_J")])
    said = scrub("in/Smith_J/IM0001 is missing; interrupted")   # 'in': too short to name anyone, kept
    assert said == f"in/{scrub('Smith_J')}/IM0001 is missing; interrupted" and "Smith" not in said, said


# ------------------------------------------------------------------------------ R4: lost files and patient case


def test_anonymize_scrubs_lost_file_names_and_patient_words_in_any_case(dataset, tmp_path):  # noqa: F811
    study = tmp_path / "in" / "case7"
    study.mkdir(parents=True)
    for n, p in enumerate(sorted(_studies(dataset)[0].glob("*.dcm"))):
        ds = pydicom.dcmread(p)
        ds.PatientName, ds.PatientID = "SMITH^JOHNATHAN", "AB-778899"
        ds.save_as(study / f"Smith_John_{n:04d}.dcm")
    (study / "Smith_John_0099.dcm").write_bytes(b"")   # a slice lost to an interrupted copy
    out = tmp_path / "out"
    summary = _run(dataset, tmp_path / "in", out, anonymize=True)
    assert summary["processed"] == 1, summary
    warned = json.loads(next(out.glob("studies/*/findings.json")).read_text())["warnings"]
    assert any("missing from the volume" in w for w in warned), warned
    for p in out.rglob("*"):
        if p.is_file():
            text = p.read_bytes().decode("latin-1").lower()
            assert "smith" not in text and "0099" not in text and "johnathan" not in text, p
    entry = StudyEntry("k", "k", study, "1.2.3", "", sorted(study.glob("*_0000.dcm")), None)
    scrub = Scrub(BatchConfig(input=tmp_path / "in", out=out, anonymize=True), entry)
    said = scrub("Johnathan Smith, ab-778899, smith")
    assert "smith" not in said.lower() and "johnathan" not in said.lower() and "778899" not in said, said


# ------------------------------------------------------------------------------ R5: decoder warnings, threads


def test_loads_in_parallel_threads_keep_warnings_intact_and_attributed(tmp_path):
    folders = [tmp_path / f"r{k}" for k in range(4)]
    bad = [_rle_series_with_padding_warning(f)[1] for f in folders]
    load_volume(folders[0])   # lazy imports done
    filters, impl = list(warnings.filters), warnings._showwarnmsg_impl
    results, failures = {}, []

    def work(k):
        try:
            for n in range(5):
                results[k, n] = load_volume(folders[k]).warnings
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not failures and len(results) == 20
    for (k, _), warned in results.items():   # each load has its own file's warning, none of another's
        assert any(bad[k].name in w and str(folders[k]) in w and "padding" in w for w in warned), warned
        assert not any(str(folders[j]) in w for w in warned for j in range(4) if j != k), warned
    assert warnings.filters == filters and warnings._showwarnmsg_impl is impl
    with warnings.catch_warnings(record=True) as seen:   # warnings outside the loads still reach their sink
        warnings.simplefilter("always")
        warnings.warn("after the loads")
    assert [str(w.message) for w in seen] == ["after the loads"]


# ------------------------------------------------------------------------------ R6: stray empty file, empty rescale


def test_empty_stray_file_beside_a_series_is_no_lost_slice(tmp_path):
    paths = write_series(tmp_path / "s", ramp_planes(Z), [(0, 0, v) for v in Z])
    (tmp_path / "s" / "LOCKFILE").write_bytes(b"")
    (tmp_path / "s" / ".lock").write_bytes(b"\0" * 10)
    vol = load_volume(tmp_path / "s")
    assert not any("missing from the volume" in w for w in vol.warnings), vol.warnings
    entries, errors = discover(BatchConfig(input=tmp_path, out=tmp_path / "out"))
    assert not entries[0].notes and errors == []
    (tmp_path / "s" / "IM0099").write_bytes(b"")   # named like the slices: lost
    paths[3].write_bytes(paths[3].read_bytes()[:64])
    entries, errors = discover(BatchConfig(input=tmp_path, out=tmp_path / "out"))
    assert sorted(r["source"] for r in errors) == ["s/IM0003", "s/IM0099"]


def test_slice_with_empty_rescale_values_uses_the_series_rescale(tmp_path):
    planes = ramp_planes(Z)
    paths = write_series(tmp_path / "s", planes, [(0, 0, v) for v in Z])
    ds = pydicom.dcmread(paths[2])
    ds.RescaleIntercept, ds.RescaleSlope = "", ""
    ds.save_as(paths[2])
    assert pydicom.dcmread(paths[2])["RescaleIntercept"].value in ("", None)
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX, np.stack(planes))
    assert any("RescaleIntercept" in w and paths[2].name in w for w in vol.warnings), vol.warnings


# ------------------------------------------------------------------------------ F2: lowercase folder names


def test_anonymize_scrubs_lowercase_folder_names_and_spares_only_generic_words():
    cfg = BatchConfig(input=Path("/data/in"), out=Path("out"), anonymize=True)
    scrub = Scrub(cfg, folders=[Path("smithjohn/series")])
    said = scrub("file skipped: /data/in/smithjohn/series/IM0001 and smithjohn, series: unreadable header")
    assert "smithjohn" not in said and "series" in said, said
    assert not _generic("garcia") and _generic("DICOM") and _generic("series")


# ------------------------------------------------------------------------------ F4a: the hook saved before


def test_note_hook_keeps_the_previous_hook_after_a_record_block():
    seen = []

    def hook(message, category, filename, lineno, file=None, line=None):
        seen.append(str(message))

    state = [dicom._shown_before, getattr(dicom, "_standin_impl", [])]   # the hook's module state, put back
    saved = [list(x) for x in state]
    try:
        with warnings.catch_warnings():
            warnings.showwarning = hook
            warnings.simplefilter("always")
            dicom._noted([], "f", lambda: None)
            warnings.warn("one")
            with warnings.catch_warnings(record=True) as recorded:   # as batch._scrubbed_logs wraps loads
                dicom._noted([], "f", lambda: None)
                warnings.warn("inside")
            warnings.warn("two")
    finally:
        for x, values in zip(state, saved):
            x[:] = values
    assert seen == ["one", "two"] and [str(w.message) for w in recorded] == ["inside"], (seen, recorded)


# ------------------------------------------------------------------------------ F4b: pydicom's log lines


def test_pydicom_log_records_during_a_read_go_to_the_notes_only(tmp_path, caplog):
    _rle_series_with_padding_warning(tmp_path / "r")
    with caplog.at_level(logging.WARNING):
        vol = load_volume(tmp_path / "r")
        logging.getLogger("pydicom").warning("outside a read")
    assert any("padding" in w for w in vol.warnings), vol.warnings
    from_pydicom = [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")]
    assert from_pydicom == ["outside a read"], from_pydicom


# ------------------------------------------------------------------------------ F5: a moved volume file


def test_moved_volume_file_keeps_its_key_and_old_records_still_match(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), tmp_path / "a" / "ct.nii.gz")
    out = tmp_path / "out"

    def key_of(path):
        (entry,), _ = discover(BatchConfig(input=path, out=out))
        _claim_keys([entry], out, False)
        return entry

    first = key_of(tmp_path / "a" / "ct.nii.gz")
    (out / "studies" / first.key).mkdir(parents=True)
    done = {"study": first.key, "source": first.source, "origin": first.origin, "rows": []}
    (out / "studies" / first.key / DONE).write_text(json.dumps(done))
    shutil.move(tmp_path / "a" / "ct.nii.gz", tmp_path / "b" / "ct.nii.gz")
    assert key_of(tmp_path / "b" / "ct.nii.gz").key == first.key == "ct"
    old = {**done, "origin": _hash(str((tmp_path / "b" / "ct.nii.gz").resolve()))}   # a path-hash record
    (out / "studies" / first.key / DONE).write_text(json.dumps(old))
    assert key_of(tmp_path / "b" / "ct.nii.gz").key == "ct"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4)), tmp_path / "a" / "ct.nii.gz")
    assert key_of(tmp_path / "a" / "ct.nii.gz").key != "ct"   # another scan of the same name


# ------------------------------------------------------------------------------ F6: one collision suffix


def test_colliding_folder_keys_get_the_origin_as_suffix(tmp_path):
    uids = {}
    for name in ("Study 1", "Study_1", "Study:1"):
        uids[name] = generate_uid()
        write_series(tmp_path / "in" / name, ramp_planes(Z[:2]), [(0, 0, v) for v in Z[:2]], series_uid=uids[name])
    entries, _ = discover(BatchConfig(input=tmp_path / "in", out=tmp_path / "out"))
    keys = {e.source: e.key for e in entries}
    assert keys == {"Study_1": "Study_1", "Study 1": f"Study_1-{_hash(uids['Study 1'])[:8]}",
                    "Study:1": f"Study_1-{_hash(uids['Study:1'])[:8]}"}, keys


# ------------------------------------------------------------------------------ F7: a short file's wording


def test_short_file_reason_does_not_depend_on_its_name(tmp_path):
    for name in ("IM0099", "IM0099.dcm", "IM0099.img"):
        (tmp_path / name).write_bytes(b"cut short by a copy...")
    reasons = {dicom._cut_short(tmp_path / n) for n in ("IM0099", "IM0099.dcm", "IM0099.img")}
    assert len(reasons) == 1 and "22 bytes" in reasons.pop()


# ------------------------------------------------------------------------------ F12: SR UIDs and findings' hashes


def test_anonymous_sr_uid_is_derived_from_the_findings_hash():
    from apps.medical_imaging.structured_report import _anonymous_uid

    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    assert _anonymous_uid(uid) == f"2.25.{int(_hash(uid), 16)}" and _anonymous_uid(uid) != _anonymous_uid(uid + "1")


def test_linked_series_folder_is_read_and_links_back_up_or_to_a_read_folder_are_not(tmp_path):
    write_series(tmp_path / "data" / "s1", ramp_planes(Z), [(0, 0, v) for v in Z])
    root = tmp_path / "exports"
    write_series(root / "zeta", ramp_planes(Z), [(0, 0, v) for v in Z])
    (root / "study1").symlink_to(tmp_path / "data" / "s1", target_is_directory=True)
    (root / "alias").symlink_to(root / "zeta", target_is_directory=True)   # read under its own name, once
    (root / "back").symlink_to(root, target_is_directory=True)             # a loop
    (root / "up").symlink_to(tmp_path, target_is_directory=True)           # above the input: not read
    (tmp_path / "data" / "s1" / "self").symlink_to(tmp_path / "data" / "s1", target_is_directory=True)
    scan = scan_folder(root)
    assert sorted(s.files[0].parent.name for s in scan.series) == ["study1", "zeta"]
    assert all(len(s.files) == len(Z) for s in scan.series) and scan.skipped == []
    entries, errors = discover(BatchConfig(input=root, out=tmp_path / "out"))
    assert sorted(e.source for e in entries) == ["study1", "zeta"] and errors == []


def test_a_series_copied_into_two_folders_is_one_study_and_the_copy_is_listed(tmp_path):
    paths = write_series(tmp_path / "in" / "copyA", ramp_planes(Z), [(0, 0, v) for v in Z])
    shutil.copytree(tmp_path / "in" / "copyA", tmp_path / "in" / "copyB")
    entries, errors = discover(BatchConfig(input=tmp_path / "in", out=tmp_path / "out"))
    assert [e.source for e in entries] == ["copyA"] and len(entries[0].files) == 2 * len(paths)
    assert [(r["study"], r["stage"]) for r in errors] == [("copyB", "skipped")]
    assert "read as study copyA" in errors[0]["message"]
