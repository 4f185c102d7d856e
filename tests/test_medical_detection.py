"""Detection parts on hand-built phantoms: the blob measure, candidates, lobe geometry, the rater."""
import numpy as np
import pytest
import torch

from apps.medical_imaging.detection import (KIND, DetectorConfig, NoduleRater, candidate_set, estimate_lobe,
                                            largest_eigenvalue, load_detector, pair_features, text_inputs)
from apps.medical_imaging.report import read_report


def test_closed_form_eigenvalue_matches_lapack():
    A = np.random.default_rng(0).standard_normal((500, 3, 3))
    A = A + A.transpose(0, 2, 1)
    got = largest_eigenvalue(A[:, 0, 0], A[:, 1, 1], A[:, 2, 2], A[:, 0, 1], A[:, 0, 2], A[:, 1, 2])
    assert np.allclose(got, np.linalg.eigvalsh(A)[:, 2], atol=1e-9)


def _phantom():
    """Soft tissue with two air-filled 'lungs' (2 mm voxels); in the right one a 12 mm ball and a 3 mm-wide
    vessel-like tube, both at soft-tissue density."""
    hu = np.full((48, 64, 64), 40.0, np.float32)
    hu[6:42, 8:56, 6:28] = -850.0           # right lung (low x = patient right)
    hu[6:42, 8:56, 36:58] = -850.0          # left lung
    z, y, x = np.mgrid[:48, :64, :64]
    ball = (z - 24) ** 2 + (y - 20) ** 2 + (x - 16) ** 2 <= 3 ** 2
    hu[ball] = 40.0
    tube = ((y - 44) ** 2 + (x - 16) ** 2 <= 1) & (z >= 8) & (z < 40)
    hu[tube] = 40.0
    hu += np.random.default_rng(0).normal(0, 10, hu.shape).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-64, -64, -48)
    return hu, affine


def test_candidates_find_the_ball_before_the_tube():
    hu, affine = _phantom()
    cs = candidate_set(hu, affine, DetectorConfig(max_candidates=10))
    assert cs.grid.lung_ZYX.sum() > 0.9 * 2 * 36 * 48 * 21     # both lungs, ball and tube filled in
    best = cs.candidates[0]
    assert np.linalg.norm(best.kji - np.array([24, 20, 16])) <= 1.5
    assert 6 <= best.diameter_mm <= 20
    assert cs.positions[0][0] < 0                                 # the right lung
    assert cs.patches_BP3.shape[1:] == (32, 32, 32) and cs.cand_BF.shape == (len(cs.candidates), 8)


def test_lung_mask_keeps_a_large_nodule_on_the_pleura_and_never_bridges_the_lungs():
    """Two lungs 20 mm apart (2 mm voxels, the grid's own) and a 24 mm solid nodule bulging from the chest
    wall: the mask's closing fills the nodule back in (a 10 mm closing, the old default, left its centre
    outside the lung), but closes each side on its own, so the mediastinum between the lungs stays out
    (one 15 mm closing of both would fill a gap narrower than 30 mm)."""
    from apps.medical_imaging.detection import lung_mask

    hu = np.full((56, 80, 100), 40.0, np.float32)
    hu[6:50, 8:72, 6:45] = -850.0               # one lung
    hu[6:50, 8:72, 55:94] = -850.0              # the other, 10 voxels away
    z, y, x = np.mgrid[:56, :80, :100]
    centre = (28, 40, 10)                        # 4 voxels (8 mm) inside the first lung's outer wall
    hu[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= 6 ** 2] = 40.0
    mask = lung_mask(hu, -400.0, 2.0)
    assert mask[centre]
    assert not mask[10:46, 12:68, 47:53].any()
    assert not lung_mask(hu, -400.0, 2.0, closing_mm=10.0)[centre]


