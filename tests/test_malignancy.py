"""Malignancy classifier: crops folders, the crop, AUC, the model, training on synthetic blobs, the CLI."""
from __future__ import annotations

import argparse
import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from apps.medical_imaging import malignancy as mal
from apps.medical_imaging.malignancy import (
    DEFAULT_MODEL_DIR, CropFolderError, MalignancyConfig, MalignancyModel, auc, binary_metrics, crop_around,
    estimate_diameter_mm, finish_cube, load_crops, patient_folds,
)

TINY = dict(embed_dim=6, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), out_dim=16, dropout=0.0, drop_path=0.0)
COLUMNS = ["patient_id", "nodule_id", "coordX", "coordY", "coordZ", "diameter_mm", "Diagnosis", "Diagnosis_value"]
SPACING_IJK = (0.75, 0.75, 2.5)
SHAPE_IJK = (40, 40, 12)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))


def _blob_volume(rng, radius_mm: float, hu: float, centre_ijk) -> np.ndarray:
    """[I, J, K] lung-like noise with a sphere of `radius_mm` at `centre_ijk`."""
    axes = [(np.arange(n) - c) * s for n, c, s in zip(SHAPE_IJK, centre_ijk, SPACING_IJK)]
    r = np.sqrt(sum(np.meshgrid(*[a ** 2 for a in axes], indexing="ij")))
    volume = rng.normal(-850, 30, SHAPE_IJK)
    volume[r <= radius_mm] = hu + rng.normal(0, 20, np.count_nonzero(r <= radius_mm))
    return volume.astype(np.float32)


def write_crops(folder, n: int, seed: int = 0, columns=COLUMNS) -> np.ndarray:
    """n synthetic crops in the lidc-nodule-crops layout: big bright blobs malignant, small faint ones benign.
    Returns the labels."""
    rng = np.random.default_rng(seed)
    (folder / "image").mkdir(parents=True)
    labels = np.arange(n) % 2
    rows = []
    for i, y in enumerate(labels):
        radius = rng.uniform(6, 9) if y else rng.uniform(1.5, 3)
        centre = np.array(SHAPE_IJK) / 2 + rng.uniform(-2, 2, 3) * [1, 1, 0.3]
        # NIfTI's RAS affine of an LPS-ordered crop, as in LIDC: i -> patient left, j -> posterior, k -> up.
        affine = np.diag([-SPACING_IJK[0], -SPACING_IJK[1], SPACING_IJK[2], 1.0])
        affine[:3, 3] = rng.uniform(-100, 100, 3)
        ras = affine @ np.append(centre, 1.0)
        nib.save(nib.Nifti1Image(_blob_volume(rng, radius, 60.0 if y else -300.0, centre), affine),
                 folder / "image" / f"P{i // 2:03d}_R_{i % 2 + 1}.nii.gz")
        rows.append({"patient_id": f"P{i // 2:03d}", "nodule_id": i % 2 + 1, "coordX": -ras[0], "coordY": -ras[1],
                     "coordZ": ras[2], "diameter_mm": 2 * radius, "Diagnosis": "Malign" if y else "Benign",
                     "Diagnosis_value": int(y)})
    with open(folder / "nodules.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return labels


def test_load_crops_centres_the_nodule(tmp_path):
    labels = write_crops(tmp_path / "crops", 6)
    crops = load_crops(tmp_path / "crops")
    assert crops.cubes.shape == (6, 32, 32, 32) and crops.cubes.dtype == np.float32
    assert list(crops.labels) == list(labels)
    assert crops.patient_ids == ["P000", "P000", "P001", "P001", "P002", "P002"]
    assert 0.0 <= crops.cubes.min() and crops.cubes.max() <= 1.0
    c = 16
    assert np.all(crops.cubes[:, c, c, c] > crops.cubes[:, 0, 0, 0] + 0.2)  # blob at the centre, air at the corner
    cached = load_crops(tmp_path / "crops")  # second call from the cache: same data
    np.testing.assert_allclose(cached.cubes, crops.cubes, atol=1e-3)


def test_load_crops_writers_of_one_cache_do_not_collide(tmp_path, monkeypatch):
    """Two processes preparing the same folder at once: a second writer finishing while the first is still
    writing its cache file must not take the first one's file away (it crashed a CV run)."""
    write_crops(tmp_path / "crops", 4)
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    savez, inner = np.savez, []

    def savez_with_a_second_writer(path, **arrays):
        savez(path, **arrays)
        if not inner:   # the other process writes and publishes its copy in the meantime
            inner.append(None)
            inner[0] = load_crops(tmp_path / "crops")

    monkeypatch.setattr(mal.np, "savez", savez_with_a_second_writer)
    crops = load_crops(tmp_path / "crops")
    np.testing.assert_allclose(inner[0].cubes, crops.cubes, atol=1e-3)
    assert [p.name for p in (tmp_path / "cache").rglob("*.npz") if ".tmp" in p.name] == []


def test_load_crops_failed_cache_write_leaves_no_stray_file(tmp_path, monkeypatch):
    write_crops(tmp_path / "crops", 4)
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    savez = np.savez

    def savez_then_disk_full(path, **arrays):
        savez(path, **arrays)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mal.np, "savez", savez_then_disk_full)
    with pytest.raises(OSError, match="No space"):
        load_crops(tmp_path / "crops")
    assert list((tmp_path / "cache").rglob("*.npz")) == []


