"""Batch diagnosis of a folder tree of studies: resumable, fault-tolerant, parallel and shardable.

    summary = run_batch(BatchConfig(input=Path("pacs_export"), out=Path("results"), reports=Path("reports")))

Layout of `out`:
    studies/<key>/findings.json, overlays/*.png, [sr.dcm], done.json   one folder per finished study
    failed/<key>.json                                                  why a study failed (retried next run)
    findings.csv   study,series_uid,nodule_id,x_mm,y_mm,z_mm,i,j,k,diameter_mm,probability,malignancy
    errors.csv     study,source,stage,message       failed studies, skipped unreadable files and non-volume series

Each DICOM series is one study; its key is its folder relative to the input (plus the series UID's tail
when a folder holds several series), a NIfTI / MetaImage file's its name without the suffix (a LUNA16
`<seriesuid>.mhd` is keyed by its seriesuid). Keys are unique: folders whose names only differ in characters
a key cannot hold ("Study 1", "Study_1") get the start of their origin appended, except the one whose results
`out` already holds at the key (so a folder added later never takes a finished study's key), and so does a study
whose key already holds another input's results in `out` (case1/ct.nii.gz, then case2/ct.nii.gz), recognised by
the origin that done.json records: a hash of the series UID, or of a volume file's content (its size, first and
last MiB: a moved file is still the same study). A volume file
finished by a version that keyed it by its name up to the first dot (LUNA16 '1.3.6....mhd' as '1') resumes
under that key.
--anonymize replaces keys and UIDs by salt-free SHA-256 prefixes, and every message written (findings.json
warnings, errors.csv, the summary, log lines) has the input's paths (as whole paths), folder and file names
(lost slice files' too), UIDs and the patient's name and IDs (in any case) replaced by hashes; numbers and
words that merely contain a short folder name are left alone. The SR's UIDs are derived from the same hashes
as findings.json's ('2.25.' + the hash read as a hexadecimal number), its patient name and ID are the study key,
and it carries no dates and none of the original's IDs.
A study's files are written into a temporary folder that is renamed into place with done.json inside, so a
crash or kill never leaves a half-written study that counts as done: a rerun skips exactly the finished
ones and findings.csv is rebuilt from them. Under torchrun (RANK / WORLD_SIZE set) rank r takes the
studies i % WORLD_SIZE == r and rank 0 merges once every rank is done; `diagnose --merge` does it by hand.
Reports (--reports) match by folder key, StudyInstanceUID, SeriesInstanceUID or AccessionNumber, else by a
folder name or PatientID, each name only when every series it names is of one study (StudyInstanceUID and
PatientID: _match_reports); unmatched ones are listed, and a rerun recomputes a study whose matched report
changed. Several batches may share `out`: a study is claimed while computed (studies/.<key>.claim, written whole
and hard-linked into place, naming host, pid, the process's start time and the boot), a dead process's claim is
taken over by renaming it aside (one process wins), and only dead processes' temp folders are removed (a pid
reused after a restart, this process's own included, is another process). A dead --workers process fails only
its study.
Logs never name patients: only keys, counts and error reasons.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .tables import write_csv_atomic

FINDINGS_COLUMNS = ("study", "series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "i", "j", "k", "diameter_mm",
                    "probability", "malignancy")
ERRORS_COLUMNS = ("study", "source", "stage", "message")
MAX_LISTED_FAILURES = 20   # failed studies named in the summary (all of them are in errors.csv)
DONE = "done.json"
EARLIER_KEPT = "the recompute failed: findings.csv keeps this study's findings from its earlier run"


@dataclass
class BatchConfig:
    input: Path                       # folder tree of DICOM studies (or one NIfTI / MetaImage file)
    out: Path
    reports: Path | None = None       # folder of <folder key | StudyInstanceUID | SeriesInstanceUID | ...>.txt
    workers: int = 1                  # processes; 1 = in this process
    detector: Path | None = None      # detector checkpoint (None: the shipped one)
    threshold: float | None = None    # findings kept at P(nodule) >= this (None: the detector's default)
    anonymize: bool = False
    sr: bool = False
    overlays: bool = True
    progress: bool = True             # tqdm bar on stderr


@dataclass
class StudyEntry:
    key: str                          # output name (hashed when anonymizing)
    source: str                       # folder or file, relative to the input (hashed when anonymizing)
    path: Path                        # the series' folder or the volume file
    series_uid: str
    study_uid: str
    files: list[Path]
    report: Path | None
    origin: str = ""                  # hash of what the study is (series UID, or a volume file's content)
    notes: list[str] = field(default_factory=list)   # warnings found while scanning (slice files lost)
    lost: list[Path] = field(default_factory=list)    # the slice files lost (empty, truncated...): names to scrub
    report_names: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))   # (specific, shared)
    patient_id: str = field(default="", repr=False)   # the series' PatientID: who a report is of (never printed)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "study"


def _key(name: str, anonymize: bool) -> str:
    """A study's output name from its name ('a/b' -> 'a__b', 'Study 1' -> 'Study_1'; a hash when anonymizing)."""
    return _hash(name) if anonymize else _safe(name.replace("/", "__"))