def test_lobe_geometry_and_report_fit():
    assert estimate_lobe(-1, 0.9, 0.0) == "right upper lobe"
    assert estimate_lobe(-1, 0.45, -0.8) == "right middle lobe"
    assert estimate_lobe(1, 0.1, 0.5) == "left lower lobe"
    hu, affine = _phantom()
    cs = candidate_set(hu, affine, DetectorConfig(max_candidates=3))
    reading = read_report("A 12 mm nodule in the right upper lobe. No nodule in the left lung.")
    right, left = reading.mentions
    c, pos = cs.candidates[0], cs.positions[0]
    f_right, f_left = pair_features(c, pos, right), pair_features(c, pos, left)
    assert f_right[14] == 1.0 and f_left[14] == 0.0              # side agreement
    assert f_left[16] == 1.0 and f_right[16] == 0.0              # negation flag
    assert text_inputs(cs, read_report("")) is None
    assert text_inputs(cs, reading).shape == (len(cs.candidates), 2, 384 + 26)
    assert f_right[24] == 0.0 and f_right[25] == 1.0             # no density stated: any candidate fits
    ggo = read_report("A 12 mm ground-glass nodule in the right upper lobe.").mentions[0]
    solid = read_report("A 12 mm solid nodule in the right upper lobe.").mentions[0]
    assert c.center_hu > -200                                     # the phantom's ball is soft tissue
    assert pair_features(c, pos, ggo)[24:].tolist() == [1.0, 0.0] and pair_features(c, pos, solid)[24:].tolist() == [1.0, 1.0]


def test_rater_checkpoint_round_trip_and_report_changes_the_score(tmp_path):
    from core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = DetectorConfig(max_candidates=4, extra_priors=True)
    model = NoduleRater(cfg)
    torch.nn.init.normal_(model.head[-1].weight)     # the head starts at zero (the prior alone): wake it
    torch.nn.init.normal_(model.prior_quad.weight)
    save_checkpoint(model, tmp_path / "det", kind=KIND, config=cfg)
    detector = load_detector(tmp_path / "det")
    hu, affine = _phantom()
    reading = read_report("There is a 12 mm nodule in the right upper lobe.")
    a = detector.detect(hu, affine, reading)
    b = load_detector(tmp_path / "det").detect(hu, affine, reading)
    assert [d.probability for d in a] == pytest.approx([d.probability for d in b])
    assert any(abs(d.probability - d.probability_image_only) > 1e-6 for d in a)
    assert all(d.probability == d.probability_image_only for d in detector.detect(hu, affine, None))


def _ball_patch(tubes: bool) -> torch.Tensor:
    """A 32^3 patch (2 mm voxels, window-scaled) of lung with a 12 mm ball at the centre, optionally with
    three vessels leaving it (a junction)."""
    from apps.medical_imaging.detection import HU_RANGE

    hu = np.full((32, 32, 32), -850.0, np.float32)
    z, y, x = np.mgrid[:32, :32, :32] - 16
    hu[z ** 2 + y ** 2 + x ** 2 <= 9] = 40.0
    if tubes:
        hu[(y ** 2 + x ** 2 <= 2)] = 40.0
        hu[(z ** 2 + x ** 2 <= 2) & (y > 0)] = 40.0
    return torch.from_numpy((np.clip(hu, *HU_RANGE) - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0]))[None, None]


def test_shape_features_tell_an_isolated_ball_from_a_junction():
    from apps.medical_imaging.detection import shape_features

    cand = torch.zeros(2, 8)
    cand[:, 1] = float(np.log(12 / 8))                             # log(diameter / 8 mm)
    f = shape_features(torch.cat([_ball_patch(False), _ball_patch(True)]), cand)
    assert f.shape == (2, 5)
    assert f[0, 2] == 0 and f[1, 2] > 0.05                        # dense shell: only the junction
    assert f[0, 1] > f[1, 1]                                       # more inside-vs-shell contrast alone


