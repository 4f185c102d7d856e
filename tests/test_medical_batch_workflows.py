"""Batch workflows a probe found broken, each on tiny synthetic studies the tests build: a report matched to
the wrong patient by a shared leaf folder name (CT/), reports that match nothing said nowhere, a second batch on
the same --out deleting the first one's work, a failure record outliving the study's success, the page's default
operating point differing from the batch's, a UTF-16 report read as empty, a dead worker failing every pending
study, a rerun ignoring a report that now matches."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pydicom
import pytest
from test_medical_pipeline import _zip_folder, dataset  # noqa: F401 - tiny synthetic studies, tiny detector

from apps.medical_imaging import batch
from apps.medical_imaging.batch import DONE, BatchConfig, _host, discover, merge, run_batch

REPORT = "There is a 7 mm solid nodule in the right upper lobe."


@pytest.fixture(scope="module")
def tree(dataset, tmp_path_factory):  # noqa: F811
    """Three studies in a PACS-like tree: tree/PAT_A/CT, tree/PAT_B/CT (same leaf name), tree/PAT_C/20200101/s3."""
    root, _ = dataset
    base = tmp_path_factory.mktemp("tree")
    studies = sorted((root / "data" / "studies").iterdir())
    for study, rel, acc in zip(studies, ("PAT_A/CT", "PAT_B/CT", "PAT_C/20200101/s3"), ("ACC100", "ACC101", "ACC102")):
        _copy_series(study, base / "tree" / rel, AccessionNumber=acc)
    return base / "tree"


def _reports(folder, files: dict):
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text) if isinstance(text, str) else (folder / name).write_bytes(text)
    return folder


def _by_key(entries):
    return {e.key: (e.report.name if e.report else None) for e in entries}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run(dataset, source, out, **kw):  # noqa: F811
    root, _ = dataset
    return run_batch(BatchConfig(input=source, out=out, detector=root / "detector", progress=False, overlays=False,
                                 **kw))


# ------------------------------------------------------------------------------------------ 1 + 5: report matching


def test_shared_leaf_name_matches_no_one_and_specific_names_win(tree, tmp_path):
    reports = _reports(tmp_path / "rep", {"CT.txt": REPORT, "PAT_B__CT.txt": REPORT, "ACC102.TXT": REPORT,
                                          "PAT_A.md": REPORT, "NOSUCH_STUDY.txt": REPORT})
    entries, errors = discover(BatchConfig(input=tree, out=tmp_path / "out", reports=reports))
    assert _by_key(entries) == {"PAT_A__CT": "PAT_A.md", "PAT_B__CT": "PAT_B__CT.txt",
                                "PAT_C__20200101__s3": "ACC102.TXT"}
    unmatched = {r["source"]: r["message"] for r in errors if r.get("unmatched_report")}
    assert set(unmatched) == {"CT.txt", "NOSUCH_STUDY.txt"}
    assert "PAT_A__CT" in unmatched["CT.txt"] and "PAT_B__CT" in unmatched["CT.txt"]   # names the studies
    assert "matches no study" in unmatched["NOSUCH_STUDY.txt"]
    top = tmp_path / "top"   # a top-level CT/ (folder key 'CT') beside PAT_B/CT: CT.txt is the former's alone
    _copy_series(tree / "PAT_A" / "CT", top / "CT", SeriesInstanceUID="1.2.3.4.5.1")
    _copy_series(tree / "PAT_B" / "CT", top / "PAT_B" / "CT")
    only_ct = _reports(tmp_path / "rep2", {"CT.txt": REPORT})
    entries, _ = discover(BatchConfig(input=top, out=tmp_path / "out", reports=only_ct))
    assert _by_key(entries) == {"CT": "CT.txt", "PAT_B__CT": None}


def test_two_reports_for_one_study_use_the_most_specific_with_a_warning(tree, tmp_path):
    study_uid = str(pydicom.dcmread(sorted((tree / "PAT_B" / "CT").glob("*.dcm"))[0]).StudyInstanceUID)
    reports = _reports(tmp_path / "rep", {f"{study_uid}.txt": REPORT, "PAT_B__CT.txt": REPORT, "SYN0001.txt": REPORT})
    entries, errors = discover(BatchConfig(input=tree, out=tmp_path / "out", reports=reports))
    entry = next(e for e in entries if e.key == "PAT_B__CT")
    assert entry.report.name == "PAT_B__CT.txt"
    [note] = entry.notes   # the others name it too: said there, not 'unmatched'
    assert "used PAT_B__CT.txt" in note and study_uid in note and "SYN0001.txt" in note
    assert not [r for r in errors if r.get("unmatched_report")]
    alone = _reports(tmp_path / "rep", {"SYN0001.txt": REPORT})   # PatientID alone, of one study: used
    assert _by_key(discover(BatchConfig(input=tree, out=tmp_path / "out", reports=alone))[0])["PAT_B__CT"] == \
        "SYN0001.txt"


def test_summary_and_findings_say_which_report_was_used(dataset, tree, tmp_path):  # noqa: F811
    reports = _reports(tmp_path / "rep", {"PAT_B__CT.txt": REPORT, "CT.txt": REPORT, "NOSUCH.txt": REPORT})
    out = tmp_path / "out"
    summary = _run(dataset, tree, out, reports=reports)
    assert summary["studies_with_report"] == 1 and summary["unmatched_report_count"] == 2
    assert sorted(summary["unmatched_reports"]) == ["CT.txt", "NOSUCH.txt"]
    doc = json.loads((out / "studies" / "PAT_B__CT" / "findings.json").read_text())
    assert doc["report_given"] and doc["report_file"] == "PAT_B__CT.txt"
    assert json.loads((out / "studies" / "PAT_B__CT" / DONE).read_text())["report_file"] == "PAT_B__CT.txt"
    other = json.loads((out / "studies" / "PAT_A__CT" / "findings.json").read_text())
    assert not other["report_given"] and other["report_file"] is None
    assert {r["source"] for r in _rows(out / "errors.csv") if r["stage"] == "report"} == {"CT.txt", "NOSUCH.txt"}
    anon = _run(dataset, tree, tmp_path / "anon", reports=reports, anonymize=True)
    assert "NOSUCH.txt" not in json.dumps(anon) and anon["unmatched_report_count"] == 2
    assert "PAT_B__CT.txt" not in "".join(p.read_text() for p in (tmp_path / "anon").rglob("*.json"))


# ------------------------------------------------------------------------------------------ 4: report encodings


def test_utf16_and_latin1_reports_are_read(dataset, tmp_path, capsys):  # noqa: F811
    from apps.cli import main

    root, _ = dataset
    text = "Größe: There is a 7 mm solid nodule in the right upper lobe."
    study = sorted((root / "data" / "studies").iterdir())[0]
    for encoding in ("utf-16", "cp1252"):
        reports = _reports(tmp_path / f"rep-{encoding}", {f"{study.name}.txt": text.encode(encoding)})
        out = tmp_path / f"out-{encoding}"
        _run(dataset, study, out, reports=reports)
        doc = json.loads((out / "studies" / study.name / "findings.json").read_text())
        assert doc["report_given"] and len(doc["report_mentions"]) == 1, encoding
        main(["medical", "read-report", str(reports / f"{study.name}.txt"), "--json"])
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert len(got["mentions"]) == 1 and "Größe" in got["mentions"][0]["sentence"], encoding


# ------------------------------------------------------------------------------------------ 2: concurrent writers


def test_another_live_process_temp_folder_and_claim_are_respected(dataset, tmp_path):  # noqa: F811
    root, _ = dataset
    studies = root / "data" / "studies"
    out = tmp_path / "out"
    (out / "studies").mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_tmp = out / "studies" / f".synth-0000.tmp-{_host()}-{sleeper.pid}-0a1b2c3d"
        live_tmp.mkdir()
        (out / "studies" / ".synth-0001.claim").write_text(json.dumps(
            {"host": _host(), "pid": sleeper.pid, "time": __import__("time").time()}))
        summary = _run(dataset, studies, out)
        assert live_tmp.is_dir()   # another batch's work in progress is not deleted
        assert summary["claimed_by_another_process"] == 1 and summary["processed"] == 2
        assert not (out / "studies" / "synth-0001" / DONE).exists()
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)
        sleeper.wait()
    again = _run(dataset, studies, out)   # the holder is gone: its claim is stale
    assert again["processed"] == 1 and again["studies_done"] == 3


def test_merge_drops_failures_of_finished_studies(dataset, tmp_path):  # noqa: F811
    root, _ = dataset
    out = tmp_path / "out"
    _run(dataset, root / "data" / "studies", out)
    (out / "failed").mkdir(exist_ok=True)
    stale = out / "failed" / "synth-0000.json"
    stale.write_text(json.dumps({"study": "synth-0000", "source": "synth-0000", "stage": "write",
                                 "message": "FileNotFoundError: gone"}))
    summary = merge(out)
    assert summary["errors"] == 0 and not stale.exists()
    assert [r for r in _rows(out / "errors.csv")] == []


def test_a_failed_recompute_is_reported_beside_the_earlier_findings(dataset, tmp_path, monkeypatch):  # noqa: F811
    root, _ = dataset
    study = root / "data" / "studies" / "synth-0000"
    out = tmp_path / "out"
    assert _run(dataset, study, out)["processed"] == 1
    before = _rows(out / "findings.csv")
    reports = _reports(tmp_path / "rep", {"synth-0000.txt": REPORT})   # a report appears: the study is recomputed

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("apps.medical_imaging.pipeline.diagnose", broken)
    again = _run(dataset, study, out, reports=reports)
    assert again["recomputed_with_report"] == ["synth-0000"] and again["failed"] == 1
    assert _rows(out / "findings.csv") == before   # the earlier findings stay ...
    (error,) = _rows(out / "errors.csv")           # ... and the failed recompute is said beside them
    assert error["study"] == "synth-0000" and "out of memory" in error["message"]
    assert "earlier run" in error["message"]
    assert merge(out)["errors"] == 1               # a later merge keeps saying it
    monkeypatch.undo()
    assert _run(dataset, study, out, reports=reports)["processed"] == 1   # the next rerun succeeds: the error goes
    assert _rows(out / "errors.csv") == []


# ------------------------------------------------------------------------------------------ 3: page == API


def test_page_defaults_to_the_detectors_operating_point_and_matches_the_api(dataset, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    import gradio as gr

    from apps.medical_imaging import api, page, pipeline

    root, _ = dataset
    models = pipeline.Models.load(root / "detector")
    models.detector.cfg.threshold = 0.4   # neither the old fixed 0.3 nor 0.0
    monkeypatch.setattr(pipeline, "_SHARED", models)
    blocks = page.build()
    [slider] = [c for c in blocks.blocks.values() if isinstance(c, gr.Slider) and "operating" in (c.label or "")]
    assert slider.value == pytest.approx(0.4)
    study = _zip_folder(root / "data" / "studies" / "synth-0001", tmp_path / "study.zip")
    state, *_ = page.analyse(str(study), REPORT, slider.value)
    body = api._diagnose_zip(study, REPORT, "study.zip")
    assert [f.nodule_id for f in state["findings"]] == [f["nodule_id"] for f in body["findings"]]
    assert [f.probability for f in state["findings"]] == [f["probability"] for f in body["findings"]]


# ------------------------------------------------------------------------------------------ 6: rerun with reports


def test_rerun_with_a_now_matching_report_recomputes_that_study(dataset, tmp_path):  # noqa: F811
    root, _ = dataset
    studies = root / "data" / "studies"
    out = tmp_path / "out"
    first = _run(dataset, studies, out)
    assert first["processed"] == 3
    reports = _reports(tmp_path / "rep", {"synth-0002.txt": REPORT, "synth-0001.txt": " \n"})   # one blank
    again = _run(dataset, studies, out, reports=reports)
    assert again["processed"] == 2 and again["recomputed_with_report"] == ["synth-0001", "synth-0002"]
    assert json.loads((out / "studies" / "synth-0002" / "findings.json").read_text())["report_given"]
    blank = json.loads((out / "studies" / "synth-0001" / "findings.json").read_text())
    assert not blank["report_given"] and any("report not used" in w and "empty" in w for w in blank["warnings"])
    assert _run(dataset, studies, out, reports=reports)["processed"] == 0   # the blank one is not retried


# ------------------------------------------------------------------------------------------ 7: a dead worker


def test_a_study_that_kills_its_worker_fails_alone_and_the_rest_finish(tmp_path, monkeypatch):
    """_run_pool stands in for a process pool whose worker dies on 'bad': every unfinished study comes back
    broken; those running (their claim left by the dead worker) are 'bad' and 'peer'."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    (out / "studies").mkdir(parents=True)
    cfg = BatchConfig(input=tmp_path, out=out, workers=2, progress=False)
    entries = [batch.StudyEntry(k, k, tmp_path, "", "", [], None) for k in ("a", "bad", "c", "peer", "z")]
    runs = []

    def fake_pool(chunk, cfg, workers, bar):
        runs.append([e.key for e in chunk])
        if "bad" not in [e.key for e in chunk]:
            return [{"study": e.key, "status": "done"} for e in chunk], []
        for key in ("bad", "peer") if len(chunk) > 1 else ("bad",):
            batch._claim_path(out, key).write_text(json.dumps({"host": _host(), "pid": dead.pid, "time": 0}))
        return [{"study": "a", "status": "done"}], [e for e in chunk if e.key != "a"]

    monkeypatch.setattr(batch, "_run_pool", fake_pool)
    results = {r["study"]: r for r in batch._run_workers(entries, cfg, bar=SimpleNamespace(update=lambda: None))}
    assert {k: r["status"] for k, r in results.items()} == {"a": "done", "bad": "failed", "c": "done",
                                                          "peer": "done", "z": "done"}
    assert "worker process died while reading/diagnosing it" in results["bad"]["message"]
    assert ["bad"] in runs and ["peer"] in runs and ["c", "z"] in runs   # suspects alone, the rest together
    assert json.loads((out / "failed" / "bad.json").read_text())["stage"] == "worker"