def _content_origin(path: Path) -> str:
    """A volume file's origin from its content (size, first and last MiB), not its place: moved, it is the same.
    An unreadable file (its load fails later, with the reason) gets its absolute path's hash."""
    digest = hashlib.sha256()
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            digest.update(f"{size}:".encode() + f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
            digest.update(f.read(1 << 20))
    except OSError:
        return _hash(str(path.resolve()))
    return digest.hexdigest()[:16]


def _is_mine(record: dict, entry: StudyEntry) -> bool:
    """Whether a record with an origin holds this entry's results; a volume file's record from before origins
    were content hashes has the hash of its absolute path."""
    return record["origin"] == entry.origin or \
        (not entry.series_uid and record["origin"] == _hash(str(entry.path.resolve())))


def _volume_stem(name: str) -> str:
    """A volume file's name without its suffix: 'ct.nii.gz' -> 'ct', '1.3.6.1.4.1.14519.mhd' -> '1.3.6.1.4.1.14519'."""
    from data_connectors.dicom import VOLUME_SUFFIXES

    from .pipeline import strip_suffix

    return strip_suffix(name, VOLUME_SUFFIXES) or name


def _owner(record: dict | None, group: list[StudyEntry]) -> StudyEntry | None:
    """The one entry of a group whose results the record at their shared key holds: same origin, or for records
    written before origins were kept, same source; None when no (or more than one) entry matches."""
    if record is None:
        return None
    if record.get("origin"):
        match = [e for e in group if _is_mine(record, e)]
    else:
        match = [e for e in group if e.source == record.get("source")]
    return match[0] if len(match) == 1 else None


def _unique_keys(entries: list[StudyEntry], out: Path) -> None:
    """Make keys injective. Where several entries share a key, the one whose results --out already holds at it
    keeps it (a folder added beside a finished one must not take its key: the finished study would be recomputed
    and its rows duplicated); with no such record, the one keyed by its own name as given (sanitised: 'Study 1'
    -> 'Study_1', 'a/b' -> 'a__b') keeps it. The others get their origin's start appended (as _claim_keys does),
    and a number after that in the rare case that two of them hold the same series (a copy in 'a b' and 'a:b')."""
    groups: dict[str, list[StudyEntry]] = {}
    for e in entries:
        groups.setdefault(e.key, []).append(e)
    for key, group in groups.items():
        if len(group) < 2:
            continue
        owner = _owner(_record(out, key), group)
        for e in group:
            keeps = e is owner if owner is not None else \
                e.source == key and sum(g.source == key for g in group) == 1
            if not keeps:
                e.key = f"{key}-{e.origin[:8]}"
        taken: set[str] = set()
        for e in group:
            base, n = e.key, 1
            while e.key in taken:
                n += 1
                e.key = f"{base}-{n}"
            taken.add(e.key)


def _record(out: Path, key: str) -> dict | None:
    """The done.json or failure record at a key in out, or None."""
    for path in (out / "studies" / key / DONE, out / "failed" / f"{key}.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def _resume_old_volume_key(entry: StudyEntry, cfg: BatchConfig) -> None:
    """Versions before done.json kept origins keyed a volume file by its name up to the first dot (LUNA16's
    '1.3.6....mhd' as '1'). When the new key holds nothing and the old key holds this file's finished results,
    keep the old key, so that the rerun skips it rather than recomputing it and duplicating its rows. The old
    record names the file (its source); anonymized it names only the key, so the volume's shape and spacing must
    match those findings.json recorded."""
    out, name = Path(cfg.out), entry.path.name
    old_stem = name.split(".")[0]
    old = _key(old_stem, cfg.anonymize)
    if old == entry.key or _record(out, entry.key) is not None:
        return
    try:
        record = json.loads((out / "studies" / old / DONE).read_text())
    except (OSError, ValueError):
        return
    if record.get("origin"):
        mine = _is_mine(record, entry)
    elif not cfg.anonymize:
        mine = record.get("source") == name
    else:
        mine = record.get("source") == old and _same_geometry(entry.path, out / "studies" / old / "findings.json")
    if mine:
        entry.key = old
        if cfg.anonymize:   # an anonymized entry's source is its key
            entry.source = old


def _same_geometry(path: Path, findings: Path) -> bool:
    """Whether the volume file reads with the shape and voxel spacing a findings.json recorded."""
    from data_connectors.dicom import DicomReadError, load_volume

    try:
        doc = json.loads(findings.read_text())
        vol = load_volume(path, allow_single_slice=True)
    except (OSError, ValueError, DicomReadError):
        return False
    return (list(vol.hu_ZYX.shape) == list(doc.get("shape_zyx", []))
            and len(doc.get("spacing_zyx", [])) == 3
            and all(abs(float(a) - float(b)) < 1e-4 for a, b in zip(vol.spacing_zyx, doc["spacing_zyx"])))


def _claim_keys(entries: list[StudyEntry], out: Path, anonymize: bool) -> None:
    """A study whose key holds another input's results in out (another origin; records written before origins
    were kept: another source) gets its origin's hash appended, so it neither skips as done nor overwrites them."""
    for e in entries:
        rec = _record(out, e.key)
        if rec is None:
            continue
        if not (_is_mine(rec, e) if rec.get("origin") else rec.get("source", e.source) == e.source):
            e.key = f"{e.key}-{e.origin[:8]}"
            if anonymize:   # an anonymized entry's source is its key
                e.source = e.key


# A DICOM UID in a message: 4 or more dot-separated numbers (the suite's own hashed keys are hex, no dots).
_UID = re.compile(r"(?<![\w.])\d+(?:\.\d+){3,}(?!\w)")


# Where a path may start and end in a message: at its start/end, whitespace, a path separator, a quote or
# bracket (and punctuation after it; a '.' only when a sentence ends there), never inside a word or a number.
_PATH_BEFORE = r"(?<![^\s/\\'\"`(\[<=])"
_PATH_AFTER = r"(?=$|[\s/\\'\"`)\]>,;:]|\.(?:\s|$))"
# A name (folder, file, patient word) as a whole word: not inside another word, nor inside a number (1.5, 2,0).
_NAME_BEFORE = r"(?<![A-Za-z0-9])(?<!\d[.,])"
_NAME_AFTER = r"(?![A-Za-z0-9])(?![.,]\d)"


def _words(names: list[str], flags: int = 0) -> re.Pattern | None:
    names = sorted(set(names), key=len, reverse=True)
    return re.compile(_NAME_BEFORE + "(?:" + "|".join(map(re.escape, names)) + ")" + _NAME_AFTER, flags) \
        if names else None


class Scrub:
    """Text made safe to write under --anonymize: the input's paths, the folder and file names under it (the
    lost slice files' too), the patient's name and IDs (from the series' first header; any case) and every UID
    replaced by hashes. Paths are masked only as whole paths (so input 'in' leaves 'interrupted' alone), a bare
    folder or file name only where a name of the patient could be (4 characters or more, not a generic word like
    'series'), and no digit inside a number changes. Identity (returns the text) when not anonymizing."""

    def __init__(self, cfg: BatchConfig, entry: StudyEntry | None = None, folders: list[Path] | None = None):
        self.on = cfg.anonymize
        if not self.on:
            return
        root = Path(cfg.input)
        masks = [(str(root), "<input>"), (str(root.resolve()), "<input>")]
        if entry is not None:
            masks.insert(0, (str(entry.path), f"<{entry.key}>"))
        self.paths = [(re.compile(_PATH_BEFORE + re.escape(raw) + _PATH_AFTER), mask)
                      for raw, mask in sorted(masks, key=lambda m: -len(m[0]))
                      if len(Path(raw).parts) > 1]   # a bare name ('in', '1') is a name, guarded below
        folders = list(folders or [])
        if entry is not None and root in entry.path.parents:
            folders.append(entry.path.relative_to(root))
        names = {root.name, *(part for folder in folders for part in Path(folder).parts)}
        if entry is not None:
            names.update(f.name for f in [*entry.files, *entry.lost])
        self.names = _words([n for n in names if len(n) >= 4 and not _generic(n)])
        patient = _patient_words(entry.files[0]) if entry is not None and entry.series_uid else set()
        self.patient = _words([w for w in patient if len(w) >= (4 if w.isdigit() else 3)], re.IGNORECASE)

    def __call__(self, text: str) -> str:
        if not self.on:
            return text
        for pattern, mask in self.paths:
            text = pattern.sub(mask, text)
        text = _UID.sub(lambda m: _hash(m.group()), text)   # before names: a UID-named folder hashes the same
        for words in (self.names, self.patient):
            if words is not None:
                text = words.sub(lambda m: _hash(m.group())[:8], text)
        return text


_GENERIC_WORDS = {"dicom", "data", "images", "image", "series", "study", "studies", "scans", "scan", "export",
                  "exports", "input", "chest", "thorax", "lung", "lungs", "axial", "slices"}


def _generic(name: str) -> bool:
    """A folder name that says nothing about the patient ('series', 'DICOM', 'images'): not scrubbed, so that
    messages keep their words."""
    return name.lower() in _GENERIC_WORDS


def _patient_words(path: Path) -> set[str]:
    """The patient's name (and its parts), IDs and accession number from one DICOM header, to scrub."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=[
            "PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate"])
    except Exception:  # noqa: BLE001 - unreadable: nothing to scrub from it
        return set()
    words = set()
    for tag in ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate"):
        value = str(ds.get(tag, "") or "").strip()
        words.add(value)
        words.update(re.split(r"[\^\\ ]+", value))
    return {w for w in words if w}


@contextlib.contextmanager
def _scrubbed_logs(scrub: Scrub):
    """Log records of the readers (which name files and series) rewritten by scrub while inside; Python warnings
    (pydicom's, MONAI's: they may quote paths or values) written to stderr scrubbed, once each, on the way out."""
    if not scrub.on:
        yield
        return

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg, record.args = scrub(record.getMessage()), ()
            return True

    loggers = [logging.getLogger(n) for n in ("data_connectors.dicom", "data_connectors.archive", "pydicom")]
    flt = _Filter()
    for lg in loggers:
        lg.addFilter(flt)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(flt)
    for line in dict.fromkeys(f"{w.category.__name__}: {scrub(str(w.message))}" for w in caught):
        print(line, file=sys.stderr)


def _report_index(reports: Path | None) -> dict[str, Path]:
    """The report files in the reports folder by name without suffix (suffixes in any case: CT.TXT, a.md);
    one name in several formats keeps the first of REPORT_SUFFIXES' order."""
    from .report import REPORT_SUFFIXES, is_report_file

    if reports is None:
        return {}
    files = sorted((p for p in Path(reports).iterdir() if p.is_file() and is_report_file(p)),
                   key=lambda p: (p.stem, REPORT_SUFFIXES.index(p.suffix.lower()), p.name))
    index: dict[str, Path] = {}
    for path in files:
        index.setdefault(path.stem, path)
    return index


def _report_label(path: Path, cfg: BatchConfig) -> str:
    """A report file as outputs name it: its name in the reports folder, a hash under --anonymize."""
    return _hash(path.name) if cfg.anonymize else path.name


def _study_of(entry: StudyEntry) -> tuple[str, ...]:
    """Which study an entry belongs to, for report matching: (StudyInstanceUID, PatientID); a volume file (no
    UIDs) is a study of its own."""
    return (entry.study_uid, entry.patient_id) if entry.study_uid else ("origin", entry.origin)


def _match_reports(entries: list[StudyEntry], cfg: BatchConfig) -> list[dict]:
    """Give each entry its report file. A name is used only when every entry it names belongs to one study
    (same StudyInstanceUID and PatientID: two series of one exam may share a report, two patients never do).
    Specific names (folder key, StudyInstanceUID, SeriesInstanceUID, AccessionNumber) are judged among the
    entries they name specifically, so a flat export/ folder holding two patients' series, or an AccessionNumber
    that anonymising made constant, is nobody's report; shared names (leaf folder, the folders above it,
    PatientID) only when no entry has the name as a specific one: 'CT.txt' beside two patients' CT/ folders is
    nobody's, beside a top-level CT/ it is that study's. The first usable name wins (a warning when several
    files name the study). Returns errors.csv rows (stage 'report') for files that name several studies or
    none; those carry 'unmatched_report'."""
    index = _report_index(cfg.reports)
    if not index:
        return []
    specific_owners: dict[str, list[StudyEntry]] = {}
    shared_owners: dict[str, list[StudyEntry]] = {}
    for e in entries:
        for name in dict.fromkeys(e.report_names[0]):
            specific_owners.setdefault(name, []).append(e)
        for name in dict.fromkeys(e.report_names[1]):
            shared_owners.setdefault(name, []).append(e)

    def owners(name: str) -> list[StudyEntry]:
        return specific_owners.get(name) or shared_owners.get(name, [])

    def usable(name: str) -> bool:
        return name in index and len({_study_of(o) for o in owners(name)}) == 1

    used: set[Path] = set()
    for e in entries:
        specific, shared = e.report_names
        found = list(dict.fromkeys([*(index[n] for n in specific if usable(n)),
                                    *(index[n] for n in shared if n not in specific_owners and usable(n))]))
        if not found:
            continue
        e.report = found[0]
        used.update(found)   # the others name this study too: not unmatched, its warning names them
        if len(found) > 1:
            others = ", ".join(_report_label(p, cfg) for p in found[1:])
            e.notes.append(f"several report files name this study: used {_report_label(found[0], cfg)} "
                           f"(the more specific name), not {others}")
    rows = []
    for name, path in sorted(index.items()):
        if path in used:
            continue
        label = _report_label(path, cfg)
        named = owners(name)
        if named:
            n = len({_study_of(o) for o in named})
            listed = ", ".join(e.key for e in named[:10]) + (" ..." if len(named) > 10 else "")
            message = (f"report {label} names {n} studies ({listed}): used for none of them; name it "
                       "by a study's folder key (a__b), StudyInstanceUID, SeriesInstanceUID or AccessionNumber "
                       "that is its alone")
        else:
            message = (f"report {label} matches no study (by folder key, StudyInstanceUID, SeriesInstanceUID, "
                       "AccessionNumber, a folder name or PatientID of exactly one study): not used")
        rows.append({"study": "", "source": label, "stage": "report", "message": message,
                     "unmatched_report": label})
    return rows


def discover(cfg: BatchConfig) -> tuple[list[StudyEntry], list[dict]]:
    """The studies under cfg.input and the errors found while looking (folders without DICOM, unreadable
    files); both sorted, so every rank of a sharded run sees the same list."""
    from data_connectors.dicom import (NO_DICOM_REASONS, VOLUME_SUFFIXES, ct_series, lost_slice_files,
                                       lost_slices_warning, scan_folder, split_volume_series)

    root = Path(cfg.input)
    if cfg.reports is not None and not Path(cfg.reports).is_dir():
        raise ValueError(f"--reports {cfg.reports}: not a folder")
    if root.is_file():
        if not root.name.lower().endswith(VOLUME_SUFFIXES):
            raise ValueError(f"{root}: give a folder of DICOM studies or a {'/'.join(VOLUME_SUFFIXES)} file")
        stem = _volume_stem(root.name)
        key = _key(stem, cfg.anonymize)
        entry = StudyEntry(key, key if cfg.anonymize else root.name, root, "", "", [root], None,
                           origin=_content_origin(root), report_names=([stem, root.name.split(".")[0]], []))
        _resume_old_volume_key(entry, cfg)
        return [entry], _match_reports([entry], cfg)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    scan = scan_folder(root)
    entries, errors = [], []
    lost_by_folder: dict[Path, dict[Path, str]] = {}   # files that look like slices lost (empty, truncated...)
    by_folder: dict[Path, list] = {}
    for series in scan.series:
        by_folder.setdefault(series.files[0].parent, []).append(series)
    for folder, group in sorted(by_folder.items()):
        rel = folder.relative_to(root).as_posix()
        rel = rel if rel != "." else root.name
        # A PET or MR series (of a PET/CT exam, say) is no CT study; a scout, dose screen or structured report
        # exported beside a scan is no study of its own, but alone in its folder it stays one, so that loading
        # says what is wrong with it.
        group, other = ct_series(group)
        group, beside = split_volume_series(group)
        skipped = [(s, f"Modality {s.modality or 'not given'} series of {len(s.files)} file(s) skipped: not CT")
                   for s in other]
        skipped += [(s, f"series of {len(s.files)} file(s) beside a CT volume skipped: a localizer, screen save, "
                        "report or single image") for s in beside]
        for series, message in skipped:
            errors.append({"study": _hash(rel) if cfg.anonymize else rel,
                           "source": _hash(series.series_uid) if cfg.anonymize else series.series_uid,
                           "stage": "skipped", "message": message})
        for series in group:
            name = rel if len(group) == 1 else f"{rel}#{series.series_uid[-12:]}"
            key = _key(name, cfg.anonymize)
            parts = list(Path(rel).parts)
            specific = [_key(name, False), rel.replace("/", "__"), series.study_uid, series.series_uid,
                        series.accession]
            shared = [*reversed(parts), series.patient_id]   # leaf folder first, then the folders above it
            lost = lost_slice_files(scan, series)
            lost_by_folder.setdefault(folder, {}).update(lost)
            entries.append(StudyEntry(key, key if cfg.anonymize else name, folder, series.series_uid,
                                      series.study_uid, series.files, None, origin=_hash(series.series_uid),
                                      report_names=([n for n in specific if n], [n for n in shared if n]),
                                      patient_id=series.patient_id,
                                      notes=[lost_slices_warning(lost)] if lost else [],
                                      lost=[path for path, _ in lost]))
    if not cfg.anonymize:
        _unique_keys(entries, Path(cfg.out))
    key_of = {e.series_uid: e.key for e in entries}
    for series in scan.series:   # a series whose files lie in several folders (split, or copied twice) is one study
        for folder in sorted({f.parent for f in series.files} - set(by_folder)):
            if series.series_uid in key_of:
                rel = folder.relative_to(root).as_posix()
                errors.append({"study": _hash(rel) if cfg.anonymize else rel,
                               "source": _hash(series.series_uid) if cfg.anonymize else series.series_uid,
                               "stage": "skipped", "message": f"no study of its own: its images belong to the "
                                                              f"series read as study {key_of[series.series_uid]}"})
    series_folders = set(by_folder)
    skipped_by_folder: dict[Path, list] = {}
    for path, reason in scan.skipped:
        skipped_by_folder.setdefault(path.parent, []).append((path, reason))
    for folder, items in sorted(skipped_by_folder.items()):
        rel = folder.relative_to(root).as_posix()
        label = _hash(rel) if cfg.anonymize else rel
        scrub = Scrub(cfg, folders=[folder.relative_to(root)])
        if folder not in series_folders:
            if any(folder in f.parents for f in series_folders):
                continue   # stray files (README, CSV) above the studies, not a study of their own
            reasons = "; ".join(sorted({r for _, r in items}))[:300]
            errors.append({"study": label, "source": label, "stage": "scan",
                           "message": scrub(f"no DICOM series in this folder ({len(items)} files skipped: "
                                            f"{reasons})")})
        else:
            lost = lost_by_folder.get(folder, {})
            for path, reason in items:
                if path not in lost and reason.startswith(NO_DICOM_REASONS):
                    continue   # stray text, thumbnails or lock files beside the slices
                errors.append({"study": label, "source": _hash(path.name) if cfg.anonymize else f"{rel}/{path.name}",
                               "stage": "scan", "message": scrub(f"file skipped: {reason}")})
    errors += _match_reports(entries, cfg)
    return sorted(entries, key=lambda e: e.key), errors


# ---------------------------------------------------------------------------------------------- claims

CLAIM_STALE_S = 3600.0   # a claim or temp folder of another host older than this is a dead process's


def _host() -> str:
    return _safe(socket.gethostname())[:40] or "host"


def _start_time(pid: int) -> str:
    """A process's start time (clock ticks after boot: field 22 of /proc/<pid>/stat), '' where unreadable. With
    the pid it names one process: a pid reused (after a container restart, or wrapped around) starts later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2:].split()   # after 'pid (comm)': fields 3, 4, ...
    return fields[19] if len(fields) > 19 else ""


def _boot_id() -> str:
    """This boot of the machine ('' where unreadable): a pid and start time from another boot name nothing."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return ""


def _me() -> dict:
    """This process as claims and temp folder names record it: host, pid, start time, boot."""
    return {"host": _host(), "pid": os.getpid(), "start": _start_time(os.getpid()), "boot": _boot_id()}


# A temp name's writer: 'w2-<pid>-<start>-<boot>-<nonce>-<host>' (host last: it may hold '-'); older versions
# wrote '<host>-<pid>-<nonce>'.
_TAG = re.compile(r"w2-(?P<pid>\d+)-(?P<start>\d*)-(?P<boot>[0-9a-f]*)-[0-9a-f]{8}-(?P<host>.+)")
_OLD_TAG = re.compile(r"(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}")


def _writer_tag() -> str:
    """The part of a temp file or folder name (after '.tmp-') that says which process writes it, unique per call."""
    me = _me()
    return f"w2-{me['pid']}-{me['start']}-{me['boot']}-{uuid.uuid4().hex[:8]}-{me['host']}"


def _parse_writer_tag(tag: str) -> dict | None:
    """_writer_tag's fields ({host, pid, start, boot}; an older name's host and pid), None when not a tag."""
    m = _TAG.fullmatch(tag) or _OLD_TAG.fullmatch(tag)
    if m is None:
        return None
    fields = m.groupdict()
    return {"host": fields["host"], "pid": int(fields["pid"]), "start": fields.get("start") or "",
            "boot": fields.get("boot") or ""}


def _alive(holder: dict, age_s: float) -> bool:
    """Whether the process that wrote a claim or temp folder ({host, pid[, start, boot]}) may still run. On
    another host: whether it is younger than CLAIM_STALE_S (a study takes minutes). On this host: not this
    process (it holds no claim and no temp folder when this is asked: one it left is from before a restart
    that gave it the same pid), and a live pid that started when the writer did in this boot (where recorded
    and readable: a reused pid is another process)."""
    host, pid = str(holder.get("host")), int(holder.get("pid", -1))
    if host != _host():
        return age_s < CLAIM_STALE_S
    if pid <= 0 or pid == os.getpid():
        return False
    boot, start = str(holder.get("boot") or ""), str(holder.get("start") or "")
    if boot and (this_boot := _boot_id()) and boot != this_boot:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    return not (start and now and start != now)


def _claim_path(out: Path, key: str) -> Path:
    return out / "studies" / f".{key}.claim"


def _read_claim(path: Path) -> tuple[dict | None, os.stat_result | None]:
    """(the claim, the stat of the file read) at path; (None, stat) for garbage, (None, None) when none."""
    try:
        with open(path) as f:
            stat, text = os.fstat(f.fileno()), f.read()
    except OSError:
        return None, None
    try:
        claim = json.loads(text)
    except ValueError:
        return None, stat
    return (claim, stat) if isinstance(claim, dict) else (None, stat)


def _claim_holder(out: Path, key: str) -> dict | None:
    """The claim on a study ({host, pid, start, boot, time}), None when there is none (or it cannot be read)."""
    return _read_claim(_claim_path(out, key))[0]


def _place_claim(tmp: Path, path: Path) -> bool:
    """Put the claim written whole in tmp at path unless a claim is there: a hard link (atomic); where the file
    system has none (some network shares), an exclusive create written in one call."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(tmp.read_bytes())
    return True


def _claim(out: Path, key: str) -> dict | None:
    """Claim a study for this process. The claim is written whole into a temp file and hard-linked into place
    (atomic: fails when a claim exists, and a crash never leaves an empty one). A dead process's claim is taken
    over by renaming it aside (one process wins the rename; one that renamed a fresh claim instead, written
    after it judged, puts it back) and creating ours. Returns None when claimed, else the live holder's claim."""
    path = _claim_path(out, key)
    tmp = path.with_name(f"{path.name}.tmp-{_writer_tag()}")
    tmp.write_text(json.dumps({**_me(), "time": time.time()}))
    try:
        for _ in range(4):
            if _place_claim(tmp, path):
                return None
            holder, stat = _read_claim(path)
            if stat is None:
                continue   # released or taken over this instant: try again
            if holder is None:   # garbage (never a half-written claim): judged by its age
                holder = {"host": "?", "pid": -1, "time": stat.st_mtime}
            if _alive(holder, time.time() - float(holder.get("time", stat.st_mtime))):
                return holder
            aside = path.with_name(f"{path.name}.tmp-{_writer_tag()}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue   # another process took it over first
            if (os.stat(aside).st_ino, os.stat(aside).st_dev) != (stat.st_ino, stat.st_dev):
                with contextlib.suppress(FileExistsError):   # a fresh claim, not the dead one: give it back
                    os.link(aside, path)
            aside.unlink(missing_ok=True)
        return _claim_holder(out, key) or {"host": "?", "pid": -1, "time": time.time()}
    finally:
        tmp.unlink(missing_ok=True)


def _release(out: Path, key: str) -> None:
    holder = _claim_holder(out, key)
    if holder is not None and holder.get("host") == _host() and holder.get("pid") == os.getpid():
        _claim_path(out, key).unlink(missing_ok=True)


def _remove_stale_tmp(out: Path) -> None:
    """Remove the temp folders and files of dead processes (a killed run's half-written studies, a claim being
    written); a live process's (another batch writing into the same --out, a torchrun rank) are left alone."""
    for tmp in (out / "studies").glob(".*.tmp-*"):
        try:
            age = time.time() - tmp.stat().st_mtime
        except OSError:
            continue
        writer = _parse_writer_tag(tmp.name.rsplit(".tmp-", 1)[1])
        # an unrecognised name (an older version's, say): judged by its age
        alive = _alive(writer, age) if writer is not None else age < CLAIM_STALE_S
        if alive:
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


_UNKNOWN = object()   # a legacy done.json's report file: it had one, not recorded which


def _needs_run(entry: StudyEntry, cfg: BatchConfig) -> str | None:
    """Why a study must be (re)computed: 'new' (no finished results), 'report' (--reports now gives it another
    report than the one it finished with, or none: its probabilities would change; not when the file now matched
    was tried and could not be read), or None. Without --reports finished studies are kept as they are (a
    resumed run need not repeat the flag); a done.json from before report_file was recorded that used a report
    recomputes once."""
    try:
        record = json.loads((Path(cfg.out) / "studies" / entry.key / DONE).read_text())
    except (OSError, ValueError):
        return "new"
    if cfg.reports is None:
        return None
    now = _report_label(entry.report, cfg) if entry.report is not None else None
    used = record["report_file"] if "report_file" in record else (_UNKNOWN if record.get("report") else None)
    if used == now or (used is None and now is not None and record.get("report_tried") == now):
        return None
    return "report"


# ---------------------------------------------------------------------------------------------- one study

_MODELS = None   # per process: loaded on first use


def _models(cfg: BatchConfig):
    global _MODELS
    if _MODELS is None:
        from .pipeline import Models
        _MODELS = Models.load(cfg.detector)
    return _MODELS


def process_study(entry: StudyEntry, cfg: BatchConfig) -> dict:
    """Diagnose one study into out/studies/<key>/ (atomically). Returns a status row; never raises for a
    bad study (the reason lands in out/failed/<key>.json)."""
    import torch

    torch.set_num_threads(1)
    out = Path(cfg.out)
    holder = _claim(out, entry.key)
    if holder is not None:
        return {"study": entry.key, "status": "claimed",
                "message": f"being diagnosed by process {holder.get('pid')} on {holder.get('host')}"}
    try:
        if _needs_run(entry, cfg) is None:   # another batch on this --out finished it meanwhile
            return {"study": entry.key, "status": "skipped"}
        return _process_claimed(entry, cfg)
    finally:
        _release(out, entry.key)


def _process_claimed(entry: StudyEntry, cfg: BatchConfig) -> dict:
    """process_study's work, once the study is claimed."""
    from data_connectors.dicom import SeriesInfo, load_series, load_volume

    from .pipeline import diagnose, write_study

    out = Path(cfg.out)
    final = out / "studies" / entry.key
    failed = out / "failed" / f"{entry.key}.json"
    start = time.perf_counter()
    stage = "load"
    scrub = Scrub(cfg, entry)
    try:
        with _scrubbed_logs(scrub):
            if entry.series_uid:
                volume = load_series(SeriesInfo(entry.series_uid, entry.study_uid, entry.files, "CT", ""))
            else:
                volume = load_volume(entry.path)
        volume.warnings += entry.notes
        stage = "report"
        report, report_file, report_warning = _read_entry_report(entry, cfg)
        stage = "diagnose"
        result = diagnose(volume, report, _models(cfg), cfg.threshold)
        result.warnings += [report_warning] if report_warning else []
        result.warnings = [scrub(w) for w in result.warnings]
        stage = "write"
        series_uid = _hash(volume.series_uid) if cfg.anonymize else volume.series_uid
        study_uid = _hash(volume.study_uid) if cfg.anonymize else volume.study_uid
        tmp = out / "studies" / f".{entry.key}.tmp-{_writer_tag()}"
        tmp.mkdir(parents=True)
        try:
            write_study(result, volume, tmp, entry.key, series_uid, study_uid, overlays=cfg.overlays, sr=cfg.sr,
                        anonymize=cfg.anonymize, report_file=report_file)
            rows = [{"study": entry.key, "series_uid": series_uid, "nodule_id": f.nodule_id,
                     "x_mm": f.x_mm, "y_mm": f.y_mm, "z_mm": f.z_mm, "i": f.i, "j": f.j, "k": f.k,
                     "diameter_mm": f.diameter_mm, "probability": f.probability,
                     "malignancy": "" if f.malignancy is None else f.malignancy} for f in result.findings]
            (tmp / DONE).write_text(json.dumps({"study": entry.key, "source": entry.source, "origin": entry.origin,
                                                "rows": rows,
                                                "report": report_file is not None, "report_file": report_file,
                                                "report_tried": entry.report and _report_label(entry.report, cfg),
                                                "seconds": round(time.perf_counter() - start, 3)}) + "\n")
            if final.exists():
                shutil.rmtree(final)      # an unfinished or stale folder (no done.json)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        failed.unlink(missing_ok=True)
        return {"study": entry.key, "status": "done", "findings": len(rows),
                "seconds": round(time.perf_counter() - start, 3)}
    except (ValueError, OSError, RuntimeError, MemoryError, IndexError, KeyError, TypeError) as exc:
        return _record_failure(entry, cfg, stage, scrub(f"{type(exc).__name__}: {exc}"))


def _read_entry_report(entry: StudyEntry, cfg: BatchConfig) -> tuple[str | None, str | None, str | None]:
    """(text, label, warning) of a study's report file: a file that cannot be read as text (binary, blank)
    leaves the study image-only with a warning naming it, rather than failing it."""
    from .pipeline import named_as
    from .report import ReportFileError, read_report_file

    if entry.report is None:
        return None, None, None
    label = _report_label(entry.report, cfg)
    try:
        return read_report_file(entry.report), label, None
    except ReportFileError as exc:
        problem = named_as(str(exc), entry.report, label)
        return None, None, f"report not used: {problem}; diagnosed from the image only"


def _record_failure(entry: StudyEntry, cfg: BatchConfig, stage: str, message: str) -> dict:
    """Write out/failed/<key>.json (atomically; errors.csv is built from these) and return the status row. A study
    finished before (a recompute failed) keeps its earlier findings, and the record says so (merge keeps it)."""
    failed = Path(cfg.out) / "failed" / f"{entry.key}.json"
    failed.parent.mkdir(parents=True, exist_ok=True)
    earlier = (Path(cfg.out) / "studies" / entry.key / DONE).is_file()
    if earlier:
        message += f"; {EARLIER_KEPT}"
    tmp_failed = failed.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
    tmp_failed.write_text(json.dumps({"study": entry.key, "source": entry.source, "origin": entry.origin,
                                      "stage": stage, "message": message, "earlier_result_kept": earlier}) + "\n")
    tmp_failed.replace(failed)
    return {"study": entry.key, "status": "failed", "stage": stage, "message": message}


def _init_worker(cfg: BatchConfig) -> None:
    import torch
    torch.set_num_threads(1)
    _models(cfg)


def _process_in_worker(entry: StudyEntry, cfg: BatchConfig) -> dict:
    return process_study(entry, cfg)


# ---------------------------------------------------------------------------------------------- merge


def merge(out: str | Path, scan_errors: list[dict] | None = None) -> dict:
    """Rebuild findings.csv and errors.csv from the finished studies and failure records under `out`."""
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"{out}: no such output folder")
    rows, done = [], 0
    for marker in sorted((out / "studies").glob(f"*/{DONE}")):
        rows += json.loads(marker.read_text())["rows"]
        done += 1
    errors = []
    for path in sorted((out / "failed").glob("*.json")) if (out / "failed").is_dir() else []:
        record = json.loads(path.read_text())
        if (out / "studies" / path.stem / DONE).is_file() and not record.get("earlier_result_kept"):
            path.unlink(missing_ok=True)   # failed once, finished since (another run)
            continue
        errors.append(record)
    scan_file = out / "scan_errors.json"
    if scan_errors is not None:
        scan_file.write_text(json.dumps(scan_errors) + "\n")
    elif scan_file.is_file():
        scan_errors = json.loads(scan_file.read_text())
    errors += scan_errors or []
    write_csv_atomic(out / "findings.csv", FINDINGS_COLUMNS, rows)
    write_csv_atomic(out / "errors.csv", ERRORS_COLUMNS, errors)
    return {"out": str(out), "studies_done": done, "findings": len(rows), "errors": len(errors),
            "findings_csv": str(out / "findings.csv"), "errors_csv": str(out / "errors.csv")}


# ---------------------------------------------------------------------------------------------- batch


def _shard() -> tuple[int, int]:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} / WORLD_SIZE={world}: not a valid shard")
    return rank, world


BARRIER_TIMEOUT_ENV = "MOE_MEDICAL_BARRIER_TIMEOUT_S"
DEFAULT_BARRIER_TIMEOUT_S = 6 * 3600.0   # the slowest shard's lead over the fastest


def _barrier_timeout_s() -> float:
    """The final gather's timeout from MOE_MEDICAL_BARRIER_TIMEOUT_S (default 6 h): a positive number of seconds."""
    raw = os.environ.get(BARRIER_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_BARRIER_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{BARRIER_TIMEOUT_ENV}={raw!r}: give the ranks' final gather timeout as a positive "
                         "number of seconds (default 21600, 6 h)")
    return value


def _watch_agent() -> None:
    """Under torchrun: end this rank when its agent (the parent) dies, rather than wait on its peers forever
    (a SIGKILLed agent leaves its ranks behind)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(2.0)
            if os.getppid() != parent:
                print("torchrun agent gone: this rank stops (rerun to resume)", file=sys.stderr, flush=True)
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="medical-agent-watch").start()


def _barrier(world: int, local: dict | None = None) -> list[dict] | None:
    """Wait for every rank (torch.distributed over gloo, as torchrun sets it up, with a timeout) and gather
    their counts; None when alone."""
    if world <= 1:
        return None
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=_barrier_timeout_s()))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, local or {})
    return gathered


_SUMMED = ("processed", "failed", "claimed_by_another_process", "skipped_done")


def _run_pool(entries: list[StudyEntry], cfg: BatchConfig, workers: int, bar) -> tuple[list[dict], list[StudyEntry]]:
    """Diagnose entries in a pool of worker processes: (status rows, entries lost to a dead worker)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    rows, broken = [], []
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(cfg,)) as pool:
        futures = {pool.submit(_process_in_worker, e, cfg): e for e in entries}
        for future in as_completed(futures):
            try:
                rows.append(future.result())
                bar.update()
            except BrokenProcessPool:
                broken.append(futures[future])
    return rows, broken


