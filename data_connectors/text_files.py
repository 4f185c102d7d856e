"""User text files a support desk hands over: decoding, delimited tables and labelled texts.

    text, encoding = decode_text(data)               # UTF-8 (BOM or not), UTF-16 with a BOM, or Windows-1252
    data = read_labelled_texts("intents.csv")        # texts, labels and how the file was read

Shared by the knowledge readers (data_connectors.knowledge) and the intent readers: one decoding, one
delimiter sniffing, one set of field-name rules. `decoded_file`, `table_rows` and `json_lines` raise the
caller's error type (a ValueError taking (path, problem, line)), so each reader's messages name its file.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import json.scanner
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


# ---- decoding and tables ----

_BINARY = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")  # C0/C1 controls: not text
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
DELIMITERS = ("\t", ",", ";", "|")  # tried in this order; ties go to the earlier one (text rarely holds tabs)

# Scripts written without spaces between words (Chinese and Japanese ideographs, kana): each such
# character counts as a word when text is measured or cut (knowledge parts, retrieval chunks).
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{CJK_CHARS}]|[^\s{CJK_CHARS}]+")  # a unit of text: one CJK character or one word


# Legacy encodings of Chinese and Japanese, tried (strictly) on bytes that are not UTF-8; one that alone decodes
# the file to text whose non-ASCII characters are nearly all CJK is taken.
LEGACY_CJK = ("gb18030", "big5", "cp932", "euc_jp")
_CJK_TEXT = re.compile(f"[{CJK_CHARS}\u3000-\u303f\uff01-\uff60]")   # with CJK punctuation, full-width forms
_NON_ASCII_WORD = re.compile(r"[^\x00-\x7f]*[^\W\d_][^\x00-\x7f]*")


class TextDecodeError(ValueError):
    """Bytes that are not text in UTF-8 (with or without BOM), UTF-16 with a BOM, a legacy Chinese or
    Japanese encoding (LEGACY_CJK), or Windows-1252."""

    def __init__(self, problem: str, line: int | None = None):
        super().__init__(problem)
        self.line = line


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, encoding) of a text file's bytes, in Unicode's composed form (NFC: "ü" one character, as typed):
    UTF-8 (a BOM is dropped), UTF-16 with a BOM, else Windows-1252 for Western text (spreadsheet exports; a
    superset of Latin-1's printable characters) or a legacy Chinese or Japanese encoding that alone reads text
    dense in non-ASCII bytes as such (GB18030/GBK, Big5, Shift-JIS, EUC-JP): `_legacy_text`. A file that is
    UTF-8 but for some bytes (damaged, or pasted together), one that several CJK encodings read, one whose
    Windows-1252 reading is no Western text (Cyrillic or Arabic code pages: "Êàê çàáëîêèðîâàòü") and bytes that
    decode to control characters (binary files) raise TextDecodeError."""
    if data.startswith(_UTF16_BOMS):
        try:
            text, encoding = data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as err:
            raise TextDecodeError(f"not valid UTF-16 (it starts with a UTF-16 byte-order mark, but byte "
                                  f"{err.start} is {err.reason}: a truncated or damaged file?); save it "
                                  "again as UTF-8 or UTF-16") from None
    else:
        try:
            text, encoding = data.decode("utf-8-sig"), "utf-8"
        except UnicodeDecodeError as err:
            text, encoding = _legacy_text(data, err)
    if bad := _BINARY.search(text):
        line = text.count("\n", 0, bad.start()) + 1
        raise TextDecodeError(f"not text: control character {bad.group()!r} (a binary file?)", line)
    return unicodedata.normalize("NFC", text), encoding


def _legacy_text(data: bytes, err: UnicodeDecodeError) -> tuple[str, str]:
    """(text, encoding) of bytes that are not UTF-8 (err: where UTF-8 failed): Windows-1252 for Western text,
    in which non-ASCII characters are a few among many ASCII ones ("10×20 cm", "don´t", "Größe"); text dense
    in non-ASCII bytes is read by the one legacy Chinese or Japanese encoding that reads it as such, else by
    Windows-1252 when its words still look Western, else refused (a Cyrillic, Greek or Arabic code page). A
    damaged or mixed UTF-8 file is an error too: Western text holding valid UTF-8 letters, or dense text half of
    whose non-ASCII bytes are valid UTF-8 (GBK and Shift-JIS text forms UTF-8 pairs by chance: about a third
    of its bytes)."""
    line = data[:err.start].count(b"\n") + 1
    non_ascii = sum(b > 0x7f for b in data)
    as_utf8 = [c for c in data.decode("utf-8", "replace") if ord(c) > 0x7f and c != "\ufffd"]
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        western = None
    # dense: non-ASCII bytes are a quarter or more of the lines that hold any (Chinese, Cyrillic; not "Größe")
    lines = [ln for ln in data.split(b"\n") if any(b > 0x7f for b in ln)]
    dense = non_ascii >= 0.25 * sum(len(ln.strip()) for ln in lines)
    if (sum(len(c.encode()) for c in as_utf8) >= 0.5 * non_ascii
            or (not dense and any(c.isalpha() and ord(c) < 0x250 for c in as_utf8))):
        raise TextDecodeError(f"byte {err.start} is not UTF-8, though other non-ASCII text in the file "
                              "is: a damaged or mixed-encoding file; save it as UTF-8", line)
    cjk = _legacy_cjk(data) if dense else []
    if len(cjk) == 1:
        return data.decode(cjk[0]), cjk[0]
    if western is not None and not cjk and (not dense or _western(western)):
        return western, "cp1252"
    if cjk:
        raise TextDecodeError(f"not UTF-8 (byte {err.start}): Chinese or Japanese text in a legacy encoding that "
                              f"several read ({', '.join(cjk)}); save it as UTF-8", line)
    if western is None:
        raise TextDecodeError(f"not text: byte {err.start} is neither UTF-8 nor Windows-1252 (a binary file?); "
                              "save it as UTF-8", line)
    raise TextDecodeError("not UTF-8, and as Windows-1252 its non-ASCII words are no Western language (a "
                          "Cyrillic, Greek, Arabic or other legacy code page?); save it as UTF-8", line)


def _legacy_cjk(data: bytes) -> list[str]:
    """The LEGACY_CJK encodings that decode `data` strictly to text whose non-ASCII characters are at least
    90% Chinese or Japanese; of several, the one reading kana, when only one does (Japanese text has kana:
    Shift-JIS read as GB18030 gives none)."""
    found, kana = [], []
    for encoding in LEGACY_CJK:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        non_ascii = [c for c in text if ord(c) > 0x7f]
        if non_ascii and sum(bool(_CJK_TEXT.match(c)) for c in non_ascii) >= 0.9 * len(non_ascii):
            found.append(encoding)
            if sum("\u3040" <= c <= "\u30ff" for c in non_ascii) >= 0.1 * len(non_ascii):
                kana.append(encoding)
    return kana if len(found) > 1 and len(kana) == 1 else found


