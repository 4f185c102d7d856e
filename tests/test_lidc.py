"""LIDC-IDRI readers' XML (data_connectors/lidc.py) and the truth CSV built from it
(apps/medical_imaging/lidc_truth.py): known answers on a series and XML the tests write, and the real
LIDC-IDRI-0001 series beside the shared data."""
import csv
import json
import math

import numpy as np
import pydicom
import pytest
from test_dicom_reading import N, write_series

from apps.cli import main
from data_connectors.lidc import LidcXmlError, locate_marks, read_lidc_xml

SERIES, STUDY = "1.2.3.900", "1.2.3.4"
Z = [0.0, 2.0, 4.0, 6.0]          # slice positions (mm); pixel spacing (0.8, 0.7): rows 0.8 mm, columns 0.7 mm


def _outline(cx: float, cy: float, r: float, n: int = 64) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip(cx + r * np.cos(t), cy + r * np.sin(t)))


def _roi(z: float, sop: str, points, inclusion: bool = True) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x:.3f}</xCoord><yCoord>{y:.3f}</yCoord></edgeMap>" for x, y in points)
    return (f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>")


def _session(reader: str, body: str) -> str:
    return f"<readingSession><servicingRadiologistID>{reader}</servicingRadiologistID>{body}</readingSession>"


def _nodule(nodule_id: str, rois: str, malignancy: int | None = None) -> str:
    traits = f"<characteristics><malignancy>{malignancy}</malignancy></characteristics>" if malignancy else ""
    return f"<unblindedReadNodule><noduleID>{nodule_id}</noduleID>{traits}{rois}</unblindedReadNodule>"


def _xml(sessions: str, series_uid: str = SERIES, root: str = "LidcReadMessage") -> str:
    return (f'<?xml version="1.0"?><{root} xmlns="http://www.nih.gov"><ResponseHeader>'
            f"<SeriesInstanceUid>{series_uid}</SeriesInstanceUid><StudyInstanceUID>{STUDY}</StudyInstanceUID>"
            f"</ResponseHeader>{sessions}</{root}>")


@pytest.fixture
def series(tmp_path):
    """A 4-slice series in tmp/study and the SOP UIDs of its slices, in z order."""
    paths = write_series(tmp_path / "study", [np.zeros((N, N))] * len(Z), [(-5.0, 10.0, z) for z in Z],
                         series_uid=SERIES, study_uid=STUDY)
    return tmp_path, [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]


def test_outlines_become_a_centre_and_diameter_in_patient_mm(series):
    root, sops = series
    r = 4.0   # px: a 2.8 x 3.2 mm ellipse in mm (columns 0.7 mm, rows 0.8 mm)
    rois = "".join(_roi(z, sop, _outline(6.0, 9.0, r)) for z, sop in zip(Z[1:3], sops[1:3]))
    hole = _roi(Z[2], sops[2], _outline(6.0, 9.0, 1.0), inclusion=False)
    small = "<unblindedReadNodule><noduleID>s</noduleID>" + _roi(Z[0], sops[0], [(2, 3)]) + "</unblindedReadNodule>"
    other = f"<nonNodule><nonNoduleID>n</nonNoduleID><imageZposition>{Z[3]}</imageZposition>" \
            f"<imageSOP_UID>{sops[3]}</imageSOP_UID><locus><xCoord>1</xCoord><yCoord>1</yCoord></locus></nonNodule>"
    (root / "study" / "r.xml").write_text(_xml(_session("7", _nodule("A", rois + hole, 4) + small + other)))
    read = read_lidc_xml(root / "study" / "r.xml")
    assert (read.series_uid, [m.kind for m in read.marks]) == (SERIES, ["nodule", "small nodule", "non-nodule"])
    marks, left_out = locate_marks(read, sorted((root / "study").glob("IM*")))
    nodule, point, _ = marks
    assert not left_out
    area = lambda radius: 64 / 2 * math.sin(2 * math.pi / 64) * radius ** 2 * 0.7 * 0.8   # the 64-gon's area
    volume = (2 * area(r) - area(1.0)) * 2.0                                               # 2 mm slices
    # x = -5 + 0.7 * column, y = 10 + 0.8 * row; z: the slices weighted by their area (the hole at z = 4 mm)
    z = (area(r) * Z[1] + (area(r) - area(1.0)) * Z[2]) / (2 * area(r) - area(1.0))
    assert np.allclose(nodule.centre_mm, (-5 + 0.7 * 6, 10 + 0.8 * 9, z), atol=1e-6)
    assert nodule.diameter_mm == pytest.approx((6 * volume / math.pi) ** (1 / 3), rel=1e-4)   # points to 3 decimals
    assert nodule.characteristics == {"malignancy": 4}
    assert np.allclose(point.centre_mm, (-5 + 1.4, 10 + 2.4, 0.0)) and point.diameter_mm is None


def test_readers_outlines_join_into_one_true_nodule_keyed_as_diagnose_keys_it(series, capsys):
    root, sops = series
    sessions = [_session(reader, _nodule("x", "".join(_roi(z, sop, _outline(6.0 + dx, 9.0, 4.0))
                                                       for z, sop in zip(Z[1:3], sops[1:3])), m))
                for reader, dx, m in (("1", 0.0, 3), ("2", 0.5, 4), ("3", 0.3, 5))]
    # reader 1 also outlines a second nodule far away: its own, never joined with the first
    sessions[0] = sessions[0].replace("</readingSession>", _nodule(
        "y", _roi(Z[3], sops[3], _outline(13.0, 3.0, 2.0)), 2) + "</readingSession>")
    (root / "study" / "reads.xml").write_text(_xml("".join(sessions)))
    (root / "study" / "cxr.xml").write_text(_xml("", root="IdriReadMessage"))
    (root / "study" / "other.xml").write_text(_xml(sessions[1], series_uid="9.9.9"))
    assert main(["medical", "lidc-truth", str(root), "--out", str(root / "truth.csv"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(root / "truth.csv")))
    assert [(r["study"], r["readers"], r["malignancy"]) for r in rows] == [("study", "3", "4.0"), ("study", "1", "2.0")]
    assert float(rows[0]["x_mm"]) == pytest.approx(-5 + 0.7 * (6.0 + 0.8 / 3), abs=0.01)
    assert summary["nodules_by_readers"] == {"1": 1, "3": 1}
    assert sorted(s["file"] for s in summary["skipped_files"]) == ["study/cxr.xml", "study/other.xml"]
    assert "chest radiograph" in str(summary["skipped_files"]) and "9.9.9 is not among" in str(summary)
    assert main(["medical", "lidc-truth", str(root), "--out", str(root / "t3.csv"), "--min-readers", "3"]) == 0
    assert [r["readers"] for r in csv.DictReader(open(root / "t3.csv"))] == ["3"]
    assert main(["medical", "lidc-truth", str(root), "--out", str(root / "anon.csv"), "--anonymize"]) == 0
    hidden = list(csv.DictReader(open(root / "anon.csv")))[0]
    assert SERIES not in hidden.values() and hidden["study"] != "study" and len(hidden["series_uid"]) == 16


def test_anonymous_readers_repeated_marks_split_files_and_partial_series(series, capsys):
    """Public LIDC files name every reader "anonymous": sessions still tell them apart. A reader marking one
    nodule twice adds no nodule; two files of one series are read together; a nodule with an outline on a
    slice the series lacks is left out and listed, not shrunk."""
    root, sops = series
    outlines = lambda dx: "".join(_roi(z, sop, _outline(6.0 + dx, 9.0, 4.0)) for z, sop in zip(Z[1:3], sops[1:3]))
    twice = _session("anonymous", _nodule("a", outlines(0.0)) + _nodule("a2", outlines(0.4)))
    (root / "study" / "one.xml").write_text(_xml(twice + _session("anonymous", _nodule("b", outlines(0.2)))))
    (root / "study" / "two.xml").write_text(_xml(_session("anonymous", _nodule("c", outlines(0.1)))))
    missing = _roi(8.0, "1.2.3.999", _outline(13.0, 3.0, 2.0))   # a slice this export does not hold
    (root / "study" / "three.xml").write_text(_xml(_session("anonymous", _nodule(
        "far", _roi(Z[3], sops[3], _outline(13.0, 3.0, 2.0)) + missing))))
    assert main(["medical", "lidc-truth", str(root), "--out", str(root / "truth.csv"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(root / "truth.csv")))
    assert [r["readers"] for r in rows] == ["3"]
    assert [s["file"] for s in summary["skipped_files"]] == ["study/three.xml"]
    assert "'far'" in summary["skipped_files"][0]["why"] and "1 of 2 outlines" in summary["skipped_files"][0]["why"]


def test_unreadable_annotation_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.xml").write_text("<LidcReadMessage><unclosed>")
    with pytest.raises(LidcXmlError, match="bad.xml: not readable XML"):
        read_lidc_xml(tmp_path / "bad.xml")
    (tmp_path / "noseries.xml").write_text("<LidcReadMessage><ResponseHeader/></LidcReadMessage>")
    with pytest.raises(LidcXmlError, match="no SeriesInstanceUid"):
        read_lidc_xml(tmp_path / "noseries.xml")


def test_real_lidc_readers_agree_with_the_published_nodule(shared_dataset):
    """LIDC-IDRI-0001: the 4 readers' outlines give one nodule within 0.5 mm of the centre and 5 % of the
    diameter that the shared nodules.csv lists for it."""
    from apps.medical_imaging.lidc_truth import lidc_truth

    root = shared_dataset("lidc-ct-subset")
    [nodule], skipped = lidc_truth(root)
    published = next(csv.DictReader(open(root / "nodules.csv")))
    assert not skipped and nodule.readers == 4 and nodule.malignancy == 5
    assert np.linalg.norm(np.subtract(nodule.xyz_mm, [float(published[k]) for k in ("coordX", "coordY", "coordZ")])) < 0.5
    assert nodule.diameter_mm == pytest.approx(float(published["diameter_mm"]), rel=0.05)
