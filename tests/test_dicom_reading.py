"""DICOM / NIfTI / MetaImage reading edge cases, on small series the tests build themselves."""
import csv
import random

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless,
                         generate_uid)

from data_connectors.dicom import DicomReadError, load_series, load_volume, scan_folder

N = 16   # rows = columns of the test images


def ct_slice(hu_YX, position, *, series_uid, study_uid="1.2.3.4", instance=1, iop=(1, 0, 0, 0, 1, 0),
             pixel_spacing=(0.8, 0.7), slope=1.0, intercept=-1024.0, signed=False) -> Dataset:
    """A minimal but valid CT Image Storage dataset holding hu_YX."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "DOE^SECRET", "PID-SECRET-42", "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = study_uid, series_uid, "test series"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = 2.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = np.asarray(hu_YX).shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    stored = np.round((np.asarray(hu_YX, dtype=np.float64) - intercept) / slope)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


def write_series(folder, planes, positions, *, shuffle=False, **kw):
    """One file per plane; returns the paths in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = kw.pop("series_uid", None) or generate_uid()
    names = [f"IM{n:04d}" for n in range(len(planes))]
    if shuffle:
        random.Random(0).shuffle(names)
    paths = []
    for plane, pos, name, inst in zip(planes, positions, names, range(1, len(planes) + 1)):
        ds = ct_slice(plane, pos, series_uid=uid, instance=inst, **kw)
        ds.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    return paths


def ramp_planes(z_values):
    """Planes whose HU is 10 * z (z in mm) plus a marker at row 3, column 5 (so flips show)."""
    planes = []
    for z in z_values:
        p = np.full((N, N), 10.0 * z)
        p[3, 5] = 1000.0
        planes.append(p)
    return planes


def test_hu_conversion_known_values(tmp_path):
    plane = np.array([[-1000, -1024, 0, 40] * 4] * N, dtype=float)
    write_series(tmp_path / "u", [plane] * 2, [(0, 0, 0), (0, 0, 2)], slope=1.0, intercept=-1024.0)
    write_series(tmp_path / "s", [plane] * 2, [(0, 0, 0), (0, 0, 2)], intercept=0.0, signed=True)
    write_series(tmp_path / "x", [plane] * 2, [(0, 0, 0), (0, 0, 2)], slope=2.0, intercept=-2048.0)
    raw = pydicom.dcmread(next((tmp_path / "x").iterdir()))
    assert int(raw.pixel_array[0, 1]) == 512   # stored (-1024 + 2048) / 2: the slope really is applied
    for name in "usx":
        vol = load_volume(tmp_path / name)
        assert vol.hu_ZYX.dtype == np.float32
        assert np.array_equal(vol.hu_ZYX[0, 0, :4], [-1000, -1024, 0, 40]), name


def test_slices_sorted_by_position_not_file_order(tmp_path):
    z = np.arange(8) * 2.0 - 30
    write_series(tmp_path / "a", ramp_planes(z)[::-1], [(0, 0, v) for v in z[::-1]], shuffle=True)
    vol = load_volume(tmp_path / "a")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * z)
    assert vol.spacing_zyx == pytest.approx((2.0, 0.8, 0.7))
    assert np.allclose(vol.to_patient([[0, 0, 3]]), [[0, 0, z[3]]])
    assert vol.hu_ZYX[2, 3, 5] == 1000 and not vol.warnings


def test_uneven_spacing_and_missing_slice_interpolated(tmp_path):
    z = np.array([0, 2, 4, 8, 10, 12, 14.5, 16])   # 6 missing, 14.5 off the grid
    write_series(tmp_path / "gap", ramp_planes(z), [(10, 20, v) for v in z])
    vol = load_volume(tmp_path / "gap")
    assert vol.spacing_zyx[0] == pytest.approx(2.0) and vol.hu_ZYX.shape[0] == 9
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * np.arange(0, 18, 2.0), atol=1e-3)   # linear ramp recovered
    text = " ".join(vol.warnings)
    assert "1 missing slice interpolated" in text and "uneven slice spacing" in text
    assert np.allclose(vol.to_patient([[0, 0, 3]]), [[10, 20, 6]])


