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


def _read(text: str) -> list[tuple]:
    """(size, lobe or side, negated, density) of each mention, in order."""
    return [(m.size_mm, m.lobe or m.side, m.negated, m.density) for m in find_mentions(text)[1]]


RUL, LLL = "right upper lobe", "left lower lobe"


@pytest.mark.parametrize("text", ["RUL 6 mm, LLL 4 mm nodules.",
                                  "Right upper lobe 6 mm nodule and left lower lobe 4 mm nodule.",
                                  "Nodules in the RUL (6 mm) and LLL (4 mm).",
                                  "6 mm nodule in the RUL and 4 mm nodule in the LLL."])
def test_each_size_takes_the_lobe_named_with_it_before_or_after(text):
    assert [(size, lobe) for size, lobe, _, _ in _read(text)] == [(6.0, RUL), (4.0, LLL)]


@pytest.mark.parametrize("text", ["RUL | 6 mm | solid\nLLL | 4 mm | ground glass\n",
                                  "Location\tSize\tType\nRUL\t6 mm\tsolid\nLLL\t4 mm\tground glass\n",
                                  "| Nodule | Lobe | Size | Type |\n|---|---|---|---|\n| 1 | RUL | 6 mm | solid |\n"
                                  "| 2 | LLL | 4 mm | ground glass |\n"])
def test_a_nodule_table_gives_one_mention_per_row(text):
    assert _read(text) == [(6.0, RUL, False, "solid"), (4.0, LLL, False, "subsolid")]


@pytest.mark.parametrize("text", ["PULMONARY NODULES:\nNone.", "NODULES:\n- None", "Nodule 1: none",
                                  "Number of nodules: 0", "Nodules present: No", "Nodules: N/A"])
def test_a_templates_denial(text):
    assert _read(text) == [(None, None, True, None)]


def test_a_heading_names_what_follows_and_reports_nothing_itself():
    assert _read("Lung nodules:\n1. 6 mm RUL nodule.\n2. 4 mm LLL nodule.") == [(6.0, RUL, False, None),
                                                                                 (4.0, LLL, False, None)]
    assert _read("RIGHT UPPER LOBE:\n6 mm nodule.\n\nLEFT LUNG:\nClear.") == [(6.0, RUL, False, None)]
    assert _read("CLINICAL HISTORY: evaluate lung nodule.\n\nFINDINGS:\nThe lungs are clear.") == []
    assert _read("INDICATION:\nPulmonary nodule follow-up.\n\nFINDINGS:\n5 mm nodule in the LLL.") == [
        (5.0, LLL, False, None)]


@pytest.mark.parametrize("text", ["No pleural effusion or pneumothorax, 4 mm nodule in the RUL.",
                                  "Heart size normal, no pericardial effusion, 4 mm nodule in the RUL.",
                                  "Lungs: no consolidation, small 4 mm nodule in the RUL.",
                                  "No nodules except for a 4 mm nodule in the RUL."])
def test_a_negation_does_not_reach_a_sized_finding_of_its_own(text):
    assert _read(text) == [(4.0, RUL, False, None)]


def test_a_denial_of_a_list_and_a_resolved_nodule_beside_a_new_one():
    assert _read("No effusion, consolidation, or nodule.") == [(None, None, True, None)]
    assert _read("The RUL nodule has resolved and there is a new 6 mm LLL nodule.") == [(None, RUL, True, None),
                                                                                       (6.0, LLL, False, None)]
    assert _read("No nodules > 4 mm.") == [(None, None, True, None)]   # larger ones denied, not 4 mm ones


@pytest.mark.parametrize("text", ["Nodule in the RUL measuring approx. 6 mm.", "RUL nodule (Se. 3, Im. 45) measuring 6 mm.",
                                  "6 MM NODULE RT. UPPER LOBE.", "6 mm solid nod-\nule in the right up-\nper lobe.",
                                  "6 mm nodule located 2 cm from the pleura in the RUL.", "6 mm RUL nodule (prior 4 mm).",
                                  "6 mm RUL nodule, 4 mm on 2023-01-05.", "6–mm nodule in the R upper lobe.",
                                  "RUL nodule measuring 7 mm in long axis and 5 mm in short axis.",
                                  "A nodule is seen in the right upper lobe. It measures 6 mm."])
def test_one_nodule_of_6_mm_in_the_rul(text):
    assert [(size, lobe) for size, lobe, _, _ in _read(text)] == [(6.0, RUL)]


def test_a_parts_size_and_a_word_broken_at_a_line_end():
    assert _read("12 mm part-solid nodule in the RUL with a 3 mm cavity.") == [(12.0, RUL, False, "subsolid")]
    assert _read("12 mm part-solid nodule in the RUL (solid portion 4 mm).") == [(12.0, RUL, False, "subsolid")]
    assert _read("5 mm ground-\nglass nodule in the LLL.") == [(5.0, LLL, False, "subsolid")]
    assert _read("6 mm nodule in the middle lobe.") == [(6.0, "right middle lobe", False, None)]


