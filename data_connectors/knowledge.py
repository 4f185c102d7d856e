"""Knowledge-base documents: one entry point, `load_knowledge(path)`, with a reader per file format.

    docs = load_knowledge("assets/customer_service/knowledge")  # a folder (recursive) or one file
    docs[0].id, docs[0].title, docs[0].text, docs[0].source

Formats, by suffix:
    .md .markdown  one document per heading section (ATX "## x" or setext); title = heading path
                   ("Cards / PIN"), id = stem#slug; YAML front matter dropped
    .html .htm     the visible text, one document per <h1>-<h6> section, as for Markdown
    .txt           one document per file (id = stem); a long file in parts cut at blank lines (stem#p1, ...)
    .csv .tsv      one document per row: a text column (`answer`, `a`, `body`, `text`, `content`, ...),
                   optional title (`question`, `q`, `title`, ...) and `id`, in any order, any delimiter
    .jsonl         one record per line, fields named as for CSV
    .json          a list of such records (or an object holding one, or a help-centre export holding
                   several lists: the ones of article / FAQ records are read, see `read_json`), or an
                   object of title -> text; any other object: one document per key with the strings under it
    .pdf           the text layer (pypdf), one document per page (long pages in parts): stem#page3
    .docx          a Word document (python-docx), one document per heading section, as for Markdown

Field and header names are matched case-insensitively; ids default to stem#q<n>. Text is read as
UTF-8 (BOM or not), UTF-16 with a BOM, or Windows-1252 (`data_connectors.text_files.decode_text`);
binary files are errors.
A file that cannot be read raises KnowledgeFormatError (a ValueError) naming it, and the line where
there is one (a quote left open that swallowed rows names the line where it opened); guesses worth a
look (a header told by its shape, lists of an export left out, a header row repeated inside) are
logged as warnings on this module's logger (`collected_warnings` gathers them for a summary); a key
repeated in one JSON object is an error. `synthetic_passages` makes bank-like documents in bulk, for
benchmarks.

"""
from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from .text_files import (ANSWER_NAMES, QUESTION_NAMES, decoded_file, field_key, json_document, json_lines,
                         named_column, names_columns, repeated_header_warning, table_body, table_rows, words)

log = logging.getLogger(__name__)  # guesses worth a look (a header told by its shape, lists left out)


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


def load_knowledge(path: str | Path, files: list[Path] | None = None,
                   unreadable: list[tuple[Path, str]] | None = None,
                   exclude: Iterable[str | Path] = ()) -> list[KnowledgeDoc]:
    """The documents of one knowledge file, or of every supported file under a folder (sorted by path).

    Hidden files and folders are skipped, as are files of other formats inside a folder (see
    `knowledge_files`). Ids derived from a file name (stem#...) use the file's path inside the folder
    instead when several files share that name (a/faq.md, b/faq.md -> a/faq#..., b/faq#...). Document
    ids must be unique across everything loaded. `files`: the knowledge_files(path) list when the caller
    already has it. A file that cannot be read raises KnowledgeFormatError, unless `unreadable` is a list:
    then it is skipped and (file, why) appended there (a scanned PDF in a folder of manuals); nothing
    readable at all is still an error. `exclude`: folders inside `path` to leave out (a search index
    saved there, see `knowledge_files`).
    """
    path = Path(path)
    if files is None:
        files, _ = knowledge_files(path, exclude)
    stems = Counter(file.stem for file in files)
    rel = {file: file.relative_to(path).with_suffix("").as_posix() for file in files if stems[file.stem] > 1}
    keys = Counter(rel.values())
    docs = []
    for file in files:
        try:
            file_docs = _read_file(file)
        except KnowledgeFormatError as exc:
            if unreadable is None:
                raise
            unreadable.append((file, str(exc)))
            continue
        if file in rel:
            key = rel[file] if keys[rel[file]] == 1 else file.relative_to(path).as_posix()
            file_docs = [_renamed(doc, file.stem, key) for doc in file_docs]
        docs += file_docs
    if not docs and unreadable:
        raise KnowledgeFormatError(path, f"no file could be read ({len(unreadable)} unreadable, the first: "
                                         f"{unreadable[0][1]})")
    seen: dict[str, str] = {}
    for doc in docs:
        if doc.id in seen:
            raise KnowledgeFormatError(Path(doc.source), f"duplicate id {doc.id!r} (also in {seen[doc.id]})")
        seen[doc.id] = doc.source
    return docs


@contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """The warnings the knowledge readers log inside the block (their guesses: a header told by its shape,
    lists of an export left out), as text, for a command's summary or a page's status."""
    handler = _ListHandler()
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def knowledge_files(path: str | Path, exclude: Iterable[str | Path] = ()) -> tuple[list[Path], list[Path]]:
    """(files `load_knowledge` reads, files it skips) of a knowledge file or folder, sorted by path:
    inside a folder, files of formats without a reader are skipped (hidden ones, and those inside the
    `exclude` folders, e.g. an index written into the knowledge folder, are not listed)."""
    path = Path(path)
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise KnowledgeFormatError(path, "no such file or folder")
    excluded = [Path(folder).resolve() for folder in exclude]
    visible = sorted(p for p in path.rglob("*") if p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)
                     and not any(p.resolve().is_relative_to(folder) for folder in excluded))
    files = [p for p in visible if p.suffix.lower() in READERS]
    if not files:
        raise KnowledgeFormatError(path, f"no knowledge files ({' '.join(READERS)}) in this folder")
    return files, [p for p in visible if p.suffix.lower() not in READERS]


def _renamed(doc: KnowledgeDoc, stem: str, key: str) -> KnowledgeDoc:
    """`doc` with an id derived from the file name `stem` re-derived from `key` instead."""
    if doc.id == stem or doc.id.startswith(f"{stem}#"):
        return KnowledgeDoc(key + doc.id[len(stem):], doc.title, doc.text, doc.source)
    return doc


def load_queries(path: str | Path) -> list[tuple[str, str]]:
    """Labelled queries for retrieval evaluation: (query, expected document id) from a `query,id` CSV
    (also `question`/`text` for the query, `doc_id`/`expected_id` for the id; any delimiter)."""
    path = Path(path)
    queries = [(row["query"], row["id"]) for _, row in _csv_rows(path, _QUERY_FIELDS, required=("query", "id"))]
    if not queries:
        raise KnowledgeFormatError(path, "no query rows")
    return queries


def read_markdown(path: Path) -> list[KnowledgeDoc]:
    """One document per heading section with a body (text before the first heading counts as one).
    ATX ("## Title") and setext (a line underlined with === or ---) headings; YAML front matter
    is dropped."""
    return _markdown_outline(_read_text(path)).docs(path)


def read_html(path: Path) -> list[KnowledgeDoc]:
    """An HTML page's visible text, one document per <h1>-<h6> section (as for Markdown; text that
    looks like Markdown stays text); scripts, styles and navigation are dropped."""
    parser = _HTMLText()
    parser.feed(_read_text(path))
    parser.close()
    return parser.outline().docs(path)


def read_text(path: Path) -> list[KnowledgeDoc]:
    """The whole file as one document titled after the file name; a file over `TEXT_PART_WORDS` words
    is cut at blank lines into parts of about that many words (ids stem#p1, stem#p2, ...), so a
    search can return several passages of it. A file of question / answer pairs ("Q: ..." then
    "A: ...", or "Question:" / "Answer:") gives one document per pair, titled by its question."""
    text = _read_text(path).strip()
    pairs = _qa_pairs(text)
    if pairs:
        return [KnowledgeDoc(f"{path.stem}#q{n}", question, answer, str(path))
                for n, (question, answer) in enumerate(pairs, 1)]
    parts = _paragraph_parts(text, TEXT_PART_WORDS)
    if len(parts) == 1:
        return [KnowledgeDoc(path.stem, _humanize(path.stem), text, str(path))]
    return [KnowledgeDoc(f"{path.stem}#p{n}", f"{_humanize(path.stem)} (part {n})", part, str(path))
            for n, part in enumerate(parts, 1)]


def read_qa_csv(path: Path) -> list[KnowledgeDoc]:
    """One document per row: `question` (or q, title, ...) and `answer` (or a, body, text, ...) columns,
    optional `id`, in any order, any delimiter (or two columns, question and answer, without a
    header, or under a header of unrecognised names such as "Frage;Antwort", told by its shape and
    logged; a first row that only might be one stays a passage, also logged); a row may leave out
    trailing columns; the header repeated inside (files pasted together) is left out and logged;
    id = the `id` column, else stem#q<row number>."""
    return [_record_doc(path, row, n) for n, (_, row) in
            enumerate(_csv_rows(path, _DOC_FIELDS, required=("answer",), headerless=("title", "answer")), 1)]


