"""Faults: kill -9 of the real server process (uvicorn in a child process, chat_fakes' assistant
over the real SQLite session store) while clients are mid-conversation; after a restart every
acknowledged turn is in its session's history, in order, and nothing is half-written. And kill -9 of
a `medical diagnose` batch: finished studies survive whole, the rerun completes the rest."""
import csv
import itertools
import json
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from apps.web.runner import ServerProcess

TESTS = Path(__file__).resolve().parent
CLIENTS = 4


@pytest.fixture
def server_env(tmp_path):
    return {"MOE_SUITE_CACHE": str(tmp_path / "cache"), "MOE_SUITE_UPLOAD_DIR": str(tmp_path / "uploads"),
            "MOE_SUITE_RATE_LIMIT_PER_MINUTE": "0", "MOE_SUITE_LOG_LEVEL": "warning"}


def _chat_until_stopped(url: str, client: int, acked: list[str], stop: threading.Event) -> None:
    """Send turns in session fault-<client>; record each message the server acknowledged (200)."""
    with httpx.Client(base_url=url, timeout=10) as http:
        for n in itertools.count():
            if stop.is_set():
                return
            message = f"hello {client}-{n}"
            try:
                r = http.post("/api/v1/chat", json={"session_id": f"fault-{client}", "message": message})
            except httpx.HTTPError:
                return  # the server died under us: this turn was not acknowledged
            if r.status_code != 200:
                return
            acked.append(message)


def test_kill_9_loses_no_acknowledged_chat_turn(tmp_path, server_env):
    server = ServerProcess("fake_server:app", server_env, log=tmp_path / "server.log", extra_path=[TESTS])
    server.start()
    acked = [[] for _ in range(CLIENTS)]
    stop = threading.Event()
    threads = [threading.Thread(target=_chat_until_stopped, args=(server.url, c, acked[c], stop))
               for c in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while sum(map(len, acked)) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # SIGKILL while the clients are still sending
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        server.stop()
    assert sum(map(len, acked)) >= 40, "the clients did not get going"

    db = Path(server_env["MOE_SUITE_CACHE"]) / "chat" / "sessions.sqlite3"
    with sqlite3.connect(db) as con:  # opening recovers the WAL
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    with server:  # the same store, a new process
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for c in range(CLIENTS):
                turns = http.get(f"/api/v1/chat/sessions/fault-{c}").json()
                roles = [t["role"] for t in turns]
                assert roles == ["user", "assistant"] * (len(turns) // 2), "a turn without its reply"
                said = [t["text"] for t in turns if t["role"] == "user"]
                # every acknowledged message, in order; at most one more (committed, reply lost in the kill)
                assert said[:len(acked[c])] == acked[c] and len(said) <= len(acked[c]) + 1
            # and the store still takes new turns
            r = http.post("/api/v1/chat", json={"session_id": "fault-0", "message": "hello again"})
            assert r.status_code == 200 and r.json()["intent"] == "greeting"


def test_kill_9_of_the_batch_keeps_finished_studies_and_leaves_nothing_half_written(tmp_path):
    """`medical diagnose` killed with SIGKILL once some studies are finished: every study folder that
    exists is complete (done.json inside); the rerun skips exactly those and finishes the rest."""
    import os
    import signal
    import subprocess
    import sys

    import torch

    from apps.medical_imaging.batch import DONE
    from apps.medical_imaging.detection import KIND, DetectorConfig, NoduleRater
    from apps.medical_imaging.synth import SynthConfig, write_dataset
    from core.checkpoint import save_checkpoint

    n = 16
    cfg = SynthConfig(shape_zyx=(20, 40, 40), spacing_zyx=(8.0, 8.6, 8.6), nodules_per_study=(1, 2))
    write_dataset(tmp_path / "data", n, seed=5, cfg=cfg)
    det_cfg = DetectorConfig(grid_mm=6.0, sigmas_mm=(4.0, 8.0), max_candidates=4, threshold=0.0)
    torch.manual_seed(0)
    save_checkpoint(NoduleRater(det_cfg), tmp_path / "detector", kind=KIND, config=det_cfg)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "apps.cli", "medical", "diagnose", str(tmp_path / "data" / "studies"),
               "--out", str(out), "--reports", str(tmp_path / "data" / "reports"),
               "--detector", str(tmp_path / "detector"), "--json"]
    env = {**os.environ, "MOE_SUITE_CACHE": str(tmp_path / "cache")}

    batch = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list((out / "studies").glob(f"*/{DONE}")):
        assert batch.poll() is None, f"the batch ended before it could be killed: {batch.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no study finished within 300 s"
        time.sleep(0.02)
    batch.send_signal(signal.SIGKILL)
    batch.wait(30)

    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "studies").glob(f"*/{DONE}")}
    visible = [p for p in (out / "studies").iterdir() if not p.name.startswith(".")]
    assert 0 < len(finished) < n, "the kill must land mid-run"
    assert all((p / DONE).is_file() for p in visible), "a study folder without done.json is half-written"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["skipped_done"] == len(finished) and summary["processed"] == n - len(finished)
    assert summary["failed"] == 0 and summary["studies_done"] == n
    for key, mtime in finished.items():  # finished studies were not redone
        assert (out / "studies" / key / DONE).stat().st_mtime_ns == mtime
    assert not list((out / "studies").glob(".*")), "temporary folders of the killed run are cleaned"
    with open(out / "findings.csv", newline="") as f:
        assert {row["study"] for row in csv.DictReader(f)} <= {p.name for p in (out / "studies").iterdir()}
