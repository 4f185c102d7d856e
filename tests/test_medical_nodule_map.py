"""The dense nodule map: its training target and loss, the candidates it proposes, its features, and a
detector that carries it (hand-built phantoms and hand-made maps with known answers)."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from apps.medical_imaging.detection import (KIND, DetectorConfig, DetectorTrainConfig, ScanCache, candidate_set,
                                            find_candidates, fit_trees, load_detector, load_scan, map_features,
                                            prepare_grid, save_scan)
from apps.medical_imaging.nodule_map import (MapStageConfig, NoduleMapConfig, attach_nodule_map, build_network,
                                             centre_heatmap, focal_heatmap_loss, load_nodule_map, map_peaks,
                                             predict_map)
from apps.medical_imaging.report import read_report
from tests.test_medical_detection import _phantom

TINY_MAP = NoduleMapConfig(channels=(4, 8), strides=(2,), res_units=0)


def _bump(shape, centre, sigma=1.0, height=0.9):
    k, j, i = np.mgrid[:shape[0], :shape[1], :shape[2]]
    d2 = (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2
    return (height * np.exp(-d2 / (2 * sigma ** 2))).astype(np.float32)


def test_centre_heatmap_gives_every_nodule_one_peak_at_its_centre_whatever_its_size():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    small = SimpleNamespace(center_xyz=(20.6, 40.0, 30.0), diameter_mm=4.0)     # voxel (i, j, k) = (10.3, 20, 15)
    big = SimpleNamespace(center_xyz=(80.0, 40.0, 30.0), diameter_mm=30.0)      # (40, 20, 15)
    target = centre_heatmap((32, 48, 64), affine, [small, big])
    assert target[15, 20, 10] == 1.0 and target[15, 20, 40] == 1.0             # the voxels nearest the centres
    assert (target == 1.0).sum() == 2 and target[0, 0, 0] == 0.0
    # sigma: one voxel for the small one, 15 mm / 2 mm / 3 = 2.5 voxels for the big one
    assert target[15, 20, 12] == pytest.approx(np.exp(-1.7 ** 2 / 2), rel=1e-5)
    assert target[15, 20, 43] == pytest.approx(np.exp(-9 / (2 * 2.5 ** 2)), rel=1e-5)


def test_focal_heatmap_loss_prefers_the_map_that_peaks_on_the_centre():
    target = torch.from_numpy(_bump((8, 8, 8), (4, 4, 4), height=1.0))[None, None]
    on_centre = torch.full_like(target, -6.0)
    on_centre[..., 4, 4, 4] = 4.0
    shifted = torch.full_like(target, -6.0)
    shifted[..., 4, 4, 1] = 4.0
    flat = torch.zeros_like(target)
    losses = [float(focal_heatmap_loss(x, target)) for x in (on_centre, shifted, flat)]
    assert losses[0] < losses[1] < losses[2]
    # a crop without any centre is judged by its negatives alone (no division by zero)
    assert float(focal_heatmap_loss(torch.full_like(target, -6.0), torch.zeros_like(target))) < 1e-3


def test_map_peaks_most_probable_first_above_the_floor():
    m = np.maximum(_bump((20, 20, 20), (5, 5, 5), height=0.8), _bump((20, 20, 20), (14, 14, 14), height=0.5))
    kji, p = map_peaks(m, 0.3, 10)
    assert kji.tolist() == [[5, 5, 5], [14, 14, 14]] and p[0] == pytest.approx(0.8)
    assert len(map_peaks(m, 0.6, 10)[0]) == 1 and len(map_peaks(m, 0.3, 1)[0]) == 1


def test_map_proposes_candidates_only_where_no_candidate_stands():
    """A map peak on the ball the blob measure already found adds nothing; a peak in empty lung adds one
    candidate, centred on the peak (sub-voxel), flagged as the map's, with its measures at every scale."""
    hu, affine = _phantom()
    cfg = DetectorConfig(per_scale_peaks=True, subvoxel=True, max_candidates=12, map_min_p=0.3, map_candidates=5)
    grid = prepare_grid(hu, affine, cfg)
    blob_only = find_candidates(grid, cfg)
    ball = blob_only[0].kji                                        # the strongest: the 12 mm ball
    lung = np.argwhere(grid.search_ZYX)
    dist = np.min(np.linalg.norm(lung[:, None] - np.stack([c.kji for c in blob_only])[None], axis=2), axis=1)
    far = lung[np.argmax(dist)]                                    # the lung voxel farthest from any candidate
    m = np.maximum(_bump(grid.hu_ZYX.shape, ball), _bump(grid.hu_ZYX.shape, far + np.array([0.0, 0.3, 0.0])))
    cands = find_candidates(grid, cfg, m)
    added = [c for c in cands if c.from_map]
    assert len(cands) == len(blob_only) + 1 and len(added) == 1 and cands[-1] is added[0]
    assert np.array_equal(added[0].kji, far) and 0.1 < added[0].center[1] - far[1] < 0.5
    assert added[0].scales_S.shape == (len(cfg.sigmas_mm),) and added[0].tubes_S.shape == (len(cfg.sigmas_mm),)
    assert not any(c.from_map for c in find_candidates(grid, cfg, 0.25 * m))   # below map_min_p
    with pytest.raises(ValueError, match="per_scale_peaks"):
        find_candidates(grid, dataclasses.replace(cfg, per_scale_peaks=False), m)


