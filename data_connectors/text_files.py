"""User text files a support desk hands over: decoding, delimited tables and labelled texts.

    text, encoding = decode_text(data)               # UTF-8 (BOM or not), UTF-16 with a BOM, or Windows-1252
    data = read_labelled_texts("intents.csv")        # texts, labels and how the file was read

Shared by the knowledge readers (data_connectors.knowledge) and the intent readers: one decoding, one
delimiter sniffing, one set of field-name rules. `decoded_file`, `table_rows` and `json_lines` raise the
caller's error type (a ValueError taking (path, problem, line)), so each reader's messages name its file.
"""
from __future__ import annotations

import csv
import io
import json
import re
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


class TextDecodeError(ValueError):
    """Bytes that are not text in UTF-8 (with or without BOM), UTF-16 with a BOM, or Windows-1252."""

    def __init__(self, problem: str, line: int | None = None):
        super().__init__(problem)
        self.line = line


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, encoding) of a text file's bytes: UTF-8 (a BOM is dropped), UTF-16 with a BOM, else
    Windows-1252 (spreadsheet exports; a superset of Latin-1's printable characters). A file that is
    UTF-8 but for some bytes (damaged, or pasted together) and bytes that decode to control
    characters (binary files) raise TextDecodeError."""
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
            line = data[:err.start].count(b"\n") + 1
            if re.search(r"[^\x00-\x7f\ufffd]", data.decode("utf-8", "replace")):
                raise TextDecodeError(f"byte {err.start} is not UTF-8, though other non-ASCII text in the file "
                                      "is: a damaged or mixed-encoding file; save it as UTF-8", line) from None
            try:
                text, encoding = data.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:
                raise TextDecodeError(f"not text: byte {err.start} is neither UTF-8 nor Windows-1252 "
                                      "(a binary file?); save it as UTF-8", line) from None
    if bad := _BINARY.search(text):
        line = text.count("\n", 0, bad.start()) + 1
        raise TextDecodeError(f"not text: control character {bad.group()!r} (a binary file?)", line)
    return text, encoding


def sniff_delimiter(text: str, suffix: str = "") -> str:
    """The field delimiter of delimited text: tab for .tsv, else whichever of `DELIMITERS` splits the
    first 200 non-blank lines into the same number (at least 2) of fields most often."""
    if suffix.lower() == ".tsv":
        return "\t"
    sample = "\n".join(line for line in text.splitlines()[:400] if line.strip())
    best, best_score = ",", 0.0
    for delimiter in DELIMITERS:
        try:
            counts = [len(row) for row in csv.reader(io.StringIO(sample), delimiter=delimiter)][:200]
        except csv.Error:
            continue
        if not counts:
            continue
        mode = max(set(counts), key=counts.count)
        score = counts.count(mode) / len(counts) if mode >= 2 else 0.0
        if score > best_score:
            best, best_score = delimiter, score
    return best


def read_table(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank row of delimited text; quoted cells may hold
    delimiters and newlines. Malformed text (e.g. a quote left open until a cell outgrows the csv
    module's limit) raises csv.Error with `line`, where the row that broke starts."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
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
    return rows


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


def table_rows(path: Path, text: str, error: type[ValueError]) -> tuple[str, list[tuple[int, list[str]]]]:
    """(delimiter, rows) of a delimited file's `text` (`sniff_delimiter`, `read_table`); malformed and
    blank tables raise `error(path, problem)`."""
    delimiter = sniff_delimiter(text, path.suffix)
    try:
        rows = read_table(text, delimiter)
    except csv.Error as err:
        raise error(path, f"malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({err}; a quote left open?)",
                    err.line) from None
    if not rows:
        raise error(path, "no rows with any text")
    return delimiter, rows


def json_document(path: Path, text: str, error: type[ValueError]) -> object:
    """The value of a JSON document `text`; invalid JSON raises `error(path, problem, line)`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(path, f"invalid JSON ({err.msg})", err.lineno) from None


def json_lines(path: Path, text: str, error: type[ValueError]) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of JSON-lines `text`."""
    items = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append((line_no, json.loads(line)))
            except json.JSONDecodeError as err:
                raise error(path, f"invalid JSON ({err.msg})", line_no) from None
    return items


def field_key(name: str) -> str:
    """A header or field name as matched: lower case, spaces and hyphens read as "_"."""
    return "_".join(str(name).strip().lower().replace("-", " ").split())


def named_column(keys: list[str], names: tuple[str, ...], among=None) -> int | None:
    """The column (of `among`, default all) whose key comes first in `names`, or None."""
    ranked = [(names.index(keys[i]), i) for i in (range(len(keys)) if among is None else among)
              if keys[i] in names]
    return min(ranked)[1] if ranked else None


# ---- labelled texts: intent tables and other text-classification data ----

# Header and field names of the two columns (case-insensitive; spaces and hyphens read as "_"), by preference.
TEXT_COLUMNS = ("text", "utterance", "sentence", "query", "question", "message", "example", "input",
                "phrase", "prompt", "request", "content", "body", "texts", "utterances", "sentences",
                "queries", "questions", "messages", "examples", "user_message", "customer_message",
                "user_utterance", "user_query", "customer_query", "transcript", "instruction")
LABEL_COLUMNS = ("label", "intent", "category", "class", "intent_name", "intent_label", "label_name",
                 "class_name", "target", "tag", "topic", "labels", "intents", "categories", "classes", "y")
LABELLED_SUFFIXES = (".csv", ".tsv", ".txt", ".yaml", ".yml", ".json", ".jsonl")


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

    Headers and records may name their columns with any of TEXT_COLUMNS / LABEL_COLUMNS, or
    `text_column` / `label_column` say which (a header name, or a 1-based column number). A table
    without recognised names: the labels are the column with the fewest distinct values (refused when
    a third column repeats too), the texts the one with the longest values, and a first row is a
    header only when its cells look like column names (`_looks_like_header`; `warnings` then says
    so). UTF-8, UTF-16 with a BOM and Windows-1252 are read (`decode_text`). Errors are
    LabelledTextError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LabelledTextError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix not in LABELLED_SUFFIXES:
        raise LabelledTextError(path, f"expected a .csv or .yaml file (or {' '.join(LABELLED_SUFFIXES[1:])}), "
                                      f"got {suffix or 'no suffix'}")
    text, encoding = decoded_file(path, LabelledTextError)
    if suffix in (".yaml", ".yml"):
        data = _labelled_yaml(path, text)
    elif suffix in (".json", ".jsonl"):
        data = _labelled_json(path, text, suffix, text_column, label_column, split)
    else:
        data = _labelled_table(path, text, text_column, label_column)
    data.encoding = encoding
    return data


def _labelled_table(path: Path, text: str, text_column: str | None, label_column: str | None) -> LabelledTexts:
    delimiter, rows = table_rows(path, text, LabelledTextError)
    first = rows[0][1]
    if text_column or label_column:
        header, text_i, label_i = _given_columns(path, rows, text_column, label_column)
    else:
        header, text_i, label_i = _found_columns(path, rows)
    width = len(first) if header else max(text_i, label_i) + 1
    keys = [field_key(cell) for cell in first]  # a header found by its names needs no warning
    named = bool(text_column and not text_column.isdigit() or label_column and not label_column.isdigit()
                 or keys[text_i] in TEXT_COLUMNS or keys[label_i] in LABEL_COLUMNS)
    names = ([first[text_i], first[label_i]] if header else
             [text_column or f"column {text_i + 1}", label_column or f"column {label_i + 1}"])
    texts, labels = [], []
    for line, cells in rows[1:] if header else rows:
        hint = " (a quoted field runs over several lines: an unclosed quote?)" if any(
            "\n" in cell for cell in cells) else ""
        if header and len(cells) != len(first):
            raise LabelledTextError(path, f"{len(cells)} fields, the header has {len(first)}{hint}", line)
        if len(cells) < width:
            raise LabelledTextError(path, f"{len(cells)} fields, expected at least {width}{hint}", line)
        if not cells[text_i] or not cells[label_i]:
            raise LabelledTextError(path, f"empty `{names[0]}` or `{names[1]}`", line)
        texts.append(cells[text_i])
        labels.append(cells[label_i])
    if not texts:
        raise LabelledTextError(path, "a header but no rows")
    warnings = []
    if not header and sum(label == labels[0] for label in labels) == 1:
        warnings.append(f"{path}: the first row {first} was read as an example of a class of its own; if "
                        "it is a header, pass --text-column and --label-column")
    if header and not named:
        warnings.append(f"{path}: the first row {first} was read as a header (its cells look like column "
                        "names), not as an example; if it is an example, add a `text,label` header row")
    return LabelledTexts(texts, labels, names[0], names[1], header, delimiter, "", warnings)


def _given_columns(path: Path, rows: list[tuple[int, list[str]]], text_column: str | None,
                   label_column: str | None) -> tuple[bool, int, int]:
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
        return named or _looks_like_header(rows, text_i, label_i), text_i, label_i
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


def _found_columns(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[bool, int, int]:
    """(has a header, text column, label column) of a table: by header names, else by values."""
    first = rows[0][1]
    keys = [field_key(cell) for cell in first]
    text_i = named_column(keys, TEXT_COLUMNS)
    label_i = named_column(keys, LABEL_COLUMNS, [i for i in range(len(keys)) if i != text_i])
    if text_i is not None and label_i is not None:
        return True, text_i, label_i
    if len(first) == 2 and (text_i, label_i) != (None, None):  # one recognised name: the other column
        return True, (1 - label_i if text_i is None else text_i), (1 - text_i if label_i is None else label_i)
    return _inferred_columns(path, rows)


def _inferred_columns(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[bool, int, int]:
    """Columns told apart by their values: labels repeat, texts are long. Refused when another column
    repeats too (a source, a language, a split: it could be the labels as well)."""
    first = rows[0][1]
    body = [cells for _, cells in rows[1:] if len(cells) == len(first)]
    problem = (f"no recognised column names in the first row {first}; name the columns `text` and "
               "`label` in a header, or pass --text-column and --label-column")
    if len(first) < 2:
        raise LabelledTextError(path, f"{len(first)} column in the first row {first}; a labelled table needs "
                                      "a text column and a label column", rows[0][0])
    if len(body) < 2:
        raise LabelledTextError(path, problem, rows[0][0])
    distinct = [len({cells[i] for cells in body}) for i in range(len(first))]
    repeating = [i for i in range(len(first)) if 2 <= distinct[i] < len(body)]
    if not repeating:
        raise LabelledTextError(path, problem, rows[0][0])
    label_i = min(repeating, key=lambda i: (distinct[i], i))
    mean_length = [sum(len(cells[i]) for cells in body) / len(body) for i in range(len(first))]
    text_i = max((i for i in range(len(first)) if i != label_i), key=lambda i: (mean_length[i], -i))
    if ambiguous := [i + 1 for i in repeating if i not in (label_i, text_i)]:
        raise LabelledTextError(path, f"{problem} (columns {label_i + 1} and {ambiguous[0]} could both be "
                                      "the labels)", rows[0][0])
    return _looks_like_header(rows, text_i, label_i), text_i, label_i


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,39}")  # a column name: an identifier, no spaces


def _separators(cell: str) -> set[str]:
    """The word separators a name is written with ("card_lost": {"_"})."""
    return set(re.findall(r"[_.\-]", cell))


def _looks_like_header(rows: list[tuple[int, list[str]]], text_i: int, label_i: int) -> bool:
    """Whether an unrecognised first row is a header. Only when its cells look like column names:
    each an identifier (no spaces); its label cell in no other row and written unlike the body's
    labels (sharing no separator such as "_" with any); the body's texts mostly several words.
    Anything else is a first example (a label of its own is a class, not a header)."""
    first = rows[0][1]
    body = [cells for _, cells in rows[1:] if len(cells) > max(text_i, label_i)]
    if not body or not all(_NAME.fullmatch(first[i]) for i in (text_i, label_i)):
        return False
    if any(cells[label_i] == first[label_i] for cells in body):
        return False
    # "card_block" among "card_lost", "refund": a label; "absicht" or "Intent": a column name
    like_labels = any(_separators(first[label_i]) & _separators(cells[label_i]) for cells in body)
    sentences = sum(len(WORD.findall(cells[text_i])) > 1 for cells in body) * 2 > len(body)
    return sentences and not like_labels


def _labelled_json(path: Path, text: str, suffix: str, text_column: str | None,
                   label_column: str | None, split: str | None = None) -> LabelledTexts:
    """A list of {text, label} records (any of the recognised names) or [text, label] pairs; a .json
    file may also hold the YAML structures (`intents:` mapping or list, Rasa's `nlu:` list), or one list
    per split (`split` picks one, with its "oos_" list)."""
    splits_read = None
    if suffix == ".jsonl":
        items = json_lines(path, text, LabelledTextError)
    else:
        doc = json_document(path, text, LabelledTextError)
        if isinstance(doc, dict) and ("intents" in doc or "nlu" in doc):
            return _labelled_doc(path, doc)
        if isinstance(doc, dict):  # one list of records under some key, e.g. {"data": [...]}, or one per split
            lists = {key: value for key, value in doc.items() if isinstance(value, list)}
            if set(lists) & SPLIT_NAMES:   # one list per split (or one split alone: read only when asked for)
                splits_read = _split_lists(path, lists, split)
                doc = [item for key in splits_read for item in lists[key]]
            elif len(lists) == 1:
                doc = next(iter(lists.values()))
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
            if text_key is None or label_key is None:
                raise LabelledTextError(path, f"{where}no text and label fields among {sorted(map(str, item))}",
                                        line)
            value_text, value_label = item[text_key], item[label_key]
            fields = fields or (str(text_key), str(label_key))
        else:
            raise LabelledTextError(path, f"{where}expected a {{text, label}} object or a [text, label] pair",
                                    line)
        value_text, value_label = str(value_text or "").strip(), str(value_label or "").strip()
        if not value_text or not value_label:
            raise LabelledTextError(path, f"{where}empty text or label", line)
        texts.append(value_text)
        labels.append(value_label)
    if not texts:
        raise LabelledTextError(path, "no records")
    data = LabelledTexts(texts, labels, *(fields or (None, None)), None, None, "")
    if splits_read is not None:
        data.warnings.append(f"read the lists {', '.join(splits_read)} of this file (split {split!r})")
    return data


SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "dev", "test", "testing", "eval"})


def _split_lists(path: Path, lists: dict[str, list], split: str | None) -> list[str]:
    """The keys of the lists to read from a file holding one list per split: `split` and "oos_" + split
    (CLINC150's out-of-scope rows), or an error naming the choices."""
    if split is None:
        raise LabelledTextError(path, f"the file holds several lists ({', '.join(lists)}); say which split to read "
                                      f"(--split)")
    keys = [key for key in (split, f"oos_{split}") if key in lists]
    if split not in lists:
        raise LabelledTextError(path, f"no list {split!r}; the file holds {', '.join(lists)}")
    return keys


def _labelled_yaml(path: Path, text: str) -> LabelledTexts:
    import yaml  # here: core and the other readers do not need it

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise LabelledTextError(path, f"invalid YAML ({getattr(err, 'problem', err)})",
                                None if mark is None else mark.line + 1) from None
    return _labelled_doc(path, doc)


def _labelled_doc(path: Path, doc) -> LabelledTexts:
    """Texts and labels of a parsed `intents:` or Rasa `nlu:` document (YAML or JSON)."""
    if isinstance(doc, dict) and "intents" not in doc and "nlu" in doc:
        return _rasa_nlu(path, doc["nlu"])
    if not isinstance(doc, dict) or "intents" not in doc:
        raise LabelledTextError(path, "expected a top-level `intents:` mapping or list (or Rasa's `nlu:` list)")
    intents = doc["intents"]
    if isinstance(intents, list):
        if not all(isinstance(item, dict) and {"name", "examples"} <= item.keys() for item in intents):
            raise LabelledTextError(path, "every item of the `intents:` list needs `name` and `examples`")
        intents = {item["name"]: item["examples"] for item in intents}
    if not isinstance(intents, dict) or not intents:
        raise LabelledTextError(path, "`intents:` is empty or neither a mapping nor a list")
    texts, labels = [], []
    for name, examples in intents.items():
        if not isinstance(examples, list) or not examples or not all(
                isinstance(e, str) and e.strip() for e in examples):
            raise LabelledTextError(path, f"intent {name!r} needs a non-empty list of non-empty example strings")
        texts += [e.strip() for e in examples]
        labels += [str(name).strip()] * len(examples)
    return LabelledTexts(texts, labels, None, None, None, None, "")


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