def test_load_crops_errors_name_the_problem(tmp_path):
    with pytest.raises(CropFolderError, match="nodules.csv"):
        load_crops(tmp_path)
    write_crops(tmp_path / "a", 2, columns=["patient_id", "nodule_id", "diameter_mm"])
    with pytest.raises(CropFolderError, match="label column"):
        load_crops(tmp_path / "a")
    write_crops(tmp_path / "b", 2)
    (tmp_path / "b" / "image" / "P000_R_2.nii.gz").unlink()
    with pytest.raises(CropFolderError, match="P000_R_2.nii.gz"):
        load_crops(tmp_path / "b")
    write_crops(tmp_path / "c", 2)
    (tmp_path / "c" / "image" / "P000_R_1.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(CropFolderError, match="P000_R_1.nii.gz"):
        load_crops(tmp_path / "c", use_cache=False)
    write_crops(tmp_path / "d", 2)
    text = (tmp_path / "d" / "nodules.csv").read_text().replace("Benign,0", "Unsure,")
    (tmp_path / "d" / "nodules.csv").write_text(text)
    with pytest.raises(CropFolderError, match="line 2"):
        load_crops(tmp_path / "d")


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(mal, "DEFAULT_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(ValueError, match="train-malignancy"):
        mal.load_default_malignancy_model()


def test_crop_around_centres_and_pads():
    hu = np.full((20, 50, 50), -900.0, dtype=np.float32)
    hu[6, 30, 12] = 1000.0  # one bright voxel at k=6, j=30, i=12
    cube = crop_around(hu, (2.0, 0.8, 0.8), (12, 30, 6), 32)
    assert cube.shape == (32, 32, 32)
    peak = np.unravel_index(np.argmax(cube), cube.shape)
    assert np.all(np.abs(np.array(peak) - 16) <= 1), peak
    assert cube[0, 0, 0] == -1000.0  # z reaches 12 mm below the scan's first slice: padded with air
    with pytest.raises(ValueError, match="spacing"):
        crop_around(hu, (0, 1, 1), (1, 1, 1), 32)


def test_prepare_is_the_training_input():
    """predict_hu's preparation of a 1 mm cube from crop_around equals the training path (finish_cube)."""
    cfg = MalignancyConfig(**TINY)
    rng = np.random.default_rng(1)
    hu = rng.normal(-800, 50, (14, 48, 48)).astype(np.float32)
    hu[5:9, 20:28, 20:28] = 40.0
    cube_hu = crop_around(hu, (2.5, 0.7, 0.7), (24, 24, 7), cfg.crop_mm)
    model = MalignancyModel(cfg)
    prepared, d, measures = model.prepare(cube_hu, (1.0, 1.0, 1.0), 6.0)
    assert d == 6.0
    np.testing.assert_allclose(prepared, finish_cube(cube_hu, 6.0, cfg), atol=1e-4)
    np.testing.assert_array_equal(measures, mal.nodule_measures(mal.box_cube(cube_hu, 6.0, cfg), 6.0))
    assert 4.0 < estimate_diameter_mm(cube_hu) < 12.0
    assert model.prepare(cube_hu, (1.0, 1.0, 1.0))[1] == estimate_diameter_mm(cube_hu)  # no diameter: estimated


def test_auc_known_cases():
    assert auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auc([0.5, 0.5, 0.5], [1, 0, 1]) == 0.5
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == 0.875  # one tied pair counts half
    with pytest.raises(ValueError):
        auc([0.1, 0.2], [1, 1])
    m = binary_metrics(np.array([0.9, 0.6, 0.4, 0.1]), np.array([1, 0, 1, 0]), 0.5)
    assert (m["accuracy"], m["sensitivity"], m["specificity"], m["n"]) == (0.5, 0.5, 0.5, 4)


def test_patient_folds_keep_patients_together():
    patients = [f"P{i // 3}" for i in range(60)]
    labels = [int(i % 7 == 0) for i in range(60)]
    folds = patient_folds(patients, labels, 5)
    for p in set(patients):
        assert len({f for q, f in zip(patients, folds) if q == p}) == 1
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]


def _measures(B: int) -> torch.Tensor:
    return torch.randn(B, len(mal.MEASURE_NAMES))


def test_forward_backward_reaches_the_task_gates():
    model = MalignancyModel(MalignancyConfig(**TINY))
    logits, aux = model(torch.rand(2, 1, 32, 32, 32), torch.tensor([5.0, 15.0]), _measures(2))
    assert logits.shape == (2,) and torch.isfinite(aux)
    (logits.sum() + aux).backward()
    moe = model.stream.moe_mlps()
    assert moe and all(p.grad is not None for m in moe for p in m.parameters() if p.requires_grad)
    assert model.task == mal.task_id("malignancy")


def test_diameter_and_measures_inputs_change_the_logit():
    model = MalignancyModel(MalignancyConfig(**TINY)).eval()
    cubes, measures = torch.rand(2, 1, 32, 32, 32), _measures(2)
    with pytest.raises(ValueError, match="diameter"):
        model(cubes, measures_BM=measures)
    with pytest.raises(ValueError, match="measures"):
        model(cubes, torch.tensor([4.0, 4.0]))
    with torch.no_grad():
        small, _ = model(cubes, torch.tensor([4.0, 4.0]), measures)
        big, _ = model(cubes, torch.tensor([20.0, 20.0]), measures)
        other, _ = model(cubes, torch.tensor([4.0, 4.0]), measures + 1.0)
    assert not torch.allclose(small, big) and not torch.allclose(small, other)
    (model(cubes, torch.tensor([4.0, 20.0]), measures)[0].sum()).backward()
    assert model.size_term.weight.grad is not None and model.measures_term.weight.grad is not None
    plain = MalignancyModel(MalignancyConfig(**TINY, diameter_input=False, measures_input=False))
    assert plain(cubes)[0].shape == (2,)


def _sphere_cube(radius_mm: float, hu: float, side: int = 32) -> np.ndarray:
    offsets = np.arange(side) - side // 2
    dist = np.sqrt(offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2)
    return np.where(dist <= radius_mm, hu, -850.0).astype(np.float32)


def test_nodule_measures_known_shapes():
    named = lambda cube, d: dict(zip(mal.MEASURE_NAMES, mal.nodule_measures(cube, d)))
    solid = named(_sphere_cube(5.0, 40.0), 10.0)
    assert abs(solid["segment_diameter_ratio"]) < 0.05          # the region is the 10 mm ball itself
    assert solid["segment_mean_hu"] == pytest.approx(0.040) and solid["segment_sd_hu"] == pytest.approx(0.0)
    assert solid["segment_calcified_share"] == 0.0 and solid["ball_solid_share"] == 1.0
    assert solid["elongation_minor"] > 0.95 and solid["segment_reach"] == 0.0
    assert solid["near_shell_dense_share"] == 0.0 and solid["near_shell_mean_hu"] == pytest.approx(-0.850)
    calcified = named(_sphere_cube(5.0, 600.0), 10.0)
    assert calcified["segment_calcified_share"] == 1.0 and calcified["ball_max_hu"] == pytest.approx(0.6)
    # a ground-glass nodule (-600 HU) has no > -500 HU region: the measures fall back to the centre voxels
    glass = named(_sphere_cube(5.0, -600.0), 10.0)
    assert glass["ball_ground_glass_share"] == 1.0 and glass["ball_solid_share"] == 0.0
    # a rod through the nodule (a vessel, a spicule) reaches the limit shell and stretches the region
    rod = _sphere_cube(5.0, 40.0)
    rod[16, 15:18, :] = 40.0
    stretched = named(rod, 10.0)
    assert stretched["segment_reach"] > 0 and stretched["elongation_minor"] < solid["elongation_minor"]
    assert stretched["sphericity"] < solid["sphericity"]
    # a sub-mm diameter whose dense voxel lies off the centre, NaN voxels, a nodule filling the cube: finite
    off_centre = np.full((32, 32, 32), -850.0, np.float32)
    off_centre[18, 18, 18] = 40.0
    with_nan = _sphere_cube(5.0, 40.0)
    with_nan[16, 16, 20] = np.nan
    filled = named(np.full((32, 32, 32), 40.0, np.float32), 60.0)
    for m in (mal.nodule_measures(off_centre, 0.5), mal.nodule_measures(with_nan, 10.0), list(filled.values())):
        assert np.all(np.isfinite(m))
    assert filled["sphericity"] < 1.0                   # the cube's border faces count


def test_training_learns_synthetic_blobs_and_round_trips(tmp_path):
    write_crops(tmp_path / "crops", 24, seed=3)
    cfg = MalignancyConfig(**TINY, epochs=4, batch_size=8, lr=3e-3, augment=True)
    crops = load_crops(tmp_path / "crops", cfg)
    assert crops.measures.shape == (24, len(mal.MEASURE_NAMES))
    model, result = mal.train(crops.cubes[:16], crops.labels[:16], cfg, crops.diameters_mm[:16], crops.measures[:16])
    assert result.steps == 4 * 2
    np.testing.assert_allclose(model.measures_mean.numpy(), crops.measures[:16].mean(axis=0), rtol=1e-5, atol=1e-6)
    held_out = model.predict_cubes(crops.cubes[16:], crops.diameters_mm[16:], crops.measures[16:])
    assert auc(held_out, crops.labels[16:]) >= 0.85
    model.save(tmp_path / "model")
    loaded = mal.load_model(tmp_path / "model")
    np.testing.assert_allclose(loaded.predict_cubes(crops.cubes[16:], crops.diameters_mm[16:], crops.measures[16:]),
                               held_out, atol=1e-5)

    # The CLI on the same folder: one JSON object as the last stdout line.
    from apps.cli import CommandTable
    from apps.medical_imaging import malignancy_cli

    parser = argparse.ArgumentParser()
    malignancy_cli.register(CommandTable(parser.add_subparsers(required=True)))
    args = parser.parse_args(["medical", "eval-malignancy", "--crops", str(tmp_path / "crops"),
                              "--model", str(tmp_path / "model"), "--json"])
    from io import StringIO
    from contextlib import redirect_stdout

    out = StringIO()
    with redirect_stdout(out):
        args.handler(args)
    metrics = json.loads(out.getvalue().strip().splitlines()[-1])
    assert metrics["n"] == 24 and metrics["auc"] >= 0.85
    assert {"auc", "accuracy", "sensitivity", "specificity", "n"} <= metrics.keys()


def test_shipped_model_predicts_on_a_synthetic_crop():
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"no shipped model at {DEFAULT_MODEL_DIR}")
    model = mal.load_default_malignancy_model()
    rng = np.random.default_rng(0)
    centre = np.array(SHAPE_IJK) / 2
    big = _blob_volume(rng, 9.0, 40.0, centre).transpose(2, 1, 0)     # -> hu_ZYX
    small = _blob_volume(rng, 2.0, -200.0, centre).transpose(2, 1, 0)
    spacing_zyx = SPACING_IJK[::-1]
    p = model.predict_hu([(big, spacing_zyx), (small, spacing_zyx)], diameters_mm=[18.0, 4.0])
    assert p.shape == (2,) and np.all((p >= 0) & (p <= 1))
    assert p[0] > p[1]  # an 18 mm solid nodule is more suspicious than a 4 mm faint one
    p_est = model.predict_hu([(big, spacing_zyx)])  # diameter estimated from the image
    assert 0 <= p_est[0] <= 1