def read_jsonl(path: Path) -> list[KnowledgeDoc]:
    """One document per non-blank line, a JSON object with a text (`text`, `answer`, `body`, ...) and
    optional `id` and title (`title`, `question`, ...)."""
    docs = []
    for line_no, obj in json_lines(path, _read_text(path), KnowledgeFormatError):
        if not isinstance(obj, dict):
            raise KnowledgeFormatError(path, "expected a JSON object", line_no)
        docs.append(_record_doc(path, _pick_fields(path, obj, line_no), len(docs) + 1))
    return docs


def read_json(path: Path) -> list[KnowledgeDoc]:
    """A JSON file: a list of records (as in .jsonl) or of passage strings, or an object holding one
    list of records beside other fields (e.g. {"faqs": [...], "version": 2}), or several (a help-centre
    export: {"articles": [...], "sections": [...], "count": 2}; every list of passages is read, lists of
    people and sections are not, `_passage_lists`, and the keys left out logged), or an object of title
    -> text; any other object gives one document per key with the strings under it, one a line. A key
    repeated in one object is an error naming it and its lines."""
    doc = json_document(path, _read_text(path), KnowledgeFormatError)
    if isinstance(doc, dict):
        lists = {key: value for key, value in doc.items() if isinstance(value, list) and value
                 and all(isinstance(item, dict) for item in value)}
        if len(lists) == 1:  # a wrapper: {"faqs": [...], "version": 2, ...}
            doc = next(iter(lists.values()))
        elif chosen := _passage_lists(lists):   # a help-centre export: {"articles": [...], "sections": [...], ...}
            left_out = [str(key) for key in doc if key not in chosen]
            log.warning("%s: read the records of %s%s", path, ", ".join(map(str, chosen)),
                        f"; left out {', '.join(left_out)}" if left_out else "")
            doc = [item for key in chosen for item in lists[key]]
    nested = _nested_records(doc)
    if nested:   # Q/A records under groupings: {"categories": [{"name": "Cards", "faqs": [{q, a}, ...]}, ...]}
        log.warning("%s: read %d question/answer records found under %s", path, len(nested),
                    ", ".join(sorted({where for where, _ in nested})))
        return [_record_doc(path, _pick_fields(path, record, None, f"record {n} (under {where})"), n)
                for n, (where, record) in enumerate(nested, 1)]
    if isinstance(doc, list) and doc and all(isinstance(item, str) for item in doc):  # a list of passages
        return [KnowledgeDoc(f"{path.stem}#q{n}", f"{_humanize(path.stem)} {n}", text.strip(), str(path))
                for n, text in enumerate(doc, 1) if text.strip()]
    if isinstance(doc, list):
        if not all(isinstance(item, dict) for item in doc):
            raise KnowledgeFormatError(path, "expected a list of JSON objects (records) or of strings")
        return [_record_doc(path, _pick_fields(path, item, None, f"record {n}"), n)
                for n, item in enumerate(doc, 1)]
    if not isinstance(doc, dict):
        raise KnowledgeFormatError(path, "expected a JSON list of records or an object")
    docs, used = [], set()
    for key, value in doc.items():
        text = "\n".join(_strings(value)).strip()
        if text:   # keys alike but for punctuation ("Fees?", "Fees!"): -2, -3 as for headings
            docs.append(KnowledgeDoc(_unique_id(f"{path.stem}#{_slug(str(key))}", used), str(key), text, str(path)))
    return docs


def _nested_records(doc, depth: int = 4) -> list[tuple[str, dict]]:
    """(where, record) of the question/answer records (a title and a text, `_record_roles`) that lie below
    groupings holding no text of their own ({"faq": {"cards": [...]}}, a list of categories each with its
    "faqs"), at most `depth` levels down; [] when the document's top level holds texts itself (records, a
    title -> record or title -> text object, LangChain's page_content with its metadata), which read_json
    reads as before."""
    def has_text(value) -> bool:   # a record with a text of its own: a passage, whatever lies under it
        return isinstance(value, dict) and _role_field(value, "answer") is not None

    def holds_texts(value) -> bool:
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else []
        return has_text(value) or any(has_text(item) or isinstance(item, str) and len(item.split()) >= 3
                                      for item in items)   # a passage; not a "version": "2.1"

    if holds_texts(doc) or (isinstance(doc, dict) and any(isinstance(v, list) and holds_texts(v)
                                                          for v in doc.values())):
        return []
    found: list[tuple[str, dict]] = []

    def walk(value, where: str, left: int) -> None:
        if left < 0:
            return
        if isinstance(value, dict):
            if has_text(value):
                if where and _record_roles(value):
                    found.append((where, value))
                return
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key), left - 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, where or "[]", left - 1)

    walk(doc, "", depth)
    return found


