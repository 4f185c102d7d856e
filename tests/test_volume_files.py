"""CT volumes from NIfTI / MetaImage files: geometry under any storage order, clear errors for what is no CT
volume, and the batch diagnosis of a file landing where the same study's DICOM folder does."""
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest

from data_connectors.dicom import DicomReadError, load_volume
from test_medical_pipeline import dataset  # noqa: F401 - the module's tiny synthetic studies and detector

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE_IJK = (24, 20, 10)
MARKER_IJK = (17, 6, 7)


def _ct_IJK() -> np.ndarray:
    """A small CT-like volume in HU [I, J, K]: air, a body, one bright marker voxel."""
    hu = np.full(SHAPE_IJK, -1000.0, dtype=np.float32)
    hu[3:21, 3:17, :] = 30.0
    hu[MARKER_IJK] = 1500.0
    return hu


def _affine_lps() -> np.ndarray:
    """Voxel (i, j, k) -> LPS mm: anisotropic, off-origin, i toward the patient's left (DICOM order)."""
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = (-120.0, -95.5, -300.25)
    return affine


def _flip(shape, axes) -> np.ndarray:
    """Index map of storing an array flipped along `axes`: new index -> old index."""
    f = np.eye(4)
    for a in axes:
        f[a, a], f[a, 3] = -1.0, shape[a] - 1
    return f


def _marker_mm(vol) -> np.ndarray:
    k, j, i = np.unravel_index(np.argmax(vol.hu_ZYX), vol.hu_ZYX.shape)
    return vol.to_patient([[i, j, k]])[0]


def _variants(hu, affine_lps):
    """(name, data [stored order], RAS affine, expected marker mm) of the same volume stored in other ways."""
    ras = LPS_RAS @ affine_lps
    marker = (affine_lps @ np.append(MARKER_IJK, 1.0))[:3]
    perm = np.zeros((4, 4))
    perm[0, 1] = perm[1, 2] = perm[2, 0] = perm[3, 3] = 1.0            # stored (k, i, j)
    angle = np.deg2rad(12.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]   # about z (same in LPS, RAS)
    return [
        ("ras_float.nii.gz", hu, ras, marker),
        ("int16.nii", hu.astype(np.int16), ras, marker),
        ("flipped_ij.nii.gz", hu[::-1, ::-1].copy(), ras @ _flip(hu.shape, (0, 1)), marker),
        ("flipped_k.nii.gz", hu[:, :, ::-1].copy(), ras @ _flip(hu.shape, (2,)), marker),
        ("permuted_kij.nii.gz", hu.transpose(2, 0, 1).copy(), ras @ perm, marker),
        ("rotated.nii.gz", hu, rot @ ras, rot[:3, :3] @ marker),         # an oblique (non-diagonal) affine
    ]


@pytest.mark.parametrize("index", range(6))
def test_nifti_storage_orders_keep_patient_positions(tmp_path, index):
    name, data, ras, expected = _variants(_ct_IJK(), _affine_lps())[index]
    nib.save(nib.Nifti1Image(data, ras), tmp_path / name)
    vol = load_volume(tmp_path / name)
    assert vol.hu_ZYX.shape[0] == SHAPE_IJK[2] or name.startswith("permuted")
    np.testing.assert_allclose(_marker_mm(vol), expected, atol=1e-3)
    assert not vol.warnings


def test_metaimage_in_lps_keeps_patient_positions(tmp_path):
    itk = pytest.importorskip("itk")
    hu, affine = _ct_IJK(), _affine_lps()
    stored, affine = hu[::-1].copy(), affine @ _flip(hu.shape, (0,))     # i toward the right, as some tools write
    img = itk.image_from_array(np.ascontiguousarray(stored.astype(np.int16).transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(affine[:3, 3].tolist())
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(affine[:3, :3] / spacing)))
    itk.imwrite(img, str(tmp_path / "ct.mha"))
    vol = load_volume(tmp_path / "ct.mha")
    np.testing.assert_allclose(_marker_mm(vol), (_affine_lps() @ np.append(MARKER_IJK, 1.0))[:3], atol=1e-3)


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, LPS_RAS @ _affine_lps() if affine is None else affine), path)
    return path


