"""Synthetic chest CT: determinism, anatomy HU ranges, nodule placement and truth geometry, imperfect reports,
and the DICOM dataset reading back equal through data_connectors.dicom."""
import csv
import re

import numpy as np
import pydicom

from apps.medical_imaging.synth import (LOBE_ABBREV, TRUTH_COLUMNS, SynthConfig, make_study, write_dataset,
                                        write_study_dicom)
from data_connectors.dicom import load_volume

SMALL = SynthConfig(shape_zyx=(32, 64, 64), spacing_zyx=(5.0, 5.4, 5.4))


def test_deterministic_per_index_and_seed():
    a, b = make_study(3, seed=1, cfg=SMALL), make_study(3, seed=1, cfg=SMALL)
    assert np.array_equal(a.hu_ZYX, b.hu_ZYX) and a.report == b.report and a.nodules == b.nodules
    assert a.series_uid == b.series_uid and a.study_id == "synth-0003"
    c, d = make_study(4, seed=1, cfg=SMALL), make_study(3, seed=2, cfg=SMALL)
    assert not np.array_equal(a.hu_ZYX, c.hu_ZYX) and not np.array_equal(a.hu_ZYX, d.hu_ZYX)
    assert len({a.series_uid, c.series_uid, d.series_uid}) == 3


def test_anatomy_hu_ranges_and_shape():
    s = make_study(0)
    assert s.hu_ZYX.shape == SynthConfig().shape_zyx and s.hu_ZYX.dtype == np.float32
    assert np.all(s.hu_ZYX == np.round(s.hu_ZYX))                       # whole HU: exact DICOM round trip
    assert abs(float(np.median(s.hu_ZYX[:, :4, :4])) + 1000) < 30      # air in the corners
    frac = lambda lo, hi: float(np.mean((s.hu_ZYX > lo) & (s.hu_ZYX < hi)))  # noqa: E731
    assert frac(-950, -750) > 0.05                                       # lung parenchyma
    assert frac(-10, 90) > 0.05 and frac(-160, -40) > 0.01               # soft tissue and fat
    assert frac(300, 1100) > 0.001                                       # ribs and spine
    assert np.allclose(np.diag(s.affine)[:3], [s.spacing_zyx[2], s.spacing_zyx[1], s.spacing_zyx[0]])


def test_nodules_placed_in_lungs_with_consistent_geometry():
    cfg = SynthConfig(nodules_per_study=(3, 3), diameter_mm=(10.0, 20.0), ground_glass_share=0.5)
    kinds = set()
    for index in range(3):
        s = make_study(index, cfg=cfg)
        assert len(s.nodules) == 3
        for n in s.nodules:
            ijk1 = np.append(n.center_ijk, 1)
            assert np.allclose((s.affine @ ijk1)[:3], n.center_xyz, atol=1e-6)
            i, j, k = np.round(n.center_ijk).astype(int)
            centre = float(np.median(s.hu_ZYX[k, j - 1:j + 2, i - 1:i + 2]))
            lo, hi = (-150, 150) if n.kind == "solid" else (-720, -330)
            assert lo < centre < hi, (n, centre)
            # the lung around it: well below soft tissue a nodule diameter away on at least one side
            ring = [s.hu_ZYX[k, j, min(i + d, s.hu_ZYX.shape[2] - 1)] for d in (-8, 8)]
            assert min(ring) < -500
            assert n.lobe.startswith("right" if n.center_xyz[0] < 0 else "left")   # LPS: x grows leftwards
            assert 10.0 <= n.diameter_mm <= 20.0
            kinds.add(n.kind)
    assert kinds == {"solid", "ground_glass"}


def test_reports_are_informative_but_imperfect():
    cfg = SynthConfig(shape_zyx=(24, 48, 48), spacing_zyx=(7.0, 7.2, 7.2), vessel_roots=1, vessel_depth=2)
    studies = [make_study(i, cfg=cfg) for i in range(60)]
    nodules = [(s, n) for s in studies for n in s.nodules]
    assert any(not s.report for s in studies) and sum(bool(s.report) for s in studies) > 40
    with_report = [(s, n) for s, n in nodules if s.report]
    mentioned = [(s, n) for s, n in with_report if n.mentioned]
    assert len(mentioned) > 10 and any(not n.mentioned for _, n in with_report)
    for s, n in mentioned:   # its lobe is named (full or abbreviated) and its reported size written
        assert n.lobe in s.report.lower() or LOBE_ABBREV[n.lobe] in s.report
        assert n.reported_diameter_mm is not None
    errors = [abs(n.reported_diameter_mm - n.diameter_mm) for _, n in mentioned]
    assert max(errors) >= 2.0 and np.median(errors) < 1.0               # mostly right, some sizes off
    negated = [(s, n) for s, n in with_report if n.negated]
    assert negated and all(not n.mentioned for _, n in negated)
    assert any(s.false_mentions for s in studies if s.report)
    assert any(re.search(r"\b(no|without)\b", s.report, re.I) for s in studies)
    assert all("FINDINGS" in s.report and "IMPRESSION" in s.report for s in studies if s.report)
    assert len({s.report.split("\n")[0] for s in studies if s.report}) > 1   # several templates


def test_dataset_writes_valid_dicom_that_reads_back(tmp_path):
    cfg = SynthConfig(shape_zyx=(12, 64, 64), spacing_zyx=(5.0, 5.4, 5.4), nodules_per_study=(1, 2))
    truth = write_dataset(tmp_path, 2, seed=4, cfg=cfg)
    rows = list(csv.DictReader(open(truth)))
    assert tuple(csv.reader(open(truth)).__next__()) == TRUTH_COLUMNS
    for index in range(2):
        s = make_study(index, seed=4, cfg=cfg)
        folder = tmp_path / "studies" / s.study_id
        files = sorted(folder.glob("*.dcm"))
        assert len(files) == 12
        ds = pydicom.dcmread(files[0])
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
        assert ds.BitsAllocated == 16 and float(ds.RescaleIntercept) == -1024
        vol = load_volume(folder)
        assert np.array_equal(vol.hu_ZYX, s.hu_ZYX)
        assert np.allclose(vol.affine, s.affine, atol=1e-3) and vol.series_uid == s.series_uid
        mine = [r for r in rows if r["study"] == s.study_id]
        assert len(mine) == len(s.nodules)
        for r in mine:
            ijk = np.array([float(r["i"]), float(r["j"]), float(r["k"])])
            xyz = np.array([float(r["x_mm"]), float(r["y_mm"]), float(r["z_mm"])])
            assert np.allclose(vol.to_patient(ijk)[0], xyz, atol=0.05)
        assert (tmp_path / "reports" / f"{s.study_id}.txt").exists() == bool(s.report)


def test_signed_storage_round_trip(tmp_path):
    s = make_study(1, cfg=SMALL)
    write_study_dicom(s, tmp_path / "signed", signed=True)
    ds = pydicom.dcmread(next((tmp_path / "signed").glob("*.dcm")))
    assert ds.PixelRepresentation == 1 and float(ds.RescaleIntercept) == 0
    assert np.array_equal(load_volume(tmp_path / "signed").hu_ZYX, s.hu_ZYX)


def test_no_report_means_nothing_mentioned():
    cfg = SynthConfig(shape_zyx=(24, 48, 48), spacing_zyx=(7.0, 7.2, 7.2), p_no_report=1.0, nodules_per_study=(2, 2))
    s = make_study(0, cfg=cfg)
    assert s.report == "" and s.false_mentions == [] and len(s.nodules) == 2
    assert all(not n.mentioned and not n.negated and n.reported_diameter_mm is None for n in s.nodules)
