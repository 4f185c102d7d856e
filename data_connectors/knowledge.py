"""Knowledge-base documents: one entry point, `load_knowledge(path)`, with a reader per file format.

    docs = load_knowledge("assets/customer_service/knowledge")  # a folder (recursive) or one file
    docs[0].id, docs[0].title, docs[0].text, docs[0].source

Formats, by suffix:
    .md .markdown  one document per heading section; title = heading path ("Cards / PIN"), id = stem#slug
    .txt           one document per file; id = stem
    .csv           question/answer rows: columns `question`, `answer`, optional `id`, in any order
    .jsonl         one object per line: `id`, `text`, optional `title`

A file that cannot be read raises KnowledgeFormatError (a ValueError) naming it, and the line where
there is one. `synthetic_passages` makes bank-like documents in bulk, for benchmarks.
"""
from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KnowledgeDoc:
    id: str      # stable: given by the file, or derived from the file name and heading / row number
    title: str   # heading path, question, or given title
    text: str    # section body, answer or passage
    source: str  # path of the file it was read from


class KnowledgeFormatError(ValueError):
    """A knowledge file that cannot be read; the message starts with "path[:line]: "."""

    def __init__(self, path: Path, problem: str, line: int | None = None):
        super().__init__(f"{path}{'' if line is None else f':{line}'}: {problem}")
        self.path, self.line = path, line


Reader = Callable[[Path], list[KnowledgeDoc]]


def load_knowledge(path: str | Path) -> list[KnowledgeDoc]:
    """The documents of one knowledge file, or of every supported file under a folder (sorted by path).

    Hidden files and folders are skipped, as are files of other formats inside a folder. Document ids
    must be unique across everything loaded.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READERS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise KnowledgeFormatError(path, f"no knowledge files ({' '.join(READERS)}) in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise KnowledgeFormatError(path, "no such file or folder")
    docs = [doc for file in files for doc in _read_file(file)]
    seen: dict[str, str] = {}
    for doc in docs:
        if doc.id in seen:
            raise KnowledgeFormatError(Path(doc.source), f"duplicate id {doc.id!r} (also in {seen[doc.id]})")
        seen[doc.id] = doc.source
    return docs


def load_queries(path: str | Path) -> list[tuple[str, str]]:
    """Labelled queries for retrieval evaluation: (query, expected document id) from a `query,id` CSV."""
    path = Path(path)
    queries = [(row["query"], row["id"]) for row in _csv_rows(path, required=("query", "id"))]
    if not queries:
        raise KnowledgeFormatError(path, "no query rows")
    return queries


def read_markdown(path: Path) -> list[KnowledgeDoc]:
    """One document per heading section with a body (text before the first heading counts as one)."""
    sections: list[tuple[list[str], list[str]]] = [([], [])]  # (heading path, body lines)
    stack: list[tuple[int, str]] = []                         # (level, heading) enclosing the line
    in_fence = False
    for line in _read_text(path).splitlines():
        in_fence ^= bool(_FENCE.match(line))
        heading = None if in_fence else _HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            stack = [(lvl, text) for lvl, text in stack if lvl < level] + [(level, heading.group(2))]
            sections.append(([text for _, text in stack], []))
        else:
            sections[-1][1].append(line)

    docs, used = [], set()
    for headings, body in sections:
        text = "\n".join(body).strip()
        if not text:
            continue
        base = f"{path.stem}#{_slug(headings[-1])}" if headings else path.stem
        doc_id, n = base, 1
        while doc_id in used:  # repeated headings: stem#faq, stem#faq-2, ...
            n += 1
            doc_id = f"{base}-{n}"
        used.add(doc_id)
        docs.append(KnowledgeDoc(doc_id, " / ".join(headings) or _humanize(path.stem), text, str(path)))
    return docs


def read_text(path: Path) -> list[KnowledgeDoc]:
    """The whole file as one document, titled after the file name."""
    return [KnowledgeDoc(path.stem, _humanize(path.stem), _read_text(path).strip(), str(path))]


def read_qa_csv(path: Path) -> list[KnowledgeDoc]:
    """One document per question/answer row; id = the `id` column, else stem#q<row number>."""
    return [KnowledgeDoc(row.get("id") or f"{path.stem}#q{n}", row["question"], row["answer"], str(path))
            for n, row in enumerate(_csv_rows(path, required=("question", "answer"), optional=("id",)), 1)]


def read_jsonl(path: Path) -> list[KnowledgeDoc]:
    """One document per non-blank line, a JSON object with `id`, `text` and optional `title`."""
    docs = []
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise KnowledgeFormatError(path, f"invalid JSON ({err.msg})", line_no) from None
        if not isinstance(obj, dict):
            raise KnowledgeFormatError(path, "expected a JSON object", line_no)
        missing = [key for key in ("id", "text") if not str(obj.get(key) or "").strip()]
        if missing:
            raise KnowledgeFormatError(path, f"missing or empty {', '.join(missing)}", line_no)
        docs.append(KnowledgeDoc(str(obj["id"]), str(obj.get("title") or obj["id"]),
                                 str(obj["text"]).strip(), str(path)))
    return docs