@pytest.mark.parametrize("case, match", [
    ("2d", "a 2D image"), ("4d", "a 4D image"), ("one_slice", "a single slice"), ("nan", "1 of .* NaN"),
    ("all_nan", "NaN or infinite"), ("dicom", "a DICOM file"),
])
def test_files_that_are_no_ct_volume_are_clear_errors(tmp_path, case, match):
    hu = _ct_IJK()
    if case == "2d":
        path = _save(tmp_path / "x.nii.gz", hu[:, :, 4].copy())
    elif case == "4d":
        path = _save(tmp_path / "x.nii.gz", np.stack([hu, hu], axis=-1))
    elif case == "one_slice":
        path = _save(tmp_path / "x.nii.gz", hu[:, :, 4:5].copy())
    elif case == "nan":
        hu[0, 0, 0] = np.nan
        path = _save(tmp_path / "x.nii.gz", hu)
    elif case == "all_nan":
        path = _save(tmp_path / "x.nii.gz", np.full(SHAPE_IJK, np.nan, dtype=np.float32))
    else:
        path = tmp_path / "x.nii.gz"     # a DICOM file under a NIfTI name
        path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x00\x00\x00\x00")
    with pytest.raises(DicomReadError, match=match) as err:
        load_volume(path)
    assert str(path) in str(err.value)


def test_single_slice_file_loads_when_allowed_and_odd_files_warn(tmp_path):
    vol = load_volume(_save(tmp_path / "one.nii.gz", _ct_IJK()[:, :, 4:5].copy()), allow_single_slice=True)
    assert vol.hu_ZYX.shape == (1, 20, 24) and any("single-slice" in w for w in vol.warnings)
    mask = load_volume(_save(tmp_path / "mask.nii.gz", np.zeros(SHAPE_IJK, dtype=np.uint8)))
    assert any("Hounsfield" in w for w in mask.warnings)       # no air at all: not CT in HU
    img = nib.Nifti1Image(_ct_IJK(), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    nib.save(img, tmp_path / "bare.nii.gz")
    assert any("no orientation" in w for w in load_volume(tmp_path / "bare.nii.gz").warnings)


def test_upload_zip_of_two_images_says_so(tmp_path):
    from apps.medical_imaging.pipeline import load_upload

    a, b = _save(tmp_path / "a.nii.gz", _ct_IJK()), _save(tmp_path / "b.nii.gz", _ct_IJK())
    with zipfile.ZipFile(tmp_path / "up.zip", "w") as z:
        z.write(a, "a.nii.gz")
        z.write(b, "b.nii.gz")
    with pytest.raises(DicomReadError, match="2 image files"):
        load_upload(tmp_path / "up.zip")


def test_diagnosing_a_nifti_file_finds_what_its_dicom_folder_finds(dataset, tmp_path):  # noqa: F811
    """The same synthetic study as a DICOM folder and as a NIfTI stored flipped and permuted (another tool's
    export): the findings land on the same patient-mm positions."""
    from apps.medical_imaging.batch import BatchConfig, run_batch

    root, _ = dataset
    study = sorted((root / "data" / "studies").iterdir())[0]
    vol = load_volume(study)
    hu = vol.hu_ZYX.transpose(2, 1, 0)[::-1, :, ::-1]                   # stored i reversed, k reversed
    ras = LPS_RAS @ vol.affine @ _flip(vol.hu_ZYX.shape[::-1], (0, 2))
    _save(tmp_path / "study.nii.gz", hu.astype(np.float32).copy(), ras)

    def findings(source, out):
        summary = run_batch(BatchConfig(input=source, out=out, detector=root / "detector", progress=False,
                                        overlays=False))
        assert summary["failed"] == 0, summary
        docs = [json.loads(p.read_text()) for p in out.glob("studies/*/findings.json")]
        return np.array([[f["x_mm"], f["y_mm"], f["z_mm"]] for d in docs for f in d["findings"]]).reshape(-1, 3)

    from_dicom = findings(study, tmp_path / "dicom")
    from_file = findings(tmp_path / "study.nii.gz", tmp_path / "file")
    assert len(from_dicom) and len(from_file) == len(from_dicom)
    nearest = np.linalg.norm(from_dicom[:, None] - from_file[None], axis=-1).min(axis=1)
    assert np.all(nearest < 2.0), nearest
