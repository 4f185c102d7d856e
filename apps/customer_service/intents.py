"""Intent recognition for the customer-service assistant, with out-of-scope ("oos") detection.

    model = load_default_intent_model()                  # the fictional bank's intents (shipped in assets/)
    [p] = model.predict(["I lost my card"])
    p.label, p.confidence, p.top, p.experts, p.is_oos    # "card_lost", 0.93, [("card_lost", 0.93), ...], ...

Training data is a table (CSV, TSV, semicolon- or pipe-separated; a header such as `text,label`,
`utterance,intent`, `query,category` or `sentence,class` in any column order, or no header; UTF-8,
UTF-16 or Windows-1252; see `read_intent_file`), JSON or JSON-lines records, or a YAML file:

    intents:                       # mapping form
      check_balance: ["what's my balance?", "how much money do I have"]
      oos: ["what's the weather like"]
    intents:                       # or list form
      - name: check_balance
        examples: ["what's my balance?", ...]

Out of scope: rows labelled `oos` (or `OOS`, `out_of_scope`, ...) train an extra class. Without them,
a threshold on the max softmax probability is calibrated on a held-out stratified slice of the
training rows, per dataset: the highest value that keeps `in_scope_recall` (default 95%) of in-scope
queries with probability `recall_confidence` (default 90%; `oos_threshold`); queries scoring below
it are `oos`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from core.text.classifier import (
    ClassifierConfig, SentenceClassifier, TrainConfig, TrainResult, default_stream,
    load_classifier, new_classifier, predict, save_classifier, split_holdout, train_classifier,
)
from core.text.config import TextStreamConfig
from data_connectors.knowledge import TextDecodeError, decode_text, read_table, sniff_delimiter
from apps.settings import cache_dir

from . import INTENT_SUFFIXES

OOS = "oos"  # the out-of-scope label, in training files and in predictions
DEFAULT_INTENTS = Path(__file__).resolve().parents[2] / "assets" / "customer_service" / "intents.yaml"
DEFAULT_MODEL = DEFAULT_INTENTS.with_name("intent_model")  # a delta checkpoint over upcycled MiniLM


# ---- data ----

# Header names recognised (case-insensitive; spaces and hyphens read as "_"), in order of preference.
TEXT_COLUMNS = ("text", "utterance", "sentence", "query", "question", "message", "example", "input",
                "phrase", "prompt", "request", "content", "body", "texts", "utterances", "sentences",
                "queries", "questions", "messages", "examples", "user_message", "customer_message",
                "user_utterance", "user_query", "customer_query", "transcript", "instruction")
LABEL_COLUMNS = ("label", "intent", "category", "class", "intent_name", "intent_label", "label_name",
                 "class_name", "target", "tag", "topic", "labels", "intents", "categories", "classes", "y")
OOS_ALIASES = frozenset({"oos", "out_of_scope", "out-of-scope", "out of scope", "outofscope"})
SUFFIXES = INTENT_SUFFIXES


class IntentDataError(ValueError):
    """An intents file that cannot be read; the message starts with "path[, line N]: "."""

    def __init__(self, path: Path, problem: str, line: int | None = None):
        super().__init__(f"{path}{'' if line is None else f', line {line}'}: {problem}")
        self.path, self.line = path, line


@dataclass
class IntentData:
    texts: list[str]
    labels: list[str]            # "oos" for every spelling in OOS_ALIASES
    text_column: str | None      # how the text column was found: its header name, or "column 2"
    label_column: str | None
    header: bool | None          # whether the first row was a header (None: YAML/JSON)
    delimiter: str | None
    encoding: str


def load_intent_data(path: str | Path, text_column: str | None = None,
                     label_column: str | None = None) -> tuple[list[str], list[str]]:
    """(texts, labels) of an intents file; see `read_intent_file`."""
    data = read_intent_file(path, text_column, label_column)
    return data.texts, data.labels


def read_intent_file(path: str | Path, text_column: str | None = None,
                     label_column: str | None = None) -> IntentData:
    """An intents file: delimited text (.csv .tsv .txt; comma, tab, semicolon or pipe, sniffed), YAML
    (.yaml .yml, formats in the module docstring), JSON (.json: the YAML structure or a list of
    records) or JSON lines (.jsonl: one record a line). Records and headers may name their columns
    with any of TEXT_COLUMNS / LABEL_COLUMNS, or `text_column` / `label_column` say which (a header
    name, or a 1-based column number for a file without a header). A delimited file without
    recognised names: the label column is the one with the fewest distinct values, the text the one
    with the longest values, and a first row whose label appears nowhere else is a header.
    UTF-8, UTF-16 with a BOM and Windows-1252 are read; labels in OOS_ALIASES become "oos"."""
    path = Path(path)
    if not path.is_file():
        raise IntentDataError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise IntentDataError(path, f"expected a .csv or .yaml intents file (or {' '.join(SUFFIXES[1:])}), "
                                    f"got {suffix or 'no suffix'}")
    try:
        text, encoding = decode_text(path.read_bytes())
    except TextDecodeError as err:
        raise IntentDataError(path, str(err), err.line) from None
    except OSError as err:
        raise IntentDataError(path, f"cannot read ({err.strerror})") from None
    if not text.strip():
        raise IntentDataError(path, "empty file; expected a header line `text,label` and rows")
    if suffix in (".yaml", ".yml"):
        data = _read_intents_yaml(path, text)
    elif suffix in (".json", ".jsonl"):
        data = _read_intents_json(path, text, suffix, text_column, label_column)
    else:
        data = _read_intents_table(path, text, text_column, label_column)
    data.encoding = encoding
    data.labels = [OOS if label.lower() in OOS_ALIASES else label for label in data.labels]
    return data


def _column_key(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").split())


def _read_intents_table(path: Path, text: str, text_column: str | None,
                        label_column: str | None) -> IntentData:
    delimiter = sniff_delimiter(text, path.suffix)
    try:
        rows = read_table(text, delimiter)
    except csv.Error as err:
        raise IntentDataError(path, f"malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({err})") from None
    if not rows:
        raise IntentDataError(path, "no rows with any text")
    first = rows[0][1]
    header, text_i, label_i = _find_columns(path, rows, text_column, label_column)
    width = len(first) if header else max(text_i, label_i) + 1
    names = ([first[text_i], first[label_i]] if header else
             [text_column or f"column {text_i + 1}", label_column or f"column {label_i + 1}"])
    texts, labels = [], []
    for line, cells in rows[1:] if header else rows:
        hint = " (a quoted field runs over several lines: an unclosed quote?)" if any(
            "\n" in cell for cell in cells) else ""
        if header and len(cells) != len(first):
            raise IntentDataError(path, f"{len(cells)} fields, the header has {len(first)}{hint}", line)
        if len(cells) < width:
            raise IntentDataError(path, f"{len(cells)} fields, expected at least {width}{hint}", line)
        if not cells[text_i] or not cells[label_i]:
            raise IntentDataError(path, f"empty `{names[0]}` or `{names[1]}`", line)
        texts.append(cells[text_i])
        labels.append(cells[label_i])
    if not texts:
        raise IntentDataError(path, "a header but no rows")
    return IntentData(texts, labels, names[0], names[1], header, delimiter, "")


def _find_columns(path: Path, rows: list[tuple[int, list[str]]], text_column: str | None,
                  label_column: str | None) -> tuple[bool, int, int]:
    """(has a header, text column index, label column index) of a table's rows."""
    first = rows[0][1]
    keys = [_column_key(cell) for cell in first]
    if text_column or label_column:  # given: header names, or 1-based numbers for a headerless file
        given = [c for c in (text_column, label_column) if c]
        if all(c.isdigit() for c in given):
            indices = [int(c) - 1 for c in given]
            if len(given) < 2 or any(not 0 <= i < len(first) for i in indices):
                raise IntentDataError(path, f"column numbers need both columns, each 1 to {len(first)}")
            text_i, label_i = indices
            named = keys[text_i] in TEXT_COLUMNS or keys[label_i] in LABEL_COLUMNS
            return named or _label_is_new(rows, label_i), text_i, label_i
        missing = [c for c in given if _column_key(c) not in keys]
        if missing:
            raise IntentDataError(path, f"no column {', '.join(map(repr, missing))} in the header "
                                        f"{first}", rows[0][0])
        chosen = [keys.index(_column_key(c)) if c else None for c in (text_column, label_column)]
        others = [i for i in range(len(first)) if i not in chosen]
        if None in chosen and len(others) == 1:
            chosen[chosen.index(None)] = others[0]
        elif None in chosen:
            found = _known_column(keys, TEXT_COLUMNS if chosen[0] is None else LABEL_COLUMNS, others)
            if found is None:
                raise IntentDataError(path, "name both --text-column and --label-column", rows[0][0])
            chosen[chosen.index(None)] = found
        return True, chosen[0], chosen[1]
    text_i = _known_column(keys, TEXT_COLUMNS, range(len(keys)))
    label_i = _known_column(keys, LABEL_COLUMNS, [i for i in range(len(keys)) if i != text_i])
    if text_i is not None and label_i is not None:
        return True, text_i, label_i
    if len(first) == 2 and (text_i, label_i) != (None, None):  # one recognised name: the other column
        return True, (1 - label_i if text_i is None else text_i), (1 - text_i if label_i is None else label_i)
    return _infer_columns(path, rows)