# ------------------------------------------------------------------------------------------ eval-detection inputs


def _eval(tmp_path, capsys, truth: str, pred: str, *extra) -> dict:
    from apps.cli import main

    (tmp_path / "truth.csv").write_text(truth)
    (tmp_path / "pred.csv").write_text(pred)
    assert main(["medical", "eval-detection", "--pred", str(tmp_path / "pred.csv"), "--truth",
                 str(tmp_path / "truth.csv"), "--json", *extra]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out.strip().splitlines()[-1])
    assert all(f"warning: {w}" in captured.err for w in got["warnings"])   # said on stderr too
    return got


def test_eval_detection_reads_luna16_truth_and_matches_series_uids(tmp_path, capsys):
    truth = ("seriesuid, coordX, coordY, coordZ, diameter_mm\n"
             "1.2.840.1,0,0,0,10\n1.2.840.1,0,0,0,10\n"      # a duplicate row: one nodule
             "1.2.840.2,50,0,0,6\n1.2.840.3,,,,\n")           # 1.2.840.3: a scan without nodules
    header = "study,series_uid,nodule_id,x_mm,y_mm,z_mm,i,j,k,diameter_mm,probability,malignancy\n"
    rows = ["a,1.2.840.1,0,1,0,0,0,0,0,5,0.9,", "a,1.2.840.1,0,1,0,0,0,0,0,5,0.9,",   # duplicate: not an FP
            "a,1.2.840.1,2,30,0,0,0,0,0,5,0.7,", "b,1.2.840.2,0,50,2,0,0,0,0,5,0.5,",
            "c,1.2.840.3,0,9,9,9,0,0,0,5,0.4,"]
    got = _eval(tmp_path, capsys, truth, header + "\n".join(rows) + "\n")
    assert got["n_nodules"] == 2 and got["n_scans"] == 3 and got["n_predictions"] == 4
    assert got["sensitivity_at_fp_per_scan"]["1.0"] == 1.0
    text = " ".join(got["warnings"])
    assert "duplicate truth" in text and "duplicate prediction" in text and "series_uid" in text
    assert "line 3 (= line 2)" in text   # the dropped rows are named, as eval-malignancy's are
    semi = _eval(tmp_path, capsys, truth.replace(", ", ";").replace(",", ";"), header + "\n".join(rows) + "\n")
    assert semi["cpm"] == got["cpm"]


