"""Intent recognition for the customer-service assistant, with out-of-scope ("oos") detection.

    model = load_default_intent_model()                  # the fictional bank's intents (shipped in assets/)
    [p] = model.predict(["I lost my card"])
    p.label, p.confidence, p.top, p.experts, p.is_oos    # "card_lost", 0.93, [("card_lost", 0.93), ...], ...

Training data is a table (CSV, TSV, semicolon- or pipe-separated; a header such as `text,label`,
`utterance,intent`, `query,category` or `sentence,class` in any column order, or no header; UTF-8,
UTF-16 or Windows-1252), JSON or JSON-lines records, or a YAML file (`read_intent_file`, on
data_connectors.text_files.read_labelled_texts):

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
it are `oos`. That bound needs `rows_needed` held-out in-scope rows (45 at the defaults); with fewer,
the model gets no threshold (`oos_calibration["calibrated"]` is False, and train-intents warns): the
dialogue's own `low_confidence` cut-off then decides what counts as not understood.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.text.classifier import (
    ClassifierConfig, SentenceClassifier, TrainConfig, TrainResult, default_stream,
    load_classifier, new_classifier, predict, save_classifier, split_holdout, train_classifier,
)
from core.text.config import TextStreamConfig
from core.text.language import looks_english
from data_connectors.text_files import LabelledTexts, read_labelled_texts
from apps.settings import cache_dir

OOS = "oos"  # the out-of-scope label, in training files and in predictions
DEFAULT_INTENTS = Path(__file__).resolve().parents[2] / "assets" / "customer_service" / "intents.yaml"
DEFAULT_MODEL = DEFAULT_INTENTS.with_name("intent_model")  # a delta checkpoint over upcycled MiniLM


# ---- data ----

OOS_ALIASES = frozenset({"oos", "out_of_scope", "out-of-scope", "out of scope", "outofscope"})


def read_intent_file(path: str | Path, text_column: str | None = None,
                     label_column: str | None = None, split: str | None = "train") -> LabelledTexts:
    """An intents file as `data_connectors.text_files.read_labelled_texts` reads it (tables, YAML incl.
    Rasa NLU, JSON, JSON lines; columns found or named; `split`: the list read from a JSON file holding one
    per split, CLINC150's layout), with every label in OOS_ALIASES (any case) as "oos"."""
    data = read_labelled_texts(path, text_column, label_column, split)
    data.labels = [OOS if label.lower() in OOS_ALIASES else label for label in data.labels]
    return data


def load_intent_data(path: str | Path, text_column: str | None = None,
                     label_column: str | None = None) -> tuple[list[str], list[str]]:
    """(texts, labels) of an intents file; see `read_intent_file`."""
    data = read_intent_file(path, text_column, label_column)
    return data.texts, data.labels


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

    def __init__(self, classifier: SentenceClassifier, oos_threshold: float | None,
                 oos_calibration: dict | None = None, english: bool = True):
        self.classifier = classifier
        # trained mostly on English texts: the dialogue may then answer foreign messages "English only"
        self.english = english
        # confidences below it are oos; None when oos is a trained class or too few rows calibrated it
        self.oos_threshold = oos_threshold
        # without oos rows: {"calibrated": bool, "held_out_rows": n, "rows_needed": m}; None with an oos class
        self.oos_calibration = oos_calibration

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
        threshold, calibration = None, None
        if OOS not in labels:
            needed = rows_needed(cfg.in_scope_recall, cfg.recall_confidence)
            calibration = {"calibrated": len(val_x) >= needed, "held_out_rows": len(val_x), "rows_needed": needed}
            if calibration["calibrated"]:
                confidence_N = predict(classifier, val_x).probs.max(-1).values
                threshold = oos_threshold(confidence_N, cfg.in_scope_recall, cfg.recall_confidence)
            # else no threshold: the lowest of a few held-out confidences (or of the training rows'
            # own, overconfident ones) would accept nearly anything as in scope
        english = sum(map(looks_english, texts)) >= 0.5 * len(texts)
        return cls(classifier, threshold, calibration, english), result

    def save(self, path: str | Path, metadata: dict | None = None, delta: bool = False) -> Path:
        """A checkpoint folder; `delta` stores only the changes from upcycled MiniLM (see core.checkpoint)."""
        return save_classifier(self.classifier, path, {**(metadata or {}), "oos_threshold": self.oos_threshold,
                                                       "oos_calibration": self.oos_calibration,
                                                       "english": self.english}, delta=delta)

    @classmethod
    def load(cls, path: str | Path) -> IntentModel:
        classifier, metadata = load_classifier(path)
        return cls(classifier, metadata.get("oos_threshold"), metadata.get("oos_calibration"),
                   metadata.get("english", True))   # saved before the flag: the default bank's, English

    @property
    def calibration_warning(self) -> str | None:
        """Why the model has no oos threshold although it has no oos class, or None."""
        c = self.oos_calibration
        if not c or c["calibrated"]:
            return None
        return (f"out-of-scope threshold not calibrated: {c['held_out_rows']} held-out in-scope rows, the bound "
                f"needs {c['rows_needed']} (add rows, raise --val-fraction, or add rows labelled oos); "
                "the dialogue's low_confidence cut-off decides what is not understood")

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
    rows_needed(keep, confidence)  # checks keep and confidence
    sorted_N = confidence_N.float().sort().values
    n, p = len(sorted_N), 1 - keep
    if p == 0:
        return float(sorted_N[0]) if n else 0.0
    # P(Binomial(n, p) >= k) for k = 1..n, from the log pmf
    k_K = torch.arange(n + 1, dtype=torch.float64)
    log_pmf = torch.distributions.Binomial(n, probs=torch.tensor(p, dtype=torch.float64)).log_prob(k_K)
    at_least_K = log_pmf.exp().flip(0).cumsum(0).flip(0)  # [n + 1]: P(X >= k)
    k = int((at_least_K[1:] >= confidence).sum())  # P(X >= k) falls with k: the largest k that holds
    return float(sorted_N[max(k, 1) - 1])


def rows_needed(keep: float, confidence: float = 0.9) -> int:
    """Held-out in-scope rows `oos_threshold`'s bound needs: the least n with 1 - keep**n >= confidence
    (45 for keep 0.95, confidence 0.9); 1 when keep is 1."""
    if not 0 < keep <= 1 or not 0 < confidence < 1:
        raise ValueError(f"keep must lie in (0, 1] and confidence in (0, 1), got {keep}, {confidence}")
    return 1 if keep == 1 else math.ceil(math.log(1 - confidence) / math.log(keep) - 1e-9)


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