@pytest.mark.parametrize("text", ["Anterior mediastinal mass, 5 cm.", "Lytic lesion in the right 5th rib, 1.5 cm.",
                                  "Tree-in-bud opacities in the RLL.", "Nodular scarring in the RUL.",
                                  "Increased density in the RLL consistent with consolidation."])
def test_findings_that_are_no_lung_nodule(text):
    assert _read(text) == []


@pytest.mark.parametrize("text,lobes", [("No nodule in the RUL or LLL.", [RUL, LLL]),
                                        ("No nodules in the right upper and left lower lobes.", [RUL, LLL]),
                                        ("No nodules in the left upper and lower lobes.", ["left upper lobe", LLL])])
def test_a_denial_of_several_lobes_denies_each(text, lobes):
    assert _read(text) == [(None, lobe, True, None) for lobe in lobes]


def test_a_finding_in_two_lobes_named_together_is_placed_in_the_first():
    assert _read("Nodules in the right upper and middle lobes.") == [(None, RUL, False, None)]


@pytest.mark.parametrize("text", [
    "TECHNIQUE:\nCT of the chest without contrast.\n\nCOMPARISON: None.\n\nFINDINGS: There is a 6 mm nodule in the RUL.",
    "INDICATION:\nFollow-up.\n\nThere is a 6 mm nodule in the RUL.",
    "FINDINGS:\n\tThere is a 6 mm nodule in the right upper\n\tlobe.",          # indented, not a table
    "A 6 mm opacity in the right upper lobe, suspicious for infection or malignancy.",   # sized: a nodule
    "A 6 mm nodule in the right upper lobe with lobulated nodular margins.",
    "The RUL nodule measures 6 mm on 4/112.",                                  # series / image, not a date
    "A 6 mm nodule in the right upper lobe. It is 3 cm anterior to the fissure.",
    "Pneumothorax: No. 6 mm nodule in the right upper lobe.",
    "6 mm superior segment RUL nodule."])
def test_a_section_ends_and_nodule_words_in_other_roles_keep_the_nodule(text):
    """Review of the layouts change: each of these lost its nodule, its size or its lobe, or was negated."""
    assert _read(text)[-1][:3] == (6.0, RUL, False)


def test_an_indented_denial_and_a_nodule_by_the_heart_are_read():
    assert _read("IMPRESSION:\n\tNo pulmonary nodules.") == [(None, None, True, None)]
    assert _read("A 4 mm nodule near the left heart border.") == [(4.0, "left", False, None)]
    assert [m.lobe for m in find_mentions("Nodule in the RUL, 6 mm max. Another nodule in the LLL.")[1]] == [RUL, LLL]



def test_hl7_segments_and_old_mac_line_ends_are_lines():
    """HL7 ends its segments with a carriage return alone: they ran together, and the patient's name (PID)
    stood in the sentence a finding quotes."""
    hl7 = ("MSH|^~\\&|RIS|HOSP|||202401011200||ORU^R01|1|P|2.3\rPID|1||12345||DOE^JOHN||19500101|M\r"
           "OBX|1|TX|||FINDINGS: There is a 6 mm nodule in the right upper lobe.\r")
    mentions = find_mentions(hl7)[1]
    assert [(m.size_mm, m.lobe) for m in mentions] == [(6.0, RUL)] and "DOE" not in mentions[0].sentence
    assert _read("FINDINGS:\rThere is a 6 mm nodule in the RUL.\r\rIMPRESSION:\rNodule as above.")[0][:2] == (6.0, RUL)


def test_an_hl7_message_file_is_a_report(tmp_path):
    from apps.medical_imaging.report import is_report_file, read_report_file
    path = tmp_path / "A123.HL7"
    path.write_bytes(b"MSH|^~\\&|RIS\rOBX|1|TX|||There is a 6 mm nodule in the RUL.\r")
    assert is_report_file(path) and _read(read_report_file(path)) == [(6.0, RUL, False, None)]


def test_a_report_in_another_language_is_said_to_be_unread():
    from apps.medical_imaging.report import language_warning, read_report
    german = ("Befund: Im rechten Oberlappen findet sich ein 6 mm großer Rundherd. Kein Nachweis weiterer Herde. "
              "Die Lunge ist sonst unauffällig.")
    assert "reads English only" in language_warning(german, read_report(german, embed=False))
    for text in ("There is a 6 mm nodule in the RUL.", "The lungs are clear.", "", None):
        assert language_warning(text, read_report(text, embed=False)) is None