def _western(text: str) -> bool:
    """Whether a Windows-1252 reading dense in non-ASCII characters is still Western: accented letters inside
    words of plain ones ("Übergrößenträger"). A Cyrillic or Arabic code page read as Windows-1252 gives words
    of 3 or more letters with no ASCII letter at all ("Êàê", "çàáëîêèðîâàòü"): not Western when half of
    its non-ASCII words are such."""
    words = [w for w in _NON_ASCII_WORD.findall(text) if re.search(r"[^\x00-\x7f]", w)]
    foreign = [w for w in words if len(w) >= 3 and not re.search(r"[A-Za-z]", w)]
    return not words or len(foreign) < 0.5 * len(words)


def sniff_delimiter(text: str, suffix: str = "") -> str:
    """The field delimiter of delimited text: tab for .tsv, the one an Excel `sep=;` first line declares,
    else whichever of `DELIMITERS` splits the first 200 non-blank lines into the same number (at least
    2) of fields most often. On a tie a delimiter written as prose punctuation (followed by a space in
    most of its occurrences: "Hallo, ich ...;karte") loses to one that is not."""
    if suffix.lower() == ".tsv":
        return "\t"
    if declared := _declared_delimiter(text):
        return declared
    sample = "\n".join(line for line in text.splitlines()[:400] if line.strip())
    best, best_key = ",", (0.0, False)
    for delimiter in DELIMITERS:
        try:
            counts = [len(row) for row in _csv_reader(sample, delimiter)][:200]
        except csv.Error:
            continue
        if not counts:
            continue
        mode = max(set(counts), key=counts.count)
        score = counts.count(mode) / len(counts) if mode >= 2 else 0.0
        key = (score, not _reads_as_prose(sample, delimiter))
        if score > 0 and key > best_key:
            best, best_key = delimiter, key
    return best


_SEP_LINE = re.compile(r"sep=(.)[ \t]*(?:\r?\n|\Z)")  # Excel's first line naming the delimiter: "sep=;"


def _declared_delimiter(text: str) -> str | None:
    """The delimiter an Excel `sep=X` first line declares, or None."""
    m = _SEP_LINE.match(text)
    return m.group(1) if m else None


def _reads_as_prose(sample: str, delimiter: str) -> bool:
    """Whether `delimiter` (a comma or semicolon) is mostly followed by a space, as in sentences."""
    if delimiter not in ",;":   # tabs and pipes are no punctuation ("text | label" is a table)
        return False
    after = re.findall(re.escape(delimiter) + r"(.?)", sample)
    return bool(after) and sum(c in (" ", "\u00a0") for c in after) * 2 > len(after)


MAX_CELL_CHARS = 16 * 1024 * 1024  # a table cell may hold this many characters (csv's default: 131072)
ROWS_IN_A_CELL = 20  # a well-quoted cell holding this many lines shaped as rows (and most of the file): a warning
_NEWLINE = re.compile(r"\r\n?|\n")   # a line break as csv counts lines (io.StringIO with newline="")


class OpenQuoteError(csv.Error):
    """A quoted cell that swallowed rows of its table (a quote left open); `line`: where the quote opened."""

    def __init__(self, problem: str, line: int):
        super().__init__(problem)
        self.line = line


def _csv_reader(text: str, delimiter: str):
    """csv.reader over `text` with cells of up to MAX_CELL_CHARS characters: the one way this module
    parses delimited text, so sniffing and reading agree whatever else ran before in the process."""
    if csv.field_size_limit() < MAX_CELL_CHARS:
        csv.field_size_limit(MAX_CELL_CHARS)
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)