def _run_workers(todo: list[StudyEntry], cfg: BatchConfig, bar) -> list[dict]:
    """Diagnose in cfg.workers processes. A worker that dies (killed, out of memory) fails only the study it
    ran: the pool restarts, the studies that were waiting run again, and those that were running (their claim
    left by the dead worker) run again one at a time; a study that kills a worker twice is failed."""
    out = Path(cfg.out)
    results: list[dict] = []
    deaths: dict[str, int] = {}
    pending = list(todo)
    while pending:
        group = [e for e in pending if not deaths.get(e.key)]
        chunks = ([group] if group else []) + [[e] for e in pending if deaths.get(e.key)]
        pending = []
        for chunk in chunks:
            rows, broken = _run_pool(chunk, cfg, min(cfg.workers, len(chunk)), bar)
            results += rows
            holders = {e.key: _claim_holder(out, e.key) for e in broken}
            running = [e for e in broken if holders[e.key] is not None and not _alive(holders[e.key], 0.0)]
            for e in broken:
                if e in running or len(chunk) == 1 or not running:
                    deaths[e.key] = deaths.get(e.key, 0) + 1
                if e in running:
                    _claim_path(out, e.key).unlink(missing_ok=True)   # the dead worker's
                if deaths.get(e.key, 0) >= 2:
                    results.append(_record_failure(e, cfg, "worker", "worker process died while reading/"
                                                   "diagnosing it (twice: out of memory or killed?)"))
                    bar.update()
                else:
                    pending.append(e)
    return results