def _passage_lists(lists: dict[str, list[dict]]) -> list[str]:
    """The keys of the lists of passages among several (a help-centre export sideloads its sections,
    categories and users beside the articles): lists where most records hold a title and a text
    (`_DOC_FIELDS`), less those that are clearly people, categories or sections (`_entity_list`) when
    any other is left; [] when none. A list of article-like records (a title other than a `name`, and
    a text) is always kept."""
    passages = [key for key, records in lists.items()
                if sum(bool(_record_roles(record)) for record in records) * 2 > len(records)]
    kept = [key for key in passages if not _entity_list(key, lists[key])]
    return kept or passages


def _role_field(record: dict, role: str) -> str | None:
    """The first of a role's names in `_DOC_FIELDS` that the record holds a value under, or None."""
    keys = {field_key(k): k for k in record}
    return next((name for name in _DOC_FIELDS[role] if name in keys and record[keys[name]] not in (None, "", [], {})),
                None)


def _record_roles(record: dict) -> tuple[str, str] | None:
    """(title field, text field) of a record, as matched in `_DOC_FIELDS`, or None without both."""
    title, text = _role_field(record, "title"), _role_field(record, "answer")
    return None if title is None or text is None else (title, text)


def _unique_id(base: str, used: set[str]) -> str:
    """`base`, or base-2, base-3, ... where that is taken (a repeated heading or key); recorded in `used`."""
    doc_id, n = base, 1
    while doc_id in used:
        n += 1
        doc_id = f"{base}-{n}"
    used.add(doc_id)
    return doc_id


# what a help-centre export's lists of people and groupings are called: not passages (unless article-like)
_ENTITY_LISTS = {"authors", "users", "people", "persons", "members", "agents", "contributors", "editors", "staff",
                 "team", "sections", "categories", "category", "groups", "folders", "topics", "tags", "labels",
                 "brands", "locales", "organizations", "organisations"}
_SHORT_TEXT_WORDS = 25   # a text this short under a `name`: a bio or a section blurb, not an article


def _entity_list(key: str, records: list[dict]) -> bool:
    """Whether a list of titled texts is people, categories or sections, not passages: its records are
    not article-like (most titled by `name`) and the list is named so (`_ENTITY_LISTS`) or its texts
    are short (most under `_SHORT_TEXT_WORDS` words)."""
    titled = [(record, roles) for record in records if (roles := _record_roles(record))]
    if sum(title != "name" for _, (title, _) in titled) * 2 >= len(titled):
        return False   # article-like: kept
    short = sum(words(_field(record, text)) < _SHORT_TEXT_WORDS for record, (_, text) in titled)
    return field_key(key) in _ENTITY_LISTS or short * 2 > len(titled)


def _field(record: dict, name: str) -> str:
    """The text of a record's field matched by `name` (`field_key`)."""
    value = next(v for k, v in record.items() if field_key(k) == name)
    return "\n".join(_strings(value))


# a word broken across lines by typesetting: a letter, a hyphen at the end of the line, a lower-case letter next
# (a compound broken at its own hyphen, "well-\nknown", loses that hyphen too: rarer, and harmless for search)
_LINE_END_HYPHEN = re.compile(r"([^\W\d_])-[ \t]*\n[ \t]*([a-z\u00df-\u00ff])")


