"""End-to-end batch diagnosis on tiny synthetic DICOM studies: outputs, resume, bad studies, anonymizing,
sharding, the SR and the CLI. The detector here is an untrained tiny one (mechanics, not accuracy)."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from apps.medical_imaging.batch import DONE, FINDINGS_COLUMNS, BatchConfig, _host, run_batch
from apps.medical_imaging.pipeline import DISCLAIMER
from test_dicom_variants import _screen_save


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    import torch

    from core.checkpoint import save_checkpoint
    from apps.medical_imaging.detection import KIND, DetectorConfig, NoduleRater
    from apps.medical_imaging.synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("med")
    cfg = SynthConfig(shape_zyx=(20, 40, 40), spacing_zyx=(8.0, 8.6, 8.6), nodules_per_study=(1, 2),
                      p_no_report=0.0)
    truth = write_dataset(root / "data", 3, seed=3, cfg=cfg)
    torch.manual_seed(0)
    det_cfg = DetectorConfig(grid_mm=6.0, sigmas_mm=(4.0, 8.0), max_candidates=4, threshold=0.0)
    model = NoduleRater(det_cfg)
    torch.nn.init.normal_(model.head[-1].weight)
    save_checkpoint(model, root / "detector", kind=KIND, config=det_cfg)
    return root, truth


def _config(root, out, **kw):
    return BatchConfig(input=root / "data" / "studies", out=out, reports=root / "data" / "reports",
                       detector=root / "detector", progress=False, **kw)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_batch_outputs_and_resume(dataset, tmp_path):
    root, truth = dataset
    out = tmp_path / "out"
    summary = run_batch(_config(root, out))
    assert (summary["studies"], summary["processed"], summary["failed"]) == (3, 3, 0)
    with open(out / "findings.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == FINDINGS_COLUMNS
    rows = _rows(out / "findings.csv")
    assert {r["study"] for r in rows} == {"synth-0000", "synth-0001", "synth-0002"}
    doc = json.loads((out / "studies" / "synth-0001" / "findings.json").read_text())
    assert doc["disclaimer"] == DISCLAIMER and doc["report_given"] and doc["findings"]
    first = doc["findings"][0]
    assert first["malignancy"] is None or 0 <= first["malignancy"] <= 1
    assert first["key_slices"] and (out / "studies" / "synth-0001" / "overlays" / doc["overlays"][0]).is_file()
    # an interrupted run: one study lost its done marker, a half-written temp folder lies around
    before = {k: (out / "studies" / k / "findings.json").stat().st_mtime_ns for k in ("synth-0000", "synth-0002")}
    (out / "studies" / "synth-0001" / DONE).unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])   # a killed run's pid: gone now
    dead.wait()
    stale = out / "studies" / f".synth-0001.tmp-{_host()}-{dead.pid}-0a1b2c3d"
    stale.mkdir()
    again = run_batch(_config(root, out))
    assert (again["processed"], again["skipped_done"]) == (1, 2)
    assert not stale.exists()
    assert {k: (out / "studies" / k / "findings.json").stat().st_mtime_ns for k in before} == before
    assert len(_rows(out / "findings.csv")) == len(rows)


def test_bad_studies_are_reported_and_the_rest_finishes(dataset, tmp_path):
    root, _ = dataset
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    (data / "studies" / "no_dicom").mkdir()
    (data / "studies" / "no_dicom" / "notes.txt").write_text("not an image")
    broken = data / "studies" / "broken"
    broken.mkdir()
    good = sorted((data / "studies" / "synth-0000").glob("*.dcm"))[0].read_bytes()
    (broken / "0001.dcm").write_bytes(good[:400])              # truncated inside its header
    one_slice = data / "studies" / "one_slice"
    one_slice.mkdir()
    (one_slice / "0001.dcm").write_bytes(good)                  # a second series? no: same UIDs as synth-0000
    ds = pydicom.dcmread(one_slice / "0001.dcm")
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(one_slice / "0001.dcm")
    for n in range(2):   # a dose screen series exported beside a scan: skipped, the scan keeps its key
        _screen_save("1.2.3.61").save_as(data / "studies" / "synth-0002" / f"dose{n}", enforce_file_format=True)
    out = tmp_path / "out"
    cfg = BatchConfig(input=data / "studies", out=out, reports=data / "reports", detector=root / "detector",
                      progress=False)
    summary = run_batch(cfg)
    assert summary["processed"] == 3 and summary["failed"] == 1
    errors = {r["study"]: r for r in _rows(out / "errors.csv")}
    assert "no DICOM series" in errors["no_dicom"]["message"]
    assert "broken" in errors and "one_slice" in errors
    assert errors["one_slice"]["stage"] == "load"
    skipped = [r for r in _rows(out / "errors.csv") if r["stage"] == "skipped"]
    assert [(r["study"], r["source"]) for r in skipped] == [("synth-0002", "1.2.3.61")]
    assert {r["study"] for r in _rows(out / "findings.csv")} == {"synth-0000", "synth-0001", "synth-0002"}


def test_anonymize_sr_shard_and_cli(dataset, tmp_path, monkeypatch, capsys):
    from apps.cli import main

    root, _ = dataset
    out = tmp_path / "anon"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("apps.medical_imaging.batch._barrier", lambda world, local=None: None)
    summary = run_batch(_config(root, out, anonymize=True, sr=True))
    assert summary["this_rank"] == 1 and summary["processed"] == 1   # rank 1 of 2 takes every second study
    monkeypatch.setenv("RANK", "0")
    assert main(["medical", "diagnose", str(root / "data" / "studies"), "--out", str(out), "--reports",
                 str(root / "data" / "reports"), "--detector", str(root / "detector"), "--anonymize", "--sr",
                 "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["processed"] == 2 and last["studies_done"] == 3     # rank 0's two, merged with rank 1's
    text = (out / "findings.csv").read_text() + "".join(p.read_text() for p in out.rglob("*.json"))
    assert "synth-000" not in text and "SYNTH" not in text
    key = _rows(out / "findings.csv")[0]["study"]
    sr = pydicom.dcmread(out / "studies" / key / "sr.dcm")
    assert sr.Modality == "SR" and str(sr.PatientID) == key



def test_diagnose_of_a_single_bad_file_exits_1_and_says_why(dataset, tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    from apps.cli import main

    root, _ = dataset
    bad = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.int16), np.eye(4)), bad)
    assert main(["medical", "diagnose", str(bad), "--out", str(tmp_path / "out"), "--detector",
                 str(root / "detector"), "--json"]) == 1
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["failed"] == 1 and "2D" in last["failures"][0]["message"]


def _zip_folder(folder, path, extra=None):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(folder.glob("*.dcm")):
            z.write(f, f"study/{f.name}")
        if extra:
            z.writestr(*extra)
    return path


def test_api_and_page(dataset, tmp_path, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from apps.medical_imaging import api, page, pipeline
    from apps.settings import Settings

    root, _ = dataset
    monkeypatch.setattr(pipeline, "_SHARED", pipeline.Models.load(root / "detector"))
    study = _zip_folder(root / "data" / "studies" / "synth-0000", tmp_path / "study.zip")
    app = FastAPI()
    app.include_router(api.router, prefix="/api/v1/medical")
    client = TestClient(app)
    report = (root / "data" / "reports" / "synth-0000.txt").read_text()
    r = client.post("/api/v1/medical/diagnose", files={"file": ("study.zip", study.read_bytes())},
                    data={"report": report})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["disclaimer"] == DISCLAIMER and body["report_given"] and body["shape_zyx"] == [20, 40, 40]
    evil = _zip_folder(root / "data" / "studies" / "synth-0000", tmp_path / "evil.zip", ("../escape.txt", "x"))
    assert client.post("/api/v1/medical/diagnose", files={"file": ("e.zip", evil.read_bytes())}).status_code == 400
    assert client.post("/api/v1/medical/diagnose", files={"file": ("x.zip", b"not a zip")}).status_code == 422
    app.state.settings = Settings(max_upload_bytes=study.stat().st_size - 1)   # the server's limit applies
    assert client.post("/api/v1/medical/diagnose", files={"file": ("s.zip", study.read_bytes())}).status_code == 413

    assert page.build() is not None
    state, slider, image, table, explanation, download, status = page.analyse(str(study), "", 0.0)
    assert image.ndim == 3 and image.shape[2] == 3 and len(table) == len(state["findings"])
    assert "image only" in status and Path(download).is_file()
    assert page.show_slice(state, 0).shape == image.shape


def _lidc_series(shared_dataset):
    """The real partial LIDC-IDRI-0001 series, and its readers' nodule centre (LPS mm) and diameter."""
    import numpy as np

    from data_connectors.dicom import load_volume

    root = shared_dataset("lidc-ct-subset")
    vol = load_volume(sorted({p.parent for p in root.glob("LIDC-IDRI-0001/**/*.dcm")})[0])
    row = next(r for r in csv.DictReader(open(root / "nodules.csv")) if r["seriesuid"] == vol.series_uid)
    return vol, np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]), float(row["diameter_mm"])