def test_report_features_reward_lobe_and_size_agreement_and_see_negation():
    from apps.medical_imaging.detection import report_features

    hu, affine = _phantom()
    cs = candidate_set(hu, affine, DetectorConfig(max_candidates=1))
    c, pos = cs.candidates[0], cs.positions[0]
    lobe = estimate_lobe(*pos)
    size = round(c.diameter_mm)

    def feats(text: str) -> torch.Tensor:
        t = torch.from_numpy(text_inputs(cs, read_report(text))[..., 384:])
        return report_features(t)[0]

    fit = feats(f"A {size} mm nodule in the {lobe}.")
    wrong_size = feats(f"A {size * 4} mm nodule in the {lobe}.")
    other_side = feats("A 12 mm nodule in the left upper lobe.")
    negated = feats(f"No nodule in the {lobe}.")
    assert fit[1] == 1 and fit[3] > 0.8 and wrong_size[3] < 0.2 * fit[3]
    assert other_side[0] == 0 and other_side[1] == 0 and other_side[6] == 1
    assert negated[5] == 1 and negated[6] == 0


def test_fit_prior_learns_measurements_and_report_then_freezes():
    from types import SimpleNamespace

    from apps.medical_imaging.detection import fit_prior, report_features

    rng = np.random.default_rng(0)
    cfg = DetectorConfig(max_candidates=4, extra_priors=True)
    scans, texts = [], []
    for _ in range(4):
        y = (np.arange(30) < 4).astype(np.float32)
        cand = rng.normal(0, 1, (30, 8)).astype(np.float32)
        cand[:, 0] += 1.5 * y                                      # positives: stronger blobs
        patches = rng.random((30, 32, 32, 32)).astype(np.float16) * 0.1
        text = np.zeros((30, 1, 384 + 26), np.float32)
        text[:, 0, 384 + 15] = y                                   # the report's lobe fits the positives
        text[:, 0, 384 + 13] = 1.0
        scans.append(SimpleNamespace(cs=SimpleNamespace(cand_BF=cand, patches_BP3=patches), labels_B=y))
        texts.append(text)
    model = NoduleRater(cfg)
    fit_prior(model, scans, texts)
    assert not any(p.requires_grad for p in (*model.prior.parameters(), *model.report_prior.parameters()))
    cand, patches = torch.from_numpy(scans[0].cs.cand_BF), torch.from_numpy(scans[0].cs.patches_BP3)[:, None]
    prior = model.blob_prior(cand, patches)
    fused = prior + model.report_prior(report_features(torch.from_numpy(texts[0][..., 384:]))).squeeze(-1)
    y = scans[0].labels_B > 0
    assert prior[y].mean() > prior[~y].mean() and fused[y].min() > fused[~y].max()


def test_tree_ensemble_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.ensemble")
    from apps.medical_imaging.detection import TreeEnsemble

    rng = np.random.default_rng(0)
    X = rng.random((800, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] + 0.3 * rng.random(800) > 0.9).astype(int)
    clf = sklearn.HistGradientBoostingClassifier(max_iter=20, max_leaf_nodes=7, random_state=0).fit(X, y)
    trees = TreeEnsemble(*TreeEnsemble.shape_of(clf))
    trees.load_sklearn(clf)
    assert np.allclose(trees(torch.from_numpy(X)).numpy(), clf.decision_function(X), atol=1e-5)


