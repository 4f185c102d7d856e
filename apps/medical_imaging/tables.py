"""What the medical tables' readers share: column names matched in one normal form, and rows pasted twice (a
copy of truth.csv, nodules.csv or findings.csv merged into itself) counted once, with a warning naming them."""
from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

from data_connectors.text_files import field_key

T = TypeVar("T")


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