def run_batch(cfg: BatchConfig) -> dict:
    """Diagnose every unfinished study under cfg.input (this rank's share); merge the CSVs."""
    from tqdm import tqdm

    start = time.perf_counter()
    out = Path(cfg.out)
    (out / "studies").mkdir(parents=True, exist_ok=True)
    with _scrubbed_logs(Scrub(cfg)):
        entries, scan_errors = discover(cfg)
    _claim_keys(entries, out, cfg.anonymize)
    rank, world = _shard()
    if world > 1:
        _barrier_timeout_s()   # a bad value is said now, not after this rank's share is done
    if world > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        _watch_agent()
    mine = [e for n, e in enumerate(entries) if n % world == rank]
    why = {e.key: _needs_run(e, cfg) for e in mine}
    todo = [e for e in mine if why[e.key]]
    with_report = [e.key for e in todo if why[e.key] == "report"]
    for key in with_report:
        print(f"study {key}: finished with another report than --reports now gives (or none): recomputed",
              file=sys.stderr)
    unmatched_rows = [r for r in scan_errors if r.get("unmatched_report")]
    unmatched = [r["unmatched_report"] for r in unmatched_rows]
    if rank == 0:
        for r in unmatched_rows:
            print(r["message"], file=sys.stderr)
    _remove_stale_tmp(out)
    if todo:
        _models(cfg)  # here first: a detector that cannot load is one clear error, not N dead workers
    results = []
    bar = tqdm(total=len(todo), desc=f"studies (rank {rank}/{world})" if world > 1 else "studies",
               unit="study", disable=not cfg.progress, file=sys.stderr)
    if cfg.workers <= 1 or len(todo) <= 1:
        for entry in todo:
            results.append(process_study(entry, cfg))
            bar.update()
    else:
        results = _run_workers(todo, cfg, bar)
    bar.close()
    for r in results:
        if r["status"] == "failed":
            print(f"study {r['study']}: failed at {r['stage']}: {r['message']}", file=sys.stderr)
        elif r["status"] == "claimed":
            print(f"study {r['study']}: skipped, {r['message']} (another batch on this --out)", file=sys.stderr)
    summary = {"studies": len(entries), "this_rank": len(mine),
               "skipped_done": len(mine) - len(todo) + sum(r["status"] == "skipped" for r in results),
               "processed": sum(r["status"] == "done" for r in results),
               "failed": sum(r["status"] == "failed" for r in results),
               "claimed_by_another_process": sum(r["status"] == "claimed" for r in results),
               "recomputed_with_report": with_report,
               "studies_with_report": sum(e.report is not None for e in entries),
               "unmatched_reports": unmatched, "unmatched_report_count": len(unmatched),
               "rank": rank, "world_size": world,
               "failures": [{k: r[k] for k in ("study", "stage", "message")}
                            for r in results if r["status"] == "failed"][:MAX_LISTED_FAILURES]}
    ranks = _barrier(world, {k: summary[k] for k in (*_SUMMED, "failures", "recomputed_with_report")})
    if ranks and rank == 0:   # rank 0 speaks for the run: totals over every rank
        for k in _SUMMED:
            summary[k] = sum(r[k] for r in ranks)
        summary["failures"] = [f for r in ranks for f in r["failures"]][:MAX_LISTED_FAILURES]
        summary["recomputed_with_report"] = [k for r in ranks for k in r["recomputed_with_report"]]
    if rank == 0:
        summary.update(merge(out, scan_errors))
    seconds = time.perf_counter() - start
    summary["seconds"] = round(seconds, 2)
    summary["studies_per_hour"] = round(3600 * summary["processed"] / seconds, 1) if summary["processed"] else 0.0
    return summary