def test_eval_detection_warns_when_keys_do_not_overlap(tmp_path, capsys):
    truth = "study,x_mm,y_mm,z_mm,diameter_mm\na,0,0,0,10\nb,0,0,0,10\n"
    none = _eval(tmp_path, capsys, truth, "study,x_mm,y_mm,z_mm,probability\nzz,0,0,0,0.9\n")
    assert none["cpm"] == 0.0 and any("no prediction's study is in the truth" in w for w in none["warnings"])
    part = _eval(tmp_path, capsys, truth, "study,x_mm,y_mm,z_mm,probability\na,0,0,0,0.9\nzz,0,0,0,0.9\n")
    assert any("not in the truth" in w and "zz" in w for w in part["warnings"])
    assert any("no prediction: b" in w for w in part["warnings"])


# ------------------------------------------------------------------------------------------ uploads


def test_upload_refuses_two_patients_uses_the_zips_report_and_takes_a_bare_nifti(dataset, tmp_path,  # noqa: F811
                                                                                 monkeypatch):
    import zipfile

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from test_medical_probe_fixes import _nifti

    from apps.medical_imaging import api, pipeline

    root, _ = dataset
    monkeypatch.setattr(pipeline, "_SHARED", pipeline.Models.load(root / "detector"))
    app = FastAPI()
    app.include_router(api.router, prefix="/api/v1/medical")
    client = TestClient(app)

    def post(name, path, **data):
        return client.post("/api/v1/medical/diagnose", files={"file": (name, path.read_bytes())}, data=data)

    first, second = sorted((root / "data" / "studies").iterdir())[:2]
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(mixed, "w") as z:
        for study in (first, second):
            for f in sorted(study.glob("*.dcm")):
                z.write(f, f"{study.name}/{f.name}")
    r = post("mixed.zip", mixed)
    assert r.status_code == 422 and "2 patients" in r.json()["detail"] and "series" in r.json()["detail"]
    assert 'series 1 "Synthetic chest CT" (20 slices)' in r.json()["detail"]
    assert "SYN0" not in r.json()["detail"] and "SYNTH^" not in r.json()["detail"]   # no patient ID or name

    with_report = _zip_folder(first, tmp_path / "with_report.zip", ("study/report.txt", REPORT.encode("utf-16")))
    body = post("with_report.zip", with_report).json()
    assert body["report_given"] and body["report_file"] == "study/report.txt" and body["report_mentions"]
    assert any("used the report study/report.txt" in w for w in body["warnings"])
    typed = post("with_report.zip", with_report, report="No nodules.").json()
    assert typed["report_file"] is None and any("not used" in w for w in typed["warnings"])

    _nifti(first, tmp_path / "ct.nii.gz")
    r = post("ct.nii.gz", tmp_path / "ct.nii.gz")
    assert r.status_code == 200, r.text
    assert r.json()["study"] == "ct" and r.json()["shape_zyx"] == [20, 40, 40]
    (tmp_path / "ct.mhd").write_text("ObjectType = Image\n")
    r = post("ct.mhd", tmp_path / "ct.mhd")
    assert r.status_code == 422 and "upload a zip" in r.json()["detail"] and "ct.mhd" in r.json()["detail"]