def read_pdf(path: Path) -> list[KnowledgeDoc]:
    """A PDF's text layer (pypdf): one document per page (ids stem#page3; titles "<file>, page 3", so an answer
    cites its page), a page over `TEXT_PART_WORDS` words cut at its blank lines where it has them (stem#page3-2;
    retrieval chunks passages again anyway). Password-protected, damaged and text-less (scanned) files are
    KnowledgeFormatErrors; a scanned page among text pages gives no document."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise KnowledgeFormatError(path, "the PDF is protected by a password; export a copy without one")
        pages = [page.extract_text() or "" for page in reader.pages]
    except KnowledgeFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds on damaged files
        raise KnowledgeFormatError(path, f"unreadable PDF ({type(exc).__name__}: {exc})") from None
    docs = []
    for n, text in enumerate(pages, 1):
        text = _LINE_END_HYPHEN.sub(r"\1\2", text)   # "inter-\nnational" -> "international"
        parts = _paragraph_parts(text.strip(), TEXT_PART_WORDS) if text.strip() else []
        for k, part in enumerate(parts, 1):
            docs.append(KnowledgeDoc(f"{path.stem}#page{n}" + (f"-{k}" if k > 1 else ""),
                                     f"{_humanize(path.stem)}, page {n}", part, str(path)))
    if not docs:
        raise KnowledgeFormatError(path, f"no text in its {len(pages)} page(s): a scanned PDF needs OCR first")
    return docs


def read_docx(path: Path) -> list[KnowledgeDoc]:
    """A Word document (python-docx): one document per heading section ("Title", "Heading 1" ... styles), as for
    Markdown; paragraphs (with their text boxes) in order, table rows as "cell | cell" lines (nested tables
    inside their cell)."""
    import docx
    from docx.table import Table

    try:
        document = docx.Document(str(path))
    except Exception as exc:  # noqa: BLE001 - not a zip, not a Word document, damaged XML
        raise KnowledgeFormatError(path, f"unreadable Word document ({type(exc).__name__}: {exc})") from None
    outline = _Outline()
    for block in document.iter_inner_content():   # paragraphs and tables in document order
        if isinstance(block, Table):
            outline.body.extend([*_docx_rows(block), ""])
            continue
        text = _docx_text(block)
        style = block.style.name if block.style is not None else ""
        level = 1 if style == "Title" else int(m.group(1)) if (m := re.fullmatch(r"Heading (\d)", style)) else None
        if text and level:
            outline.open(level, text)
        elif text:
            outline.body.extend((text, ""))
    docs = outline.docs(path)
    if not docs:
        raise KnowledgeFormatError(path, "the Word document holds no text")
    return docs


def _docx_text(paragraph) -> str:
    """A paragraph's text and that of the text boxes anchored in it (python-docx's .text leaves those out)."""
    from docx.oxml.ns import qn

    boxes = [" ".join(t.text or "" for t in p.iter(qn("w:t"))) for p in paragraph._p.iter(qn("w:txbxContent"))]
    return " ".join(part.strip() for part in [paragraph.text, *boxes] if part.strip())


def _docx_rows(table) -> list[str]:
    """A table's rows as "cell | cell" lines: a merged cell once, a nested table's rows inside its cell."""
    from docx.table import Table

    rows = []
    for row in table.rows:
        seen, cells = [], []
        for cell in row.cells:
            if any(cell._tc is tc for tc in seen):   # python-docx repeats a merged cell for each column it spans
                continue
            seen.append(cell._tc)
            parts = [" ; ".join(_docx_rows(b)) if isinstance(b, Table) else _docx_text(b)
                     for b in cell.iter_inner_content()]
            text = " ".join(part for part in parts if part)
            if text:
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return rows


READERS: dict[str, Reader] = {
    ".md": read_markdown, ".markdown": read_markdown, ".txt": read_text, ".csv": read_qa_csv,
    ".tsv": read_qa_csv, ".jsonl": read_jsonl, ".json": read_json, ".html": read_html, ".htm": read_html,
    ".pdf": read_pdf, ".docx": read_docx,
}
TEXT_PART_WORDS = 400  # a .txt file longer than this becomes several documents

# Field names (case-insensitive; spaces and hyphens read as "_") of records and CSV headers, by role.
_DOC_FIELDS = {
    "id": ("id", "doc_id", "docid", "_id", "document_id", "article_id", "faq_id", "uuid", "key", "slug"),
    "title": ("title", "question", "q", "heading", "subject", "name", "topic", "query", "header", "utterance",
              "prompt", "customer_question", "user_question", "question_text", "faq_question", "user_query",
              "customer_query", "questions", "instruction", "input", "request", *QUESTION_NAMES),
    "answer": ("answer", "a", "text", "body", "content", "response", "passage", "description",
               "article", "snippet", "summary", "page_content", "document", "reply", "answer_text",
               "faq_answer", "agent_response", "solution", "resolution", "output", "completion", *ANSWER_NAMES),
}
_QUERY_FIELDS = {"query": ("query", "question", "text", "q"),
                 "id": ("id", "doc_id", "expected_id", "expected", "gold_id", "answer_id", "document_id")}

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)(?:\s+#+)?\s*$")  # ATX: "## Title" (closing #s after a space; "C#" stays)
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")            # underline of a setext heading: === h1, --- h2
_FENCE = re.compile(r"^\s*(```|~~~)")                  # code fence: headings inside are text
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(---|\.\.\.)[ \t]*(\n|\Z)", re.DOTALL)


class _Outline:
    """A page's sections as its headings open them, each (heading path, body lines)."""

    def __init__(self):
        self.sections: list[tuple[list[str], list[str]]] = [([], [])]  # text before any heading first
        self._stack: list[tuple[int, str]] = []                         # (level, heading) enclosing the body

    @property
    def body(self) -> list[str]:
        return self.sections[-1][1]

    def open(self, level: int, title: str) -> None:
        self._stack = [(lvl, t) for lvl, t in self._stack if lvl < level] + [(level, title)]
        self.sections.append(([t for _, t in self._stack], []))

    def docs(self, path: Path) -> list[KnowledgeDoc]:
        """One document per section with a body: id stem#slug of its heading (stem#faq-2 for a repeat),
        title the heading path ("Cards / PIN")."""
        docs, used = [], set()
        for headings, body in self.sections:
            text = "\n".join(body).strip()
            if not text:
                continue
            doc_id = _unique_id(f"{path.stem}#{_slug(headings[-1])}" if headings else path.stem, used)
            docs.append(KnowledgeDoc(doc_id, " / ".join(headings) or _humanize(path.stem), text, str(path)))
        return docs