def test_shipped_model_on_real_crops(shared_dataset, tmp_path):
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"no shipped model at {DEFAULT_MODEL_DIR}")
    source = shared_dataset("lidc-nodule-crops")
    # A few crops of each class, linked (not copied) into a folder of the same layout.
    with open(source / "nodules.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    chosen = [r for r in rows if r["Diagnosis_value"] == "1"][:4] + [r for r in rows if r["Diagnosis_value"] == "0"][:4]
    (tmp_path / "few" / "image").mkdir(parents=True)
    for r in chosen:
        name = f"{r['patient_id']}_R_{r['nodule_id']}.nii.gz"
        os.symlink(source / "image" / name, tmp_path / "few" / "image" / name)
    with open(tmp_path / "few" / "nodules.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    metrics = mal.evaluate(mal.load_default_malignancy_model(), tmp_path / "few")
    assert metrics["n"] == 8 and metrics["n_malignant"] == 4
    # Sanity, not a metric claim: these crops were in the shipped model's training set (training AUC 0.90 over
    # all 717); a broken preprocessing path or checkpoint falls to chance.
    assert metrics["auc"] >= 0.7


# ---- crops folders laid out by other hands ----

def _table(folder):
    with open(folder / "nodules.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_table(folder, header, rows, delimiter=","):
    with open(folder / "nodules.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def _to_crops_folder(folder):
    """image/P000_R_1.nii.gz -> crops/P000-1.nii.gz (named by an image column)."""
    (folder / "image").rename(folder / "crops")
    for p in sorted((folder / "crops").iterdir()):
        p.rename(p.with_name(p.name.replace("_R_", "-")))


def test_other_column_names_orders_delimiters_and_file_layouts_read_the_same(tmp_path):
    labels = write_crops(tmp_path / "ref", 6)
    reference = load_crops(tmp_path / "ref", use_cache=False)
    rows = _table(tmp_path / "ref")

    def variant(name, header, cells, delimiter=",", files=None):
        folder = tmp_path / name
        write_crops(folder, 6)                           # same seed: same images
        _write_table(folder, header, [cells(r) for r in rows], delimiter)
        if files:
            files(folder)
        return load_crops(folder, use_cache=False)

    geometry = lambda r: [r["coordX"], r["coordY"], r["coordZ"]]   # noqa: E731
    crops = [
        variant("renamed_semicolon", ["Diameter", "Label", "coordz", "COORDY", "coordX", "Nodule ID", "PatientID"],
                lambda r: [r["diameter_mm"], r["Diagnosis_value"], *geometry(r)[::-1], r["nodule_id"],
                           r["patient_id"]], delimiter=";"),
        variant("tsv_yes_no", ["patient", "lesion", "malignant", "coordX", "coordY", "coordZ", "diameter_mm"],
                lambda r: [r["patient_id"], r["nodule_id"], "yes" if r["Diagnosis_value"] == "1" else "no",
                           *geometry(r), r["diameter_mm"]], delimiter="\t"),
        variant("float_ids_nii_flat", ["patient_id", "nodule_id", "Diagnosis", *COLUMNS[2:6]],
                lambda r: [r["patient_id"], f"{r['nodule_id']}.0", r["Diagnosis"], *geometry(r), r["diameter_mm"]],
                files=lambda d: [nib.save(nib.load(p), d / p.name.replace(".nii.gz", ".nii"))
                                 or p.unlink() for p in sorted((d / "image").iterdir())]),
        variant("image_column", ["file", "patient_id", "Diagnosis_value", *COLUMNS[2:6]],
                lambda r: [f"crops/{r['patient_id']}-{r['nodule_id']}.nii.gz", r["patient_id"],
                           r["Diagnosis_value"], *geometry(r), r["diameter_mm"]],
                files=_to_crops_folder),
    ]
    for c in crops:
        assert list(c.labels) == list(labels) and c.patient_ids == reference.patient_ids
        np.testing.assert_allclose(c.cubes, reference.cubes, atol=1e-5)
        np.testing.assert_allclose(c.diameters_mm, reference.diameters_mm, atol=1e-4)
    assert crops[1].label_rule == "malignant (0/1): 6 rows"


def test_malignancy_ratings_become_labels_above_3(tmp_path):
    write_crops(tmp_path / "c", 6)
    rows = _table(tmp_path / "c")
    ratings = ["5", "2", "4", "3", "Highly Suspicious", "Indeterminate"]
    _write_table(tmp_path / "c", ["patient_id", "nodule_id", "Malignancy_value"],
                 [[r["patient_id"], r["nodule_id"], m] for r, m in zip(rows, ratings)])
    crops = load_crops(tmp_path / "c", use_cache=False)
    assert list(crops.labels) == [1, 0, 1, 0, 1, 0]
    assert "rating" in crops.label_rule
    _write_table(tmp_path / "c", ["patient_id", "nodule_id", "Malignancy_value"],
                 [[r["patient_id"], r["nodule_id"], m] for r, m in zip(rows, ["5", "7", *ratings[2:]])])
    with pytest.raises(CropFolderError, match="line 3: Malignancy_value '7'"):
        load_crops(tmp_path / "c", use_cache=False)


def test_more_bad_folders_are_clear_errors(tmp_path):
    write_crops(tmp_path / "e", 2)
    (tmp_path / "e" / "nodules.csv").write_text("")
    with pytest.raises(CropFolderError, match="empty file"):
        load_crops(tmp_path / "e")
    write_crops(tmp_path / "n", 2)
    image = tmp_path / "n" / "image" / "P000_R_2.nii.gz"
    img = nib.load(image)
    hu = np.asarray(img.dataobj, dtype=np.float32)
    hu[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(hu, img.affine), image)
    with pytest.raises(CropFolderError, match="P000_R_2.nii.gz: 1 of .* NaN"):
        load_crops(tmp_path / "n", use_cache=False)
    with pytest.raises(ValueError, match="not finite"):
        binary_metrics(np.array([0.2, np.nan]), np.array([0, 1]), 0.5)


def test_replaced_crop_is_not_served_from_the_cache(tmp_path):
    write_crops(tmp_path / "c", 4)
    first = load_crops(tmp_path / "c")
    image = tmp_path / "c" / "image" / "P000_R_1.nii.gz"
    img = nib.load(image)
    nib.save(nib.Nifti1Image(np.full(img.shape, 200.0, dtype=np.float32), img.affine), image)
    second = load_crops(tmp_path / "c")
    assert np.allclose(second.cubes[1:], first.cubes[1:], atol=1e-3)
    assert second.cubes[0, 16, 16, 24] > first.cubes[0, 16, 16, 24] + 0.5     # the new, solid crop


def test_one_class_folders_give_valid_json_not_nan(tmp_path):
    write_crops(tmp_path / "c", 8)
    rows = _table(tmp_path / "c")
    cfg = MalignancyConfig(**TINY, epochs=1, batch_size=4, augment=False)
    model = MalignancyModel(cfg)
    for r in rows:
        r["Diagnosis_value"], r["Diagnosis"] = "0", "Benign"
    _write_table(tmp_path / "c", list(rows[0]), [list(r.values()) for r in rows])
    metrics = mal.evaluate(model, tmp_path / "c")
    assert metrics["auc"] is None and metrics["sensitivity"] is None
    assert "all 8 crops are benign" in metrics["warnings"][0]
    json.dumps(metrics, allow_nan=False)
    with pytest.raises(CropFolderError, match="needs both classes"):
        mal.cross_validate(tmp_path / "c", 2, cfg)
    # per patient (P000..P003, 2 crops each): both malignant, both benign, one of each, both benign; with 4
    # folds, the first and second test folds hold one class only: no AUC for them, and no NaN anywhere
    for r, y in zip(rows, [1, 1, 0, 0, 1, 0, 0, 0]):
        r["Diagnosis_value"], r["Diagnosis"] = str(y), "Malign" if y else "Benign"
    _write_table(tmp_path / "c", list(rows[0]), [list(r.values()) for r in rows])
    result = mal.cross_validate(tmp_path / "c", 4, cfg, predictions=tmp_path / "oof.csv")
    json.dumps(result, allow_nan=False)
    assert result["auc_per_fold"].count(None) == 3 and len(result["warnings"]) == 3
    assert result["auc_mean"] == [a for a in result["auc_per_fold"] if a is not None][0]
    # the out-of-fold predictions: one row per crop, whole patients per fold, the pooled AUC recomputable
    with open(tmp_path / "oof.csv", newline="") as f:
        oof = list(csv.DictReader(f))
    assert [r["label"] for r in oof] == ["1", "1", "0", "0", "1", "0", "0", "0"]
    assert all(len({r["fold"] for r in oof if r["patient_id"] == p}) == 1 for p in {r["patient_id"] for r in oof})
    pooled = auc([float(r["probability"]) for r in oof], [int(r["label"]) for r in oof])
    assert result["auc_pooled"] == pytest.approx(pooled, abs=1e-4)
    assert result["diameter_only_auc_mean"] is not None


def test_a_rating_column_of_only_1s_is_read_as_ratings_not_as_all_malignant(tmp_path):
    write_crops(tmp_path / "c", 4)
    rows = _table(tmp_path / "c")
    _write_table(tmp_path / "c", ["patient_id", "nodule_id", "Malignancy"],
                 [[r["patient_id"], r["nodule_id"], "1"] for r in rows])
    table = mal.read_crop_table(tmp_path / "c")
    assert table.labels == [0, 0, 0, 0] and "only 1s" in table.label_rule and "rating" in table.label_rule
    _write_table(tmp_path / "c", ["patient_id", "nodule_id", "Malignancy"],
                 [[r["patient_id"], r["nodule_id"], y] for r, y in zip(rows, "1011")])
    table = mal.read_crop_table(tmp_path / "c")
    assert table.labels == [1, 0, 1, 1] and table.label_rule == "Malignancy (0/1): 4 rows"


def test_nodules_csv_in_utf16_with_quoted_newlines_reads_like_utf8(tmp_path):
    write_crops(tmp_path / "c", 4)
    rows = _table(tmp_path / "c")
    header = ["patient_id", "nodule_id", "notes", "Diagnosis_value"]
    body = [[r["patient_id"], r["nodule_id"], "spiculated;\nupper lobe, right", r["Diagnosis_value"]] for r in rows]
    _write_table(tmp_path / "c", header, body)
    text = (tmp_path / "c" / "nodules.csv").read_text(encoding="utf-8")
    (tmp_path / "c" / "nodules.csv").write_bytes(text.encode("utf-16"))
    table = mal.read_crop_table(tmp_path / "c")
    assert table.labels == [int(r["Diagnosis_value"]) for r in rows] == [0, 1, 0, 1]
    assert [r["line"] for r in table.rows] == [2, 4, 6, 8]   # a quoted newline spans two lines


# ---- the measures term: bounds, explanations, old checkpoints ----

def test_load_crops_and_prepare_give_the_same_inputs(tmp_path):
    """A crop prepared for training (load_crops) and the same crop prepared at inference (prepare) agree."""
    write_crops(tmp_path / "crops", 2, seed=4)
    cfg = MalignancyConfig(**TINY)
    crops = load_crops(tmp_path / "crops", cfg, use_cache=False)
    row = _table(tmp_path / "crops")[0]
    vol = mal.load_crop_volume(tmp_path / "crops" / "image" / f"{row['patient_id']}_R_{row['nodule_id']}.nii.gz")
    centre = vol.to_voxel(np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")]))[0]
    cube_hu = crop_around(vol.hu_ZYX, vol.spacing_zyx, centre, cfg.crop_mm)
    cube, d, measures = MalignancyModel(cfg).prepare(cube_hu, (1.0, 1.0, 1.0), float(row["diameter_mm"]))
    np.testing.assert_allclose(cube, crops.cubes[0], atol=1e-4)
    assert d == pytest.approx(crops.diameters_mm[0])
    np.testing.assert_allclose(measures, crops.measures[0], atol=1e-4)
    empty = MalignancyModel(cfg).prepare_many([])
    assert [a.shape for a in empty] == [(0, 32, 32, 32), (0,), (0, len(mal.MEASURE_NAMES))]


def test_a_measure_constant_in_training_moves_the_logit_a_bounded_amount():
    cfg = MalignancyConfig(**TINY, epochs=1, batch_size=4, augment=False)
    rng = np.random.default_rng(0)
    cubes = rng.random((8, 32, 32, 32), dtype=np.float32)
    measures = rng.normal(size=(8, len(mal.MEASURE_NAMES))).astype(np.float32)
    measures[:, 3] = 0.0                               # e.g. no training crop is calcified
    model, _ = mal.train(cubes, np.arange(8) % 2, cfg, np.full(8, 8.0), measures)
    assert model.measures_scale[3] == mal.MEASURE_SCALE_FLOOR
    outlier = measures[:1].copy()
    outlier[0, 3] = 1000.0                             # far outside anything seen
    terms = model.measure_terms(outlier)
    assert abs(terms[0, 3]) <= mal.MEASURE_CLIP * abs(float(model.measures_term.weight.detach()[0, 3])) + 1e-6
    assert np.all(np.isfinite(model.predict_cubes(cubes[:1], np.full(1, 8.0), outlier)))
    assert MalignancyModel(MalignancyConfig(**TINY, measures_input=False)).measure_terms(measures) is None


def test_findings_name_the_measures_that_move_their_estimate():
    from apps.medical_imaging.pipeline import Finding, Models, _malignancy

    model = MalignancyModel(MalignancyConfig(**TINY)).eval()
    hu = np.full((40, 64, 64), -850.0, np.float32)
    hu[17:23, 28:36, 28:36] = 40.0
    finding = Finding(1, 0.0, 0.0, 0.0, 32.0, 32.0, 20.0, 8.0, 0.9, 0.9, None, "", "right upper lobe", "solid",
                      [20], None)
    _malignancy(Models(None, model), hu, (1.0, 1.0, 1.0), [finding])
    assert 0.0 <= finding.malignancy <= 1.0
    named = finding.malignancy_note.split("measures that move it most (logit terms): ")[1].split(", ")
    assert len(named) == 2
    assert all(n.rsplit(" ", 1)[0].replace(" ", "_") in mal.MEASURE_NAMES for n in named)


def test_a_checkpoint_from_before_the_measures_says_how_to_load_it(tmp_path):
    old = MalignancyModel(MalignancyConfig(**TINY, measures_input=False))
    old.save(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["config"]["measures_input"]               # as written before the field existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    with pytest.raises(mal.CheckpointError, match="measures_input"):
        mal.load_model(tmp_path / "old")
    config["config"]["measures_input"] = False
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert mal.load_model(tmp_path / "old").measures_term is None