def test_per_scale_peaks_keep_a_small_ball_beside_a_vessel_with_a_subvoxel_centre():
    """A 5 mm ball 5 mm from a vessel's side: the maximum over scales merges them into one larger blob
    between the two; the per-scale maxima keep the ball, centred within its radius."""
    from apps.medical_imaging.detection import find_candidates, prepare_grid

    hu = np.full((40, 64, 64), 40.0, np.float32)
    hu[4:36, 8:56, 6:30] = -850.0
    hu[4:36, 8:56, 34:58] = -850.0
    z, y, x = np.mgrid[:40, :64, :64].astype(np.float32)
    ball_c = np.array([20.3, 30.4, 17.6])                          # off the voxel grid (2 mm voxels)
    hu[np.sqrt(((np.stack([z, y, x], -1) - ball_c) ** 2).sum(-1)) <= 1.25] = 40.0
    hu[((y - 30) ** 2 + (x - 22) ** 2 <= 1.5) & (z >= 6) & (z < 34)] = 40.0   # a vessel along z
    hu += np.random.default_rng(1).normal(0, 5, hu.shape).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    cfg = DetectorConfig(per_scale_peaks=True, subvoxel=True, max_candidates=30)
    grid = prepare_grid(hu, affine, cfg)
    cands = find_candidates(grid, cfg)
    dist = [np.linalg.norm(c.center - ball_c) * 2.0 for c in cands]                  # mm
    best = cands[int(np.argmin(dist))]
    assert min(dist) <= 2.5                                        # within the 5 mm ball's radius
    assert best.diameter_mm <= 10 and best.scales_S.shape == (len(cfg.sigmas_mm),)
    assert best.kji_f is not None and np.abs(best.kji_f - best.kji).max() <= 0.5


def test_mention_rank_lifts_the_best_candidate_of_the_named_lobe():
    from apps.medical_imaging.detection import mention_rank_features

    pair = torch.zeros(4, 2, 26)
    pair[:, :, 13] = 0.0                                           # both mentions name a side ...
    pair[:, 0, 15] = torch.tensor([1.0, 1.0, 0.0, 1.0])            # mention 0's lobe holds candidates 0, 1, 3
    pair[:, 1, 16] = 1.0                                           # mention 1 is negated (ignored)
    pair[:, 1, 5] = 1.0
    logits = torch.tensor([0.5, 2.0, 3.0, -1.0])
    f = mention_rank_features(logits, pair)
    assert f[1, 0] == 0 and f[0, 0] == pytest.approx(np.log(2)) and f[3, 0] == pytest.approx(np.log(3))
    assert f[2, 0] == 6.0 and f[2, 2] == -10.0                     # not in the lobe: sentinels
    assert f[1, 2] == 0 and f[0, 2] == pytest.approx(-1.5)
    assert (f[:, 3] == 6.0).all()                                  # no candidate fits mention 0's density
    pair[:, 0, 25] = torch.tensor([1.0, 0.0, 1.0, 1.0])            # ... now 0, 2, 3 do (candidate 1 is too dense)
    f = mention_rank_features(logits, pair)
    assert f[0, 3] == 0 and f[3, 3] == pytest.approx(np.log(2)) and f[2, 3] == 6.0 and f[1, 3] == 6.0
    assert mention_rank_features(logits, torch.zeros(4, 0, 26)).shape == (4, 4)


def test_tree_rater_round_trip_without_a_swin_pass(tmp_path):
    """The boosted-tree detector (rich features, network off) rates from cand_BF alone, reads the report
    through its report stage and comes back bit-identical from its checkpoint."""
    pytest.importorskip("sklearn")
    from types import SimpleNamespace

    from core.checkpoint import save_checkpoint
    from apps.medical_imaging.detection import DetectorTrainConfig, fit_trees

    hu, affine = _phantom()
    cfg = DetectorConfig(per_scale_peaks=True, subvoxel=True, rich_features=True, network=False, max_candidates=12)
    cs = candidate_set(hu, affine, cfg)
    assert cs.cand_BF.shape == (len(cs.candidates), cfg.cand_features)
    reading = read_report("A 12 mm nodule in the right upper lobe.")
    labels = np.zeros(len(cs.candidates), np.float32)
    labels[0] = 1.0
    scans = [SimpleNamespace(cs=cs, labels_B=labels) for _ in range(4)]
    texts = [text_inputs(cs, reading), None, text_inputs(cs, reading), text_inputs(cs, reading)]
    tcfg = DetectorTrainConfig(tree_iters=5, tree_min_leaf=1, folds=2)
    model = fit_trees(cfg, tcfg, scans, texts)
    save_checkpoint(model, tmp_path / "det", kind=KIND, config=cfg)
    detector = load_detector(tmp_path / "det")
    cs.patches_BP3 = cs.patches_BP3[:, :0, :0, :0]                 # no patches needed: no Swin pass
    a = detector.detect_candidates(cs, reading)
    assert a[0].candidate is cs.candidates[0]                      # the labelled ball rates first
    again = load_detector(tmp_path / "det").detect_candidates(cs, reading)
    assert [d.probability for d in a] == [d.probability for d in again]
    assert all(d.probability == d.probability_image_only for d in detector.detect_candidates(cs, None))


