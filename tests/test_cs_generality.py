"""The customer-service app on data shaped unlike the default bank's: intents files with other column
names, delimiters, encodings and layouts, knowledge files in other formats and field names, and an
intent model whose out-of-scope threshold was calibrated on its own data. Tiny files the tests write."""
import csv
import io
import json

import pytest

from apps.cli import main
from apps.customer_service import intents
from apps.customer_service.dialogue import DialogueConfig, DialogueManager
from apps.customer_service.actions import default_actions
from apps.customer_service.intents import OOS, IntentTrainConfig, read_intent_file
from apps.customer_service.store import SessionState
from data_connectors.knowledge import KnowledgeFormatError, load_knowledge
from data_connectors.text_files import decode_text, sniff_delimiter

from chat_fakes import EXPERTS, OverlapIndex, Prediction, write

ROWS = [("I lost my card, what now?", "lost_card"), ("where is my money", "balance"),
        ("how much do I have", "balance"), ("card stolen yesterday", "lost_card"),
        ("send cash to mum", "transfer"), ("wire money abroad", "transfer")]
TEXTS, LABELS = [t for t, _ in ROWS], [y for _, y in ROWS]


def table(rows, header=None, delimiter=",", quote_all=False) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n",
                        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    writer.writerows(([header] if header else []) + [list(r) for r in rows])
    return out.getvalue()


@pytest.fixture(scope="module")
def tiny_embedder():
    import torch

    from apps.customer_service.retrieval import Embedder
    from core.text import TextStreamConfig, from_scratch

    torch.manual_seed(0)
    return Embedder(from_scratch(TextStreamConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64, num_experts=2,
                                                  top_k=1)), name="tiny")


# ---- intents files ----

FLIPPED = [(y, t) for t, y in ROWS]
LAYOUTS = {
    "utterance_intent.csv": table(ROWS, ["Utterance", "Intent"]),
    "query_category.csv": table(ROWS, ["query", "category"]),
    "sentence_class_label_first.csv": table(FLIPPED, ["class", "sentence"]),
    "extra_columns.csv": table([(i, t, y, "-") for i, (t, y) in enumerate(ROWS)], ["id", "text", "label", "notes"]),
    "no_header.csv": table(ROWS),
    "no_header_label_first.csv": table(FLIPPED),
    "unknown_names.csv": table(ROWS, ["frage", "absicht"]),
    "tabs.tsv": table(ROWS, ["text", "label"], "\t"),
    "tabs_named_csv.csv": table(ROWS, ["text", "label"], "\t"),
    "semicolons.csv": table(ROWS, ["text", "label"], ";"),
    "pipes.txt": table(ROWS, ["text", "label"], "|"),
    "bom_crlf.csv": "\ufeff" + table(ROWS, ["text", "label"]).replace("\n", "\r\n"),
    "blank_rows.csv": "text,label\n\n" + table(ROWS).replace("\n", "\n,\n", 2) + "\n\n",
    "records.jsonl": "\n".join(json.dumps({"utterance": t, "intent": y}) for t, y in ROWS),
    "records.json": json.dumps({"data": [{"text": t, "label": y} for t, y in ROWS]}),
    "pairs.json": json.dumps([[t, y] for t, y in ROWS]),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_intents_tables_in_other_layouts_read_the_same(tmp_path, name):
    data = read_intent_file(write(tmp_path / name, LAYOUTS[name]))
    assert (data.texts, data.labels) == (TEXTS, LABELS)


def test_intents_encodings_quoting_and_oos_spellings(tmp_path):
    rows = ROWS + [("café crème, “s’il vous plaît”", "café"), ("line one,\nline two", "balance"),
                   ("what's the weather", "OOS"), ("tell me a joke", "Out_Of_Scope"), ("sing", "out of scope")]
    for encoding in ("utf-8", "cp1252", "utf-16"):
        data = read_intent_file(write(tmp_path / f"{encoding}.csv", table(rows, ["text", "label"], quote_all=True),
                                      encoding))
        assert data.texts == [t for t, _ in rows] and data.encoding == encoding
        assert data.labels == LABELS + ["café", "balance", OOS, OOS, OOS]
    chinese = [("我的卡丢了", "挂失"), ("我的余额是多少", "余额"), ("转账到国外", "转账"), ("卡被偷了", "挂失"),
               ("还有多少钱", "余额")]
    data = read_intent_file(write(tmp_path / "zh.csv", table(chinese)))  # no header: labels repeat
    assert (data.texts, data.labels, data.header) == ([t for t, _ in chinese], [y for _, y in chinese], False)


def test_intents_columns_named_on_the_command_line(tmp_path):
    path = write(tmp_path / "wide.csv", table([("x", t, "y", y) for t, y in ROWS], ["a", "b", "c", "d"]))
    assert intents.load_intent_data(path, text_column="B", label_column="d") == (TEXTS, LABELS)
    headerless = write(tmp_path / "headerless.csv", table([(y, t) for t, y in ROWS]))
    assert intents.load_intent_data(headerless, text_column="2", label_column="1") == (TEXTS, LABELS)
    named = write(tmp_path / "named.csv", table([(y, t) for t, y in ROWS], ["intent", "utterance"]))
    assert intents.load_intent_data(named, text_column="2", label_column="1") == (TEXTS, LABELS)  # header kept out
    with pytest.raises(ValueError, match=r"wide.csv, line 1: no column 'missing'"):
        intents.load_intent_data(path, text_column="missing", label_column="d")


@pytest.mark.parametrize("name, content, message", [
    ("junk.csv", bytes(range(256)), "junk.csv, line 2: not text"),
    ("one.csv", "text\nhi\nhello\n", "one.csv, line 1: 1 column"),
    ("unique.csv", "a,b\nx,1\ny,2\nz,3\n", "unique.csv, line 1: no recognised column names"),
    ("ragged.csv", 'text,label\n"open quote,x\ny,z\n', "ragged.csv, line 2: malformed CSV: the quote opened on line 2 is never closed"),
    ("records.jsonl", '{"text": "hi", "label": "greet"}\n{"words": "x"}\n',
     "records.jsonl, line 2: no text and label"),
    ("records.json", '{"a": [1], "b": [2]}', "records.json: expected a list of {text, label}"),
    ("pairs.json", '[["hi", "greet"], ["hello"]]', "pairs.json: record 2: expected a {text, label} object"),
    ("commas.csv", ",,\n ,\n", "commas.csv: no rows with any text"),
])
def test_intents_errors_name_the_file(tmp_path, name, content, message):
    with pytest.raises(ValueError) as err:
        read_intent_file(write(tmp_path / name, content))
    assert message in str(err.value)


def test_a_headerless_tables_short_first_example_with_a_label_of_its_own_is_not_a_header(tmp_path):
    rows = [("block card", "card_block")] + ROWS     # <= 3 words, label nowhere else: once taken as a header
    data = read_intent_file(write(tmp_path / "first.csv", table(rows)))
    assert (data.header, data.texts, data.labels) == (False, [t for t, _ in rows], [y for _, y in rows])
    assert "card_block" in data.labels and "first row" in data.warnings[0]
    data = read_intent_file(write(tmp_path / "hello.csv", table([("hello", "say_hello")] + ROWS)))
    assert (data.header, data.texts[0]) == (False, "hello")   # one word, but a label written like "lost_card"
    data = read_intent_file(write(tmp_path / "names.csv", table(ROWS, ["kysymys", "aikomus"])))   # Finnish
    assert (data.header, data.texts) == (True, TEXTS)
    assert "read as a header" in data.warnings[0] and "names.csv" in data.warnings[0]
    data = read_intent_file(write(tmp_path / "named.csv", table(ROWS, ["text", "label"])))
    assert (data.header, data.warnings) == (True, [])


def test_a_truncated_utf16_file_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path / "cut.csv", table(ROWS, ["text", "label"]).encode("utf-16") + b"\x00")  # odd length
    with pytest.raises(ValueError, match=r"cut.csv: not valid UTF-16"):
        read_intent_file(path)
    with pytest.raises(KnowledgeFormatError, match=r"cut.csv: not valid UTF-16"):
        load_knowledge(path)