def test_gantry_tilt_corrected(tmp_path):
    dz, sy = 2.0, 0.8
    shift = sy                               # each slice starts one row further posterior: atan(0.8 / 2) = 21.8 deg
    planes, positions = [], []
    for k in range(9):
        plane = np.full((N, N), -1000.0)
        plane[12 - k, 4] = 500.0             # a rod along z at y = 12 * 0.8 mm, x = 4 * 0.7 mm
        planes.append(plane)
        positions.append((0, k * shift, k * dz))
    write_series(tmp_path / "tilt", planes, positions)
    vol = load_volume(tmp_path / "tilt")
    assert any("gantry tilt 21.8 deg corrected" in w for w in vol.warnings), vol.warnings
    assert np.allclose(vol.affine[:3, :3], np.diag([0.7, 0.8, 2.0]), atol=1e-6)   # orthogonal grid
    # the rod is straight now, at the same (j, i) in every slice, where the affine says it is
    i, j, _ = np.round(vol.to_voxel([[4 * 0.7, 12 * 0.8, 8.0]])[0]).astype(int)
    assert i == 4 and np.allclose(vol.hu_ZYX[:, j, i], 500, atol=1)
    assert np.allclose(vol.hu_ZYX[:, j + 2, i], -1000, atol=1)


def test_multiframe_enhanced_ct(tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    z = np.arange(6) * 2.5
    paths = write_series(tmp_path / "single", ramp_planes(z), [(5, 6, v) for v in z])
    legacy = [pydicom.dcmread(p) for p in paths[::-1]]
    mf = LegacyConvertedEnhancedCTImage(legacy, series_instance_uid=generate_uid(), series_number=2,
                                        sop_instance_uid=generate_uid(), instance_number=1)
    mf.save_as(tmp_path / "mf.dcm")
    vol = load_volume(tmp_path / "mf.dcm")
    assert vol.hu_ZYX.shape == (6, N, N) and np.allclose(vol.hu_ZYX[:, 0, 0], 10 * z)
    assert np.allclose(vol.affine, load_volume(tmp_path / "single").affine)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_transfer_syntax(tmp_path, syntax):
    z = np.arange(4) * 3.0
    planes = [np.pad(p, 24, mode="edge") for p in ramp_planes(z)]   # 64 x 64: JPEG 2000's default 6 levels fit
    paths = write_series(tmp_path / "c", planes, [(0, 0, v) for v in z])
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(syntax)
        ds.save_as(p)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    vol = load_volume(tmp_path / "c")
    assert np.array_equal(vol.hu_ZYX, np.stack(planes)) and vol.hu_ZYX[0, 27, 29] == 1000


def test_non_dicom_skipped_and_corrupt_reported(tmp_path):
    z = np.arange(3) * 2.0
    paths = write_series(tmp_path / "s", ramp_planes(z), [(0, 0, v) for v in z])
    (tmp_path / "s" / "notes.txt").write_text("not an image")
    (tmp_path / "s" / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    good = paths[0].read_bytes()
    (tmp_path / "s" / "truncated_header").write_bytes(good[:200])             # cut inside the meta header
    (tmp_path / "s" / "garbage").write_bytes(bytes(128) + b"DICM" + bytes(range(256)) * 3)
    scan = scan_folder(tmp_path)
    assert len(scan.series) == 1 and len(scan.series[0].files) == 3
    reasons = {p.name: r for p, r in scan.skipped}
    assert reasons["notes.txt"].startswith("not DICOM") and reasons["thumb.png"].startswith("not DICOM")
    assert reasons["truncated_header"].startswith("unreadable") and reasons["garbage"].startswith("unreadable")
    assert len(load_volume(tmp_path / "s").hu_ZYX) == 3                       # the good files still load


def test_truncated_pixel_data_names_the_file(tmp_path):
    z = np.arange(3) * 2.0
    paths = write_series(tmp_path / "s", ramp_planes(z), [(0, 0, v) for v in z])
    paths[1].write_bytes(paths[1].read_bytes()[:-100])
    with pytest.raises(DicomReadError, match=paths[1].name) as err:
        load_volume(tmp_path / "s")
    assert "SECRET" not in str(err.value)


def test_pixel_data_missing(tmp_path):
    z = np.arange(3) * 2.0
    paths = write_series(tmp_path / "s", ramp_planes(z), [(0, 0, v) for v in z])
    ds = pydicom.dcmread(paths[2])
    del ds.PixelData
    ds.save_as(paths[2])
    with pytest.raises(DicomReadError, match=f"{paths[2].name}: no pixel data"):
        load_volume(tmp_path / "s")


def test_two_series_in_one_folder(tmp_path):
    z = np.arange(3) * 2.0
    write_series(tmp_path / "mix", ramp_planes(z), [(0, 0, v) for v in z], series_uid="1.2.3.100")
    for n, v in enumerate(z):   # the second series' files interleave with the first's in the folder
        ct_slice(ramp_planes([v])[0], (0, 0, v), series_uid="1.2.3.200", instance=n + 1).save_as(
            tmp_path / "mix" / f"IM{n:04d}b", enforce_file_format=True)
    scan = scan_folder(tmp_path / "mix")
    assert [s.series_uid for s in scan.series] == ["1.2.3.100", "1.2.3.200"]
    assert [len(s.files) for s in scan.series] == [3, 3]
    with pytest.raises(DicomReadError, match="2 CT series") as err:
        load_volume(tmp_path / "mix")
    assert "1.2.3.100" in str(err.value) and "1.2.3.200" in str(err.value) and "SECRET" not in str(err.value)
    assert load_series(scan.series[1]).series_uid == "1.2.3.200"


def test_scan_keeps_series_header_fields_and_never_prints_the_patient(tmp_path):
    z = np.arange(3) * 2.0
    paths = write_series(tmp_path / "s", ramp_planes(z), [(0, 0, v) for v in z], series_uid="1.2.3.300")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesNumber, ds.AccessionNumber = 7, "ACC-SECRET-9"
        ds.save_as(path, enforce_file_format=True)
    (series,) = scan_folder(tmp_path / "s").series
    assert (series.number, series.patient_id, series.accession) == ("7", "PID-SECRET-42", "ACC-SECRET-9")
    assert (series.study_uid, series.modality, series.description) == ("1.2.3.4", "CT", "test series")
    assert "SECRET" not in repr(series)
    assert load_series(series).series_uid == "1.2.3.300"


def test_one_slice_series(tmp_path):
    write_series(tmp_path / "one", ramp_planes([4.0]), [(0, 0, 4.0)])
    with pytest.raises(DicomReadError, match="single slice"):
        load_volume(tmp_path / "one")
    vol = load_volume(tmp_path / "one", allow_single_slice=True)
    assert vol.hu_ZYX.shape == (1, N, N) and any("single-slice" in w for w in vol.warnings)


def test_no_dicom_in_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DicomReadError, match="no DICOM series"):
        load_volume(tmp_path)
    with pytest.raises(DicomReadError, match="readme.txt: not a DICOM file"):
        load_volume(tmp_path / "readme.txt")
    with pytest.raises(DicomReadError, match="no such file"):
        load_volume(tmp_path / "absent")


def test_prone_orientation_reordered_to_lps(tmp_path):
    z = np.arange(4) * 2.0
    # prone: columns run to the patient's right, rows anterior
    write_series(tmp_path / "p", ramp_planes(z), [(100, 50, v) for v in z], iop=(-1, 0, 0, 0, -1, 0))
    vol = load_volume(tmp_path / "p")
    assert np.allclose(np.diag(vol.affine)[:3], [0.7, 0.8, 2.0])
    # the marker at stored (row 3, col 5) sits at x = 100 - 5 * 0.7, y = 50 - 3 * 0.8
    i, j, k = np.round(vol.to_voxel([[100 - 3.5, 50 - 2.4, 2.0]])[0]).astype(int)
    assert vol.hu_ZYX[k, j, i] == 1000


def _marker_volume():
    arr_XYZ = np.zeros((6, 7, 5), dtype=np.int16) - 1000
    arr_XYZ[1, 2, 3] = 700
    return arr_XYZ


def test_nifti_known_voxel_maps_to_lps_mm(tmp_path):
    ras = np.array([[-0.7, 0, 0, 90.0], [0, -0.8, 0, 100.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(_marker_volume(), ras), tmp_path / "ct.nii.gz")
    vol = load_volume(tmp_path / "ct.nii.gz")
    ras_mm = ras @ [1, 2, 3, 1]
    lps_mm = np.array([-ras_mm[0], -ras_mm[1], ras_mm[2]])
    i, j, k = np.round(vol.to_voxel([lps_mm])[0]).astype(int)
    assert vol.hu_ZYX[k, j, i] == 700 and vol.hu_ZYX.dtype == np.float32
    assert vol.spacing_zyx == pytest.approx((2.5, 0.8, 0.7))
    assert np.all(np.diag(vol.affine)[:3] > 0)    # LPS orientation


def test_metaimage_known_voxel_maps_to_lps_mm(tmp_path):
    arr_XYZ = _marker_volume()
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = -30 12.5 -200\nElementSpacing = 0.7 0.8 2.5\n"
              f"DimSize = {' '.join(map(str, arr_XYZ.shape))}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    (tmp_path / "ct.mha").write_bytes(header.encode() + arr_XYZ.transpose(2, 1, 0).astype("<i2").tobytes())
    vol = load_volume(tmp_path / "ct.mha")      # MetaImage is LPS already: voxel (1, 2, 3) -> offset + idx * sp
    expect = np.array([-30 + 1 * 0.7, 12.5 + 2 * 0.8, -200 + 3 * 2.5])
    assert np.allclose(vol.to_voxel([expect])[0], [1, 2, 3], atol=1e-4)
    assert vol.hu_ZYX[3, 2, 1] == 700


def test_lidc_series_nodule_lands_in_soft_tissue(shared_dataset):
    root = shared_dataset("lidc-ct-subset")
    series_dirs = sorted({p.parent for p in root.glob("LIDC-IDRI-0001/**/*.dcm")})
    assert len(series_dirs) == 1
    vol = load_volume(series_dirs[0])
    rows = list(csv.DictReader(open(root / "nodules.csv")))
    row = next(r for r in rows if r["seriesuid"] == vol.series_uid)
    xyz = np.array([[float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]])
    ijk = vol.to_voxel(xyz)[0]
    assert np.all(ijk > -0.5) and np.all(ijk < np.array(vol.hu_ZYX.shape[::-1]) - 0.5)
    i, j, k = np.round(ijk).astype(int)
    assert -150 < float(np.median(vol.hu_ZYX[k, j - 1:j + 2, i - 1:i + 2])) < 200   # a solid nodule, not lung
    assert float(np.median(vol.hu_ZYX)) < -300                                    # a chest: mostly air/lung


def test_unused_high_bits_masked(tmp_path):
    z = [0.0, 2.0]
    paths = write_series(tmp_path / "b", ramp_planes(z), [(0, 0, v) for v in z])
    for p in paths:   # 12 bits stored; junk (an old overlay) in the top 4 bits must not change the HU
        ds = pydicom.dcmread(p)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") | 0xA000).astype("<u2").tobytes()
        ds.save_as(p)
    vol = load_volume(tmp_path / "b")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], [0, 20]) and vol.hu_ZYX[1, 3, 5] == 1000


def test_resampled_keeps_patient_positions(tmp_path):
    z = np.arange(8) * 1.0
    write_series(tmp_path / "r", ramp_planes(z), [(0, 0, v) for v in z], pixel_spacing=(1.0, 1.0))
    vol = load_volume(tmp_path / "r")
    coarse = vol.resampled((2.0, 2.0, 2.0))
    assert coarse.spacing_zyx == pytest.approx((2.0, 2.0, 2.0))
    assert coarse.hu_ZYX.shape == (4, 8, 8)
    # the same patient point holds the same HU (the ramp is linear in z, 10 HU per mm)
    ijk = coarse.to_voxel([[6.0, 8.0, 4.0]])[0]
    assert np.allclose(ijk, np.round(ijk), atol=1e-6)
    i, j, k = np.round(ijk).astype(int)
    assert coarse.hu_ZYX[k, j, i] == pytest.approx(40.0, abs=1e-3)


def test_localizer_and_duplicate_in_series_dropped_with_warnings(tmp_path):
    z = np.arange(5) * 2.0
    write_series(tmp_path / "d", ramp_planes(z), [(0, 0, v) for v in z], series_uid="1.2.3.7")
    ct_slice(ramp_planes([4.0])[0], (0, 0, 4.0), series_uid="1.2.3.7", instance=99).save_as(
        tmp_path / "d" / "dup", enforce_file_format=True)
    ct_slice(np.zeros((N, N)), (0, 0, 0), series_uid="1.2.3.7", iop=(1, 0, 0, 0, 0, -1)).save_as(
        tmp_path / "d" / "scout", enforce_file_format=True)                      # a coronal localizer
    vol = load_volume(tmp_path / "d")
    assert vol.hu_ZYX.shape == (5, N, N) and np.allclose(vol.hu_ZYX[:, 0, 0], 10 * z)
    text = " ".join(vol.warnings)
    assert "1 images of another size/orientation" in text and "scout" in text
    assert "1 images at duplicate slice positions" in text


def test_preamble_less_dicom_files_are_read(tmp_path):
    z = np.arange(3) * 2.0
    (tmp_path / "raw").mkdir()
    for n, v in enumerate(z):   # old exports: a bare dataset, no 128-byte preamble, no 'DICM', no file meta
        ds = ct_slice(ramp_planes([v])[0], (0, 0, v), series_uid="1.2.3.9", instance=n + 1)
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(tmp_path / "raw" / f"{n}.ima", ds, implicit_vr=True, little_endian=True)
    assert (tmp_path / "raw" / "0.ima").read_bytes()[128:132] != b"DICM"
    scan = scan_folder(tmp_path / "raw")
    assert [len(s.files) for s in scan.series] == [3] and not scan.skipped
    assert np.allclose(load_volume(tmp_path / "raw").hu_ZYX[:, 0, 0], 10 * z)


def test_synth_series_reads_the_same_with_monai_pydicomreader(tmp_path):
    from monai.transforms import LoadImage

    from apps.medical_imaging.synth import SynthConfig, make_study, write_study_dicom
    study = make_study(2, cfg=SynthConfig(shape_zyx=(10, 64, 64), spacing_zyx=(5.0, 5.4, 5.4)))
    write_study_dicom(study, tmp_path / "s")
    ours = load_volume(tmp_path / "s")
    img = LoadImage(reader="PydicomReader", image_only=True)(str(tmp_path / "s"))   # (i, j, k), RAS affine
    assert np.array_equal(np.asarray(img).transpose(2, 1, 0), ours.hu_ZYX)
    assert np.allclose(np.diag([-1.0, -1, 1, 1]) @ np.asarray(img.affine), ours.affine, atol=1e-3)


def test_window_maps_hu_to_unit_range():
    from data_connectors.dicom import LUNG_WINDOW, window
    out = window(np.array([-2000.0, -1350.0, -600.0, 150.0, 3000.0]), *LUNG_WINDOW)
    assert out.dtype == np.float32 and np.allclose(out, [0, 0, 0.5, 1, 1])


def test_padding_below_air_clamped(tmp_path):
    plane = np.full((N, N), 30.0)
    plane[0, :] = -3024.0                       # outside the reconstruction circle
    write_series(tmp_path / "pad", [plane] * 2, [(0, 0, 0), (0, 0, 1)], intercept=0.0, signed=True)
    vol = load_volume(tmp_path / "pad")
    assert np.all(vol.hu_ZYX[:, 0, :] == -1024) and np.all(vol.hu_ZYX[:, 1:, :] == 30)


def test_scout_and_dose_screen_beside_the_scan_are_ignored(tmp_path):
    z = np.arange(4) * 2.0
    write_series(tmp_path / "x", ramp_planes(z), [(0, 0, v) for v in z], series_uid="1.2.3.1")
    dose = ct_slice(np.zeros((N, N)), (0, 0, 0), series_uid="1.2.3.2")              # one-image series
    dose.save_as(tmp_path / "x" / "dose", enforce_file_format=True)
    for n in range(2):                                                                # a two-image scout
        scout = ct_slice(np.zeros((N, N)), (0, 0, n), series_uid="1.2.3.3", instance=n + 1)
        scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        scout.save_as(tmp_path / "x" / f"scout{n}", enforce_file_format=True)
    vol = load_volume(tmp_path / "x")
    assert vol.series_uid == "1.2.3.1" and vol.hu_ZYX.shape == (4, N, N)
    assert sum("ignored: a localizer or single image" in w for w in vol.warnings) == 2
