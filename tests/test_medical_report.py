"""The report reader on hand-written sentences: sizes and units, lobes, negation, absent reports."""
import numpy as np
import pytest

from apps.medical_imaging.report import find_mentions, read_report


def _one(text):
    _, mentions = find_mentions(text)
    assert len(mentions) == 1, mentions
    return mentions[0]


@pytest.mark.parametrize("text,size,lobe,negated", [
    ("There is a 6 mm nodule in the right upper lobe.", 6.0, "right upper lobe", False),
    ("A 1.2 cm solid nodule is seen in the left lower lobe.", 12.0, "left lower lobe", False),
    ("Ground-glass opacity measuring 8 x 6 mm, RML.", 7.0, "right middle lobe", False),
    ("Lingular nodule of 5mm.", 5.0, "left upper lobe", False),
    ("The upper lobe of the left lung contains a nodule, approximately four millimeters.", 4.0, "left upper lobe", False),
    ("No nodule in the right lower lobe.", None, "right lower lobe", True),
    ("The previously seen LUL nodule has resolved.", None, "left upper lobe", True),
    ("Left lower lobe: no nodules.", None, "left lower lobe", True),
    ("Nodule in the right lower lobe is no longer seen.", None, "right lower lobe", True),
    ("Stable 7 mm nodule in the RLL without interval change.", 7.0, "right lower lobe", False),
    ("No change in the 9 mm right upper lobe nodule.", 9.0, "right upper lobe", False),
    ("There is a nodule at the left lung base.", None, "left lower lobe", False),
])
def test_mentions(text, size, lobe, negated):
    m = _one(text)
    assert m.size_mm == (pytest.approx(size) if size is not None else None)
    assert m.lobe == lobe
    assert m.negated is negated


def test_several_findings_and_other_sentences():
    text = ("FINDINGS: The heart is normal in size. Slice thickness 1.25 mm.\n"
            "A 6 mm nodule in the RUL and a 4 mm nodule in the LLL. No pleural effusion. "
            "Right middle lobe is clear; no nodule in the left upper lobe.")
    sentences, mentions = find_mentions(text)
    assert [(m.size_mm, m.lobe, m.negated) for m in mentions] == [
        (6.0, "right upper lobe", False), (4.0, "left lower lobe", False), (None, "right middle lobe", True),
        (None, "left upper lobe", True)]
    assert len(sentences) == 5


def test_absent_and_empty_reports():
    for text in (None, "", "   \n", "Normal heart. No effusion."):
        reading = read_report(text)
        assert reading.empty and reading.embeddings_MD.shape == (0, 384)


def test_embeddings_are_unit_vectors_that_tell_mentions_apart():
    reading = read_report("There is a 6 mm nodule in the right upper lobe. No nodule in the left lower lobe.")
    emb = reading.embeddings_MD
    assert emb.shape == (2, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert float(emb[0] @ emb[1]) < 0.99


def test_a_lobe_reported_clear_is_a_negated_mention():
    m = _one("The right middle lobe is clear.")
    assert (m.lobe, m.negated, m.size_mm) == ("right middle lobe", True, None)
    assert find_mentions("The lungs are clear.")[1] == []


@pytest.mark.parametrize("text,density", [
    ("Ground-glass opacity measuring 8 x 6 mm, RML.", "subsolid"),
    ("A 6 mm GGO in the right upper lobe.", "subsolid"),
    ("Part-solid nodule of 12 mm in the LUL.", "subsolid"),
    ("A nonsolid nodule measuring 7 mm in the left lower lobe.", "subsolid"),
    ("A 1.2 cm solid nodule is seen in the left lower lobe.", "solid"),
    ("Calcified 5 mm granuloma in the RLL.", "solid"),
    ("There is a 6 mm nodule in the right upper lobe.", None),
])
def test_stated_density(text, density):
    assert _one(text).density == density


def test_each_size_takes_its_own_density():
    _, mentions = find_mentions("A 6 mm ground-glass nodule in the RUL and a 9 mm solid nodule in the LLL.")
    assert [(m.size_mm, m.density) for m in mentions] == [(6.0, "subsolid"), (9.0, "solid")]
