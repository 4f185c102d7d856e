"""DICOM export variants seen in real PACS folders: scouts and dose screens sharing the CT series, slices
without positions, padding values, orientation jitter. Each test failed on the reader before its fix."""
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from test_dicom_reading import N, ct_slice, ramp_planes, write_series

from data_connectors.dicom import DicomReadError, is_volume_series, load_volume, scan_folder

Z = np.arange(6) * 2.0


def _ct(folder, uid="1.2.3.50", **kw):
    return write_series(folder, ramp_planes(Z), [(0, 0, v) for v in Z], series_uid=uid, **kw)


def _screen_save(series_uid: str) -> Dataset:
    """A dose screen as scanners store it: an RGB secondary capture, no patient geometry, Modality CT."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3.4", series_uid, "CT"
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 8, 8, 7, 0
    ds.PixelData = bytes(8 * 8 * 3)
    return ds


def _dose_sr(series_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"   # dose SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.ValueType = "1.2.3.4", series_uid, "SR", "CONTAINER"
    return ds


def _pad(value):
    def set_padding(n, ds):
        ds.add_new("PixelPaddingValue", "US", value)
    return set_padding


def _edit(paths, fn):
    for n, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        fn(n, ds)
        ds.save_as(p)


def test_axial_localizer_inside_the_ct_series_dropped(tmp_path):
    _ct(tmp_path / "s")
    scout = ct_slice(np.zeros((N, N)), (0, 0, 3.0), series_uid="1.2.3.50", instance=1)   # same size, axial
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.save_as(tmp_path / "s" / "A_scout", enforce_file_format=True)
    vol = load_volume(tmp_path / "s")
    assert vol.hu_ZYX.shape == (6, N, N) and np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z)
    assert any("1 localizer" in w and "A_scout" in w for w in vol.warnings), vol.warnings
    assert not any("uneven" in w for w in vol.warnings)


def test_scout_filed_first_in_the_ct_series_beside_a_dose_screen(tmp_path):
    _ct(tmp_path / "s")
    scout = ct_slice(np.zeros((N, 2 * N)), (0, 0, 0), series_uid="1.2.3.50", iop=(1, 0, 0, 0, 0, -1))
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.save_as(tmp_path / "s" / "0_scout", enforce_file_format=True)      # sorts before IM0000...
    _screen_save("1.2.3.60").save_as(tmp_path / "s" / "dose", enforce_file_format=True)
    vol = load_volume(tmp_path / "s")
    assert vol.series_uid == "1.2.3.50" and vol.hu_ZYX.shape == (6, N, N)
    assert any("1.2.3.60" in w and "ignored" in w for w in vol.warnings)


def test_two_page_dose_screen_series_is_no_rival_volume(tmp_path):
    _ct(tmp_path / "s")
    for n in range(2):
        _screen_save("1.2.3.61").save_as(tmp_path / "s" / f"dose{n}", enforce_file_format=True)
    scan = scan_folder(tmp_path / "s")
    assert [is_volume_series(s) for s in scan.series] == [True, False]
    assert load_volume(tmp_path / "s").series_uid == "1.2.3.50"


@pytest.mark.parametrize("kind", ["screen save", "dose SR"])
def test_non_slice_sharing_the_series_uid_dropped(tmp_path, kind):
    _ct(tmp_path / "s")
    extra = _screen_save("1.2.3.50") if kind == "screen save" else _dose_sr("1.2.3.50")
    extra.save_as(tmp_path / "s" / "extra", enforce_file_format=True)
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z)
    assert any("no CT slices and were ignored" in w and "extra" in w for w in vol.warnings)


def test_series_of_localizers_only_is_a_clear_error(tmp_path):
    paths = _ct(tmp_path / "s")
    _edit(paths, lambda n, ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    with pytest.raises(DicomReadError, match="no CT slices .*localizer.*IM0000"):
        load_volume(tmp_path / "s")


def test_slices_without_position_among_positioned_ones_dropped(tmp_path):
    paths = _ct(tmp_path / "s")
    _edit(paths[2:3], lambda n, ds: delattr(ds, "ImagePositionPatient"))
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z)          # the gap interpolated on the linear ramp
    assert any("1 images without ImagePositionPatient ignored" in w and "IM0002" in w for w in vol.warnings)


def test_slice_without_position_placed_by_its_slice_location(tmp_path):
    paths = _ct(tmp_path / "s")
    z_flip = -Z   # SliceLocation may run against z: the fit finds the sign

    def locate(n, ds):
        ds.SliceLocation = float(z_flip[n])
        if n in (2, 3):
            del ds.ImagePositionPatient
    _edit(paths, locate)
    vol = load_volume(tmp_path / "s")
    assert np.array_equal(vol.hu_ZYX[:, 3, 5], np.full(6, 1000.0)) and np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z)
    assert not any("interpolated" in w for w in vol.warnings)
    assert any("2 images without ImagePositionPatient placed by their SliceLocation" in w for w in vol.warnings)

    _edit(paths[:1], lambda n, ds: setattr(ds, "SliceLocation", 7.0))   # inconsistent: no fit, dropped instead
    assert any("2 images without ImagePositionPatient ignored" in w for w in load_volume(tmp_path / "s").warnings)


def test_no_positions_at_all_falls_back_on_slice_location_then_instance_number(tmp_path):
    paths = _ct(tmp_path / "s", shuffle=True)

    def strip(n, ds):
        ds.SliceLocation = float(ds.ImagePositionPatient[2])
        del ds.ImagePositionPatient
    _edit(paths, strip)
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z) and vol.spacing_zyx[0] == pytest.approx(2.0)
    assert any("placed by SliceLocation" in w for w in vol.warnings)

    _edit(paths, lambda n, ds: delattr(ds, "SliceLocation"))   # InstanceNumber: 1 is the most superior
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z[::-1]) and vol.spacing_zyx[0] == pytest.approx(2.0)
    assert any("placed by InstanceNumber" in w for w in vol.warnings)

    _edit(paths, lambda n, ds: setattr(ds, "InstanceNumber", 1))
    with pytest.raises(DicomReadError, match="IM00.*ImagePositionPatient is missing"):
        load_volume(tmp_path / "s")


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_malformed_instance_number_is_no_reason_to_fail(tmp_path):
    paths = _ct(tmp_path / "s")
    tag = b"\x20\x00\x13\x00IS\x02\x00"       # (0020,0013) InstanceNumber, explicit VR, 2 bytes: "2 "
    raw = paths[1].read_bytes()
    assert raw.count(tag + b"2 ") == 1
    paths[1].write_bytes(raw.replace(tag + b"2 ", tag + b"x1"))   # not an IS: pydicom cannot parse it
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z)


@pytest.mark.parametrize("bits_stored", [16, 12])
def test_padding_value_read_as_metal_becomes_air(tmp_path, bits_stored):
    plane = np.full((N, N), 40.0)
    plane[:, :2] = 65535 - 1024                # unsigned, intercept -1024: stored 0xFFFF marks padding
    paths = write_series(tmp_path / "p", [plane] * 3, [(0, 0, 0), (0, 0, 1), (0, 0, 2)])

    def mark(n, ds):                           # 12 of 16 bits: the padding reads 0x0FFF = 3071 HU once masked
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        _pad(0xFFFF)(n, ds)
    _edit(paths, mark)
    assert pydicom.dcmread(paths[0]).pixel_array[0, 0] == (1 << bits_stored) - 1
    vol = load_volume(tmp_path / "p")
    assert np.all(vol.hu_ZYX[:, :, :2] == -1024) and np.all(vol.hu_ZYX[:, :, 2:] == 40)
    assert any("PixelPaddingValue" in w for w in vol.warnings)


def test_padding_value_inside_tissue_range_left_alone(tmp_path):
    plane = np.full((N, N), 40.0)
    paths = write_series(tmp_path / "p", [plane] * 2, [(0, 0, 0), (0, 0, 1)])
    _edit(paths, _pad(1064))   # = 40 HU: cannot be told from tissue
    assert np.all(load_volume(tmp_path / "p").hu_ZYX == 40)


def test_orientation_rounding_jitter_splits_nothing(tmp_path):
    paths = _ct(tmp_path / "s")
    # 0.00499 and 0.00501 round to different hundredths; the slices are the same plane orientation
    _edit(paths, lambda n, ds: setattr(ds, "ImageOrientationPatient",
                                       [1, 0.00499 if n % 2 else 0.00501, 0, 0, 1, 0]))
    vol = load_volume(tmp_path / "s")
    assert vol.hu_ZYX.shape == (6, N, N) and not any("another size" in w for w in vol.warnings)


def test_coronal_acquisition_lands_in_lps_order(tmp_path):
    # coronal slices: columns along x (left), rows downwards (-z), slices stacked along y
    planes, positions = [], []
    for n in range(5):
        plane = np.full((N, N), -1000.0)
        plane[2, 7] = 500.0 + n                  # row 2 = 2 * 0.8 mm below the top, column 7 = 7 * 0.7 mm
        planes.append(plane)
        positions.append((10.0, 3.0 * n, 50.0))
    write_series(tmp_path / "c", planes, positions, iop=(1, 0, 0, 0, 0, -1))
    vol = load_volume(tmp_path / "c")
    assert np.all(np.diag(vol.affine)[:3] > 0) and vol.hu_ZYX.shape == (N, 5, N)
    for n in range(5):
        i, j, k = np.round(vol.to_voxel([[10 + 7 * 0.7, 3.0 * n, 50 - 2 * 0.8]])[0]).astype(int)
        assert vol.hu_ZYX[k, j, i] == 500 + n


def test_big_endian_bare_dataset_is_found_and_read(tmp_path):
    (tmp_path / "be").mkdir()
    for n, z in enumerate(Z[:3]):   # an old export: no preamble, no file meta, explicit VR big endian
        ds = ct_slice(ramp_planes([z])[0], (0, 0, z), series_uid="1.2.3.70", instance=n + 1)
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(tmp_path / "be" / f"{n}", ds, little_endian=False, implicit_vr=False, force_encoding=True)
    assert (tmp_path / "be" / "0").read_bytes()[:2] == b"\x00\x08"
    assert [len(s.files) for s in scan_folder(tmp_path / "be").series] == [3]
    assert np.allclose(load_volume(tmp_path / "be").hu_ZYX[:, 0, 0], 10 * Z[:3])


def test_thick_reconstruction_under_the_same_uid_dropped_but_a_thick_zone_kept(tmp_path):
    paths = _ct(tmp_path / "s")                                  # 2 mm slices, SliceThickness 2
    for n, z in enumerate([1.0, 5.0]):                            # a 4 mm reconstruction among them
        thick = ct_slice(np.full((N, N), -500.0), (0, 0, z), series_uid="1.2.3.50", instance=100 + n)
        thick.SliceThickness = 4.0
        thick.save_as(tmp_path / "s" / f"thick{n}", enforce_file_format=True)
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z)
    assert any("2 slices of another reconstruction or acquisition (4 mm)" in w for w in vol.warnings), vol.warnings

    for p in tmp_path.joinpath("s").glob("thick*"):
        p.unlink()
    _edit(paths[4:], lambda n, ds: setattr(ds, "SliceThickness", 4.0))   # a thicker zone at one end: one series
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z) and not any("reconstruction" in w for w in vol.warnings)


def test_repeated_acquisition_under_one_uid_dropped_but_sequential_rotations_kept(tmp_path):
    paths = _ct(tmp_path / "s")
    _edit(paths, lambda n, ds: setattr(ds, "AcquisitionNumber", 1))
    for n, z in enumerate(Z[:3]):            # a second scan of the same range, the table 0.3 mm off
        again = ct_slice(np.full((N, N), -800.0), (0, 0, z + 0.3), series_uid="1.2.3.50", instance=50 + n)
        again.AcquisitionNumber = 2
        again.save_as(tmp_path / "s" / f"again{n}", enforce_file_format=True)
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z)
    assert any("3 slices of another reconstruction or acquisition (2 mm, acquisition 2)" in w
               for w in vol.warnings), vol.warnings

    for p in tmp_path.joinpath("s").glob("again*"):
        p.unlink()
    _edit(paths, lambda n, ds: setattr(ds, "AcquisitionNumber", n // 2 + 1))   # step-and-shoot: 2 slices a turn
    vol = load_volume(tmp_path / "s")
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z) and not vol.warnings


def _legacy_multiframe(path, iop, offsets):
    """One file of len(offsets) frames placed by GridFrameOffsetVector (no functional groups); HU 10 * offset."""
    ds = ct_slice(np.zeros((N, N)), (0, 0, 0), series_uid="1.2.3.80", iop=iop)
    ds.NumberOfFrames, ds.GridFrameOffsetVector = len(offsets), [float(o) for o in offsets]
    ds.PixelData = np.concatenate([np.full(N * N, 10 * o + 1024, dtype="<u2") for o in offsets]).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_grid_frame_offsets_run_along_the_unit_normal(tmp_path):
    # direction cosines written with too few digits (0.8 truncated to 0.79): directions of length 0.992
    path = _legacy_multiframe(tmp_path / "mf.dcm", (0.6, 0.79, 0, -0.79, 0.6, 0), Z)
    vol = load_volume(path)
    assert vol.spacing_zyx[0] == pytest.approx(2.0)
    assert np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z)


# zero-length directions failed with a NaN error naming only the series; parallel ones were already an error
@pytest.mark.parametrize("iop", [(0, 0, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0), (1, 0, 0, 1, 0, 0)],
                         ids=["zeros", "no column direction", "parallel"])
@pytest.mark.parametrize("layout", ["slices", "slices without positions", "legacy multi-frame"])
def test_degenerate_orientation_is_a_clear_error_naming_the_file(tmp_path, iop, layout):
    def unplace(n, ds):
        ds.SliceLocation = float(Z[n])
        del ds.ImagePositionPatient
    if layout == "legacy multi-frame":
        name, source = "mf.dcm", _legacy_multiframe(tmp_path / "mf.dcm", iop, Z)
    else:
        paths = _ct(tmp_path / "s", iop=iop)
        if layout == "slices without positions":
            _edit(paths, unplace)
        name, source = "IM000", tmp_path / "s"
    with pytest.raises(DicomReadError, match=f"{name}.*ImageOrientationPatient .*(zero length|parallel)"):
        load_volume(source)


def _as_modality(paths, modality: str):
    storage = {"PT": "1.2.840.10008.5.1.4.1.1.128", "MR": "1.2.840.10008.5.1.4.1.1.4"}   # PET / MR Image Storage

    def change(_, ds):
        ds.Modality, ds.SOPClassUID = modality, storage[modality]
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    _edit(paths, change)


def test_pet_series_of_a_pet_ct_exam_is_never_read_as_ct(tmp_path):
    """A PET/CT study folder: the PET series (its values SUVs or Bq/ml, not HU) is left out, named in a warning;
    alone it is a clear error (before: read as a CT volume, or '2 CT series in one folder')."""
    from data_connectors.dicom import ct_series, load_series

    _ct(tmp_path / "study")
    pet = _ct(tmp_path / "pet_files", uid="1.2.3.77")
    _as_modality(pet, "PT")
    for path in pet:                            # in the CT's folder, as a PACS exports the exam
        path.rename(tmp_path / "study" / f"PT{path.name}")
    vol = load_volume(tmp_path / "study")
    assert vol.series_uid == "1.2.3.50"
    assert any("1.2.3.77" in w and "Modality PT, not CT" in w for w in vol.warnings), vol.warnings
    _as_modality(_ct(tmp_path / "pet"), "PT")
    with pytest.raises(DicomReadError, match="no CT series, only 1.2.3.50 \\(PT"):
        load_volume(tmp_path / "pet")
    [pet] = scan_folder(tmp_path / "pet").series
    with pytest.raises(DicomReadError, match="is Modality PT, not CT"):
        load_series(pet)
    anonymised = scan_folder(tmp_path / "pet").series[0]
    anonymised.modality = ""                    # no Modality at all: may be CT
    assert ct_series([anonymised]) == ([anonymised], [])
    _edit(sorted((tmp_path / "pet").iterdir()), lambda _, ds: setattr(ds, "Modality", " pt"))   # sloppy writers
    with pytest.raises(DicomReadError, match="no CT series"):
        load_volume(tmp_path / "pet")
    # PET images filed under the CT's own series UID: left out of the volume, with a warning
    mixed = _ct(tmp_path / "mixed")
    _as_modality(mixed[-2:], "PT")
    vol = load_volume(tmp_path / "mixed")
    assert vol.hu_ZYX.shape[0] == len(mixed) - 2 and any("Modality PT, not CT" in w for w in vol.warnings)