def test_scan_cache_round_trips_as_plain_arrays(tmp_path):
    """The training cache holds arrays and strings only (no pickle) and gives back the same candidates."""
    import zipfile

    from apps.medical_imaging.detection import ScanCache, load_scan, save_scan
    from apps.medical_imaging.evaluation import Nodule

    hu, affine = _phantom()
    cs = candidate_set(hu, affine, DetectorConfig(per_scale_peaks=True, subvoxel=True, rich_features=True,
                                                  max_candidates=8))
    text = "A 12 mm ground-glass nodule in the right upper lobe."
    scan = ScanCache("synth-0007", cs, np.arange(len(cs.candidates), dtype=np.float32) % 2, read_report(text),
                     [Nodule("synth-0007", (1.0, 2.0, 3.0), 12.0)], text)
    save_scan(scan, tmp_path / "scan.npz")
    back = load_scan(tmp_path / "scan.npz")
    assert back.study_id == "synth-0007" and back.report_text == text and back.reading.mentions[0].density == "subsolid"
    assert back.truth == scan.truth and np.array_equal(back.labels_B, scan.labels_B)
    assert np.array_equal(back.cs.cand_BF, cs.cand_BF) and np.array_equal(back.cs.patches_BP3, cs.patches_BP3)
    assert back.cs.positions == [tuple(p) for p in cs.positions] and back.cs.grid.midline_i == cs.grid.midline_i
    for a, b in zip(back.cs.candidates, cs.candidates):
        assert np.array_equal(a.kji, b.kji) and np.allclose(a.center, b.center) and a.center_hu == b.center_hu
        assert np.array_equal(a.scales_S, b.scales_S) and np.array_equal(a.tubes_S, b.tubes_S)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises((ValueError, OSError, zipfile.BadZipFile)):
        load_scan(tmp_path / "bad.npz")


def test_shipped_detector_gives_the_same_findings_in_any_axis_order():
    """The same physical volume stored with its slices reversed, its rows flipped and its rows and columns
    swapped (what a caller's own array from another reader may be): the same findings at the same patient
    positions with the same probabilities. The axis order matters beyond the affine (the lungs are split at
    a column, the Swin sees patches as laid out), so the detector makes every volume LPS first."""
    hu, affine = _phantom()
    hu[24, 20, 46] = 40.0                          # an asymmetric detail: a small dense dot in the left lung
    detector = load_detector()

    def findings(vol: np.ndarray, aff: np.ndarray) -> list[tuple]:
        return sorted((tuple(np.round(d.xyz_mm, 3)), round(d.probability, 5))
                      for d in detector.detect(vol, aff, None, threshold=0.0))

    def flip(vol: np.ndarray, aff: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        col = 2 - axis                                 # array axes (k, j, i) <-> affine columns (i, j, k)
        out = aff.copy()
        out[:3, 3] += aff[:3, col] * (vol.shape[axis] - 1)
        out[:3, col] *= -1
        return np.flip(vol, axis).copy(), out

    expected = findings(hu, affine)
    assert expected and expected[0][1] > 0.0
    other, other_affine = flip(*flip(hu, affine, 0), 1)
    swapped_affine = other_affine.copy()
    swapped_affine[:, [0, 1]] = other_affine[:, [1, 0]]
    other = np.ascontiguousarray(other.transpose(0, 2, 1))
    assert findings(other, swapped_affine) == expected