def test_shipped_models_find_the_readers_nodule_in_the_real_lidc_series(shared_dataset):
    """The real partial LIDC-IDRI-0001 series (no report): the shipped detector's top finding lies within the
    readers' nodule (their centre and diameter from the LIDC XML), rated a likely nodule."""
    import numpy as np

    from apps.medical_imaging.pipeline import diagnose, shared_models

    vol, centre, diameter = _lidc_series(shared_dataset)
    result = diagnose(vol, None, shared_models())
    top = result.findings[0]
    assert np.linalg.norm(np.array([top.x_mm, top.y_mm, top.z_mm]) - centre) <= diameter / 2
    assert top.probability > 0.5 and 0.5 < top.diameter_mm / diameter < 2


def test_real_lidc_nodule_rim_is_no_second_finding_at_coarser_in_plane_spacing(shared_dataset):
    """The real LIDC-IDRI-0001 series at half its in-plane resolution (2x2 voxels averaged: 1.4 mm, as other
    scanners export): the readers' nodule is still the top finding and its spiculated rim does not come back
    as more findings above the operating point (it did, 10-13 mm from its centre, with suppression within
    1.0x the radius instead of 1.5x)."""
    import numpy as np

    from apps.medical_imaging.detection import load_detector

    vol, centre, diameter = _lidc_series(shared_dataset)
    hu, affine = vol.hu_ZYX, vol.affine.copy()
    coarse = (hu[:, 0::2, 0::2] + hu[:, 1::2, 1::2] + hu[:, 0::2, 1::2] + hu[:, 1::2, 0::2]) / 4
    affine[:3, 3] += (affine[:3, 0] + affine[:3, 1]) / 2          # the centre of each 2x2 block
    affine[:3, :2] *= 2
    found = load_detector().detect(coarse.astype(np.float32), affine, None, threshold=None)
    assert np.linalg.norm(np.array(found[0].xyz_mm) - centre) <= diameter / 2
    assert all(np.linalg.norm(np.array(d.xyz_mm) - centre) > 2 * diameter for d in found[1:])