def _known_column(keys: list[str], names: tuple[str, ...], among) -> int | None:
    ranked = [(names.index(keys[i]), i) for i in among if keys[i] in names]
    return min(ranked)[1] if ranked else None


def _infer_columns(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[bool, int, int]:
    """Columns told apart by their values: labels repeat, texts are long."""
    first = rows[0][1]
    body = [cells for _, cells in rows[1:] if len(cells) == len(first)]
    problem = (f"no recognised column names in the first row {first}; name the columns `text` and "
               "`label` in a header, or pass --text-column and --label-column")
    if len(first) < 2:
        raise IntentDataError(path, f"{len(first)} column in the first row {first}; an intents table needs "
                                    "a text column and a label column", rows[0][0])
    if len(body) < 2:
        raise IntentDataError(path, problem, rows[0][0])
    distinct = [len({cells[i] for cells in body}) for i in range(len(first))]
    repeating = [i for i in range(len(first)) if 2 <= distinct[i] < len(body)]
    if not repeating:
        raise IntentDataError(path, problem, rows[0][0])
    label_i = min(repeating, key=lambda i: (distinct[i], i))
    mean_length = [sum(len(cells[i]) for cells in body) / len(body) for i in range(len(first))]
    text_i = max((i for i in range(len(first)) if i != label_i), key=lambda i: (mean_length[i], -i))
    return _label_is_new(rows, label_i), text_i, label_i


def _label_is_new(rows: list[tuple[int, list[str]]], label_i: int) -> bool:
    """Whether the first row's label cell appears in no other row: then the first row is a header."""
    first = rows[0][1][label_i]
    return all(cells[label_i] != first for _, cells in rows[1:] if len(cells) > label_i)


def _read_intents_json(path: Path, text: str, suffix: str, text_column: str | None,
                       label_column: str | None) -> IntentData:
    """A list of {text, label} records (any of the recognised names) or [text, label] pairs; a .json
    file may also hold the YAML structure (`intents:` mapping or list)."""
    if suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise IntentDataError(path, f"invalid JSON ({err.msg})", err.lineno) from None
        if isinstance(doc, dict) and "intents" in doc:
            return _intents_from_doc(path, doc)
        if isinstance(doc, dict):  # one list of records under some key, e.g. {"data": [...]}
            lists = [value for value in doc.values() if isinstance(value, list)]
            doc = lists[0] if len(lists) == 1 else doc
        if not isinstance(doc, list):
            raise IntentDataError(path, "expected a list of {text, label} records, or an `intents:` object")
        items = [(None, item) for item in doc]
    else:
        items = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((line_no, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise IntentDataError(path, f"invalid JSON ({err.msg})", line_no) from None
    texts, labels = [], []
    for n, (line, item) in enumerate(items, 1):
        def error(problem: str) -> IntentDataError:
            return IntentDataError(path, problem if line else f"record {n}: {problem}", line)

        if isinstance(item, list) and len(item) == 2:
            value_text, value_label = item
        elif isinstance(item, dict):
            keys = {_column_key(str(k)): k for k in item}
            text_key = keys.get(_column_key(text_column)) if text_column else next(
                (keys[k] for k in TEXT_COLUMNS if k in keys), None)
            label_key = keys.get(_column_key(label_column)) if label_column else next(
                (keys[k] for k in LABEL_COLUMNS if k in keys), None)
            if text_key is None or label_key is None:
                raise error(f"no text and label fields among {sorted(map(str, item))}")
            value_text, value_label = item[text_key], item[label_key]
        else:
            raise error("expected a {text, label} object or a [text, label] pair")
        value_text, value_label = str(value_text or "").strip(), str(value_label or "").strip()
        if not value_text or not value_label:
            raise error("empty text or label")
        texts.append(value_text)
        labels.append(value_label)
    if not texts:
        raise IntentDataError(path, "no records")
    return IntentData(texts, labels, text_column or "text", label_column or "label", None, None, "")


def _read_intents_yaml(path: Path, text: str) -> IntentData:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise IntentDataError(path, f"invalid YAML ({getattr(err, 'problem', err)})",
                              None if mark is None else mark.line + 1) from None
    return _intents_from_doc(path, doc)


def _intents_from_doc(path: Path, doc) -> IntentData:
    if not isinstance(doc, dict) or "intents" not in doc:
        raise IntentDataError(path, "expected a top-level `intents:` mapping or list")
    intents = doc["intents"]
    if isinstance(intents, list):
        if not all(isinstance(item, dict) and {"name", "examples"} <= item.keys() for item in intents):
            raise IntentDataError(path, "every item of the `intents:` list needs `name` and `examples`")
        intents = {item["name"]: item["examples"] for item in intents}
    if not isinstance(intents, dict) or not intents:
        raise IntentDataError(path, "`intents:` is empty or neither a mapping nor a list")
    texts, labels = [], []
    for name, examples in intents.items():
        if not isinstance(examples, list) or not examples or not all(
                isinstance(e, str) and e.strip() for e in examples):
            raise IntentDataError(path, f"intent {name!r} needs a non-empty list of non-empty example strings")
        texts += [e.strip() for e in examples]
        labels += [str(name).strip()] * len(examples)
    return IntentData(texts, labels, None, None, None, None, "")


# ---- model ----

@dataclass
class IntentTrainConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    stream: TextStreamConfig = field(default_factory=default_stream)
    upcycle: bool = True             # start the stream from MiniLM (False: from scratch, e.g. tiny test models)
    val_fraction: float = 0.1        # held-out stratified slice of the training rows (model selection, threshold)
    in_scope_recall: float = 0.95    # without oos rows: the threshold keeps this share of in-scope queries...
    recall_confidence: float = 0.9   # ...with this probability, judged from the held-out rows (see oos_threshold)


@dataclass
class IntentPrediction:
    label: str                       # the intent, or "oos"
    confidence: float                # max softmax probability
    top: list[tuple[str, float]]     # the most probable labels with their probabilities, best first
    experts: dict[int, dict[int, float]]  # encoder layer -> {expert fired: its mean gate weight}
    is_oos: bool


class IntentModel:
    """A SentenceClassifier over intents plus the out-of-scope rule (an oos class or a threshold)."""

    def __init__(self, classifier: SentenceClassifier, oos_threshold: float | None):
        self.classifier = classifier
        self.oos_threshold = oos_threshold  # confidences below it are oos; None when oos is a trained class

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.cfg.labels

    @classmethod
    def train(cls, texts: list[str], labels: list[str], cfg: IntentTrainConfig) -> tuple[IntentModel, TrainResult]:
        """Train on (texts, labels), selecting the best epoch and calibrating oos on a held-out slice.
        Repeated (text, label) rows count once, so no copy of a held-out row is trained on."""
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        texts, labels = map(list, zip(*dict.fromkeys(zip(texts, labels)))) if texts else ([], [])
        if len(set(labels) - {OOS}) < 2:
            raise ValueError(f"an intent model needs at least 2 in-scope intents, got {sorted(set(labels))}")
        (train_x, train_y), (val_x, val_y) = split_holdout(texts, labels, cfg.val_fraction, cfg.train.seed)
        classifier = new_classifier(ClassifierConfig(labels=tuple(sorted(set(labels))), stream=cfg.stream),
                                    upcycle=cfg.upcycle, seed=cfg.train.seed)
        result = train_classifier(classifier, train_x, train_y, cfg.train, val=(val_x, val_y) if val_x else None)
        threshold = None
        if OOS not in labels:
            in_scope_val = val_x or train_x  # a file too small to hold rows out calibrates on its training rows
            confidence_N = predict(classifier, in_scope_val).probs.max(-1).values
            threshold = oos_threshold(confidence_N, cfg.in_scope_recall, cfg.recall_confidence)
        return cls(classifier, threshold), result

    def save(self, path: str | Path, metadata: dict | None = None, delta: bool = False) -> Path:
        """A checkpoint folder; `delta` stores only the changes from upcycled MiniLM (see core.checkpoint)."""
        return save_classifier(self.classifier, path, {**(metadata or {}), "oos_threshold": self.oos_threshold},
                               delta=delta)

    @classmethod
    def load(cls, path: str | Path) -> IntentModel:
        classifier, metadata = load_classifier(path)
        return cls(classifier, metadata.get("oos_threshold"))

    def predict(self, texts: list[str], top: int = 3) -> list[IntentPrediction]:
        out = predict(self.classifier, texts)
        best_BK = out.probs.topk(min(top, len(self.labels)), dim=-1)
        layer_ids = self.classifier.cfg.stream.moe_layer_ids
        predictions = []
        for b, (p_K, i_K) in enumerate(zip(best_BK.values.tolist(), best_BK.indices.tolist())):
            label, confidence = self.labels[i_K[0]], p_K[0]
            is_oos = label == OOS or (self.oos_threshold is not None and confidence < self.oos_threshold)
            experts = {layer: {e: round(w, 4) for e, w in enumerate(w_E) if w > 0}
                       for layer, w_E in zip(layer_ids, out.expert_weight[b].tolist())}
            predictions.append(IntentPrediction(
                label=OOS if is_oos else label, confidence=confidence,
                top=[(self.labels[i], p) for p, i in zip(p_K, i_K)], experts=experts, is_oos=is_oos))
        return predictions

    def evaluate(self, texts: list[str], labels: list[str]) -> dict:
        """accuracy (all rows, oos included), in_scope_accuracy (in-scope rows, a wrong oos counts as an
        error), closed_set_accuracy (in-scope rows, best in-scope intent, no rejection), oos_recall,
        macro_f1 (over the gold labels), rows, oos_rows; oos metrics are None without oos rows."""
        predictions = self.predict(texts, top=len(self.labels))
        pred = [p.label for p in predictions]
        closed = [next(label for label, _ in p.top if label != OOS) for p in predictions]
        in_scope = [i for i, y in enumerate(labels) if y != OOS]
        oos = [i for i, y in enumerate(labels) if y == OOS]

        def hit_rate(rows: list[int], guess: list[str]) -> float | None:
            return sum(guess[i] == labels[i] for i in rows) / len(rows) if rows else None

        return {
            "accuracy": hit_rate(list(range(len(labels))), pred),
            "in_scope_accuracy": hit_rate(in_scope, pred),
            "closed_set_accuracy": hit_rate(in_scope, closed),
            "oos_recall": hit_rate(oos, pred),
            "macro_f1": macro_f1(labels, pred),
            "rows": len(labels),
            "oos_rows": len(oos),
        }


def oos_threshold(confidence_N: torch.Tensor, keep: float, confidence: float = 0.9) -> float:
    """The highest threshold among the held-out in-scope `confidence_N` that keeps at least a `keep`
    share of all in-scope queries with probability `confidence` (a one-sided binomial bound).

    The k-th lowest of n held-out confidences rejects a share of future in-scope queries distributed
    as Beta(k, n + 1 - k), so it keeps `keep` with probability P(Binomial(n, 1 - keep) >= k). The plain
    (1 - keep) quantile holds only about half the time and, on a small held-out slice (say 40 rows),
    was measured rejecting 17% of held-out Banking77 queries instead of 5%. With too few rows for
    the bound (n < log(1 - confidence) / log(keep)), the lowest confidence."""
    if not 0 < keep <= 1 or not 0 < confidence < 1:
        raise ValueError(f"keep must lie in (0, 1] and confidence in (0, 1), got {keep}, {confidence}")
    sorted_N = confidence_N.float().sort().values
    n, p = len(sorted_N), 1 - keep
    if p == 0:
        return float(sorted_N[0]) if n else 0.0
    # P(Binomial(n, p) >= k) for k = 1..n, from the log pmf
    k_K = torch.arange(n + 1, dtype=torch.float64)
    log_pmf = (torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64)) - torch.lgamma(k_K + 1)
               - torch.lgamma(n - k_K + 1) + k_K * math.log(p) + (n - k_K) * math.log1p(-p))
    at_least_K = log_pmf.exp().flip(0).cumsum(0).flip(0)  # [n + 1]: P(X >= k)
    k = int((at_least_K[1:] >= confidence).sum())  # P(X >= k) falls with k: the largest k that holds
    return float(sorted_N[max(k, 1) - 1])


def macro_f1(gold: list[str], pred: list[str]) -> float:
    """Unweighted mean over the gold labels of F1 = 2 tp / (2 tp + fp + fn)."""
    scores = []
    for label in set(gold):
        tp = sum(g == p == label for g, p in zip(gold, pred))
        wrong = sum((g == label) != (p == label) for g, p in zip(gold, pred))  # fp + fn
        scores.append(2 * tp / (2 * tp + wrong))
    return sum(scores) / len(scores)


# ---- the default assistant ----

DEFAULT_TRAIN = IntentTrainConfig(train=TrainConfig(epochs=6, batch_size=16, train_top_layers=2))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_default_intent_model() -> IntentModel:
    """The bank's intent model for assets/customer_service/intents.yaml: the one shipped in
    assets/customer_service/intent_model (rebuilt by the command in its MODEL_CARD.md) while it was
    trained on the intents file as it is now; after an edit of that file, a model trained on first use
    (a few minutes on a CPU) and cached under a hash of the file and the training config."""
    data_sha256 = file_sha256(DEFAULT_INTENTS)
    shipped = DEFAULT_MODEL / "config.json"
    if shipped.is_file() and json.loads(shipped.read_text())["metadata"].get("data_sha256") == data_sha256:
        return IntentModel.load(DEFAULT_MODEL)
    digest = hashlib.sha256(data_sha256.encode() + repr(DEFAULT_TRAIN).encode()).hexdigest()[:12]
    path = cache_dir() / f"intent_model-{digest}"
    if (path / "config.json").is_file():
        return IntentModel.load(path)
    model, result = IntentModel.train(*load_intent_data(DEFAULT_INTENTS), DEFAULT_TRAIN)
    model.save(path, {"data": DEFAULT_INTENTS.name, "data_sha256": data_sha256,
                      "val_accuracy": result.val_accuracy}, delta=True)
    return model