def read_table(text: str, delimiter: str, warnings: list[str] | None = None) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank row of delimited text; quoted cells may hold
    delimiters and newlines; a cell may hold up to MAX_CELL_CHARS characters. Malformed text (e.g. a
    cell over that limit) raises csv.Error with `line`, where the row that broke starts; a quote left
    open that swallowed rows raises OpenQuoteError (`_check_quoted_cells`, which adds to `warnings`)."""
    reader = _csv_reader(text, delimiter)
    rows, line = [], 1
    try:
        for row in reader:
            cells = [cell.strip() for cell in row]
            if any(cells):
                rows.append((line, cells))
            line = reader.line_num + 1
    except csv.Error as err:
        err.line = line
        raise
    found = _check_quoted_cells(text, delimiter, rows)
    if warnings is not None:
        warnings += found
    return rows


def _check_quoted_cells(text: str, delimiter: str, rows: list[tuple[int, list[str]]]) -> list[str]:
    """Raise OpenQuoteError where a quoted cell holds rows of its table: its quote is never closed (the
    rest of the file read as one cell), or it is closed by the opening quote of a field on a later line
    that reads as a row (`Last?,"Yes."`: text follows the quote) and most of its lines split like rows
    (at least the table's width of fields; the closing line counts as the row it is). A space after a
    closing quote, a strict-CSV slip in another cell and a quoted answer over several lines, with commas
    and all, are no such cell.
    Returns warnings (no error: the file is well formed) for a cell that holds over half the file and
    ROWS_IN_A_CELL lines or more (80 % of its lines) splitting into just that width (a stray quote at
    a field's end may have closed a quote left open)."""
    widths = Counter(len(cells) for _, cells in rows)
    width = max(widths, key=lambda n: (widths[n], n)) if rows else 0
    lines, warnings = None, []
    for k, (line, cells) in enumerate(rows):
        if not any("\n" in cell for cell in cells):
            continue
        lines = lines or io.StringIO(text, newline="").readlines()
        raw = "".join(lines[line - 1:rows[k + 1][0] - 1 if k + 1 < len(rows) else len(lines)])
        for i, opens, closes in _quoted_fields(raw, delimiter):
            opened = line + len(_NEWLINE.findall(raw, 0, opens))
            if closes is None:
                raise OpenQuoteError(f"the quote opened on line {opened} is never closed: the rest of the file "
                                     f"({len(lines) - opened + 1} lines) would be one cell; close the quote", opened)
            if i >= len(cells) or not _NEWLINE.search(raw, opens, closes):
                continue
            inner = cells[i].split("\n")[1:]
            if _closes_a_later_row(raw, closes, delimiter, width):
                row_like = _row_like_lines(inner[:-1], delimiter, width) + 1   # the closing line reads as a row
                if width >= 2 and row_like >= 2 and row_like * 2 > len(inner):
                    raise OpenQuoteError(f"the quoted cell opened on line {opened} holds {row_like} lines that read "
                                         "as rows of the table (a quote left open?); close the quote", opened)
            elif width >= 2 and len(cells[i]) * 2 > len(text):
                row_like = _row_like_lines(inner, delimiter, width, exact=True)
                if row_like >= ROWS_IN_A_CELL and row_like >= 0.8 * len(inner):
                    warnings.append(f"the quoted cell opened on line {opened} holds {row_like} lines shaped like "
                                    "rows of the table; if a quote was left open there, close it")
    return warnings


def _quoted_fields(raw: str, delimiter: str) -> list[tuple[int, int, int | None]]:
    """(field index, offset of the opening quote, offset of the closing quote or None: never closed)
    of each quoted field of the row that `raw` starts with, read as csv reads (a quote opens a field
    only at its start; "" inside is a quote; text after a closing quote joins the field)."""
    found, field, i, n = [], 0, 0, len(raw)
    field_end = re.compile(f"[{re.escape(delimiter)}\r\n]")
    while i < n:
        if raw[i] == '"':
            opens, j = i, i + 1
            while (closes := raw.find('"', j)) >= 0 and raw.startswith('""', closes):
                j = closes + 2
            found.append((field, opens, closes if closes >= 0 else None))
            if closes < 0:
                break
            i = closes + 1
        ends = field_end.search(raw, i)
        if not ends or ends.group() != delimiter:
            break   # the row ends
        field, i = field + 1, ends.end()
    return found


def _closes_a_later_row(raw: str, closes: int, delimiter: str, width: int) -> bool:
    """Whether the quote at `closes` (closing a field over several lines) is the opening quote of a field
    of a later row: it stands at the start of a field on its line, text (not only spaces) follows it,
    and its line splits into at least `width` fields, as a row would."""
    start = max(raw.rfind("\n", 0, closes), raw.rfind("\r", 0, closes)) + 1
    before = raw[start:closes]
    if before and not before.endswith(delimiter):
        return False
    after = re.compile(f"[^{re.escape(delimiter)}\r\n]*").match(raw, closes + 1).group()
    if not after.strip():
        return False   # a clean close, or spaces after it: `..."Confirm, done." ,pay`
    ends = _NEWLINE.search(raw, closes)
    line = raw[start:ends.start() if ends else len(raw)]
    return max((len(fields) for fields in _csv_reader(line, delimiter)), default=0) >= max(width, 2)


def _row_like_lines(lines: list[str], delimiter: str, width: int, exact: bool = False) -> int:
    """How many of `lines` (of one cell) split on `delimiter` into `width` or more fields (`exact`: just
    `width`), the first one not empty: rows of a table that a quote left open swallowed."""
    return sum((len(fields) == width if exact else len(fields) >= width) and bool(fields[0].strip())
               for fields in _csv_reader("\n".join(lines), delimiter) if fields)


def _opening_line(line: int, cells: list[str], i: int) -> int:
    """The line where cell `i` of a row starting on `line` opens (the cells before it may span lines)."""
    return line + sum(cell.count("\n") for cell in cells[:i])


def decoded_file(path: Path, error: type[ValueError]) -> tuple[str, str]:
    """(text, encoding) of a file (`decode_text`); unreadable, binary and blank files raise
    `error(path, problem, line)`."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error(path, f"cannot read ({err.strerror})") from None
    try:
        text, encoding = decode_text(data)
    except TextDecodeError as err:
        raise error(path, str(err), err.line) from None
    if not text.strip():
        raise error(path, "empty file")
    return text, encoding


def table_rows(path: Path, text: str, error: type[ValueError],
               warnings: list[str] | None = None) -> tuple[str, list[tuple[int, list[str]]]]:
    """(delimiter, rows) of a delimited file's `text` (`sniff_delimiter`, `read_table`); an Excel
    `sep=X` first line sets the delimiter and is no row. Malformed and blank tables raise
    `error(path, problem, line)`; guesses worth a look (a cell shaped like many rows) go to `warnings`,
    each starting with the path."""
    delimiter = sniff_delimiter(text, path.suffix)
    if _declared_delimiter(text):
        text = "\n" + text.split("\n", 1)[1] if "\n" in text else ""   # line numbers stay the file's
    try:
        found: list[str] = []
        rows = read_table(text, delimiter, found)
    except csv.Error as err:
        kind = "TSV" if delimiter == chr(9) else "CSV"
        problem = (f"malformed {kind}: {err}" if isinstance(err, OpenQuoteError) else
                   f"malformed {kind}: a cell over {MAX_CELL_CHARS:,} characters (a quote left open?)"
                   if "field larger" in str(err) else f"malformed {kind} ({err}; a quote left open?)")
        raise error(path, problem, err.line) from None
    if not rows:
        raise error(path, "no rows with any text")
    if warnings is not None:
        warnings += [f"{path}: {warning}" for warning in found]
    return delimiter, rows


def table_body(header: list[str], rows: list[tuple[int, list[str]]]) -> tuple[list[tuple[int, list[str]]], list[int]]:
    """(the rows of `rows` other than those repeating `header` cell for cell, the lines of those left out):
    the body under a header (or a first row that may be one), less the header repeated inside (files
    pasted together: `cat a.csv b.csv`). Every reader builds its body here."""
    return [(line, cells) for line, cells in rows if cells != header], [line for line, cells in rows if cells == header]


def repeated_header_warning(path: Path, header: list[str], lines: list[int]) -> str:
    """The warning for a header row repeated on `lines` (`table_body`), which readers leave out."""
    shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
    return (f"{path}: the header row {header} appears again on line(s) {shown} (files pasted together?); "
            "those rows were left out")


def json_document(path: Path, text: str, error: type[ValueError], first_line: int = 1) -> object:
    """The value of a JSON document `text` (starting on line `first_line` of its file); invalid JSON
    raises `error(path, problem, line)`, and so does a key repeated in one object (json keeps the last
    silently, losing the first block; as `yaml_document` refuses), naming the key and its lines."""
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except json.JSONDecodeError as err:
        raise error(path, f"invalid JSON ({err.msg})", first_line - 1 + err.lineno) from None
    except _RepeatedKey as err:
        lines = [first_line - 1 + n for n in _repeated_key_lines(text) or ()]
        where = f" (lines {lines[0]} and {lines[1]})" if lines and lines[0] != lines[1] else ""
        raise error(path, f"the key {err.key!r} appears twice in one object{where}; merge its two blocks into one",
                    lines[1] if lines else None) from None


class _RepeatedKey(Exception):
    def __init__(self, key: str, at: tuple[int, int] | None = None):
        self.key, self.at = key, at   # `at`: offsets of the two values, where known


def _repeated_key_lines(text: str) -> tuple[int, int] | None:
    """The lines of the first key repeated in one object of JSON `text`, or None if not found: the
    document read again by json's pure-Python scanner, each object's value offsets recorded as read."""
    def parse_object(s_and_end, strict, scan_once, *rest):
        starts: list[int] = []

        def recording_scan(string: str, idx: int):
            starts.append(idx)
            return scan_once(string, idx)

        def pairs_hook(pairs):
            seen = {}
            for n, (key, _) in enumerate(pairs):
                if key in seen:
                    raise _RepeatedKey(key, (starts[seen[key]], starts[n]))
                seen[key] = n
            return dict(pairs)
        return json.decoder.JSONObject(s_and_end, strict, recording_scan, None, pairs_hook, *rest[2:])

    decoder = json.JSONDecoder()
    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        decoder.decode(text)
    except _RepeatedKey as err:
        if err.at:   # a key is written on its value's line, up to the colon before it
            return tuple(text.count("\n", 0, text.rindex(":", 0, at)) + 1 for at in err.at)
    except (ValueError, RecursionError):
        pass
    return None


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    """json's object_pairs_hook refusing a key repeated in one object."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _RepeatedKey(key)
        obj[key] = value
    return obj


def json_lines(path: Path, text: str, error: type[ValueError]) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of JSON-lines `text`, each read as `json_document`
    reads a file (a key repeated in one object is an error)."""
    return [(line_no, json_document(path, line, error, line_no))
            for line_no, line in enumerate(text.splitlines(), 1) if line.strip()]


def field_key(name: str) -> str:
    """A header or field name as matched: lower case, spaces and hyphens read as "_"."""
    return "_".join(str(name).strip().lower().replace("-", " ").split())


def named_column(keys: list[str], names: tuple[str, ...], among=None) -> int | None:
    """The column (of `among`, default all) whose key comes first in `names`, or None."""
    ranked = [(names.index(keys[i]), i) for i in (range(len(keys)) if among is None else among)
              if keys[i] in names]
    return min(ranked)[1] if ranked else None


# ---- labelled texts: intent tables and other text-classification data ----

# A question's and an answer's field names in other languages (knowledge files and intent tables read them).
QUESTION_NAMES = ("frage", "pregunta", "domanda", "pergunta", "vraag", "fråga", "spørsmål", "pytanie",
                  "вопрос", "سؤال", "问题", "問題", "质问", "質問", "问", "問")
ANSWER_NAMES = ("antwort", "respuesta", "réponse", "reponse", "risposta", "resposta", "antwoord", "svar", "odpowiedź",
                "ответ", "جواب", "إجابة", "答案", "回答", "答复", "答覆", "答")

# Header and field names of the two columns (case-insensitive; spaces and hyphens read as "_"), by preference.
TEXT_COLUMNS = ("text", "utterance", "sentence", "query", "question", "message", "example", "input",
                "phrase", "prompt", "request", "content", "body", "texts", "utterances", "sentences",
                "queries", "questions", "messages", "examples", "user_message", "customer_message",
                "user_utterance", "user_query", "customer_query", "transcript", "instruction", "texto", "texte",
                "testo", "satz", "äußerung", "frase", "текст", "文本", "句子", "テキスト", "発話", *QUESTION_NAMES)
LABEL_COLUMNS = ("label", "intent", "category", "class", "intent_name", "intent_label", "label_name",
                 "class_name", "target", "tag", "topic", "labels", "intents", "categories", "classes", "y",
                 "label_text", "absicht", "kategorie", "etikett", "intención", "intencion", "etiqueta", "categoría",
                 "intention", "étiquette", "catégorie", "intenzione", "categoria", "intenção", "намерение", "метка",
                 "категория", "意图", "意圖", "标签", "標籤", "类别", "類別", "意図", "ラベル", "カテゴリ")
# A label column of class ids beside its names ("label" and "label_text": the Hugging Face layout) is read by the
# names: the columns that may hold the names of a column of ids, in order.
LABEL_NAME_COLUMNS = ("label_text", "label_name", "intent_name", "class_name", "category_name", "text_label")

LABELLED_SUFFIXES = (".csv", ".tsv", ".txt", ".yaml", ".yml", ".json", ".jsonl")


def names_for_ids(keys: list[str], label_i: int, values: list[str]) -> int:
    """The column to read labels from: `label_i`, or a label-name column (LABEL_NAME_COLUMNS) beside it when
    every value of `label_i` is a class id (digits)."""
    if not values or not all(v.strip().isdigit() for v in values):
        return label_i
    named = named_column(keys, LABEL_NAME_COLUMNS, [i for i in range(len(keys)) if i != label_i])
    return label_i if named is None else named


class LabelledTextError(ValueError):
    """A labelled-text file that cannot be read; the message starts with "path[, line N]: "."""

    def __init__(self, path: Path, problem: str, line: int | None = None):
        super().__init__(f"{path}{'' if line is None else f', line {line}'}: {problem}")
        self.path, self.line = path, line


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list[str]
    text_column: str | None      # how the texts were found: header or field name, or "column 2" (None: YAML)
    label_column: str | None
    header: bool | None          # whether a table's first row was a header (None: YAML/JSON)
    delimiter: str | None        # a table's delimiter (None: YAML/JSON)
    encoding: str                # as `decode_text` read the file
    warnings: list[str] = field(default_factory=list)  # guesses worth a look, e.g. a first row read as a header


def read_labelled_texts(path: str | Path, text_column: str | None = None,
                        label_column: str | None = None, split: str | None = None) -> LabelledTexts:
    """Texts and their labels (e.g. intents) from a file: delimited text (.csv .tsv .txt; comma, tab,
    semicolon or pipe, sniffed), YAML (.yaml .yml: `intents: {label: [texts]}`, `intents: [{name,
    examples}]` or Rasa's NLU training data, `nlu: [{intent, examples: "- text ..."}]`), JSON (.json: those
    structures, a list of records or [text, label] pairs, or an object holding one such list, or one per
    split as CLINC150 ships them: {"train": [...], "val": [...], "test": [...], "oos_train": [...], ...}:
    `split` names the one read, with its "oos_" list) or JSON lines (.jsonl: a record or pair a line).

    Headers and records may name their columns with any of TEXT_COLUMNS / LABEL_COLUMNS (a first row
    naming one column is a header; the other columns are then told by their values), or
    `text_column` / `label_column` say which (a header name, or a 1-based column number). A table
    without recognised names: the labels are the column with the fewest distinct values (refused when
    a third column repeats too), the texts the one with the longest values, and a first row is a
    header only when its cells look like column names, in any script (`_looks_like_header`;
    `warnings` then says so). YAML scalars stay the text written (an intent `no`, an example `1234`);
    a key repeated in one mapping is an error. JSON labels may be whole-number class ids ("0"), a
    record's list of texts gives a row each, a list of one label is that label (several: an error).
    UTF-8, UTF-16 with a BOM and Windows-1252 are read (`decode_text`). `warnings` also reports rows
    repeated word for word, texts given different labels, header rows repeated inside a table (left
    out), a well-quoted cell shaped like many rows of its table (read as one cell) and items of an
    `intents:` list repeating a name (their examples merged); a key repeated in one JSON object (.json
    or .jsonl) is an error, as in YAML, and so is a quote left open that swallowed rows (a label cell
    over several lines is one). Errors are LabelledTextError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LabelledTextError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix not in LABELLED_SUFFIXES:
        others = " ".join(s for s in LABELLED_SUFFIXES if s not in (".csv", ".yaml"))
        raise LabelledTextError(path, f"expected a .csv or .yaml file (or {others}), got {suffix or 'no suffix'}")
    text, encoding = decoded_file(path, LabelledTextError)
    if suffix in (".yaml", ".yml"):
        data = _labelled_yaml(path, text)
    elif suffix in (".json", ".jsonl"):
        data = _labelled_json(path, text, suffix, text_column, label_column, split)
    else:
        data = _labelled_table(path, text, text_column, label_column)
    data.encoding = encoding
    data.warnings += _repeat_warnings(path, data.texts, data.labels)
    return data


def _repeat_warnings(path: Path, texts: list[str], labels: list[str]) -> list[str]:
    """Warnings about rows repeated word for word (a model counts them once) and about texts given
    different labels (no model can learn both), with examples."""
    rows = Counter(zip(texts, labels))
    warnings = []
    if repeated := sum(n - 1 for n in rows.values()):
        example = next(row for row, n in rows.items() if n > 1)
        warnings.append(f"{path}: {repeated} row(s) repeat an earlier (text, label) row word for word, e.g. "
                        f"{example[0]!r} as {example[1]!r}; training reads each once, an evaluation counts every copy")
    seen: dict[str, list[str]] = {}
    for text, label in rows:
        seen.setdefault(text, []).append(label)
    if conflicts := [(text, found) for text, found in seen.items() if len(found) > 1]:
        shown = "; ".join(f"{text!r} as {', '.join(map(repr, found))}" for text, found in conflicts[:3])
        warnings.append(f"{path}: {len(conflicts)} text(s) carry different labels ({shown}"
                        f"{'; ...' if len(conflicts) > 3 else ''}): no model can learn both; keep one label each")
    spellings: dict[str, set[str]] = {}
    for label in set(labels):
        spellings.setdefault(" ".join(label.replace("_", " ").replace("-", " ").lower().split()), set()).add(label)
    if alike := [sorted(found) for found in spellings.values() if len(found) > 1]:
        shown = "; ".join(" / ".join(map(repr, found)) for found in sorted(alike)[:3])
        warnings.append(f"{path}: {len(alike)} label(s) spelled in several ways ({shown}"
                        f"{'; ...' if len(alike) > 3 else ''}) are different intents to a model; spell each one way")
    return warnings


def _labelled_table(path: Path, text: str, text_column: str | None, label_column: str | None) -> LabelledTexts:
    warnings: list[str] = []
    delimiter, rows = table_rows(path, text, LabelledTextError, warnings)
    first = rows[0][1]
    below, repeats = table_body(first, rows[1:])   # the rows under the first, less its copies: read once
    if text_column or label_column:
        header, text_i, label_i = _given_columns(path, rows, below, text_column, label_column)
    else:
        header, text_i, label_i = _found_columns(path, rows, below)
    width = len(first) if header else max(text_i, label_i) + 1
    keys = [field_key(cell) for cell in first]  # a header found by its names needs no warning
    named = bool(text_column and not text_column.isdigit() or label_column and not label_column.isdigit()
                 or keys[text_i] in TEXT_COLUMNS or keys[label_i] in LABEL_COLUMNS)
    names = ([first[text_i], first[label_i]] if header else
             [text_column or f"column {text_i + 1}", label_column or f"column {label_i + 1}"])
    texts, labels = [], []
    body, repeats = (below, repeats) if header else (rows, [])
    for line, cells in body:
        hint = " (a quoted field runs over several lines: an unclosed quote?)" if any(
            "\n" in cell for cell in cells) else ""
        if header and len(cells) != len(first):
            raise LabelledTextError(path, f"{len(cells)} fields, the header has {len(first)}{hint}", line)
        if len(cells) < width:
            raise LabelledTextError(path, f"{len(cells)} fields, expected at least {width}{hint}", line)
        if not cells[text_i] or not cells[label_i]:
            raise LabelledTextError(path, f"empty `{names[0]}` or `{names[1]}`", line)
        if "\n" in cells[label_i]:   # a label never spans lines: a quote opened here swallowed what follows
            opened = _opening_line(line, cells, label_i)
            raise LabelledTextError(path, f"the `{names[1]}` cell runs over {cells[label_i].count(chr(10)) + 1} "
                                          "lines (a quote left open?); a label is one line", opened)
        texts.append(cells[text_i])
        labels.append(cells[label_i])
    if not texts:
        raise LabelledTextError(path, "a header but no rows")
    if repeats:
        warnings.append(repeated_header_warning(path, first, repeats))
    if not header and sum(label == labels[0] for label in labels) == 1:
        warnings.append(f"{path}: the first row {first} was read as an example of a class of its own; if "
                        "it is a header, pass --text-column and --label-column")
    if header and not named:
        warnings.append(f"{path}: the first row {first} was read as a header (its cells look like column "
                        "names), not as an example; if it is an example, add a `text,label` header row")
    return LabelledTexts(texts, labels, names[0], names[1], header, delimiter, "", warnings)


def _given_columns(path: Path, rows: list[tuple[int, list[str]]], below: list[tuple[int, list[str]]],
                   text_column: str | None, label_column: str | None) -> tuple[bool, int, int]:
    """(has a header, text column, label column) of a table from the columns the caller named: header
    names (one may be left out when the other column is the only other one or has a recognised name),
    or both as 1-based numbers."""
    first = rows[0][1]
    keys = [field_key(cell) for cell in first]
    given = [c for c in (text_column, label_column) if c]
    if all(c.isdigit() for c in given):
        indices = [int(c) - 1 for c in given]
        if len(given) < 2 or any(not 0 <= i < len(first) for i in indices):
            raise LabelledTextError(path, f"column numbers need both columns, each 1 to {len(first)}")
        text_i, label_i = indices
        named = keys[text_i] in TEXT_COLUMNS or keys[label_i] in LABEL_COLUMNS
        return named or _looks_like_header(rows, below, text_i, label_i), text_i, label_i
    missing = [c for c in given if field_key(c) not in keys]
    if missing:
        raise LabelledTextError(path, f"no column {', '.join(map(repr, missing))} in the header {first}",
                                rows[0][0])
    text_i, label_i = (keys.index(field_key(c)) if c else None for c in (text_column, label_column))
    others = [i for i in range(len(first)) if i not in (text_i, label_i)]
    if text_i is None:
        text_i = others[0] if len(others) == 1 else named_column(keys, TEXT_COLUMNS, others)
    elif label_i is None:
        label_i = others[0] if len(others) == 1 else named_column(keys, LABEL_COLUMNS, others)
    if text_i is None or label_i is None:
        raise LabelledTextError(path, "name both --text-column and --label-column", rows[0][0])
    return True, text_i, label_i


def _found_columns(path: Path, rows: list[tuple[int, list[str]]],
                   below: list[tuple[int, list[str]]]) -> tuple[bool, int, int]:
    """(has a header, text column, label column) of a table (`below`: the rows under its first row, its
    copies left out, `table_body`): by header names, else by values. A first
    row with a recognised name in any column is a header (unless that cell recurs in its column below:
    then it is a value, e.g. a class named "topic"; the whole row recurring is the header repeated, e.g.
    files pasted together); the columns it leaves unnamed are found by value."""
    first = rows[0][1]
    keys = [field_key(cell) for cell in first]
    # a cell recurring below is a value (a class called "topic"), unless the whole row recurs: the header again
    names = [i for i in range(len(first)) if not any(i < len(cells) and cells[i] == first[i] for _, cells in below)]
    text_i = named_column(keys, TEXT_COLUMNS, names)
    label_i = named_column(keys, LABEL_COLUMNS, [i for i in names if i != text_i])
    if text_i is not None and label_i is not None:
        return True, text_i, names_for_ids(keys, label_i, [cells[label_i] for _, cells in below
                                                            if label_i < len(cells)])
    if len(first) == 2 and (text_i, label_i) != (None, None):  # one recognised name: the other column
        return True, (1 - label_i if text_i is None else text_i), (1 - text_i if label_i is None else label_i)
    return _inferred_columns(path, rows, below, text_i, label_i)


def _inferred_columns(path: Path, rows: list[tuple[int, list[str]]], below: list[tuple[int, list[str]]],
                      text_i: int | None = None, label_i: int | None = None) -> tuple[bool, int, int]:
    """Columns told apart by their values: labels repeat, texts are long (`text_i` / `label_i`: a column
    the header names; then the first row is a header). Refused when another column repeats too (a
    source, a language, a split: it could be the labels as well)."""
    first = rows[0][1]
    named = text_i is not None or label_i is not None
    body = [cells for _, cells in below if len(cells) == len(first)]
    problem = (f"no recognised column names in the first row {first}; name the columns `text` and "
               "`label` in a header, or pass --text-column and --label-column")
    if named:
        problem = (f"the header {first} names only the {'text' if label_i is None else 'label'} column; pass "
                   "--text-column and --label-column")
    if len(first) < 2:
        raise LabelledTextError(path, f"{len(first)} column in the first row {first}; a labelled table needs "
                                      "a text column and a label column", rows[0][0])
    if len(body) < 2:
        raise LabelledTextError(path, problem, rows[0][0])
    distinct = [len({cells[i] for cells in body}) for i in range(len(first))]
    repeating = [i for i in range(len(first)) if 2 <= distinct[i] < len(body) and i != text_i]
    given_label = label_i is not None
    if not given_label:
        if not repeating:
            raise LabelledTextError(path, problem, rows[0][0])
        label_i = min(repeating, key=lambda i: (distinct[i], i))
    if text_i is None:
        mean_length = [sum(len(cells[i]) for cells in body) / len(body) for i in range(len(first))]
        text_i = max((i for i in range(len(first)) if i != label_i), key=lambda i: (mean_length[i], -i))
    if not given_label and (ambiguous := [i + 1 for i in repeating if i not in (label_i, text_i)]):
        raise LabelledTextError(path, f"{problem} (columns {label_i + 1} and {ambiguous[0]} could both be "
                                      "the labels)", rows[0][0])
    return named or _looks_like_header(rows, below, text_i, label_i), text_i, label_i


# a column name: a word, or up to three ("Sample utterance"), in any script ("intención", "标签"), no punctuation
_NAME = re.compile(r"[^\W\d][\w.\-]*(?: [\w.\-]+){0,2}")


def looks_like_name(cell: str) -> bool:
    """Whether a table cell could be a column name: one to three words in any script, no punctuation
    (a question mark, a comma, a full stop at the end), not starting with a digit."""
    return len(cell) <= 40 and bool(_NAME.fullmatch(cell))


def words(text: str) -> int:
    """The number of `WORD`s in `text` (a Chinese or Japanese character counts as one)."""
    return len(WORD.findall(text))


def _separators(cell: str) -> set[str]:
    """The word separators a name is written with ("card_lost": {"_"})."""
    return set(re.findall(r"[_.\-]", cell))


def names_columns(first: list[str], body: list[list[str]], text_i: int, other_i: int) -> bool | None:
    """Whether a table's first row, with no recognised column name, is a header all the same, by its
    shape (the one rule of the intent and knowledge readers). False (data) unless its cells in columns
    `text_i` (texts, answers) and `other_i` (labels, questions) look like column names (a word to three,
    no punctuation, any script: `looks_like_name`) and recur nowhere in their column of `body` (the rows
    under it, the header repeated left out: `table_body`). Then True when its text cell is as short as a
    name (`short_as_a_name`) and most texts below are at least twice as long in words ("Frage;Antwort"
    over questions and answers); None, unsure (the caller looks for more signs, or reads it as data and
    says so), when most are only longer ("Opening hours,Monday to Friday"); False otherwise."""
    columns = (text_i, other_i)
    if not body or not all(looks_like_name(first[i]) for i in columns):
        return False
    if any(i < len(cells) and cells[i] == first[i] for cells in body for i in columns):
        return False
    n = words(first[text_i])
    lengths = [words(cells[text_i]) for cells in body if text_i < len(cells)]
    if short_as_a_name(first[text_i]) and sum(w >= 2 * n for w in lengths) * 2 > len(body):
        return True
    return None if sum(w > n for w in lengths) * 2 > len(body) else False


def _looks_like_header(rows: list[tuple[int, list[str]]], below: list[tuple[int, list[str]]], text_i: int,
                       label_i: int) -> bool:
    """Whether an unrecognised first row of an intents table is a header: `names_columns` says so, or
    is unsure (the texts below mostly longer) and its label cell is capitalised or spaced where every
    body label is lower case without spaces ("Intent" over "card_lost", "refund"), or is not lower
    case, shares no word with its text cell, over body labels that mostly recur ("Texto del
    cliente,Categoría" over "Saludo", "Tarjeta"). Never when its label cell is written with a
    separator such as "_" that a body label shares ("card_block" among "card_lost"). Anything else is
    a first example (a label of its own is a class, not a header): "Thanks a lot,thanks" is one."""
    first = rows[0][1]
    body = [cells for _, cells in below if len(cells) > max(text_i, label_i)]
    verdict = names_columns(first, body, text_i, label_i)
    # "card_block" among "card_lost", "refund": a label; "absicht" or "Intent": a column name
    if verdict is False or any(_separators(first[label_i]) & _separators(cells[label_i]) for cells in body):
        return False
    if verdict:
        return True
    label, body_labels = first[label_i], {cells[label_i] for cells in body}
    written_unlike = ((label != label.lower() or " " in label)
                      and all(y == y.lower() and " " not in y for y in body_labels))
    # "Texto del cliente,Categoría" over "Saludo", "Tarjeta": not lower case, a class of one among classes of
    # many, and no word of its text ("Thanks a lot,Thanks" names its class in its text: an example)
    counts = Counter(cells[label_i] for cells in body)
    named_apart = (not label[:1].islower() and sum(counts[cells[label_i]] > 1 for cells in body) * 2 > len(body)
                   and not set(label.casefold().split()) & set(WORD.findall(first[text_i].casefold())))
    return written_unlike or named_apart


def short_as_a_name(cell: str) -> bool:
    """A word or two (up to four CJK characters): as short as a column name."""
    return words(cell) <= (4 if re.search(rf"[{CJK_CHARS}]", cell) else 2)


def _labelled_json(path: Path, text: str, suffix: str, text_column: str | None,
                   label_column: str | None, split: str | None = None) -> LabelledTexts:
    """A list of {text, label} records (any of the recognised names) or [text, label] pairs; a .json
    file may also hold the YAML structures (`intents:` mapping or list, Rasa's `nlu:` list), or one list
    per split (`split` picks one, with its "oos_" list)."""
    splits_read, label_names, other_lists = None, None, []
    if suffix == ".jsonl":
        items = json_lines(path, text, LabelledTextError)
    else:
        doc = json_document(path, text, LabelledTextError)
        if isinstance(doc, dict) and ("intents" in doc or "nlu" in doc):
            return _labelled_doc(path, doc)
        if isinstance(doc, dict):  # one list of records under some key, e.g. {"data": [...]}, or one per split
            lists = {key: value for key, value in doc.items() if isinstance(value, list)}
            records = [key for key, value in lists.items() if value and all(isinstance(v, (dict, list)) for v in value)]
            if set(lists) & SPLIT_NAMES:   # one list per split (or one split alone: read only when asked for)
                splits_read = _split_lists(path, lists, split)
                doc = [item for key in splits_read for item in lists[key]]
            elif len(lists) == 1:
                doc = next(iter(lists.values()))
            elif len(records) == 1:
                # {"data": [records], "labels": [names]}: the one list of records, and the label names its class
                # ids may stand for
                names = {k: v for k, v in lists.items() if k != records[0] and v and all(isinstance(i, str) for i in v)}
                named_as = [k for k in names if field_key(k) in (*LABEL_COLUMNS, *LABEL_NAME_COLUMNS, "names")]
                doc = lists[records[0]]
                label_names = (names[named_as[0]] if len(named_as) == 1 else
                               next(iter(names.values())) if len(names) == 1 else None)
                other_lists = [] if label_names is not None else list(names)
        if not isinstance(doc, list):
            raise LabelledTextError(path, "expected a list of {text, label} records, or an `intents:` object")
        items = [(None, item) for item in doc]
    texts, labels, fields = [], [], None
    for n, (line, item) in enumerate(items, 1):
        where = "" if line else f"record {n}: "
        if isinstance(item, list) and len(item) == 2:
            value_text, value_label = item
        elif isinstance(item, dict):
            keys = {field_key(k): k for k in item}
            text_key = keys.get(field_key(text_column)) if text_column else next(
                (keys[k] for k in TEXT_COLUMNS if k in keys), None)
            label_key = keys.get(field_key(label_column)) if label_column else next(
                (keys[k] for k in LABEL_COLUMNS if k in keys), None)
            if label_key is not None and not label_column:   # class ids beside their names: the names
                field_keys = list(keys)
                label_key = keys[field_keys[names_for_ids(field_keys, field_keys.index(field_key(label_key)),
                                                          [str(item[label_key])])]]
            if text_key is None or label_key is None:
                raise LabelledTextError(path, f"{where}no text and label fields among {sorted(map(str, item))}",
                                        line)
            value_text, value_label = item[text_key], item[label_key]
            fields = fields or (str(text_key), str(label_key))
        else:
            raise LabelledTextError(path, f"{where}expected a {{text, label}} object or a [text, label] pair",
                                    line)
        label = _json_label(path, value_label, where, line)
        for value in _json_texts(path, value_text, where, line):   # a list of texts: a row each
            texts.append(value)
            labels.append(label)
    if not texts:
        raise LabelledTextError(path, "no records")
    named = label_names is not None and all(y.isdigit() and int(y) < len(label_names) for y in labels)
    if named:
        labels = [label_names[int(y)].strip() for y in labels]
    data = LabelledTexts(texts, labels, *(fields or (None, None)), None, None, "")
    if named:
        data.warnings.append(f"{path}: class ids read as the names of the file's list of {len(label_names)} labels")
    elif len(other_lists) > 1 and all(y.isdigit() for y in labels):
        data.warnings.append(f"{path}: class ids kept as they are: which of the lists "
                             f"{', '.join(map(str, other_lists))} names the labels is not said (call it `labels`)")
    if splits_read is not None:
        data.warnings.append(f"{path}: read the lists {', '.join(splits_read)} of this file (split {split!r})")
    return data


def _json_scalar(value) -> str | None:
    """A JSON text or label value as text: strings stripped, whole numbers as written ("0", "3"); None
    for anything else (booleans, null, fractions, objects)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))   # a class id written as 3.0 by a spreadsheet or pandas export
    return None


def _json_problem(value) -> str:
    return ("null" if value is None else "a boolean (true/false)" if isinstance(value, bool)
            else f"a fraction ({value})" if isinstance(value, float) else f"a JSON {type(value).__name__}")


def _json_label(path: Path, value, where: str, line: int | None) -> str:
    """A record's label: text or a whole-number class id; a list holding one label is that label, a
    longer list is refused (multi-label rows are not supported)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise LabelledTextError(path, f"{where}{len(value)} labels {value[:5]}: multi-label rows are not "
                                          "supported; give each text exactly one label", line)
        value = value[0]
    label = _json_scalar(value)
    if label is None:
        raise LabelledTextError(path, f"{where}the label is {_json_problem(value)}; a label must be text or a "
                                      "whole-number class id", line)
    if not label:
        raise LabelledTextError(path, f"{where}empty label", line)
    return label


def _json_texts(path: Path, value, where: str, line: int | None) -> list[str]:
    """A record's texts: one text, or a list of texts (`{"intent": x, "utterances": [...]}`)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise LabelledTextError(path, f"{where}an empty list of texts", line)
    texts = []
    for value in values:
        text = _json_scalar(value)
        if text is None:
            raise LabelledTextError(path, f"{where}a text is {_json_problem(value)}, not text", line)
        if not text:
            raise LabelledTextError(path, f"{where}empty text", line)
        texts.append(text)
    return texts


SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "dev", "test", "testing", "eval"})


def _split_lists(path: Path, lists: dict[str, list], split: str | None) -> list[str]:
    """The keys of the lists to read from a file holding one list per split: `split` and "oos_" + split
    (CLINC150's out-of-scope rows), or an error naming the choices."""
    if split is None:
        raise LabelledTextError(path, f"the file holds several lists ({', '.join(lists)}); say which split to read "
                                      f"(--split)")
    if split not in lists:
        raise LabelledTextError(path, f"no list {split!r}; the file holds {', '.join(lists)}")
    return [key for key in (split, f"oos_{split}") if key in lists]


def _labelled_yaml(path: Path, text: str) -> LabelledTexts:
    return _labelled_doc(path, yaml_document(path, text, LabelledTextError))


def yaml_document(path: Path, text: str, error: type[ValueError]) -> object:
    """The value of a YAML document `text`, every scalar the text written (`yes`, `off`, `1234`, `1.0`
    and dates stay strings; `~`/`null`/empty stay None), a key repeated in one mapping an error naming
    it and its line; invalid YAML raises `error(path, problem, line)`."""
    import yaml  # here: core and the other readers do not need it

    try:
        return yaml.load(text, Loader=_text_loader())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise error(path, f"invalid YAML ({getattr(err, 'problem', None) or err})",
                    None if mark is None else mark.line + 1) from None


@functools.cache
def _text_loader():
    """A yaml.SafeLoader without YAML 1.1's bool, int, float and timestamp resolvers (an intent named
    `no` stays "no", an example `1234` stays "1234") that refuses a key repeated in one mapping (PyYAML
    keeps the last silently, losing the first block)."""
    import yaml

    dropped = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
               "tag:yaml.org,2002:timestamp"}

    class TextLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key_node.value!r} appears twice in one mapping (lines "
                                    f"{seen[key_node.value]} and {line}); merge its two blocks into one",
                        key_node.start_mark)
                seen[key_node.value] = line
            return super().construct_mapping(node, deep)

    TextLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in dropped]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    return TextLoader


