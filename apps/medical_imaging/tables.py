"""What the medical tables' readers and writers share: column names matched in one normal form, rows pasted
twice (a copy of truth.csv, nodules.csv or findings.csv merged into itself) counted once, with a warning naming
them, and CSV files written whole or not at all."""
from __future__ import annotations

import csv
import uuid
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

from data_connectors.text_files import field_key

T = TypeVar("T")


def write_csv_atomic(path: str | Path, columns: Sequence[str], rows: list[dict]) -> None:
    """`rows` under a `columns` header at `path`, through a temporary file renamed into place: a reader (or a
    killed writer) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def compact_key(name: str) -> str:
    """A column name or label word as matched: field_key's normal form without its underscores."""
    return field_key(name).replace("_", "")


def drop_duplicate_rows(path: str | Path, rows: list[tuple[int, T]], key: Callable[[T], Hashable] = lambda r: r,
                        what: str = "") -> tuple[list[tuple[int, T]], list[str]]:
    """(the rows (line, item) without those whose key repeats an earlier row's, [a warning naming the dropped
    lines: 'line 6 (= line 2)'] or []). `what` qualifies the rows in the warning ('truth ')."""
    seen: dict[Hashable, int] = {}
    kept, duplicates = [], []
    for line, item in rows:
        k = key(item)
        if k in seen:
            duplicates.append((line, seen[k]))
        else:
            seen[k] = line
            kept.append((line, item))
    if not duplicates:
        return kept, []
    shown = ", ".join(f"line {a} (= line {b})" for a, b in duplicates[:5]) + (" ..." if len(duplicates) > 5 else "")
    return kept, [f"{path}: {len(duplicates)} duplicate {what}row(s) left out (each counts once): {shown}"]