def test_thick_slices_come_with_a_warning(dataset):
    """Slices further apart than THICK_SLICE_MM: the findings say the detector was trained on thinner ones;
    the same volume at 2 mm spacing gets no such warning."""
    import numpy as np

    from apps.medical_imaging.pipeline import THICK_SLICE_MM, Models, diagnose, load_detector
    from data_connectors.dicom import CTVolume

    root, _ = dataset
    models = Models(load_detector(root / "detector"), None)
    hu = np.full((16, 48, 48), -850.0, np.float32)
    hu[:, :, :4] = hu[:, :, -4:] = 40.0

    def warnings_at(slice_mm: float) -> list[str]:
        affine = np.diag([2.0, 2.0, slice_mm, 1.0])
        volume = CTVolume(hu, (slice_mm, 2.0, 2.0), affine, "1.2.3", "1.2", Path("phantom"))
        return diagnose(volume, None, models).warnings

    assert THICK_SLICE_MM < 5.0
    assert any("2.5 mm slices" in w and "5.0 mm" in w for w in warnings_at(5.0))
    assert not any("2.5 mm slices" in w for w in warnings_at(2.0))


def test_batch_skips_pet_and_mr_series_as_not_ct(tmp_path):
    """A PET/CT exam folder and an MR-only study: one CT study to diagnose, the others listed as skipped
    (before, each PET or MR series was diagnosed as if its values were HU)."""
    from apps.medical_imaging.batch import discover
    from test_dicom_variants import _as_modality, _ct

    _ct(tmp_path / "in" / "petct")
    pet = _ct(tmp_path / "pet_files", uid="1.2.3.77")
    _as_modality(pet, "PT")
    for path in pet:
        path.rename(tmp_path / "in" / "petct" / f"PT{path.name}")
    _as_modality(_ct(tmp_path / "in" / "mr_study", uid="1.2.3.88"), "MR")
    entries, errors = discover(BatchConfig(input=tmp_path / "in", out=tmp_path / "out"))
    assert [(e.source, e.series_uid) for e in entries] == [("petct", "1.2.3.50")]
    assert sorted((e["study"], e["source"], e["stage"]) for e in errors) == [
        ("mr_study", "1.2.3.88", "skipped"), ("petct", "1.2.3.77", "skipped")]
    assert all("not CT" in e["message"] for e in errors)

    from apps.medical_imaging.pipeline import load_upload
    from data_connectors.dicom import DicomReadError

    def zipped(folder):
        shutil.make_archive(str(tmp_path / folder), "zip", tmp_path / "in" / folder)
        return tmp_path / f"{folder}.zip"

    with pytest.raises(DicomReadError, match="no CT series, only 1 of Modality MR"):
        load_upload(zipped("mr_study"))
    volume = load_upload(zipped("petct"))
    assert volume.series_uid == "1.2.3.50" and "1 series that are not CT ignored (PT)" in volume.warnings