def _labelled_doc(path: Path, doc) -> LabelledTexts:
    """Texts and labels of a parsed `intents:` or Rasa `nlu:` document (YAML or JSON)."""
    if isinstance(doc, dict) and "intents" not in doc and "nlu" in doc:
        return _rasa_nlu(path, doc["nlu"])
    if not isinstance(doc, dict) or "intents" not in doc:
        raise LabelledTextError(path, "expected a top-level `intents:` mapping or list (or Rasa's `nlu:` list)")
    intents, warnings = doc["intents"], []
    if isinstance(intents, list):
        if not all(isinstance(item, dict) and {"name", "examples"} <= item.keys() for item in intents):
            raise LabelledTextError(path, "every item of the `intents:` list needs `name` and `examples`")
        intents, items = _merged_items(path, intents)
        if repeated := {name: n for name, n in items.items() if len(n) > 1}:
            warnings.append(f"{path}: " + "; ".join(f"intent {name!r} is listed {len(n)} times (items "
                                                   f"{', '.join(map(str, n))})" for name, n in repeated.items())
                            + ": their examples were merged")
    if not isinstance(intents, dict) or not intents:
        raise LabelledTextError(path, "`intents:` is empty or neither a mapping nor a list")
    texts, labels = [], []
    for name, examples in intents.items():
        label = _json_scalar(name)   # a JSON number is its text too
        examples = [_json_scalar(e) for e in examples] if isinstance(examples, list) else None
        if not examples or not all(examples) or not label:
            raise LabelledTextError(path, f"intent {name!r} needs a non-empty list of non-empty example strings")
        texts += examples
        labels += [label] * len(examples)
    return LabelledTexts(texts, labels, None, None, None, None, "", warnings)


