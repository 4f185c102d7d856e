"""PixelPaddingValue: decided with each frame's own rescale (enhanced multi-frame CT keeps it in the functional
groups), only for the images kept, and compared in the bit width the file marks padding in. Each test failed on
the reader before its fix, except the last (the fallback it guards already worked)."""
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid
from test_dicom_reading import N, ct_slice, write_series
from test_dicom_variants import Z, _ct

from data_connectors.dicom import load_volume


def _enhanced(tmp_path, planes, *, slope, intercept, padding):
    """An enhanced multi-frame CT file (highdicom legacy conversion): rescale only in the functional groups."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    z = np.arange(len(planes)) * 2.0
    paths = write_series(tmp_path / "single", planes, [(0, 0, v) for v in z], slope=slope, intercept=intercept)
    legacy = []
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.add_new("PixelPaddingValue", "US", padding)
        legacy.append(ds)
    mf = LegacyConvertedEnhancedCTImage(legacy, series_instance_uid=generate_uid(), series_number=2,
                                        sop_instance_uid=generate_uid(), instance_number=1)
    mf.save_as(tmp_path / "mf.dcm")
    saved = pydicom.dcmread(tmp_path / "mf.dcm")
    assert "RescaleSlope" not in saved and "RescaleIntercept" not in saved   # only the frames know it
    rescale = saved.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    assert (float(rescale.RescaleSlope), float(rescale.RescaleIntercept)) == (slope, intercept)
    return tmp_path / "mf.dcm"


@pytest.mark.filterwarnings("ignore::UserWarning")   # highdicom: attributes the legacy files lack
@pytest.mark.parametrize("slope, padding_hu, becomes_air", [
    (2.0, 3976.0, True),     # stored 2500: below 3000 read without the frames' rescale, 3976 HU with it
    (1.0, 2976.0, False),    # stored 4000: above 3000 read without it, 2976 HU (inside the bone range) with it
])
def test_enhanced_ct_padding_decided_with_the_frames_rescale(tmp_path, slope, padding_hu, becomes_air):
    intercept = -1024.0
    plane = np.full((N, N), 40.0)
    plane[:, :2] = padding_hu
    stored = int(round((padding_hu - intercept) / slope))
    path = _enhanced(tmp_path, [plane] * 3, slope=slope, intercept=intercept, padding=stored)
    vol = load_volume(path)
    assert np.all(vol.hu_ZYX[:, :, 2:] == 40)
    assert np.all(vol.hu_ZYX[:, :, :2] == (-1024.0 if becomes_air else padding_hu))
    assert any("PixelPaddingValue" in w for w in vol.warnings) == becomes_air, vol.warnings


@pytest.mark.parametrize("kind", ["coronal", "duplicate"])
def test_padding_of_a_dropped_image_is_no_warning_for_the_kept_slices(tmp_path, kind):
    _ct(tmp_path / "s")                                   # 6 axial slices, no padding value
    if kind == "coronal":                                 # another orientation: dropped by _keep_consistent
        other = ct_slice(np.full((N, N), 65535 - 1024.0), (0, 0, 0), series_uid="1.2.3.50", iop=(1, 0, 0, 0, 0, -1))
    else:                                                 # a second file at slice 2's position: the later dropped
        other = ct_slice(np.full((N, N), 65535 - 1024.0), (0, 0, Z[2]), series_uid="1.2.3.50", instance=99)
    other.add_new("PixelPaddingValue", "US", 0xFFFF)      # padding in every pixel
    other.save_as(tmp_path / "s" / kind, enforce_file_format=True)
    vol = load_volume(tmp_path / "s")
    assert vol.hu_ZYX.shape == (6, N, N) and np.allclose(vol.hu_ZYX[:, 0, 0], 10 * Z)
    assert any("ignored" in w for w in vol.warnings), vol.warnings
    assert not any("PixelPaddingValue" in w for w in vol.warnings), vol.warnings


def _twelve_bit_series(folder, words_YX: np.ndarray, syntax=None):
    """3 slices, 12 of 16 bits stored, unsigned, intercept -1024, PixelPaddingValue 0xFFFF, these pixel words."""
    paths = write_series(folder, [np.zeros((N, N))] * 3, [(0, 0, 0), (0, 0, 1), (0, 0, 2)])
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.add_new("PixelPaddingValue", "US", 0xFFFF)
        ds.PixelData = words_YX.astype("<u2").tobytes()
        if syntax is not None:
            ds.compress(syntax)
        ds.save_as(p)
    return paths


@pytest.mark.parametrize("syntax", [None, RLELossless])   # RLE keeps whole 16-bit words, high bits included
def test_saturated_12_bit_pixel_is_no_padding_when_padding_words_keep_their_high_bits(tmp_path, syntax):
    words = np.full((N, N), 1064, dtype=np.uint16)       # 40 HU
    words[:, :2] = 0xFFFF                                 # padding, as declared: the whole word
    words[5, 5:8] = 0x0FFF                                # metal: the largest 12-bit value, 3071 HU
    paths = _twelve_bit_series(tmp_path / "p", words, syntax)
    arr = pydicom.dcmread(paths[0]).pixel_array           # pydicom clears the unused bits of both: 4095 each
    assert arr[0, 0] == arr[5, 5] == 4095
    vol = load_volume(tmp_path / "p")
    assert np.all(vol.hu_ZYX[:, :, :2] == -1024)
    assert np.all(vol.hu_ZYX[:, 5, 5:8] == 3071)
    assert np.all(vol.hu_ZYX[:, 6:, 2:] == 40)
    assert any("PixelPaddingValue" in w for w in vol.warnings)


@pytest.mark.parametrize("syntax", [None, JPEGLSLossless])   # JPEG-LS codes the 12 stored bits only
def test_padding_found_in_12_stored_bits_when_no_word_keeps_the_high_bits(tmp_path, syntax):
    words = np.full((N, N), 1064, dtype=np.uint16)
    words[:, :2] = 0x0FFF                                 # 0xFFFF as 12 bits: a transcoder cleared the rest
    _twelve_bit_series(tmp_path / "p", words, syntax)
    vol = load_volume(tmp_path / "p")
    assert np.all(vol.hu_ZYX[:, :, :2] == -1024) and np.all(vol.hu_ZYX[:, :, 2:] == 40)


def test_whole_word_padding_is_decided_for_the_series_not_per_slice(tmp_path):
    """Padding words on one slice only: the series marks padding by whole words, so the metal 4095 of the
    other slices stays metal too (decided per slice, those slices lost it)."""
    words = np.full((N, N), 1064, dtype=np.uint16)
    words[5, 5:8] = 0x0FFF
    paths = _twelve_bit_series(tmp_path / "p", words)
    first = pydicom.dcmread(paths[0])
    padded = words.copy()
    padded[:, :2] = 0xFFFF
    first.PixelData = padded.astype("<u2").tobytes()
    first.save_as(paths[0])
    vol = load_volume(tmp_path / "p")
    assert np.all(vol.hu_ZYX[:, 5, 5:8] == 3071), vol.hu_ZYX[:, 5, 5]
    assert np.all(vol.hu_ZYX[0, :, :2] == -1024)
    assert any("set to air in 1 of 3 images" in w for w in vol.warnings), vol.warnings