def test_map_features_read_the_centre_and_the_ball():
    from apps.medical_imaging.detection import Candidate

    m = np.zeros((10, 10, 10), np.float32)
    m[5, 5, 5], m[5, 5, 6] = 0.2, 0.8
    near = Candidate(np.array([5, 5, 5]), 10.0, 4.0, -700.0, from_map=True)       # radius 1 voxel at 2 mm
    away = Candidate(np.array([1, 1, 1]), 10.0, 4.0, -700.0)
    # at the grid's edge, off the voxel grid: the ball of radius 1 around (0.4, 0.2, 9.3) holds (0, 0, 9),
    # (1, 0, 9) and (0, 1, 9) only; (0, 0, 8) lies 1.32 voxels away
    m[0, 0, 9], m[1, 0, 9], m[0, 0, 8] = 0.6, 0.3, 0.9
    edge = Candidate(np.array([0, 0, 9]), 10.0, 4.0, -700.0, kji_f=np.array([0.4, 0.2, 9.3]))
    f = map_features([near, away, edge], m, DetectorConfig())
    assert f[0, :3].tolist() == pytest.approx([1.0, 0.2, 0.8])
    assert f[0, 3] == pytest.approx(1.0 / 7)                      # the ball of radius 1: 7 voxels, 0.2 + 0.8
    assert f[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert f[2].tolist() == pytest.approx([0.0, 0.6, 0.6, 0.3])


def test_predict_map_covers_any_grid_size_and_stays_in_the_lungs():
    network = build_network(TINY_MAP)
    hu = np.full((9, 13, 15), -850.0, np.float32)
    lung = np.zeros(hu.shape, bool)
    lung[2:7, 3:10, 3:12] = True
    m = predict_map(network, hu, lung)
    assert m.shape == hu.shape and (m[~lung] == 0).all() and (m >= 0).all() and (m <= 1).all()
    assert m[lung].std() > 0                                       # the network's answer, not a constant


def test_detector_with_a_nodule_map_round_trips_and_its_map_stage_rates(tmp_path):
    """A tree detector given a (tiny, untrained) map: its candidate sets carry the map's features, the map
    stage moves the ratings, and the detector comes back identical from its checkpoint."""
    pytest.importorskip("sklearn")
    from apps.medical_imaging.detection import NoduleDetector, NoduleRater
    from core.checkpoint import save_checkpoint

    hu, affine = _phantom()
    cfg = DetectorConfig(per_scale_peaks=True, subvoxel=True, rich_features=True, network=False, max_candidates=12)
    cs = candidate_set(hu, affine, cfg)
    labels = np.zeros(len(cs.candidates), np.float32)
    labels[0] = 1.0
    trees = fit_trees(cfg, DetectorTrainConfig(tree_iters=5, tree_min_leaf=1, folds=2),
                      [SimpleNamespace(cs=cs, labels_B=labels) for _ in range(4)], [None] * 4)
    map_cfg = dataclasses.replace(cfg, nodule_map=TINY_MAP, map_min_p=0.001, map_candidates=3)
    model = NoduleRater(map_cfg)
    assert set(model.load_state_dict(trees.state_dict(), strict=False).missing_keys) == \
        {k for k in model.state_dict() if k.startswith(("nodule_map.", "map_linear."))}
    with torch.no_grad():
        model.map_linear.weight.zero_()
        model.map_linear.bias.zero_()
        model.map_linear.weight[0, 0] = 1.0                       # the map stage passes the trees' logit on ...
    detector = NoduleDetector(model)
    with pytest.raises(ValueError, match="map network"):
        candidate_set(hu, affine, map_cfg)
    with_map = detector.candidates(hu, affine)
    n_blob = len(cs.candidates)
    assert len(with_map.candidates) == n_blob + 3 and with_map.map_BF.shape == (n_blob + 3, 4)
    assert with_map.map_BF[:, 0].tolist() == [0.0] * n_blob + [1.0] * 3
    p_trees = NoduleDetector(trees).rate(cs, None)[1]
    p_map = detector.rate(with_map, None)[1]
    assert p_map[:n_blob] == pytest.approx(p_trees, abs=1e-6)    # ... so the blob candidates rate as before
    with torch.no_grad():
        model.map_linear.weight[0, 1] = 8.0                       # ... and now the map's own candidates rise
    assert (detector.rate(with_map, None)[1][n_blob:] > p_map[n_blob:]).all()
    with pytest.raises(ValueError, match="NoduleDetector.candidates"):
        detector.rate(cs, None)                                    # a candidate set made without the map
    save_checkpoint(model, tmp_path / "det", kind=KIND, config=map_cfg)
    back = load_detector(tmp_path / "det")
    again = back.candidates(hu, affine)
    assert np.array_equal(again.map_BF, with_map.map_BF)
    assert np.array_equal(back.rate(again, None)[1], detector.rate(with_map, None)[1])
    # the training cache keeps what the map said and which candidates it proposed
    scan = ScanCache("synth-0001", with_map, np.zeros(len(with_map.candidates), np.float32), read_report(""), [])
    save_scan(scan, tmp_path / "scan.npz")
    cached = load_scan(tmp_path / "scan.npz").cs
    assert np.array_equal(cached.map_BF, with_map.map_BF)
    assert [c.from_map for c in cached.candidates] == [c.from_map for c in with_map.candidates]
    with pytest.raises(ValueError, match="no map yet"):             # a detector that has a map takes no second
        attach_nodule_map(MapStageConfig(nodule_map=str(tmp_path / "none"), detector=str(tmp_path / "det")))
    with pytest.raises(ValueError, match="map_min_p"):
        dataclasses.replace(map_cfg, map_min_p=0.0)


def test_train_a_map_and_attach_it_to_the_shipped_detector_end_to_end(tmp_path, monkeypatch):
    """The two documented commands' functions at toy size: a map trained for a few steps on small synthetic
    studies, then joined to the shipped detector; the result loads, carries the map and runs on a study."""
    pytest.importorskip("sklearn")
    from apps.medical_imaging.nodule_map import NoduleMapTrainConfig, train_nodule_map
    from apps.medical_imaging.synth import SynthConfig, make_study

    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    small = SynthConfig(shape_zyx=(32, 64, 64), spacing_zyx=(5.0, 5.4, 5.4), nodules_per_study=(2, 3))
    summary = train_nodule_map(NoduleMapTrainConfig(studies=2, steps=3, batch_size=2, crop=32,
                                                    network=TINY_MAP), tmp_path / "map", log=lambda _: None,
                               synth_cfg=small)
    assert summary["steps"] == 3 and len(summary["history"]) == 1
    network, info = load_nodule_map(tmp_path / "map")
    assert info["train"]["network"]["channels"] == [4, 8]
    result = attach_nodule_map(MapStageConfig(nodule_map=str(tmp_path / "map"), studies=3, val_studies=2,
                                              map_min_p=0.01, map_candidates=2, folds=2),
                               tmp_path / "det", log=lambda _: None, synth_cfg=small)
    assert result["scans"] == 2 and 0 <= result["cpm_fused"] <= 1
    detector = load_detector(tmp_path / "det")
    assert detector.cfg.nodule_map == TINY_MAP and detector.cfg.threshold == result["threshold_at_1fp_per_scan"]
    study = make_study(0, 7, small)
    cs = detector.candidates(study.hu_ZYX, study.affine)
    assert any(c.from_map for c in cs.candidates)
    assert detector.detect_candidates(cs, None)                   # rated, with the map stage


def test_train_nodule_map_command_prints_its_summary_as_json(tmp_path, capsys):
    import argparse
    import json

    from apps.cli import CommandTable
    from apps.medical_imaging import register

    parser = argparse.ArgumentParser()
    register(CommandTable(parser.add_subparsers(required=True)))
    args = parser.parse_args(["medical", "train-nodule-map", "--out", str(tmp_path / "map"), "--studies", "1",
                              "--steps", "2", "--channels", "4,8", "--json"])
    args.handler(args)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["out"] == str(tmp_path / "map") and "history" not in summary
    with pytest.raises(SystemExit):
        parser.parse_args(["medical", "train-nodule-map", "--out", "x", "--channels", "8"])
    with pytest.raises(ValueError, match="not a train-nodule-map folder"):
        load_nodule_map(tmp_path)
    from apps.cli import main

    assert main(["medical", "attach-nodule-map", "--map", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["medical", "train-nodule-map", "--out", str(tmp_path / "file"), "--studies", "1"]) == 2
