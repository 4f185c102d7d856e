"""Intent recognition for the customer-service assistant, with out-of-scope ("oos") detection.

    model = load_default_intent_model()                  # the fictional bank's intents (shipped in assets/)
    [p] = model.predict(["I lost my card"])
    p.label, p.confidence, p.top, p.experts, p.is_oos    # "card_lost", 0.93, [("card_lost", 0.93), ...], ...

Training data is a CSV (`text,label` or Banking77's `text,category`, any column order) or a YAML file:

    intents:                       # mapping form
      check_balance: ["what's my balance?", "how much money do I have"]
      oos: ["what's the weather like"]
    intents:                       # or list form
      - name: check_balance
        examples: ["what's my balance?", ...]

Out of scope: rows labelled `oos` train an extra class. Without them, a threshold on the max softmax
probability is calibrated on a held-out stratified slice of the training rows: the value that keeps
`in_scope_recall` (default 95%) of those in-scope queries; queries scoring below it are `oos`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.text.classifier import (
    ClassifierConfig, SentenceClassifier, TrainConfig, TrainResult, calibrate_threshold, default_stream,
    load_classifier, new_classifier, predict, read_labelled_csv, save_classifier, split_holdout,
    train_classifier,
)
from core.text.config import TextStreamConfig
from apps.settings import cache_dir

OOS = "oos"  # the out-of-scope label, in training files and in predictions
DEFAULT_INTENTS = Path(__file__).resolve().parents[2] / "assets" / "customer_service" / "intents.yaml"
DEFAULT_MODEL = DEFAULT_INTENTS.with_name("intent_model")  # a delta checkpoint over upcycled MiniLM


# ---- data ----

def load_intent_data(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, labels) from a .csv or a .yaml/.yml intents file (formats in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_labelled_csv(path)
    if suffix in (".yaml", ".yml"):
        return _read_intents_yaml(path)
    raise ValueError(f"{path}: expected a .csv or .yaml intents file, got {suffix or 'no suffix'}")


def _read_intents_yaml(path: Path) -> tuple[list[str], list[str]]:
    try:
        doc = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(doc, dict) or "intents" not in doc:
        raise ValueError(f"{path}: expected a top-level `intents:` mapping or list")
    intents = doc["intents"]
    if isinstance(intents, list):
        if not all(isinstance(item, dict) and {"name", "examples"} <= item.keys() for item in intents):
            raise ValueError(f"{path}: every item of the `intents:` list needs `name` and `examples`")
        intents = {item["name"]: item["examples"] for item in intents}
    if not isinstance(intents, dict) or not intents:
        raise ValueError(f"{path}: `intents:` is empty or neither a mapping nor a list")
    texts, labels = [], []
    for name, examples in intents.items():
        if not isinstance(examples, list) or not examples or not all(
                isinstance(e, str) and e.strip() for e in examples):
            raise ValueError(f"{path}: intent {name!r} needs a non-empty list of non-empty example strings")
        texts += [e.strip() for e in examples]
        labels += [str(name)] * len(examples)
    return texts, labels


# ---- model ----

@dataclass
class IntentTrainConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    stream: TextStreamConfig = field(default_factory=default_stream)
    upcycle: bool = True             # start the stream from MiniLM (False: from scratch, e.g. tiny test models)
    val_fraction: float = 0.1        # held-out stratified slice of the training rows (model selection, threshold)
    in_scope_recall: float = 0.95    # without oos rows: the threshold keeps this share of held-out in-scope rows


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
        """Train on (texts, labels), selecting the best epoch and calibrating oos on a held-out slice."""
        (train_x, train_y), (val_x, val_y) = split_holdout(texts, labels, cfg.val_fraction, cfg.train.seed)
        classifier = new_classifier(ClassifierConfig(labels=tuple(sorted(set(labels))), stream=cfg.stream),
                                    upcycle=cfg.upcycle, seed=cfg.train.seed)
        result = train_classifier(classifier, train_x, train_y, cfg.train, val=(val_x, val_y) if val_x else None)
        threshold = None
        if OOS not in labels:
            in_scope_val = val_x or train_x  # a file too small to hold rows out calibrates on its training rows
            confidence_N = predict(classifier, in_scope_val).probs.max(-1).values
            threshold = calibrate_threshold(confidence_N, cfg.in_scope_recall)
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