def _markdown_outline(text: str) -> _Outline:
    """Markdown `text` by ATX and setext headings (not inside code fences), front matter dropped."""
    outline, in_fence = _Outline(), False
    for line in _FRONT_MATTER.sub("", text, count=1).splitlines():
        in_fence ^= bool(_FENCE.match(line))
        heading = None if in_fence else _HEADING.match(line)
        body = outline.body
        if heading:
            outline.open(len(heading.group(1)), heading.group(2))
        elif (not in_fence and body and body[-1].strip() and not body[-1].startswith((" ", "\t", "-", "*", "|"))
              and (underline := _SETEXT.match(line)) and (underline.group(1)[0] == "=" or len(body) == 1
                                                             or not body[-2].strip())):
            title = body.pop().strip()  # a paragraph's single line underlined: a setext heading
            outline.open(1 if underline.group(1)[0] == "=" else 2, title)
        else:
            body.append(line)
    return outline


class _HTMLText(HTMLParser):
    """An HTML page's visible text as an outline: each block a paragraph of its heading's section."""

    _SKIP = {"script", "style", "noscript", "template", "nav", "head", "svg"}
    _BLOCKS = {"p", "div", "br", "li", "tr", "section", "article", "table", "ul", "ol", "dd", "dt",
               "blockquote", "pre", "hr", "main", "header", "footer", "aside", "form", "details", "summary"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self._outline = _Outline()
        self.current: list[str] = []
        self.skip = 0
        self.heading: int | None = None

    def _flush(self) -> None:
        line = " ".join("".join(self.current).split())
        if line and self.heading:
            self._outline.open(self.heading, line)
        elif line:
            self._outline.body.extend((line, ""))  # paragraphs apart
        self.current = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = int(tag[1])
        elif self.heading and tag == "br":
            self.current.append(" ")   # "Fees<br>and charges": one heading
        elif tag in self._BLOCKS:
            self._end_block()
            if tag == "li":
                self.current.append("- ")
        elif tag in ("td", "th") and "".join(self.current).strip():
            self.current.append(" | ")  # cells of a row: "Fee | 5 pounds", not "Fee5 pounds"

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = None
        elif tag in self._BLOCKS and not (self.heading and tag == "br"):   # <br/>: a start and an end tag
            self._end_block()

    def _end_block(self) -> None:
        """A block starts or ends: the text so far is a paragraph, or the heading it is inside. A block
        inside a heading ends the heading once it has text (an unclosed <h2>Fees<p>... keeps its
        paragraphs as its body); before that, the block holds the heading's text (<h2><div>Fees</div>)."""
        has_text = bool("".join(self.current).strip())
        self._flush()
        if self.heading and has_text:
            self.heading = None

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.current.append(data)

    def outline(self) -> _Outline:
        self._flush()
        return self._outline


# "Q: ..." / "A: ..." lines, in English and as other languages mark them ("Frage:", "问：", full-width colons)
_QA_MARKERS = {"q": ("q", "question", "frage", "pregunta", "domanda", "pergunta", "vraag", "вопрос", "问", "問", "质问",
                     "質問"),
               "a": ("a", "answer", "antwort", "respuesta", "réponse", "reponse", "risposta", "resposta", "antwoord",
                     "ответ", "答", "回答")}
_QA_LINE = re.compile(r"^\s*(" + "|".join(re.escape(m) for ms in _QA_MARKERS.values() for m in ms) + r")\s*[:：]\s*(.*)$",
                      re.IGNORECASE)
_QA_ROLE = {m: role for role, ms in _QA_MARKERS.items() for m in ms}


def _qa_pairs(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a text laid out as "Q: ..." / "A: ..." lines ("Question:" / "Answer:");
    other lines, and a marker repeating the role it is in, continue the entry. [] unless the text is only
    such pairs (text before the first Q, or a Q without its A, means it is prose that happens to hold one)."""
    pairs: list[list[str]] = []
    role = None
    for line in text.splitlines():
        m = _QA_LINE.match(line)
        new_role = _QA_ROLE[m.group(1).lower()] if m else None
        if new_role is not None and new_role != role:
            if new_role == "a" and role is None:
                return []
            if new_role == "q":
                pairs.append([m.group(2).strip(), ""])
            else:
                pairs[-1][1] = m.group(2).strip()
            role = new_role
        elif line.strip():
            if role is None:
                return []
            pairs[-1][0 if role == "q" else 1] += ("\n" if role == "a" else " ") + line.strip()
    if len(pairs) < 2 or role != "a" or not all(q.strip() and a.strip() for q, a in pairs):
        return []
    return [(q.strip(), a.strip()) for q, a in pairs]


def _paragraph_parts(text: str, max_words: int) -> list[str]:
    """`text` cut at blank lines into parts of at most about `max_words` words (`WORD`: a Chinese or
    Japanese character counts as one; a longer paragraph is a part of its own)."""
    parts: list[str] = []
    current, length = [], 0   # length: the words in `current`
    for paragraph in re.split(r"\n\s*\n", text):
        n = words(paragraph)
        if current and length + n > max_words:
            parts.append("\n\n".join(current))
            current, length = [], 0
        if paragraph.strip():
            current.append(paragraph.strip())
            length += n
    if current:
        parts.append("\n\n".join(current))
    return parts or [text]


def _strings(value) -> Iterator[str]:
    """The strings (and numbers) inside a JSON value, depth first."""
    if isinstance(value, str):
        if value.strip():
            yield value.strip()
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (int, float)):
        yield str(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _pick_fields(path: Path, obj: dict, line: int | None, where: str = "") -> dict[str, str]:
    """{role: value} of a record's fields named in `_DOC_FIELDS` (first name of each role that is present)."""
    keys = {field_key(k): k for k in obj}
    picked = {}
    for role, names in _DOC_FIELDS.items():
        key = next((keys[name] for name in names if name in keys and obj[keys[name]] not in (None, "")), None)
        value = obj[key] if key is not None else None
        picked[role] = ("\n".join(_strings(value)) if isinstance(value, (list, dict)) else
                        "" if value is None else str(value)).strip()
    if not picked["answer"]:
        names = " or ".join(_DOC_FIELDS["answer"][:4])
        raise KnowledgeFormatError(path, f"{where + ': ' if where else ''}missing or empty text ({names}, ...); "
                                         f"fields are {', '.join(map(str, obj)) or 'none'}", line)
    return picked


def _record_doc(path: Path, row: dict[str, str], n: int) -> KnowledgeDoc:
    """A document from a record's {id, title, answer}: id defaults to stem#q<n>, title to the id. Help-centre
    exports (Zendesk, Freshdesk, ...) keep article bodies as HTML: markup in a title or answer becomes text."""
    doc_id = row.get("id") or f"{path.stem}#q{n}"
    title, answer = (_html_text(row[k]) if _HTML_MARKUP.search(row.get(k) or "") else row.get(k)
                     for k in ("title", "answer"))
    if not answer:
        raise KnowledgeFormatError(path, f"record {n} ({doc_id}): its HTML body has no text")
    return KnowledgeDoc(doc_id, title or doc_id, answer, str(path))


# HTML tags or character references ("&amp;", "&#39;") in a record's field: read as HTML
_HTML_MARKUP = re.compile(r"</?(p|br|div|span|b|i|u|em|strong|a|ul|ol|li|h[1-6]|table|tr|td|th|img|code|pre|"
                          r"blockquote|hr|font|sup|sub)\b[^>]*>|&(#\d+|#x[0-9a-f]+|[a-z]+\d*);", re.IGNORECASE)


def _html_text(markup: str) -> str:
    """The visible text of an HTML fragment: blocks one a line, headings included, entities decoded."""
    parser = _HTMLText()
    parser.feed(markup)
    outline = parser.outline()
    lines = [line for headings, body in outline.sections for line in (headings[-1:] + body)]
    return "\n".join(line for line in lines if line.strip()).strip()


def _read_file(path: Path) -> list[KnowledgeDoc]:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise KnowledgeFormatError(path, f"unsupported format; use one of {' '.join(READERS)}")
    docs = reader(path)
    if not docs:
        raise KnowledgeFormatError(path, "holds no documents")
    return docs


def _read_text(path: Path) -> str:
    """A file's text (`decode_text`); binary, unreadable and blank files are errors."""
    return decoded_file(path, KnowledgeFormatError)[0]


def _csv_rows(path: Path, fields: dict[str, tuple[str, ...]], required: tuple[str, ...],
              headerless: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, {role: stripped value}) of each row of a CSV/TSV (delimiter sniffed).

    A role's column is the first of its names in `fields` found in the header (case-insensitive, in
    any order); other columns are ignored. A table as wide as `headerless` with no recognised name
    in its first row takes those roles for its columns, in order (a wider one: the last role, the passage,
    the column of the most words, the role before it the next most), and its first row is a header or
    data by its shape (`names_columns`; a header, or a row that could be one, is logged). The header
    repeated inside the table (files pasted together) is left out and logged. A row may leave out
    trailing columns (their values are ""). Missing columns, empty required values and malformed rows
    are errors naming the line.
    """
    found: list[str] = []
    _, rows = table_rows(path, _read_text(path), KnowledgeFormatError, found)
    for warning in found:   # a cell shaped like many rows
        log.warning("%s", warning)
    header = rows[0][1]
    keys = [field_key(name) for name in header]
    columns = {role: named_column(keys, names) for role, names in fields.items()}
    body, repeats = table_body(header, rows[1:])
    known = {i for role, i in columns.items() if i is not None and role not in headerless}   # "ID;Frage;Antwort"
    free = [i for i in range(len(header)) if i not in known]
    if headerless and len(free) >= len(headerless) and all(columns[role] is None for role in headerless):
        order = free[:len(headerless)]
        if len(free) > len(headerless):
            # a wider table with no known column name ("Nr,Frage,Antwort,Kategorie", or no header): the last
            # role (the passage) takes the column of the most words, the one before it the next most (in words:
            # a column of links or codes is long in characters only)
            lengths = {i: (sum(len(cells[i].split()) for _, cells in body if i < len(cells)),   # ties: characters
                           sum(len(cells[i]) for _, cells in body if i < len(cells))) for i in free}
            order = sorted(free, key=lambda i: lengths[i], reverse=True)[:len(headerless)][::-1]
            log.warning("%s: no known column names; read %s (by the words in their cells)", path,
                        ", ".join(f"column {i + 1} as the {role}" for role, i in zip(headerless, order)))
        columns = {role: order[headerless.index(role)] if role in headerless else columns[role] for role in fields}
        text_i = columns[required[0]]
        other_i = next(i for i in order if i != text_i)
        verdict = names_columns(header, [cells for _, cells in body], text_i, other_i)
        if verdict:   # "Frage;Antwort": a header in another language
            log.warning("%s: the first row %s was read as a header (its cells look like column names), not as a "
                        "passage; name the columns question,answer to say so", path, header)
        else:
            body, repeats = rows, []  # the first row is data too, and so are its copies
            if verdict is None:
                log.warning("%s: the first row %s was read as a passage, though it could be a header; if it is one, "
                            "name the columns question,answer", path, header)
    missing = [role for role in required if columns[role] is None]
    if missing:
        names = "; ".join(f"{role} (or {', '.join(fields[role][1:5])}, ...)" for role in missing)
        raise KnowledgeFormatError(path, f"missing column(s) {names}; header is {', '.join(header)}",
                                   line=rows[0][0])
    if repeats:
        log.warning("%s", repeated_header_warning(path, header, repeats))
    for line, cells in body:
        if len(cells) > len(header):
            raise KnowledgeFormatError(path, "more fields than the header", line)
        values = {role: cells[i] if i is not None and i < len(cells) else "" for role, i in columns.items()}
        empty = [role for role in required if not values[role]]
        if empty:
            raise KnowledgeFormatError(path, f"empty {', '.join(empty)}", line)
        yield line, values


def _slug(text: str) -> str:
    return re.sub(r"[^\w]+", "-", text.lower()).strip("-_") or "section"


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
        filled = {slot: rng.choice(options) for slot, options in slots.items()}
        title, text = title.format(**filled), body.format(**filled)
        if text not in seen:
            seen.add(text)
            docs.append(KnowledgeDoc(f"synthetic-{len(docs):05d}", title[0].upper() + title[1:], text,
                                     "synthetic"))
    if len(docs) < n:
        raise ValueError(f"could only make {len(docs)} distinct synthetic passages, not {n}")
    return docs
