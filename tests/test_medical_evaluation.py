"""FROC / CPM on hand-made cases with known answers (LUNA16 rules)."""
import json

import pytest

from apps.medical_imaging.evaluation import (EvaluationInputError, Nodule, Prediction, froc, read_predictions,
                                             read_truth)


def _case():
    truth = [Nodule("a", (0, 0, 0), 10.0), Nodule("b", (50, 0, 0), 6.0)]
    preds = [Prediction("a", (1, 0, 0), 0.9),    # hits a: true positive
             Prediction("a", (2, 0, 0), 0.8),    # second hit of a: ignored, not a false positive
             Prediction("a", (30, 0, 0), 0.7),   # false positive
             Prediction("b", (50, 4, 0), 0.6),   # 4 mm off a 6 mm nodule (radius 3): false positive
             Prediction("b", (50, 2, 0), 0.5)]   # hits b
    return preds, truth


def test_froc_known_answer():
    preds, truth = _case()
    result = froc(preds, truth)
    assert result.n_scans == 2 and result.n_nodules == 2
    # Points (fp/scan, sens): (0, .5) (.5, .5) (1, .5) (1, 1): 1 FP/scan reaches both nodules.
    assert result.sensitivity_at == {0.125: 0.5, 0.25: 0.5, 0.5: 0.5, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    assert result.cpm == pytest.approx(5.5 / 7)


def test_froc_more_scans_lower_fp_rate_and_missed_nodule():
    preds, truth = _case()
    truth.append(Nodule("c", (0, 0, 0), 8.0))   # never found
    result = froc(preds, truth, n_scans=4)      # 2 FPs over 4 scans = 0.5 FP/scan
    assert result.sensitivity_at[0.25] == pytest.approx(1 / 3)
    assert result.sensitivity_at[0.5] == pytest.approx(2 / 3)
    assert result.sensitivity_at[8.0] == pytest.approx(2 / 3)


def test_ties_are_not_split_and_perfect_detector_scores_one():
    truth = [Nodule("a", (0, 0, 0), 10.0)]
    tied = [Prediction("a", (0, 0, 0), 0.5), Prediction("a", (40, 0, 0), 0.5)]
    assert froc(tied, truth).sensitivity_at[0.125] == 0.0   # the TP comes only together with its FP
    assert froc(tied, truth).sensitivity_at[1.0] == 1.0
    assert froc([Prediction("a", (3, 0, 0), 0.1)], truth).cpm == 1.0
    assert froc([], truth).cpm == 0.0


def test_csv_readers_and_cli(tmp_path, capsys):
    from apps.cli import main

    (tmp_path / "truth.csv").write_text("study,series_uid,nodule_id,x_mm,y_mm,z_mm,diameter_mm\n"
                                        "a,1,0,0,0,0,10\nb,2,0,50,0,0,6\n")
    header = "study,series_uid,nodule_id,x_mm,y_mm,z_mm,i,j,k,diameter_mm,probability,malignancy\n"
    rows = ["a,1,0,1,0,0,0,0,0,5,0.9,", "a,1,1,2,0,0,0,0,0,5,0.8,", "a,1,2,30,0,0,0,0,0,5,0.7,",
            "b,2,0,50,4,0,0,0,0,5,0.6,", "b,2,1,50,2,0,0,0,0,5,0.5,"]
    (tmp_path / "pred.csv").write_text(header + "\n".join(rows) + "\n")
    (tmp_path / "base.csv").write_text(header + rows[2] + "\n")
    assert len(read_truth(tmp_path / "truth.csv")) == 2 and len(read_predictions(tmp_path / "pred.csv")) == 5
    assert main(["medical", "eval-detection", "--pred", str(tmp_path / "pred.csv"), "--truth",
                 str(tmp_path / "truth.csv"), "--baseline", str(tmp_path / "base.csv"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["cpm"] == pytest.approx(5.5 / 7, abs=1e-4)
    assert out["sensitivity_at_fp_per_scan"]["1.0"] == 1.0
    assert out["baseline"]["cpm"] == 0.0 and out["cpm_gain"] == pytest.approx(5.5 / 7, abs=1e-4)

    (tmp_path / "bad.csv").write_text("study,x_mm,y_mm,z_mm,probability\na,1,zero,0,0.5\n")
    with pytest.raises(EvaluationInputError, match="line 2.*y_mm"):
        read_predictions(tmp_path / "bad.csv")
    assert main(["medical", "eval-detection", "--pred", str(tmp_path / "truth.csv"), "--truth",
                 str(tmp_path / "truth.csv")]) == 2   # no probability column: a usage error