def test_intents_table_with_two_repeating_unnamed_columns_is_refused_not_guessed(tmp_path):
    # a channel column repeats with fewer values than the labels: the fewest-distinct rule would take it
    rows = [(t, y, "app" if i % 2 else "web") for i, (t, y) in enumerate(ROWS)]
    with pytest.raises(ValueError, match=r"three.csv, line 1: no recognised column names.*could both be"):
        read_intent_file(write(tmp_path / "three.csv", table(rows, ["kysymys", "aikomus", "kanava"])))
    data = read_intent_file(tmp_path / "three.csv", text_column="kysymys", label_column="aikomus")
    assert (data.texts, data.labels) == (TEXTS, LABELS)


def test_a_headerless_tables_first_example_with_a_label_of_its_own_is_kept(tmp_path):
    rows = [("please tell me how much money is left", "balance_once")] + ROWS
    data = read_intent_file(write(tmp_path / "first.csv", table(rows)))
    assert (data.header, data.texts[0], len(data.texts)) == (False, rows[0][0], len(rows))
    data = read_intent_file(write(tmp_path / "named.csv", table(ROWS, ["Frage", "Absicht"])))
    assert (data.header, data.texts, data.labels) == (True, TEXTS, LABELS)


def test_intents_json_reports_the_fields_it_read(tmp_path):
    data = read_intent_file(write(tmp_path / "r.jsonl", "\n".join(json.dumps({"Utterance": t, "intent": y})
                                                                    for t, y in ROWS)))
    assert (data.text_column, data.label_column, data.labels) == ("Utterance", "intent", LABELS)


def test_rasa_nlu_training_data_reads_its_intents_without_entity_markup(tmp_path):
    rasa = """version: "3.1"
nlu:
- intent: lost_card
  examples: |
    - I lost my card, what now?
    - card stolen [yesterday](date)
- synonym: savings
  examples: |
    - pinggy
- intent: transfer
  examples: |
    - send [cash]{"entity": "money"} to mum
- lookup: city
  examples: |
    - Paris
"""
    rasa += """- intent: greet
  examples:
  - text: |
      hi there
    metadata: {sentiment: neutral}
  - hello
"""
    for name in ("nlu.yml", "nlu.json"):
        content = rasa if name.endswith("yml") else json.dumps(__import__("yaml").safe_load(rasa))
        data = read_intent_file(write(tmp_path / name, content))
        assert data.texts == ["I lost my card, what now?", "card stolen yesterday", "send cash to mum", "hi there",
                              "hello"], name
        assert data.labels == ["lost_card", "lost_card", "transfer", "greet", "greet"]
    with pytest.raises(ValueError, match="no examples"):
        read_intent_file(write(tmp_path / "empty.yml", "nlu:\n- intent: greet\n  examples: |\n    -\n"))


def test_a_json_file_with_one_list_per_split_reads_the_split_asked_for(tmp_path, capsys):
    """CLINC150's data_full.json: [text, intent] pairs per split, the out-of-scope rows in oos_ lists."""
    doc = {"train": [[t, y] for t, y in ROWS[:4]], "val": [[t, y] for t, y in ROWS[4:5]],
           "test": [[t, y] for t, y in ROWS[5:]], "oos_train": [["what is the weather", "oos"]],
           "oos_val": [], "oos_test": [["tell me a joke", "oos"]]}
    path = write(tmp_path / "data_full.json", json.dumps(doc))
    train = read_intent_file(path)
    assert train.texts == TEXTS[:4] + ["what is the weather"] and train.labels == LABELS[:4] + [OOS]
    assert "train, oos_train" in train.warnings[0]
    test = read_intent_file(path, split="test")
    assert test.texts == [TEXTS[5], "tell me a joke"] and test.labels == [LABELS[5], OOS]
    with pytest.raises(ValueError, match="no list 'dev'; the file holds train, val, test"):
        read_intent_file(path, split="dev")
    with pytest.raises(ValueError, match="say which split"):
        read_intent_file(path, split=None)
    only_train = write(tmp_path / "train_only.json", json.dumps({"train": doc["train"]}))
    with pytest.raises(ValueError, match="no list 'test'; the file holds train"):   # never evaluate on training rows
        read_intent_file(only_train, split="test")
    from apps.cli import build_parser
    for command, split in (("train-intents --out m", "train"), ("eval-intents --model m", "test")):
        args = build_parser().parse_args(["chat", *command.split(), "--data", str(path)])
        assert args.split == split, command


