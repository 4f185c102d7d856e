"""The Swin patch rater whose logit the detector's trees read (DetectorConfig.network_feature)."""
import dataclasses

import numpy as np
import pytest
import torch

from apps.medical_imaging.detection import KIND, DetectorConfig, NoduleRater, candidate_set, load_detector, tiny_vision
from apps.medical_imaging.patch_network import (PatchNetworkConfig, augment, load_patch_network, network_state,
                                                oof_logits_for, train_patch_network)
from apps.medical_imaging.synth import SynthConfig


def test_augment_moves_voxels_without_changing_them():
    x = torch.rand(6, 1, 8, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = augment(x, shift=2, g=g)
    assert y.shape == x.shape
    for a, b in zip(x, y):                     # flips, axis order and shifts only rearrange a patch's voxels
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    assert not torch.equal(x, y)


def test_out_of_fold_logits_are_matched_by_centre():
    oof = {"scan_N": np.array([0, 0, 0, 1]), "centre_N3": np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3], [1, 1, 1]], np.float32),
           "logit_N": np.array([0.1, 0.2, 0.3, 9.0], np.float32), "label_N": np.zeros(4)}
    got = oof_logits_for(oof, 0, np.array([[3, 3, 3], [1, 1, 1.01], [2, 2, 2]]))
    assert np.allclose(got, [0.3, 0.1, 0.2])
    ten = np.array([[1, 1, 1]] * 9 + [[7, 7, 7]], np.float32)       # one candidate unknown there: missing (NaN)
    got = oof_logits_for({**oof, "scan_N": np.zeros(4, int)}, 0, ten)
    assert np.isnan(got[-1]) and np.allclose(got[:-1], 0.1)
    with pytest.raises(ValueError, match="differ"):
        oof_logits_for(oof, 0, np.array([[5, 5, 5], [6, 6, 6]]))
    with pytest.raises(ValueError, match="no out-of-fold"):
        oof_logits_for(oof, 7, np.array([[1, 1, 1]]))


def _phantom():
    hu = np.full((48, 64, 64), 40.0, np.float32)
    hu[6:42, 8:56, 6:28] = -850.0
    hu[6:42, 8:56, 36:58] = -850.0
    z, y, x = np.mgrid[:48, :64, :64]
    hu[(z - 24) ** 2 + (y - 20) ** 2 + (x - 16) ** 2 <= 9] = 40.0
    hu[((y - 44) ** 2 + (x - 16) ** 2 <= 1) & (z >= 8) & (z < 40)] = 40.0
    hu += np.random.default_rng(0).normal(0, 10, hu.shape).astype(np.float32)
    return hu, np.diag([2.0, 2.0, 2.0, 1.0])


def test_trees_read_the_patch_logit_and_round_trip(tmp_path):
    """Trees fitted where only the network's logit tells the labels apart: the saved detector runs the Swin,
    its ratings follow the network's head, and it comes back identical from its checkpoint."""
    pytest.importorskip("sklearn")
    from types import SimpleNamespace

    from apps.medical_imaging.detection import DetectorTrainConfig, fit_trees
    from core.checkpoint import save_checkpoint

    hu, affine = _phantom()
    cfg = DetectorConfig(per_scale_peaks=True, subvoxel=True, rich_features=True, network=False, max_candidates=12,
                         network_feature=True, vision=tiny_vision())
    cs = candidate_set(hu, affine, cfg)
    B = len(cs.candidates)
    assert cs.patches_BP3.shape[1:] == (cfg.patch,) * 3
    # the same candidates in every scan, with other network logits and labels: only the logit explains them
    rng = np.random.default_rng(0)
    nets = [rng.permutation(np.linspace(-3, 3, B)).astype(np.float32) for _ in range(6)]
    scans = [SimpleNamespace(cs=cs, labels_B=(net > 0).astype(np.float32)) for net in nets]
    model = fit_trees(cfg, DetectorTrainConfig(tree_iters=10, tree_min_leaf=1, folds=2), scans, [None] * 6, nets)
    with pytest.raises(ValueError, match="network_logits"):
        fit_trees(dataclasses.replace(cfg), DetectorTrainConfig(tree_iters=2, tree_min_leaf=1, folds=2), scans,
                  [None] * 6)
    with pytest.raises(ValueError, match="patch network"):
        model.tree_inputs(torch.from_numpy(cs.cand_BF), None)
    for bias, expect_high in ((5.0, True), (-5.0, False)):
        with torch.no_grad():
            model.patch_head.weight.zero_()
            model.patch_head.bias.fill_(bias)                      # every patch gets this logit
        save_checkpoint(model, tmp_path / "det", kind=KIND, config=cfg)
        detector = load_detector(tmp_path / "det")
        p = np.array([d.probability for d in detector.detect_candidates(cs, None)])
        assert (p.min() > 0.5) if expect_high else (p.max() < 0.5)
        again = [d.probability for d in load_detector(tmp_path / "det").detect_candidates(cs, None)]
        assert again == list(p)


def test_train_patch_network_writes_what_the_detector_training_reads(tmp_path):
    cfg = DetectorConfig(per_scale_peaks=True, subvoxel=True, rich_features=True, network=False, max_candidates=16,
                         network_feature=True, vision=tiny_vision())
    pcfg = PatchNetworkConfig(studies=2, folds=2, epochs=1, samples_per_epoch=16, batch_size=8)
    small = SynthConfig(shape_zyx=(40, 96, 96), spacing_zyx=(2.5, 2.7, 2.7), vessel_roots=2, nodules_per_study=(2, 2),
                        diameter_mm=(8.0, 12.0))
    summary = train_patch_network(cfg, pcfg, tmp_path / "pn", log=lambda msg: None, synth_cfg=small)
    state, oof, info = load_patch_network(tmp_path / "pn")
    assert summary["candidates"] == len(oof["logit_N"]) <= 32 and not np.isnan(oof["logit_N"]).any()
    assert set(np.unique(oof["scan_N"])) == {0, 1} and info["train"]["studies"] == 2
    model = NoduleRater(cfg)
    assert set(state) == set(network_state(model))                # exactly the vision stream and the patch head
    model.load_state_dict(state, strict=False)
    with pytest.raises(ValueError, match="folds"):
        PatchNetworkConfig(folds=1)
    with pytest.raises(FileNotFoundError, match="train-patch-network"):
        load_patch_network(tmp_path / "nothing")