def test_eval_malignancy_table_drops_duplicate_rows_with_a_warning(tmp_path):
    from test_malignancy import write_crops

    from apps.medical_imaging.malignancy import read_crop_table

    labels = write_crops(tmp_path / "d", 4)
    table = tmp_path / "d" / "nodules.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([*lines, lines[1], lines[3]]) + "\n")   # two rows pasted again
    crops = read_crop_table(tmp_path / "d")
    assert crops.labels == list(labels) and len(crops.rows) == 4
    [warning] = crops.warnings
    assert "2 duplicate row(s)" in warning and "line 6 (= line 2)" in warning


# ------------------------------------------------------------------------------------------ torchrun summary


def test_under_torchrun_rank0_prints_totals_and_other_ranks_no_json(dataset, tmp_path, monkeypatch,  # noqa: F811
                                                                      capsys):
    from apps.cli import main

    root, _ = dataset
    out = tmp_path / "out"
    args = ["medical", "diagnose", str(root / "data" / "studies"), "--out", str(out), "--detector",
            str(root / "detector"), "--no-overlays", "--json"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    gathered = []

    def fake_barrier(world, local=None):   # all_gather_object over the two ranks
        gathered.append(local)
        return [local, {"processed": 1, "failed": 1, "claimed_by_another_process": 0, "skipped_done": 0,
                        "failures": [{"study": "x", "stage": "load", "message": "m"}],
                        "recomputed_with_report": []}]

    monkeypatch.setattr(batch, "_barrier", fake_barrier)
    monkeypatch.setenv("RANK", "1")
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == ""   # rank 1: a line on stderr, no JSON
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["processed"] == gathered[-1]["processed"] + 1 == 3 and last["failed"] == 1
    assert last["failures"] == [{"study": "x", "stage": "load", "message": "m"}]


# ------------------------------------------------------------------------------------------ review of the fixes


def _copy_series(src, dst, prefix="", **tags):
    """src's slices into dst (beside what is there), as a new series when tags say so (SOPInstanceUIDs kept
    unique per copy)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for k, v in tags.items():
            setattr(ds, k, v)
        if prefix:
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.99.{ord(prefix[0])}.{ds.InstanceNumber}"
        ds.save_as(dst / f"{prefix}{f.name}")


def test_a_specific_name_of_two_studies_is_nobodys_report(dataset, tmp_path):  # noqa: F811
    root, _ = dataset
    first, second = sorted((root / "data" / "studies").iterdir())[:2]
    flat = tmp_path / "flat"   # flat export/: two patients' series, both with the folder key 'export'
    _copy_series(first, flat / "export", "a_")
    _copy_series(second, flat / "export", "b_")
    reports = _reports(tmp_path / "rep", {"export.txt": REPORT, "1.txt": REPORT})
    entries, errors = discover(BatchConfig(input=flat, out=tmp_path / "out", reports=reports))
    assert len(entries) == 2 and all(e.report is None for e in entries)
    unmatched = {r["source"]: r["message"] for r in errors if r.get("unmatched_report")}
    assert "names 2 studies" in unmatched["export.txt"]
    acc = tmp_path / "acc"   # AccessionNumber '1' in both (constant after anonymising)
    _copy_series(first, acc / "P0" / "CT", AccessionNumber="1")
    _copy_series(second, acc / "P1" / "CT", AccessionNumber="1")
    entries, errors = discover(BatchConfig(input=acc, out=tmp_path / "out", reports=reports))
    assert _by_key(entries) == {"P0__CT": None, "P1__CT": None}
    assert "names 2 studies" in {r["source"]: r["message"] for r in errors if r.get("unmatched_report")}["1.txt"]
    one = tmp_path / "one"   # two series of ONE study (same StudyInstanceUID and PatientID) share export.txt
    _copy_series(first, one / "export", "a_")
    _copy_series(first, one / "export", "b_", SeriesInstanceUID="1.2.826.0.1.99.7")
    entries, errors = discover(BatchConfig(input=one, out=tmp_path / "out", reports=reports))
    assert len(entries) == 2 and all(e.report and e.report.name == "export.txt" for e in entries)


def test_a_claim_or_temp_folder_of_our_own_or_a_reused_pid_is_stale(tmp_path):
    import time

    out = tmp_path / "out"
    (out / "studies").mkdir(parents=True)
    claim = batch._claim_path(out, "s")
    # a day-old claim with our pid: a container restart gave us the pid of the process that left it
    claim.write_text(json.dumps({"host": _host(), "pid": os.getpid(), "time": time.time() - 86400}))
    assert batch._claim(out, "s") is None
    assert batch._claim_holder(out, "s")["start"] == batch._start_time(os.getpid())
    batch._release(out, "s")
    assert not claim.exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = {"host": _host(), "pid": sleeper.pid, "start": batch._start_time(sleeper.pid),
                "boot": batch._boot_id(), "time": time.time()}
        claim.write_text(json.dumps(live))
        assert batch._claim(out, "s")["pid"] == sleeper.pid   # alive: respected
        claim.write_text(json.dumps({**live, "start": "1"}))   # the pid now names a later process
        assert batch._claim(out, "s") is None
        studies = out / "studies"
        tag = f"w2-{sleeper.pid}-{live['start']}-{live['boot']}-0a1b2c3d-{_host()}"
        later = f"w2-{sleeper.pid}-1-{live['boot']}-0a1b2c3d-{_host()}"
        kept, reused = studies / f".a.tmp-{tag}", studies / f".b.tmp-{later}"
        mine = studies / f".c.tmp-{batch._writer_tag()}"
        for folder in (kept, reused, mine):
            folder.mkdir()
        assert batch._parse_writer_tag(tag)["pid"] == sleeper.pid
        batch._remove_stale_tmp(out)
        assert kept.is_dir() and not reused.exists() and not mine.exists()
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)
        sleeper.wait()


def test_a_claim_is_never_left_empty_and_a_takeover_race_has_one_winner(tmp_path, monkeypatch):
    import time

    out = tmp_path / "out"
    (out / "studies").mkdir(parents=True)
    claim = batch._claim_path(out, "s")

    def crash(*a, **k):
        raise RuntimeError("killed while writing the claim")

    monkeypatch.setattr(batch.json, "dumps", crash)
    with pytest.raises(RuntimeError):
        batch._claim(out, "s")
    monkeypatch.undo()
    assert not claim.exists()   # no empty claim blocking the study
    assert batch._claim(out, "s") is None
    batch._release(out, "s")

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim.write_text(json.dumps({"host": _host(), "pid": dead.pid, "time": time.time()}))
        fresh = {"host": _host(), "pid": sleeper.pid, "start": batch._start_time(sleeper.pid), "time": time.time()}
        real_alive = batch._alive

        def judged_dead_then_taken(holder, age):   # another process takes the dead claim over meanwhile
            monkeypatch.setattr(batch, "_alive", real_alive)
            (out / "studies" / "fresh").write_text(json.dumps(fresh))
            os.replace(out / "studies" / "fresh", claim)
            return False

        monkeypatch.setattr(batch, "_alive", judged_dead_then_taken)
        assert batch._claim(out, "s")["pid"] == sleeper.pid   # the winner's fresh claim is not removed
        assert batch._claim_holder(out, "s")["pid"] == sleeper.pid
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)
        sleeper.wait()
    assert not [p for p in (out / "studies").iterdir() if p != claim]   # no temp files left
    claim.unlink()

    def no_links(*a):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(batch.os, "link", no_links)   # a network share: exclusive create instead
    assert batch._claim(out, "s") is None and batch._claim_holder(out, "s")["pid"] == os.getpid()


def test_a_damaged_pdf_report_leaves_the_study_image_only_in_batch_and_upload(dataset, tmp_path):  # noqa: F811
    from apps.medical_imaging import pipeline

    root, _ = dataset
    study = root / "data" / "studies" / "synth-0001"
    reports = _reports(tmp_path / "private_reports", {"synth-0001.pdf": b"%PDF-1.4 garbage"})
    out = tmp_path / "out"
    summary = _run(dataset, study, out, reports=reports, anonymize=True)
    assert summary["processed"] == 1 and summary["failed"] == 0
    [doc] = [json.loads(p.read_text()) for p in out.rglob("findings.json")]
    assert not doc["report_given"] and any("report not used" in w for w in doc["warnings"])
    written = "".join(p.read_text() for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".csv"))
    assert "private_reports" not in written and "synth-0001.pdf" not in written
    assert _run(dataset, study, out, reports=reports, anonymize=True)["processed"] == 0   # not retried

    upload = _zip_folder(study, tmp_path / "up.zip", ("report.pdf", b"%PDF-1.4 garbage"))
    got = pipeline.load_upload_file(upload, "up.zip")
    assert got.report_name is None
    assert any("up.zip/report.pdf" in w and "not used" in w for w in got.volume.warnings)
    assert not any("medical-upload-" in w for w in got.volume.warnings)


def test_rerun_recomputes_when_the_matched_report_changes_or_goes(dataset, tmp_path):  # noqa: F811
    root, _ = dataset
    study = root / "data" / "studies" / "synth-0000"
    out = tmp_path / "out"
    reports = _reports(tmp_path / "rep", {"SYN0000.txt": REPORT})   # by PatientID
    assert _run(dataset, study, out, reports=reports)["processed"] == 1
    (reports / "synth-0000.txt").write_text(REPORT)   # a more specific report appears
    again = _run(dataset, study, out, reports=reports)
    assert again["recomputed_with_report"] == ["synth-0000"]
    done = out / "studies" / "synth-0000" / DONE
    assert json.loads(done.read_text())["report_file"] == "synth-0000.txt"
    record = json.loads(done.read_text())   # a done.json from before report_file was recorded
    done.write_text(json.dumps({k: v for k, v in record.items() if k not in ("report_file", "report_tried")}))
    assert _run(dataset, study, out, reports=reports)["processed"] == 1   # recomputed once
    assert _run(dataset, study, out, reports=reports)["processed"] == 0
    for f in reports.iterdir():   # the report withdrawn
        f.unlink()
    assert _run(dataset, study, out, reports=reports)["processed"] == 1
    assert not json.loads((out / "studies" / "synth-0000" / "findings.json").read_text())["report_given"]


def test_an_upload_zip_uses_only_a_file_named_as_the_report(dataset, tmp_path):  # noqa: F811
    from apps.medical_imaging import pipeline

    root, _ = dataset
    study = root / "data" / "studies" / "synth-0000"
    licensed = pipeline.load_upload_file(
        _zip_folder(study, tmp_path / "a.zip", ("LICENSE.txt", "Creative Commons Attribution 3.0")), "a.zip")
    assert licensed.report_name is None
    assert any("LICENSE.txt" in w and "not used as its report" in w for w in licensed.volume.warnings)
    named = pipeline.load_upload_file(_zip_folder(study, tmp_path / "stored", ("case7.md", REPORT)), "case7.zip")
    assert named.report_name == "case7.md" and named.report_text == REPORT
    import zipfile

    two = _zip_folder(study, tmp_path / "b.zip", ("report.txt", REPORT))
    with zipfile.ZipFile(two, "a") as z:
        z.writestr("Scan_Report.md", REPORT)
    both = pipeline.load_upload_file(two, "b.zip")
    assert both.report_name is None
    assert any("2 report files" in w and "none used" in w for w in both.volume.warnings)
    assert not any("none is named as the report" in w for w in both.volume.warnings)


def test_a_bad_barrier_timeout_is_named_before_the_work_and_a_bare_upload_name_is_a_zip(tmp_path, monkeypatch):
    from apps.medical_imaging import api

    monkeypatch.setenv("MOE_MEDICAL_BARRIER_TIMEOUT_S", "6h")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="MOE_MEDICAL_BARRIER_TIMEOUT_S='6h'.*positive number of seconds"):
        run_batch(BatchConfig(input=tmp_path / "in", out=tmp_path / "out", progress=False))
    monkeypatch.setenv("MOE_MEDICAL_BARRIER_TIMEOUT_S", "90")
    assert batch._barrier_timeout_s() == 90.0
    assert api._sent_name("dir/study") == "study.zip" and api._sent_name("ct.nii.gz") == "ct.nii.gz"