def test_training_drops_repeated_rows_and_needs_two_intents(monkeypatch):
    seen = {}

    def stop(texts, labels, fraction, seed):
        seen["rows"] = list(zip(texts, labels))
        raise RuntimeError("stop before training")

    monkeypatch.setattr(intents, "split_holdout", stop)
    with pytest.raises(RuntimeError, match="stop before training"):
        intents.IntentModel.train(TEXTS * 3, LABELS * 3, IntentTrainConfig(upcycle=False))
    assert seen["rows"] == ROWS  # each (text, label) once, first-seen order
    with pytest.raises(ValueError, match="at least 2 in-scope intents"):
        intents.IntentModel.train(["hi", "hello", "weather"], ["greet", "greet", OOS],
                                  IntentTrainConfig(upcycle=False))


def test_cli_trains_evaluates_and_answers_with_headerless_semicolon_cp1252(tmp_path, capsys, monkeypatch,
                                                                             tiny_embedder):
    phrases = {"karte_verloren": ["meine karte verloren", "karte gestohlen", "karte weg"],
               "kontostand": ["mein kontostand", "wie viel geld", "guthaben zeigen"],
               "überweisung": ["geld überweisen", "überweisung ins ausland", "zahlung senden"]}
    rows = [(f"{p} {t}", y) for y, ps in phrases.items() for p in ps for t in ("bitte", "jetzt", "heute", "")]
    write(tmp_path / "train.csv", table(rows, delimiter=";"), "cp1252")
    test_rows = [(f"{ps[0]} sofort", y) for y, ps in phrases.items()] + [("wetter morgen", "out-of-scope"),
                                                                         ("karte verloren", "new_intent")]
    write(tmp_path / "test.tsv", table(test_rows, ["Utterance", "Intent"], "\t"))
    stream = json.dumps({"dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "max_positions": 32,
                         "moe_layers": [0], "num_experts": 2, "top_k": 1, "dropout": 0.0})
    assert main(["chat", "train-intents", "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"),
                 "--from-scratch", "--stream", stream, "--epochs", "10", "--batch-size", "8", "--lr", "3e-3",
                 "--json"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (trained["rows"], trained["labels"], trained["header"], trained["delimiter"], trained["encoding"]) == (
        len(rows), 3, False, ";", "cp1252")
    assert main(["chat", "eval-intents", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "test.tsv"),
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (metrics["rows"], metrics["oos_rows"], metrics["text_column"], metrics["delimiter"]) == (
        5, 1, "Utterance", "\t")
    assert metrics["unknown_labels"] == ["new_intent"] and metrics["unknown_label_rows"] == 1

    # the assistant on this model and an index of its own knowledge, not the bank's
    from apps.customer_service import retrieval

    monkeypatch.setattr(retrieval, "default_embedder", lambda: tiny_embedder)
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path / "cache"))
    write(tmp_path / "wissen.md", "# Karten\n## Karte sperren\nRufen Sie 116 116 an.\n")
    assert main(["chat", "index", "--kb", str(tmp_path / "wissen.md"), "--out", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    assert main(["chat", "ask", "meine karte verloren bitte", "--intent-model", str(tmp_path / "m"),
                 "--index", str(tmp_path / "index"), "--json"]) == 0
    reply = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reply["intent"] in phrases and reply["confidence"] > 0
    assert all(source["id"] == "wissen#karte-sperren" for source in reply["sources"])


# ---- out of scope with another intent set ----

class CalibratedIntents:
    """An intent model over many intents whose confidences run low, with its own calibrated threshold."""

    oos_threshold = 0.2

    def predict(self, texts):
        top = [("pay_bill", 0.35), ("check_bill", 0.1)] if "bill" in texts[0] else [("pay_bill", 0.12), ("x", 0.1)]
        return [Prediction(top[0][0], top[0][1], top, EXPERTS, top[0][1] < self.oos_threshold)]


def test_dialogue_trusts_a_models_own_calibrated_threshold():
    manager = DialogueManager(CalibratedIntents(), OverlapIndex(), default_actions(), DialogueConfig.load())
    assert manager.low_confidence == 0.2  # under the dialogue's 0.5
    answer, _ = manager.turn(SessionState("s"), "pay my fees bill")
    assert answer.intent == "pay_bill" and answer.sources  # answered, not "please rephrase"
    answer, _ = manager.turn(SessionState("t"), "purple elephants")
    assert answer.intent is None and not answer.sources


# ---- knowledge files ----

def test_knowledge_json_records_wrappers_and_mappings(tmp_path):
    write(tmp_path / "list.json", json.dumps([{"Question": "How to return?", "Answer": "Bring it back."},
                                              {"title": "Hours", "body": "9 to 5.", "id": "hours"}]))
    write(tmp_path / "wrapped.json", json.dumps({"version": 2, "faqs": [{"q": "Fees?", "a": "None."}]}))
    write(tmp_path / "mapping.json", json.dumps({"Refunds": "Five days.", "Flows": {"steps": ["verify", "refund"]}}))
    write(tmp_path / "strings.json", json.dumps(["First passage.", " ", "Second passage."]))
    docs = {d.id: (d.title, d.text) for d in load_knowledge(tmp_path)}
    assert docs == {"list#q1": ("How to return?", "Bring it back."), "hours": ("Hours", "9 to 5."),
                    "mapping#refunds": ("Refunds", "Five days."), "mapping#flows": ("Flows", "verify\nrefund"),
                    "strings#q1": ("Strings 1", "First passage."), "strings#q3": ("Strings 3", "Second passage."),
                    "wrapped#q1": ("Fees?", "None.")}


def test_knowledge_csv_and_jsonl_with_other_field_names(tmp_path):
    write(tmp_path / "semi.csv", 'Question;Answer\n"Return, please?";"Bring it back, with the receipt."\n')
    write(tmp_path / "tb.tsv", "title\tbody\nHours\t9 to 5.\n")
    write(tmp_path / "plain.csv", "How to pay?,In the app.\nWhy?,Because.\n")  # no header: question, answer
    write(tmp_path / "qa.jsonl", json.dumps({"question": "Fees?", "answer": "None."}) + "\n"
          + json.dumps({"content": "Untitled passage."}) + "\n")
    docs = [(d.id, d.title, d.text) for d in load_knowledge(tmp_path)]
    assert docs == [("plain#q1", "How to pay?", "In the app."), ("plain#q2", "Why?", "Because."),
                    ("qa#q1", "Fees?", "None."), ("qa#q2", "qa#q2", "Untitled passage."),
                    ("semi#q1", "Return, please?", "Bring it back, with the receipt."), ("tb#q1", "Hours", "9 to 5.")]


def test_knowledge_question_columns_named_as_in_intent_and_instruction_data(tmp_path):
    write(tmp_path / "utt.csv", "utterance,response\nHow do I pay?,Use the app.\n")
    write(tmp_path / "pr.csv", "prompt,response,category\nReset my PIN?,Open settings.,card\n")
    write(tmp_path / "cq.json", json.dumps([{"intent": "fees", "customer_question": "Any fees?", "reply": "None."}]))
    docs = [(d.id, d.title, d.text) for d in load_knowledge(tmp_path)]
    assert docs == [("cq#q1", "Any fees?", "None."), ("pr#q1", "Reset my PIN?", "Open settings."),
                    ("utt#q1", "How do I pay?", "Use the app.")]


def test_knowledge_csv_wider_than_two_columns_with_no_known_names(tmp_path):
    rows = ["Wie zahle ich?,Mit der App oder per Karte am Schalter.,Zahlung",
            "Gebuehren?,Keine fuer Karten im Inland.,Gebuehren"]
    write(tmp_path / "de.csv", "Frage,Antwort,Kategorie\n" + "\n".join(rows) + "\n")
    write(tmp_path / "raw.csv", "\n".join(f"{n},{row}" for n, row in enumerate(rows, 1)) + "\n")   # no header
    docs = [(d.id, d.title, d.text) for d in load_knowledge(tmp_path)]
    assert docs == [("de#q1", "Wie zahle ich?", "Mit der App oder per Karte am Schalter."),
                    ("de#q2", "Gebuehren?", "Keine fuer Karten im Inland."),
                    ("raw#q1", "Wie zahle ich?", "Mit der App oder per Karte am Schalter."),
                    ("raw#q2", "Gebuehren?", "Keine fuer Karten im Inland.")]


def test_intents_json_records_beside_their_label_names(tmp_path):
    names = sorted(set(LABELS))
    by_name = read_intent_file(write(tmp_path / "n.json", json.dumps(
        {"data": [{"text": t, "label": y} for t, y in ROWS], "labels": names})))
    by_id = read_intent_file(write(tmp_path / "i.json", json.dumps(
        {"data": [{"text": t, "label": names.index(y)} for t, y in ROWS], "labels": names})))
    assert by_name.texts == by_id.texts == TEXTS and by_name.labels == by_id.labels == LABELS
    splits = {"data": [{"text": t, "label": names.index(y)} for t, y in ROWS], "labels": names, "splits": ["a", "b"]}
    assert read_intent_file(write(tmp_path / "s.json", json.dumps(splits))).labels == LABELS   # `labels` named
    unsaid = read_intent_file(write(tmp_path / "u.json", json.dumps(
        {"data": splits["data"], "intent_list": names, "splits": ["a", "b"]})))
    assert unsaid.labels == [str(names.index(y)) for y in LABELS]
    assert any("class ids kept as they are" in w for w in unsaid.warnings), unsaid.warnings


def test_labels_spelled_in_several_ways_are_named_in_a_warning(tmp_path):
    rows = ROWS + [("my card is gone", "Lost Card"), ("card went missing", "lost-card")]
    data = read_intent_file(write(tmp_path / "t.csv", table(rows, ["text", "label"])))
    assert any("spelled in several ways" in w and "'Lost Card' / 'lost-card' / 'lost_card'" in w
               for w in data.warnings), data.warnings
    clean = read_intent_file(write(tmp_path / "c.csv", table(ROWS, ["text", "label"])))
    assert not any("spelled" in w for w in clean.warnings)


def test_knowledge_json_records_nested_under_groupings(tmp_path):
    write(tmp_path / "cats.json", json.dumps({"categories": [
        {"name": "Cards", "faqs": [{"question": "Lost card?", "answer": "Freeze it in the app."}]},
        {"name": "Fees", "faqs": [{"question": "Any fees?", "answer": "None."}]}]}))
    write(tmp_path / "deep.json", json.dumps({"faq": {"cards": [{"q": "PIN?", "a": "In settings."}]}, "v": "2.1"}))
    # texts at the top level are read as before: LangChain's page_content beside its metadata, title -> record
    write(tmp_path / "lc.json", json.dumps([{"page_content": "We open at 9.", "metadata": {"title": "Hours",
                                                                                          "description": "Page"}}]))
    write(tmp_path / "map.json", json.dumps({"Fees": {"question": "Any fees?", "answer": "None."}}))
    docs = [(d.id, d.title, d.text) for d in load_knowledge(tmp_path)]
    assert docs == [("cats#q1", "Lost card?", "Freeze it in the app."), ("cats#q2", "Any fees?", "None."),
                    ("deep#q1", "PIN?", "In settings."), ("lc#q1", "lc#q1", "We open at 9."),
                    ("map#fees", "Fees", "Any fees?\nNone.")]


def test_knowledge_mapping_keys_alike_but_for_punctuation_stay_apart(tmp_path):
    write(tmp_path / "m.json", json.dumps({"Fees?": "None for cards.", "Fees!": "Wires cost 5 EUR."}))
    docs = {d.id: (d.title, d.text) for d in load_knowledge(tmp_path)}
    assert docs == {"m#fees": ("Fees?", "None for cards."), "m#fees-2": ("Fees!", "Wires cost 5 EUR.")}


def test_intents_read_by_label_names_where_ids_stand_beside_them(tmp_path):
    ids = {y: str(i) for i, y in enumerate(sorted(set(LABELS)))}
    data = read_intent_file(write(tmp_path / "hf.csv", table([(t, ids[y], y) for t, y in ROWS],
                                                             ["text", "label", "label_text"])))
    assert (data.label_column, data.labels) == ("label_text", LABELS)
    records = [{"text": t, "label": int(ids[y]), "label_text": y} for t, y in ROWS]
    assert read_intent_file(write(tmp_path / "hf.jsonl", "\n".join(map(json.dumps, records)))).labels == LABELS
    # a name column beside labels that are names already is another labelling, not their names
    other = read_intent_file(write(tmp_path / "two.csv", table([(t, y, "bank") for t, y in ROWS],
                                                               ["text", "intent", "category_name"])))
    assert (other.label_column, other.labels) == ("intent", LABELS)


def test_help_centre_exports_with_html_bodies_and_q_a_text_files(tmp_path):
    write(tmp_path / "zendesk.csv", 'id,title,body\n17,Reset <b>password</b>,"<p>Use the <a href=\'/r\'>reset</a> '
                                    'link.</p><ul><li>Check spam &amp; junk</li></ul>"\n')
    write(tmp_path / "articles.json", json.dumps([{"title": "Fees", "body": "<h2>Cards</h2><p>None.</p>"},
                                                  {"title": "a < b", "body": "2 < 3 and x<y stays as written"}]))
    write(tmp_path / "faq.txt", "Q: How do I reset my password?\nA: Use the reset link.\nIt expires in a day.\n\n"
                                "Question: Where is my order?\nAnswer: See the tracking page.\n")
    write(tmp_path / "notes.txt", "Our policy.\nQ: is it free?\nA: yes.\n")   # prose holding one pair: one passage
    write(tmp_path / "lists.txt", "Q: How do I pay?\nA: Either:\na) in the app\nA: or at a branch\nQ: Fees?\nA: None.\n")
    write(tmp_path / "escaped.json", json.dumps([{"title": "Fees &amp; charges", "body": "You can&#39;t &mdash; ok"},
                                                 {"title": "AT&T", "body": "R&D costs 5 & more"}]))
    docs = {d.id: (d.title, d.text) for d in load_knowledge(tmp_path)}
    assert docs["17"] == ("Reset password", "Use the reset link.\n- Check spam & junk")
    assert docs["articles#q1"] == ("Fees", "Cards\nNone.")
    assert docs["articles#q2"] == ("a < b", "2 < 3 and x<y stays as written")
    assert docs["faq#q1"] == ("How do I reset my password?", "Use the reset link.\nIt expires in a day.")
    assert docs["faq#q2"] == ("Where is my order?", "See the tracking page.")
    assert docs["notes"] == ("Notes", "Our policy.\nQ: is it free?\nA: yes.")
    assert docs["lists#q1"] == ("How do I pay?", "Either:\na) in the app\nA: or at a branch")
    assert docs["escaped#q1"] == ("Fees & charges", "You can't \u2014 ok")
    assert docs["escaped#q2"] == ("AT&T", "R&D costs 5 & more")
    write(tmp_path / "img" / "only_an_image.json", json.dumps([{"title": "x", "body": "<p><img src='x.png'></p>"}]))
    with pytest.raises(KnowledgeFormatError, match="record 1 .*HTML body has no text"):
        load_knowledge(tmp_path / "img")


def tiny_pdf(pages: list[list[str]]) -> bytes:
    """A valid PDF whose pages show these lines (Helvetica, one text object per line; a page may be empty)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", "", "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        ops = " ".join(f"BT /F1 12 Tf 72 {720 - 16 * i} Td ({line}) Tj ET" for i, line in enumerate(lines))
        objects.append(f"<< /Length {len(ops)} >>\nstream\n{ops}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    return out + f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()


def test_pdf_and_word_manuals(tmp_path):
    import docx
    from docx.oxml import parse_xml

    write(tmp_path / "kb" / "manual.pdf", tiny_pdf([["Returns", "Items can be returned within 30 days."], [],
                                                    ["Shipping", "We ship inter-", "nationally. See Ex-", "Works."]]))
    document = docx.Document()
    document.add_heading("Cards", level=1)
    document.add_paragraph("Freeze a lost card in the app.")
    document.add_heading("Fees", level=2)
    table = document.add_table(rows=3, cols=3)
    for row, cells in zip(table.rows, [("Transfer", "free", "free"), ("Abroad", "2 pounds", ""), ("Note", "", "")]):
        for cell, text in zip(row.cells, cells):
            cell.text = text
    table.cell(2, 1).merge(table.cell(2, 2)).text = "cards only"        # a merged cell: read once
    nested = table.cell(1, 2).add_table(rows=1, cols=2)                   # a table inside a cell
    nested.cell(0, 0).text, nested.cell(0, 1).text = "EU", "1 pound"
    box = document.add_paragraph("Call us.")
    box._p.append(parse_xml('<w:r xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
                            'xmlns:v="urn:schemas-microsoft-com:vml"><w:pict><v:shape><v:textbox><w:txbxContent>'
                            '<w:p><w:r><w:t>Hotline 0800 123</w:t></w:r></w:p></w:txbxContent></v:textbox></v:shape>'
                            '</w:pict></w:r>'))
    document.save(tmp_path / "kb" / "guide.docx")
    docs = {d.id: (d.title, d.text) for d in load_knowledge(tmp_path / "kb")}
    assert docs == {"manual#page1": ("Manual, page 1", "Returns\nItems can be returned within 30 days."),
                    "manual#page3": ("Manual, page 3", "Shipping\nWe ship internationally. See Ex-\nWorks."),
                    "guide#cards": ("Cards", "Freeze a lost card in the app."),
                    "guide#fees": ("Cards / Fees", "Transfer | free | free\nAbroad | 2 pounds | EU | 1 pound\n"
                                                   "Note | cards only\n\nCall us. Hotline 0800 123")}
    write(tmp_path / "scanned.pdf", tiny_pdf([[], []]))
    with pytest.raises(KnowledgeFormatError, match="no text in its 2 page.*OCR"):
        load_knowledge(tmp_path / "scanned.pdf")
    from pypdf import PdfWriter

    for user_password, algorithm, expected in (("pw", "RC4-128", None), ("", "RC4-128", "Open text"),
                                               ("", "AES-256", "Open text")):   # a blank user password opens
        writer = PdfWriter(clone_from=io.BytesIO(tiny_pdf([["Open text"]])))
        writer.encrypt(user_password, owner_password="owner", algorithm=algorithm)
        writer.write(tmp_path / "locked.pdf")
        if expected is None:
            with pytest.raises(KnowledgeFormatError, match="protected by a password"):
                load_knowledge(tmp_path / "locked.pdf")
        else:
            assert [d.text for d in load_knowledge(tmp_path / "locked.pdf")] == [expected]
    for name in ("broken.pdf", "broken.docx"):
        write(tmp_path / name, b"PK\x03\x04 not really")
        with pytest.raises(KnowledgeFormatError, match=f"{name}: unreadable"):
            load_knowledge(tmp_path / name)


def test_knowledge_html_setext_front_matter_and_long_text(tmp_path):
    write(tmp_path / "page.html", "<html><head><title>x</title><script>var hidden=1;</script></head><body>"
          "<h1>Help</h1><p>Welcome.</p><h2>Returns</h2><p>Within <b>30</b>&nbsp;days.</p><ul><li>Receipt</li>"
          "</ul></body></html>")
    write(tmp_path / "setext.md", "---\ntitle: meta\n---\nReturns\n=======\n\nThirty days.\n\nShipping\n--------\n"
          "Free over 50.\n\n- a list\n---\n")
    write(tmp_path / "long.txt", "\n\n".join(" ".join(f"w{p}x{i}" for i in range(150)) for p in range(6)))
    docs = {d.id: d for d in load_knowledge(tmp_path)}
    assert [(d.title, d.text) for i, d in docs.items() if i.startswith("page")] == [
        ("Help", "Welcome."), ("Help / Returns", "Within 30 days.\n\n- Receipt")]
    assert docs["setext#returns"].text == "Thirty days." and "title: meta" not in str(docs)
    assert docs["setext#shipping"].title == "Returns / Shipping" and docs["setext#shipping"].text.startswith("Free")
    parts = [d for i, d in docs.items() if i.startswith("long")]
    assert [d.id for d in parts] == ["long#p1", "long#p2", "long#p3"]  # 6 x 150 words in parts of <= 400
    assert " ".join(d.text for d in parts).split() == (tmp_path / "long.txt").read_text().split()


def test_knowledge_encodings_and_binary_files(tmp_path):
    [doc] = load_knowledge(write(tmp_path / "cp.txt", "Café – open “daily”.", "cp1252"))
    assert doc.text == "Café – open “daily”."
    assert decode_text("ü".encode("utf-16")) == ("ü", "utf-16")
    for name, junk in (("junk.md", bytes(range(256)) * 4), ("nul.md", b"# Title\n\x00\x00\x00")):
        with pytest.raises(KnowledgeFormatError, match=rf"{name}:\d+: not text"):
            load_knowledge(write(tmp_path / name, junk))


def test_knowledge_json_wrapper_with_many_metadata_fields(tmp_path):
    articles = [{"title": "Fees", "body": "None."}, {"title": "Hours", "body": "9-5."}]
    write(tmp_path / "export.json", json.dumps({"version": 3, "locale": "en", "exported": "2026-01-02",
                                                "source": "helpdesk", "articles": articles}))
    assert [(d.title, d.text) for d in load_knowledge(tmp_path)] == [("Fees", "None."), ("Hours", "9-5.")]


def test_knowledge_html_table_cells_stay_apart(tmp_path):
    write(tmp_path / "fees.html", "<h2>Fees</h2><table><tr><th>Service</th><th>Fee</th></tr>\n"
                                  "<tr>\n  <td>Card</td>\n  <td>5 pounds</td>\n</tr></table>")
    [doc] = load_knowledge(tmp_path)
    assert doc.text == "Service | Fee\n\nCard | 5 pounds"


def test_knowledge_html_text_that_looks_like_markdown_stays_text(tmp_path):
    write(tmp_path / "setup.html", "<h2>Setup</h2><pre># enable sync\nsync --on</pre><p>Total</p><p>=====</p>")
    [doc] = load_knowledge(tmp_path)
    assert (doc.title, doc.text) == ("Setup", "# enable sync sync --on\n\nTotal\n\n=====")


def test_a_utf8_file_with_one_bad_byte_is_an_error_not_mojibake(tmp_path):
    content = "text,label\ncafé crème,order\n".encode() + b"caf\xe9 noir,order\n"  # one Latin-1 byte pasted in
    with pytest.raises(ValueError, match=r"mixed.csv, line 3: byte \d+ is not UTF-8.*mixed-encoding"):
        read_intent_file(write(tmp_path / "mixed.csv", content))
    with pytest.raises(KnowledgeFormatError, match=r"mixed.md:2: byte \d+ is not UTF-8"):
        load_knowledge(write(tmp_path / "mixed.md", "# Café\n".encode() + b"Caf\xe9 open.\n"))
    assert decode_text("café".encode("cp1252")) == ("café", "cp1252")  # all Windows-1252: still read


def test_a_quote_left_open_in_a_long_file_names_the_line(tmp_path):
    content = 'text,label\nhi,greet\n"open,x\n' + "\n".join(f"row {i},y" for i in range(20000))
    with pytest.raises(ValueError, match=r"open.csv, line 3: malformed CSV: the quote opened on line 3 is never closed"):
        read_intent_file(write(tmp_path / "open.csv", content))
    with pytest.raises(KnowledgeFormatError, match=r"open.csv:3: malformed CSV: the quote opened on line 3 is never"):
        load_knowledge(tmp_path / "open.csv")


def test_sniffed_delimiters():
    assert sniff_delimiter("a b, c;x\nd;e\nf, g;h\n") == ";"
    assert sniff_delimiter("text,label\n\"a;b\",c\n") == ","
    assert sniff_delimiter("a,b\n", ".tsv") == "\t"
    assert sniff_delimiter("hi, there\tgreet\nbye, now\tbye\n") == "\t"  # one comma a row too: a tie
    assert sniff_delimiter("stop; now,cancel\nwait; what,confused\n") == ","  # one semicolon a row too


def test_a_folder_of_mixed_files_with_repeated_names(tmp_path, monkeypatch, capsys, tiny_embedder):
    for lang in ("en", "de"):
        write(tmp_path / "kb" / lang / "faq.md", f"# Hours\nOpen 9 to 5 ({lang}).")
        write(tmp_path / "kb" / lang / "index.html", f"<h1>Home</h1><p>Welcome ({lang}).</p>")
    write(tmp_path / "kb" / "en" / "faq.csv", "q,a\nFees?,None.\n")
    write(tmp_path / "kb" / "slides.pptx", b"PK\x03\x04")
    write(tmp_path / "kb" / "notes.txt", "Plain notes.")
    docs = load_knowledge(tmp_path / "kb")
    assert [d.id for d in docs] == ["de/faq#hours", "de/index#home", "en/faq.csv#q1", "en/faq.md#hours",
                                    "en/index#home", "notes"]

    from apps.customer_service import retrieval

    monkeypatch.setattr(retrieval, "default_embedder", lambda: tiny_embedder)
    assert main(["chat", "index", "--kb", str(tmp_path / "kb"), "--out", str(tmp_path / "index"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["files"], summary["documents"]) == (6, 6)
    assert summary["skipped_files"] == [str(tmp_path / "kb" / "slides.pptx")]
    write(tmp_path / "queries.csv", "Question;Expected_ID\nWelcome (en).;en/index#home\n")
    assert main(["chat", "eval-retrieval", "--index", str(tmp_path / "index"), "--queries",
                 str(tmp_path / "queries.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["queries"] == 1


def test_index_of_chinese_knowledge_warns_that_the_text_model_reads_little(tmp_path, monkeypatch, capsys,
                                                                         tiny_embedder):
    from apps.customer_service import retrieval

    monkeypatch.setattr(retrieval, "default_embedder", lambda: tiny_embedder)
    write(tmp_path / "faq.csv", "问题,答案\n银行卡丢了怎么办？,请立即打电话挂失。\n营业时间？,周一至周五九点到五点。\n")
    assert main(["chat", "index", "--kb", str(tmp_path / "faq.csv"), "--out", str(tmp_path / "index"), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["documents"] == 2
    assert any("unknown to the text model's vocabulary" in w for w in summary["warnings"])
    assert "unknown to the text model's vocabulary" in captured.err


def test_index_written_into_its_own_knowledge_folder_twice_reads_only_the_knowledge(tmp_path, monkeypatch, capsys,
                                                                                    tiny_embedder):
    from apps.customer_service import retrieval

    monkeypatch.setattr(retrieval, "default_embedder", lambda: tiny_embedder)
    write(tmp_path / "kb" / "faq.md", "# Hours\nOpen 9 to 5.\n# Phone\nCall 0800 123.\n")
    write(tmp_path / "kb" / "old" / "manifest.json", "{}")   # another index saved there earlier
    write(tmp_path / "kb" / "old" / "index.faiss", b"\0")
    write(tmp_path / "kb" / "old" / "chunks.json", json.dumps([{"text": "a chunk"}]))
    argv = ["chat", "index", "--kb", str(tmp_path / "kb"), "--out", str(tmp_path / "kb" / "index"), "--json"]
    for _ in range(2):
        assert main(argv) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (summary["files"], summary["documents"]) == (1, 2)


def test_index_a_folder_with_a_scanned_pdf(tmp_path, monkeypatch, capsys, tiny_embedder):
    """A scanned PDF among readable files: a clear error naming it, or with --skip-unreadable the others
    indexed and it listed; nothing readable at all stays an error."""
    from apps.customer_service import retrieval

    monkeypatch.setattr(retrieval, "default_embedder", lambda: tiny_embedder)
    write(tmp_path / "kb" / "faq.md", "# Hours\nOpen 9 to 5.")
    write(tmp_path / "kb" / "scan.pdf", tiny_pdf([[]]))
    argv = ["chat", "index", "--kb", str(tmp_path / "kb"), "--out", str(tmp_path / "index"), "--json"]
    assert main(argv) == 2 and "scan.pdf" in capsys.readouterr().err
    assert main(argv + ["--skip-unreadable"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["files"], summary["documents"]) == (1, 1) and "OCR" in captured.err
    assert [u["file"] for u in summary["unreadable_files"]] == [str(tmp_path / "kb" / "scan.pdf")]
    (tmp_path / "kb" / "faq.md").unlink()
    with pytest.raises(KnowledgeFormatError, match="no file could be read"):
        load_knowledge(tmp_path / "kb", unreadable=[])


def test_chinese_text_is_chunked_and_matched_by_character():
    from apps.customer_service.retrieval import BM25, chunk_documents
    from data_connectors.knowledge import KnowledgeDoc

    long = KnowledgeDoc("zh", "说明", "信用卡挂失请拨打客服电话。" * 30, "s")  # 390 characters, no spaces
    chunks = chunk_documents([long], chunk_words=120, overlap_words=30)
    assert len(chunks) == 4 and all(len(c.text) <= 120 for c in chunks)
    bm25 = BM25(["我的银行卡丢了怎么办", "如何查询账户余额", "国际转账需要多长时间"])
    assert bm25.scores("查询余额").argmax() == 1 and bm25.scores("银行卡丢失").argmax() == 0


def test_oos_threshold_keeps_the_promised_in_scope_share_on_small_held_out_slices():
    import torch

    from apps.customer_service.intents import oos_threshold

    g = torch.Generator().manual_seed(0)
    for n in (40, 200):  # held-out in-scope rows; confidences ~ U(0, 1), so a threshold rejects its own value
        kept = [1 - oos_threshold(torch.rand(n, generator=g), keep=0.95, confidence=0.9) for _ in range(400)]
        assert sum(k >= 0.95 for k in kept) / len(kept) >= 0.85  # the plain 5% quantile: about half the time
    assert oos_threshold(torch.tensor([0.9, 0.5, 0.99]), keep=0.95) == 0.5  # too few rows: the lowest
    with pytest.raises(ValueError, match="keep must lie in"):
        oos_threshold(torch.tensor([0.5]), keep=1.5)


def test_chat_index_reports_the_readers_warnings_and_refuses_an_out_holding_the_knowledge(tmp_path, monkeypatch,
                                                                                          capsys, tiny_embedder):
    from apps.customer_service import retrieval

    monkeypatch.setattr(retrieval, "default_embedder", lambda: tiny_embedder)
    write(tmp_path / "site" / "kb" / "faq.csv", "Kysymys;Vastaus\nWie sperre ich meine Karte?;In der App unter Karten.\n"
                                                "Was kostet eine Überweisung?;Nichts im Inland.\n")
    assert main(["chat", "index", "--kb", str(tmp_path / "site" / "kb"), "--out", str(tmp_path / "site"), "--json"]) == 2
    assert "holds the knowledge folder" in capsys.readouterr().err
    assert not (tmp_path / "site" / "manifest.json").exists()
    assert main(["chat", "index", "--kb", str(tmp_path / "site" / "kb"), "--out", str(tmp_path / "index"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["documents"] == 2 and len(summary["warnings"]) == 1
    assert "faq.csv" in summary["warnings"][0] and "read as a header" in summary["warnings"][0]


# ---- knowledge and intents in other languages and legacy encodings ----

FAQ_ZH = "question,answer\n如何挂失银行卡？,请立即拨打客服热线。\n怎么修改密码？,登录网上银行修改。\n"
FAQ_JA = "question,answer\nカードを紛失しました,すぐにアプリでカードを停止してください。\n"


FAQ_ZH_TRADITIONAL = "question,answer\n如何掛失銀行卡？,請立即撥打客服熱線。\n"


@pytest.mark.parametrize("text,encoding", [(FAQ_ZH, "gb18030"), (FAQ_ZH_TRADITIONAL, "big5"), (FAQ_JA, "cp932")])
def test_legacy_chinese_and_japanese_encodings_are_read(text, encoding):
    data = text.encode("gbk" if encoding == "gb18030" else encoding)
    assert decode_text(data) == (text, encoding)


@pytest.mark.parametrize("text,encoding", [("question,answer\nКак заблокировать карту?,Позвоните нам.\n", "cp1251"),
                                           ("question,answer\nКак заблокировать карту?,Позвоните нам.\n", "koi8_r"),
                                           ("question,answer\nكيف أوقف بطاقتي؟,اتصل بخدمة العملاء.\n", "cp1256")])
def test_other_legacy_code_pages_are_refused_not_read_as_mojibake(text, encoding):
    with pytest.raises(ValueError, match="no Western language .*save it as UTF-8"):
        decode_text(text.encode(encoding))


@pytest.mark.parametrize("text", ["Größe und Gewicht", "He said “don’t” – it costs €5 … £3 • 20°C",
                                  "¿Cómo bloqueo mi tarjeta? ¡Ahora!", "Ça coûte 5 € à l’année, naïve Zoë",
                                  "Box size?,It is 10×20 cm", "±2 mm, ½ price, 80 m², 500 ¥", "don´t and über apply",
                                  "can´t"])
def test_western_windows_1252_is_still_read(text):
    assert decode_text(text.encode("cp1252")) == (text, "cp1252")


def test_utf8_and_windows_1252_mixed_in_one_file_is_an_error():
    with pytest.raises(ValueError, match="damaged or mixed-encoding"):
        decode_text("Café résumé ".encode() + "naïve déjà vu à côté".encode("cp1252"))


def test_text_is_read_in_composed_form_so_labels_match_as_typed():
    import unicodedata
    decomposed = unicodedata.normalize("NFD", "text,label\nÜberweisung,gebühren\n")
    assert decode_text(decomposed.encode())[0] == "text,label\nÜberweisung,gebühren\n"


@pytest.mark.parametrize("name,content", [
    ("ids.csv", "ID;Frage;Antwort\nk1;Wie ändere ich meine PIN?;In der App unter Karten.\n"),
    ("keys.json", '[{"frage": "Wie ändere ich meine PIN?", "antwort": "In der App unter Karten."}]'),
    ("faq.txt", "Frage: Wie ändere ich meine PIN?\nAntwort: In der App unter Karten.\n"
                "Frage: Was kostet eine Überweisung?\nAntwort: Nichts.\n"),
    ("faq_zh.txt", "问：如何修改密码？\n答：在手机银行修改。\n问：营业时间？\n答：周一至周五。\n")])
def test_knowledge_named_in_other_languages(tmp_path, name, content):
    docs = load_knowledge(write(tmp_path / name, content))
    assert docs[0].title in ("Wie ändere ich meine PIN?", "如何修改密码？")
    assert docs[0].text in ("In der App unter Karten.", "在手机银行修改。")
    assert len(docs) == (2 if name.endswith(".txt") else 1)


def test_intent_columns_named_in_other_languages(tmp_path):
    data = read_intent_file(write(tmp_path / "zh.csv", "文本,意图\n我的卡丢了,挂失\n忘记密码了,密码\n"))
    assert (data.text_column, data.label_column, data.texts, data.labels) == (
        "文本", "意图", ["我的卡丢了", "忘记密码了"], ["挂失", "密码"])


def test_keyword_search_folds_width_and_keeps_vowel_signs():
    from apps.customer_service.retrieval import lexical_terms
    assert lexical_terms("ＡＴＭ Gebühren") == ["atm", "gebühren"]
    assert lexical_terms("मेरा कार्ड खो गया") == ["मेरा", "कार्ड", "खो", "गया"]