def _merged_items(path: Path, items: list[dict]) -> tuple[dict, dict]:
    """({name: examples}, {name: [1-based item numbers]}) of an `intents:` list, the examples of items
    that repeat a name joined in order (Rasa too appends them) instead of the last one winning."""
    merged: dict[str, object] = {}
    where: dict[str, list[int]] = {}
    for n, item in enumerate(items, 1):
        name, examples = _json_scalar(item["name"]), item["examples"]
        if not name:
            raise LabelledTextError(path, f"item {n} of the `intents:` list: the name {item['name']!r} is not text")
        if name in merged:   # lists joined; anything else is refused below, naming the intent
            both = isinstance(merged[name], list) and isinstance(examples, list)
            merged[name] = merged[name] + examples if both else None
        else:
            merged[name] = examples
        where.setdefault(name, []).append(n)
    return merged, where


_RASA_ENTITY = re.compile(r"\[([^\]]+)\](?:\([^)]*\)|\{[^}]*\})")   # "[five am](time)" -> "five am"


def _rasa_nlu(path: Path, items) -> LabelledTexts:
    """Rasa's NLU training data: items `{intent: name, examples: "- text\n- text"}` (entity annotations
    reduced to their text); its other items (synonym, regex, lookup tables) hold no labelled texts."""
    if not isinstance(items, list):
        raise LabelledTextError(path, "`nlu:` must be a list of items")
    texts, labels = [], []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict) or "intent" not in item:
            continue
        examples = item.get("examples")
        lines = examples.splitlines() if isinstance(examples, str) else examples
        if not isinstance(lines, list):
            raise LabelledTextError(path, f"`nlu:` item {n} (intent {item['intent']!r}) has no `examples` list")
        found = []
        for line in lines:   # "- text" lines of a block, or list items: strings or {text, metadata}
            line = line.get("text") if isinstance(line, dict) else line
            if not isinstance(line, str):
                raise LabelledTextError(path, f"intent {item['intent']!r}: an example is neither text nor "
                                              f"{{text: ...}} ({type(line).__name__})")
            text = _RASA_ENTITY.sub(r"\1", line.strip().removeprefix("- ").strip())
            if text and text != "-":
                found.append(" ".join(text.split()))
        if not found:
            raise LabelledTextError(path, f"intent {item['intent']!r} has no examples")
        texts += found
        labels += [str(item["intent"]).strip()] * len(found)
    if not texts:
        raise LabelledTextError(path, "`nlu:` holds no intent with examples")
    return LabelledTexts(texts, labels, None, None, None, None, "")

