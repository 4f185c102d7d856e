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
    # as radiologists write them (a read-only probe of 190 sentences, 2026-12-02)
    ("No suspicious pulmonary nodules.", None, None, True),
    ("There are no suspicious pulmonary nodules or masses.", None, None, True),
    ("No new or enlarging nodules.", None, None, True),
    ("Pulmonary nodules: none.", None, None, True),
    ("6 mm RUL nodule, not present on the prior study.", 6.0, "right upper lobe", False),
    ("RUL nodule, previously 5 mm, now 7 mm.", 7.0, "right upper lobe", False),
    ("LLL nodule measuring 7 mm (previously 5 mm).", 7.0, "left lower lobe", False),
    ("The previously seen 5 mm nodule in the RUL is stable.", 5.0, "right upper lobe", False),
    ("Nodule 6 mm x 4 mm in the RLL.", 5.0, "right lower lobe", False),
    ("Part-solid 12 mm nodule in the LUL with a 4 mm solid component.", 12.0, "left upper lobe", False),
    ("Nodule in the RUL, not well characterized on 5 mm slices.", None, "right upper lobe", False),
    ("A 6 mm nodule in the RUL abutting the mediastinum.", 6.0, "right upper lobe", False),
    ("The RUL nodule measures 6 mm on image 45.", 6.0, "right upper lobe", False),
    ("The prior 6 mm RUL nodule is unchanged.", 6.0, "right upper lobe", False),
    ("Nodule of 10 mm x 4 mm x 4 mm in the LLL.", 6.0, "left lower lobe", False),
    ("Triangular 4 mm nodule, likely an intrapulmonary lymph node.", 4.0, None, False),
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


@pytest.mark.parametrize("text", ["1 cm hypodense lesion in the liver.", "Right adrenal nodule measuring 12 mm.",
                                  "6 mm nodule in the right lobe of the thyroid.", "Bone density is normal."])
def test_findings_outside_the_lungs_are_no_mentions(text):
    assert find_mentions(text)[1] == []


def test_several_sizes_of_a_range_and_nodes_beside_nodules_are_kept():
    assert [m.size_mm for m in find_mentions("Nodules ranging from 3 mm to 6 mm in the RUL.")[1]] == [3.0, 6.0]
    _, mentions = find_mentions("Multiple bilateral nodules and enlarged hilar nodes, concerning for metastases.")
    assert [m.negated for m in mentions] == [False]


def test_a_mention_naming_no_place_is_cited_only_for_a_finding_of_its_size():
    from apps.medical_imaging.detection import Candidate, _best_mention
    from apps.medical_imaging.report import ReportReading

    def cited(text: str, diameter_mm: float) -> int | None:
        sentences, mentions = find_mentions(text)
        nodule = Candidate(np.array([10, 10, 10]), 30.0, diameter_mm, 20.0)
        return _best_mention(nodule, (-1.0, 0.8, 0.0), ReportReading(sentences, mentions))

    assert cited("A 6 mm nodule is seen.", 6.5) == 0
    assert cited("A 20 mm mass is seen.", 6.5) is None
    assert cited("Scattered opacities.", 6.5) is None
    assert cited("A nodule in the right upper lobe.", 6.5) == 0   # a place: cited without a size