READERS: dict[str, Reader] = {
    ".md": read_markdown, ".markdown": read_markdown, ".txt": read_text,
    ".csv": read_qa_csv, ".jsonl": read_jsonl,
}

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")  # ATX heading: "## Title" (closing #s optional)
_FENCE = re.compile(r"^\s*(```|~~~)")                # code fence: headings inside are text


def _read_file(path: Path) -> list[KnowledgeDoc]:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise KnowledgeFormatError(path, f"unsupported format; use one of {' '.join(READERS)}")
    docs = reader(path)
    if not docs:
        raise KnowledgeFormatError(path, "holds no documents")
    return docs


def _read_text(path: Path) -> str:
    """A file's UTF-8 text (a BOM is dropped); undecodable, unreadable and blank files are errors."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise KnowledgeFormatError(path, f"cannot read ({err.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise KnowledgeFormatError(path, f"not UTF-8 text (byte {err.start})", line) from None
    if not text.strip():
        raise KnowledgeFormatError(path, "empty file")
    return text


def _csv_rows(path: Path, required: tuple[str, ...],
              optional: tuple[str, ...] = ()) -> Iterator[dict[str, str]]:
    """The rows of a CSV with a header, as {column: stripped value} for the named columns.

    Header names are matched case-insensitively, in any order; other columns are ignored. Missing
    columns, empty required values and malformed rows are errors naming the line.
    """
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in reader.fieldnames]
        if missing:
            raise KnowledgeFormatError(path, f"missing column(s) {', '.join(missing)}; header is "
                                             f"{', '.join(reader.fieldnames)}", line=1)
        for row in reader:
            if None in row:
                raise KnowledgeFormatError(path, "more fields than the header", reader.line_num)
            values = {name: (row.get(name) or "").strip() for name in required + optional}
            empty = [name for name in required if not values[name]]
            if empty:
                raise KnowledgeFormatError(path, f"empty {', '.join(empty)}", reader.line_num)
            yield values
    except csv.Error as err:
        raise KnowledgeFormatError(path, f"malformed CSV ({err})", reader.line_num) from None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _humanize(stem: str) -> str:
    return re.sub(r"[-_]+", " ", stem).strip().capitalize()


# Vocabulary of `synthetic_passages`, after the bank knowledge base in assets/customer_service/knowledge.
_PRODUCTS = ("Everyday current account", "Premium current account", "Student account", "joint account",
             "Easy Saver", "Fixed Saver", "Regular Saver", "Visa debit card", "Mastercard credit card",
             "Business account", "business debit card", "personal loan", "mortgage", "arranged overdraft")
_ACTIONS = ("open", "close", "freeze", "order a replacement for", "change the limits of",
            "add a second holder to", "update the address on", "download statements for",
            "switch", "dispute a payment on", "set up a standing order from", "cancel a direct debit on")
_CUSTOMERS = ("Personal customers", "Business customers", "Students", "Customers living abroad",
              "Joint account holders", "Customers aged 65 and over", "Sole traders", "New customers")
_CHANNELS = ("in the Kestrel app", "in online banking", "at any branch", "by phone on 0800 555 0123",
             "by secure message", "through the business app")
_TIMINGS = ("immediately", "on the same working day", "within two working days",
            "within 3 to 5 working days", "by the next working day", "within 7 working days")
_NEEDS = ("a passport or driving licence", "a recent proof of address", "your card details",
          "your customer number and a one-time passcode", "the approval of a second user",
          "your Companies House number", "the last four digits of your card")
_FEES = ("free of charge", "for a fee of 2 pounds", "for a fee of 5 pounds", "for a fee of 10 pounds",
         "for 20 pence per request", "free for Premium customers and 8 pounds otherwise")
_TEMPLATES = (
    ("How to {action} your {product}",
     "{customers} can {action} their {product} {channel}. The request is handled {timing}, {fee}. "
     "Have {need} ready before you start."),
    ("{product}: {action} ({customers})",
     "To {action} your {product}, use the service {channel}; you will need {need}. "
     "{customers} see the change {timing}, {fee}."),
    ("Can I {action} my {product}?",
     "Yes. {customers} may {action} their {product} {channel}, {fee}. We confirm {timing} "
     "once we have checked {need}."),
)


def synthetic_passages(n: int, seed: int = 0) -> list[KnowledgeDoc]:
    """`n` distinct bank-like passages (ids synthetic-00000, ...), templated from the bank KB's vocabulary."""
    rng = random.Random(seed)
    slots = {"product": _PRODUCTS, "action": _ACTIONS, "customers": _CUSTOMERS, "channel": _CHANNELS,
             "timing": _TIMINGS, "need": _NEEDS, "fee": _FEES}
    docs: list[KnowledgeDoc] = []
    seen: set[str] = set()
    for _ in range(20 * n):
        if len(docs) == n:
            break
        title, body = rng.choice(_TEMPLATES)
        words = {slot: rng.choice(options) for slot, options in slots.items()}
        title, text = title.format(**words), body.format(**words)
        if text not in seen:
            seen.add(text)
            docs.append(KnowledgeDoc(f"synthetic-{len(docs):05d}", title[0].upper() + title[1:], text,
                                     "synthetic"))
    if len(docs) < n:
        raise ValueError(f"could only make {len(docs)} distinct synthetic passages, not {n}")
    return docs
