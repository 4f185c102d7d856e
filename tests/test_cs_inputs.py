"""The customer-service readers on inputs a help desk really hands over and that were once misread: YAML
1.1 scalars, repeated keys, prose punctuation beside the delimiter, help-centre exports, class ids and
lists in JSON records, headers in other languages, HTML and Markdown headings. Tiny files the tests write."""
import json
import logging

import pytest
from chat_fakes import write

from apps.cli import main
from apps.customer_service.intents import read_intent_file
from data_connectors.knowledge import KnowledgeFormatError, collected_warnings, knowledge_files, load_knowledge
from data_connectors.text_files import MAX_CELL_CHARS, LabelledTextError, sniff_delimiter


def rows(data) -> list[tuple[str, str]]:
    return list(zip(data.texts, data.labels))


# ---- YAML ----

def test_yaml_scalars_stay_the_text_written(tmp_path):
    own = write(tmp_path / "own.yaml", "intents:\n  yes: [sure, okay]\n  no:\n    - nope\n  on:\n    - turn it on\n"
                                       "  pin:\n    - 1234\n    - 1.5\n    - 2024-01-01\n")
    assert rows(read_intent_file(own)) == [("sure", "yes"), ("okay", "yes"), ("nope", "no"), ("turn it on", "on"),
                                           ("1234", "pin"), ("1.5", "pin"), ("2024-01-01", "pin")]
    listed = write(tmp_path / "list.yml", "intents:\n  - name: off\n    examples: [stop, halt]\n"
                                          "  - name: 404\n    examples: [not found]\n")
    assert rows(read_intent_file(listed)) == [("stop", "off"), ("halt", "off"), ("not found", "404")]
    rasa = write(tmp_path / "nlu.yml", 'version: "3.1"\nnlu:\n- intent: yes\n  examples: |\n    - yes\n    - sure\n'
                                       "- intent: no\n  examples: |\n    - no\n")
    assert rows(read_intent_file(rasa)) == [("yes", "yes"), ("sure", "yes"), ("no", "no")]


def test_a_yaml_key_repeated_in_one_mapping_is_an_error_naming_it_and_its_lines(tmp_path):
    path = write(tmp_path / "dup.yaml", "intents:\n  card_lost:\n    - lost it\n  balance:\n    - money\n"
                                        "  card_lost:\n    - stolen\n")
    with pytest.raises(LabelledTextError, match=r"dup.yaml, line 6: .*'card_lost' appears twice .*lines 2 and 6"):
        read_intent_file(path)


# ---- delimiters ----

GERMAN = [("Hallo, ich habe meine Karte verloren", "karte"), ("Bitte, sperren Sie meine Karte", "karte"),
          ("Guten Tag, wie hoch ist mein Kontostand", "konto"), ("Hallo, was ist mein Saldo", "konto")]


def test_prose_commas_do_not_win_a_tie_against_the_semicolon_delimiter(tmp_path):
    text = "".join(f"{t};{y}\n" for t, y in GERMAN)
    assert sniff_delimiter(text) == ";"
    data = read_intent_file(write(tmp_path / "de.csv", text))
    assert (data.delimiter, rows(data)) == (";", GERMAN)
    faq = write(tmp_path / "faq.csv", "Hallo, wie sperre ich meine Karte?;In der App.\n"
                                      "Sagen Sie, was kostet es?;Nichts, im Inland.\n")
    assert [(d.title, d.text) for d in load_knowledge(faq)] == [
        ("Hallo, wie sperre ich meine Karte?", "In der App."), ("Sagen Sie, was kostet es?", "Nichts, im Inland.")]
    assert sniff_delimiter("a,b\nc,d\n") == ","   # a plain comma table is still one


def test_an_excel_sep_line_declares_the_delimiter_and_big_cells_are_read(tmp_path):
    data = read_intent_file(write(tmp_path / "sep.csv", "sep=;\ntext;label\nhi, you;greet\nbye, now;bye\n"
                                                       "hello, there;greet\nciao, bella;bye\n"))
    assert (data.delimiter, data.header, data.texts[0]) == (";", True, "hi, you")
    big = "x" * (131072 + 10)   # over the csv module's default field limit
    [doc] = load_knowledge(write(tmp_path / "big.csv", f"question,answer\nbig?,{big}\n"))
    assert doc.text == big
    huge = write(tmp_path / "huge.csv", 'question,answer\nq,"' + "y" * (MAX_CELL_CHARS + 1) + '"\n')
    with pytest.raises(KnowledgeFormatError, match=r"huge.csv:2: malformed CSV: a cell over .* characters"):
        load_knowledge(huge)


# ---- JSON intents ----

def test_json_class_ids_are_labels_and_bad_labels_say_what_is_wrong(tmp_path):
    lines = [{"text": "lost card", "label": 0}, {"text": "balance", "label": 1}, {"text": "stolen", "label": 0.0}]
    data = read_intent_file(write(tmp_path / "ids.jsonl", "\n".join(map(json.dumps, lines))))
    assert data.labels == ["0", "1", "0"]
    for value, problem in ((True, "a boolean"), (None, "null"), (0.5, "a fraction")):
        path = write(tmp_path / "bad.jsonl", json.dumps({"text": "a", "label": 1}) + "\n"
                     + json.dumps({"text": "b", "label": value}) + "\n")
        with pytest.raises(LabelledTextError, match=rf"bad.jsonl, line 2: the label is {problem}"):
            read_intent_file(path)


def test_json_lists_of_texts_give_a_row_each_and_several_labels_are_refused(tmp_path):
    grouped = [{"intent": "card_lost", "utterances": ["I lost my card", "card stolen"]},
               {"intent": "balance", "utterances": ["my balance"]}]
    data = read_intent_file(write(tmp_path / "grouped.json", json.dumps(grouped)))
    assert rows(data) == [("I lost my card", "card_lost"), ("card stolen", "card_lost"), ("my balance", "balance")]
    single = [{"text": "lost card", "labels": ["card"]}, {"text": "money", "labels": ["balance"]}]
    assert read_intent_file(write(tmp_path / "one.jsonl", "\n".join(map(json.dumps, single)))).labels == [
        "card", "balance"]
    multi = single + [{"text": "lost card and money", "labels": ["card", "balance"]}]
    with pytest.raises(LabelledTextError, match=r"multi.jsonl, line 3: 2 labels .*multi-label rows are not"):
        read_intent_file(write(tmp_path / "multi.jsonl", "\n".join(map(json.dumps, multi))))
    with pytest.raises(LabelledTextError, match=r"record 2: .*multi-label"):
        read_intent_file(write(tmp_path / "multi.json", json.dumps(multi[1:])))


# ---- headers ----

def test_headers_in_other_scripts_or_naming_only_the_labels_are_headers(tmp_path):
    es = ("metin;niyet\n¿Dónde está mi tarjeta?;tarjeta\nPerdí mi tarjeta;tarjeta\nQuiero un préstamo;préstamo\n"
          "Necesito dinero ahora;préstamo\n")
    data = read_intent_file(write(tmp_path / "es.csv", es, "cp1252"))
    assert (data.header, data.texts[0], data.labels[-1]) == (True, "¿Dónde está mi tarjeta?", "préstamo")
    assert "read as a header" in data.warnings[0]
    zh = read_intent_file(write(tmp_path / "zh.csv", "文本,标签\n我的卡丢了,挂失\n卡被偷了,挂失\n余额多少,余额\n"
                                                     "查询余额,余额\n"))
    assert (zh.header, zh.text_column, zh.label_column, len(zh.texts)) == (True, "文本", "标签", 4)
    de = read_intent_file(write(tmp_path / "de.csv", "Äußerung;Absicht\n" + "".join(f"{t};{y}\n" for t, y in GERMAN)))
    assert (de.header, rows(de)) == (True, GERMAN)
    named = read_intent_file(write(tmp_path / "id.csv", "id,Sample utterance,Intent\n1,I lost my card,card_lost\n"
                                                        "2,my card was stolen,card_lost\n3,what is my balance,balance\n"
                                                        "4,how much money do I have,balance\n"))
    assert (named.header, named.text_column, named.label_column, named.warnings) == (
        True, "Sample utterance", "Intent", [])
    # a known name that recurs in its column is a value (a class called "topic"), not a header
    topic = read_intent_file(write(tmp_path / "topic.csv", "x,what is this about,topic\ny,tell me the subject,topic\n"
                                                           "z,send money now,pay\nw,pay my bill please,pay\n"))
    assert (topic.header, topic.labels) == (False, ["topic", "topic", "pay", "pay"])


def test_a_faq_table_with_a_header_in_another_language_is_not_a_passage(tmp_path, caplog):
    path = write(tmp_path / "frage.csv", "Kysymys;Vastaus\nWie sperre ich meine Karte?;In der App unter Karten.\n"
                                         "Was kostet eine Überweisung?;Nichts im Inland.\n")
    with caplog.at_level(logging.WARNING, "data_connectors.knowledge"):
        docs = load_knowledge(path)
    assert [d.title for d in docs] == ["Wie sperre ich meine Karte?", "Was kostet eine Überweisung?"]
    assert "read as a header" in caplog.text
    plain = load_knowledge(write(tmp_path / "plain.csv", "Opening hours;9 to 5 on weekdays\nFees;None\n"))
    assert [d.title for d in plain] == ["Opening hours", "Fees"]   # answers not longer than the first row: data


# ---- repeated rows ----

def test_repeated_rows_and_conflicting_labels_are_reported(tmp_path):
    data = read_intent_file(write(tmp_path / "dups.csv", "text,label\nlost card,card\nlost card,card\n"
                                                         "lost card,balance\nbalance,balance\nmoney,balance\n"))
    assert len(data.texts) == 5 and len(data.warnings) == 2
    assert "1 row(s) repeat" in data.warnings[0] and "'lost card' as 'card', 'balance'" in data.warnings[1]
    clean = read_intent_file(write(tmp_path / "clean.csv", "text,label\nhi,greet\nbye,bye\n"))
    assert clean.warnings == []


# ---- knowledge ----

def test_a_help_centre_export_reads_its_articles_not_its_sideloaded_lists(tmp_path, caplog):
    export = {"articles": [{"id": 101, "title": "Reset password", "body": "<p>Click <b>Forgot password</b>.</p>"},
                           {"id": 102, "title": "Close account", "body": "<p>Write to us.</p>"}],
              "sections": [{"id": 5, "name": "Account", "description": "All about accounts"}],
              "categories": [{"id": 1, "name": "General"}], "count": 2}
    with caplog.at_level(logging.WARNING, "data_connectors.knowledge"):
        docs = load_knowledge(write(tmp_path / "zendesk.json", json.dumps(export)))
    assert [(d.id, d.title, d.text) for d in docs] == [("101", "Reset password", "Click Forgot password."),
                                                       ("102", "Close account", "Write to us.")]
    assert "articles" in caplog.text and "sections, categories, count" in caplog.text
    two = {"general": [{"q": "Hours?", "a": "9 to 5."}], "billing": [{"q": "Fees?", "a": "None."}],
           "users": [{"x": 1}]}
    assert [d.title for d in load_knowledge(write(tmp_path / "two.json", json.dumps(two)))] == ["Hours?", "Fees?"]


def test_html_and_markdown_headings_keep_their_words(tmp_path):
    write(tmp_path / "br.html", "<h1>Help</h1><p>Welcome.</p><h2>Fees<br>and charges</h2><p>15 EUR abroad.</p>"
                                "<h2>Card<br/>limits</h2><p>500 a day.</p>")
    write(tmp_path / "open.html", "<h2>Card fees<p>A new card costs 5.<p>Express costs 10.\n"
                                  "<h2>Hours</h2><p>9 to 5.</p>")
    write(tmp_path / "wrapped.html", "<h2><span>Limits</span></h2><h3><div>Daily</div></h3><p>500 a day.</p>")
    write(tmp_path / "cs.md", "# Using our API from C#\nInstall the package.\n## Closed ##\nYes.\n")
    docs = {d.id: (d.title, d.text) for d in load_knowledge(tmp_path)}
    assert docs["br#fees-and-charges"] == ("Help / Fees and charges", "15 EUR abroad.")
    assert docs["br#card-limits"] == ("Help / Card limits", "500 a day.")
    assert docs["open#card-fees"] == ("Card fees", "A new card costs 5.\n\nExpress costs 10.")
    assert docs["open#hours"] == ("Hours", "9 to 5.")
    assert docs["wrapped#daily"] == ("Limits / Daily", "500 a day.")
    assert docs["cs#using-our-api-from-c"] == ("Using our API from C#", "Install the package.")
    assert docs["cs#closed"] == ("Using our API from C# / Closed", "Yes.")


def test_a_saved_index_inside_the_knowledge_folder_is_not_knowledge(tmp_path):
    from apps.customer_service.retrieval import CHUNKS, MANIFEST, VECTORS, saved_indexes

    write(tmp_path / "kb" / "faq.md", "# Hours\nOpen 9 to 5.\n")
    for name, content in ((MANIFEST, "{}"), (CHUNKS, json.dumps([{"text": "a chunk"}])), (VECTORS, b"\0")):
        write(tmp_path / "kb" / "index" / name, content)
    assert saved_indexes(tmp_path / "kb") == [tmp_path / "kb" / "index"]
    assert [d.id for d in load_knowledge(tmp_path / "kb", exclude=saved_indexes(tmp_path / "kb"))] == ["faq#hours"]
    files, _ = knowledge_files(tmp_path / "kb", exclude=[tmp_path / "kb" / "index"])
    assert files == [tmp_path / "kb" / "faq.md"]


# ---- the CLI and the page ----

def test_train_intents_refuses_an_output_folder_it_cannot_replace_before_training(tmp_path, capsys, monkeypatch):
    from apps.customer_service import intents

    def never(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(intents.IntentModel, "train", never)
    write(tmp_path / "notes" / "a.txt", "keep")
    data = write(tmp_path / "d.csv", "text,label\nhi,greet\nbye,bye\n")
    assert main(["chat", "train-intents", "--data", str(data), "--out", str(tmp_path / "notes"), "--json"]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err and (tmp_path / "notes" / "a.txt").read_text() == "keep"


def test_the_retrain_page_shows_the_readers_warnings(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from apps.customer_service import intents, page

    switched = {}
    monkeypatch.setattr(intents.IntentModel, "train",
                        classmethod(lambda cls, texts, labels, cfg: (
                            SimpleNamespace(labels=labels, calibration_warning=None),
                                                                     SimpleNamespace(val_accuracy=None))))
    monkeypatch.setattr(page, "shared_assistant", lambda: SimpleNamespace(use=lambda **kw: switched.update(kw)))
    path = write(tmp_path / "first.csv", "block card,card_block\n" + "".join(
        f"{t},{y}\n" for t, y in [("lost my card", "lost_card"), ("card stolen", "lost_card"),
                                  ("my balance", "balance"), ("how much money", "balance")]))
    statuses = list(page.retrain(str(path), None))
    assert "first row" in statuses[0] and "first row" in statuses[-1] and "**warning:**" in statuses[-1]
    assert str(tmp_path) not in statuses[-1] and switched["intent_model"] is not None


# ---- a review of the fixes above: regressions and gaps ----

def test_sniffing_and_reading_agree_on_big_cells_whatever_ran_before(tmp_path):
    import csv

    path = write(tmp_path / "big.csv", "question;answer\nbig?;" + "x" * 200_000 + "\nsmall?;tiny\n")
    before = csv.field_size_limit(131072)   # as a fresh process starts: the sniffer ran at this limit
    try:
        assert [d.title for d in load_knowledge(path)] == ["big?", "small?"]
    finally:
        csv.field_size_limit(before)


def test_a_quote_left_open_that_swallows_rows_is_an_error_naming_where_it_opened(tmp_path):
    rows = "".join(f"Question {i}?,Answer number {i} is here.\n" for i in range(300))
    kb = write(tmp_path / "kb.csv", 'question,answer\nHours?,9 to 5\nFees?,"None at all\n' + rows)
    with pytest.raises(KnowledgeFormatError, match=r"kb.csv:3: malformed CSV: the quote opened on line 3 is never"):
        load_knowledge(kb)
    labels = "".join(f"text number {i},label{i % 5}\n" for i in range(300))
    intents = write(tmp_path / "int.csv", 'text,label\nhi,greet\nbye,"bye\n' + labels)
    with pytest.raises(LabelledTextError, match=r"int.csv, line 3: malformed CSV: the quote opened on line 3"):
        read_intent_file(intents)
    # closed by a later quote: the cell holds the rows between
    later = write(tmp_path / "later.csv", 'question,answer\nFees?,"None at all\n' + rows + 'Last?,"Yes."\n')
    with pytest.raises(KnowledgeFormatError, match=r"later.csv:2: .*opened on line 2 holds 301 lines that read as rows"):
        load_knowledge(later)
    label = write(tmp_path / "label.csv", 'text,label\nhi,"greet\nhello,greet"\nbye,bye\nciao,bye\n')
    with pytest.raises(LabelledTextError, match=r"label.csv, line 2: the `label` cell runs over 2 lines"):
        read_intent_file(label)
    # quoted answers over several lines (commas and all) still read
    steps = "".join(f"Step {i}, then wait.\n" for i in range(1, 6))
    ok = write(tmp_path / "ok.csv", f'question,answer\nHow do I pay?,"{steps}"\nHours?,"9 to 5,\nweekdays"\n')
    assert [(d.title, d.text) for d in load_knowledge(ok)] == [("How do I pay?", steps.strip()),
                                                               ("Hours?", "9 to 5,\nweekdays")]


def test_a_short_headerless_faq_first_row_is_a_passage_not_a_header(tmp_path, caplog):
    en = write(tmp_path / "faq.csv", "Opening hours,Monday to Friday\nReset my password,Use the Forgot password link "
                                     "on the sign-in page\nClose my account,Write to us from Settings in the app\n")
    zh = write(tmp_path / "zh.csv", "营业时间,周一至周五\n如何重置密码,请在登录页点击忘记密码链接\n如何关闭账户,请在应用的设置中联系我们\n")
    with caplog.at_level(logging.WARNING, "data_connectors.knowledge"):
        assert [d.title for d in load_knowledge(en)] == ["Opening hours", "Reset my password", "Close my account"]
        assert [d.title for d in load_knowledge(zh)][0] == "营业时间"
    assert caplog.text.count("read as a passage, though it could be a header") == 2


def test_a_knowledge_row_without_its_trailing_optional_columns_reads_with_a_multi_line_answer(tmp_path):
    path = write(tmp_path / "faq.csv", 'question,answer,tags\nHow do I pay?,"Step 1: open the app.\nStep 2: tap Pay."\n'
                                       "Hours?,9 to 5,info\n")
    assert [(d.title, d.text) for d in load_knowledge(path)] == [
        ("How do I pay?", "Step 1: open the app.\nStep 2: tap Pay."), ("Hours?", "9 to 5")]


def test_the_export_picker_keeps_every_list_of_passages_and_drops_people(tmp_path, caplog):
    two = {"faqs": [{"question": "How do I pay?", "answer": "Tap Pay."}],
           "articles": [{"title": "Card fees", "body": "A new card costs 5 EUR."}]}
    with caplog.at_level(logging.WARNING, "data_connectors.knowledge"):
        assert [d.title for d in load_knowledge(write(tmp_path / "two.json", json.dumps(two)))] == [
            "How do I pay?", "Card fees"]
    assert "left out" not in caplog.text
    authors = {"articles": [{"title": "Card fees", "content": "A new card costs 5 EUR."}],
               "authors": [{"name": "Ann", "text": "Ann writes about cards."}]}
    with caplog.at_level(logging.WARNING, "data_connectors.knowledge"):
        assert [d.title for d in load_knowledge(write(tmp_path / "a.json", json.dumps(authors)))] == ["Card fees"]
    assert "left out authors" in caplog.text
    # records titled by a name, but with article-length bodies: passages
    long = " ".join(["The Everyday account has no monthly fee and pays no interest."] * 4)
    products = {"articles": [{"title": "Card fees", "body": "5 EUR."}], "products": [{"name": "Everyday", "text": long}]}
    assert [d.title for d in load_knowledge(write(tmp_path / "p.json", json.dumps(products)))] == [
        "Card fees", "Everyday"]


def test_a_short_unique_first_intent_row_stays_an_example(tmp_path):
    body = ("where is my new card,card_arrival\nmy card has not arrived yet,card_arrival\n"
            "what is my current balance,balance\nhow much money is in my account,balance\n")
    data = read_intent_file(write(tmp_path / "thanks.csv", "Thanks a lot,thanks\n" + body))
    assert (data.header, data.texts[0], data.labels[0]) == (False, "Thanks a lot", "thanks")
    assert "first row" in data.warnings[0]
    named = read_intent_file(write(tmp_path / "named.csv", "Beispiel,Absicht\n" + body))   # column names: a header
    assert (named.header, named.texts[0]) == (True, "where is my new card")


def test_a_header_repeated_inside_a_pasted_together_file_is_left_out_with_a_warning(tmp_path, caplog):
    data = read_intent_file(write(tmp_path / "cat.csv", "text,label\nI lost my card,card_lost\nmy card was stolen,"
                                  "card_lost\nwhat is my balance,balance\ntext,label\nhow much money do I have,balance\n"
                                  "card gone missing,card_lost\n"))
    assert (data.header, len(data.texts), "text" in data.texts) == (True, 5, False)
    assert "appears again on line(s) 5" in data.warnings[0]
    with caplog.at_level(logging.WARNING, "data_connectors.knowledge"):
        docs = load_knowledge(write(tmp_path / "kb.csv", "question,answer\nHours?,9 to 5\nquestion,answer\nFees?,None\n"))
    assert [d.title for d in docs] == ["Hours?", "Fees?"] and "appears again on line(s) 3" in caplog.text


def test_repeated_intent_names_outside_yaml_mappings_lose_nothing_silently(tmp_path):
    listed = write(tmp_path / "list.yaml", "intents:\n  - name: card_lost\n    examples: [lost it]\n  - name: balance\n"
                                           "    examples: [money]\n  - name: card_lost\n    examples: [stolen]\n")
    data = read_intent_file(listed)
    assert sorted(rows(data)) == [("lost it", "card_lost"), ("money", "balance"), ("stolen", "card_lost")]
    assert "intent 'card_lost' is listed 2 times (items 1, 3)" in data.warnings[0]
    obj = write(tmp_path / "dup.json", '{"intents": {\n"card_lost": ["lost it"],\n"balance": ["money"],\n'
                                       '"card_lost": ["stolen"]}}')
    with pytest.raises(LabelledTextError, match=r"dup.json, line 4: the key 'card_lost' appears twice .*lines 2 and 4"):
        read_intent_file(obj)


def test_the_repeated_row_warning_says_how_training_and_evaluation_count_them(tmp_path):
    data = read_intent_file(write(tmp_path / "d.csv", "text,label\nhi,greet\nhi,greet\nbye,bye\n"))
    assert "training reads each once, an evaluation counts every copy" in data.warnings[0]


def test_a_long_well_quoted_article_with_commas_on_every_line_is_read(tmp_path, caplog):
    body = "\n".join(f"Line {i}, with two commas, like a row" for i in range(40))
    rows = "".join(f'{i},Title {i},"Short body {i}, fine, ok"\n' for i in range(40))
    path = write(tmp_path / "articles.csv", f'id,title,body\n100,Guide,"{body}"\n' + rows)
    docs = load_knowledge(path)
    assert len(docs) == 41 and docs[0].text == body
    # well-formed CSV (a stray quote at a field's end closes the cell): read, with a warning, never refused
    sneaky = write(tmp_path / "stray.csv", 'id,title,body\n1,Fees,"None\n' + "".join(
        f"{i},Title {i},Body {i} here\n" for i in range(2, 60)) + '60,TV,55"\n61,Last,End\n')
    with caplog.at_level(logging.WARNING, "data_connectors.knowledge"):
        assert [d.title for d in load_knowledge(sneaky)] == ["Fees", "Last"]
    assert "stray.csv: the quoted cell opened on line 2 holds 59 lines shaped like rows" in caplog.text


# ---- a second review: strictly well-formed files refused, wrong lines ----

def test_well_quoted_lists_and_tables_in_one_cell_are_read_not_refused(tmp_path):
    branches = "\n".join(f"Branch {i}, {i} High Street" for i in range(22))
    prices = "\n".join(f"Product {i}\t{i} pounds" for i in range(22))
    pipes = "\n".join(f"| plan {i} | {i} GBP |" for i in range(22))
    sample = "\n".join(f"text,label\nhello {i},greet" for i in range(11))
    cases = {"list.csv": f'question,answer\nWhich branches open on Saturday?,"These:\n{branches}"\nHours?,9 to 5\n',
             "prices.tsv": f'question\tanswer\nWhat are the fees?\t"Our fees:\n{prices}"\nHours?\t9 to 5\n',
             "pipes.csv": f'question|answer\nPlans?|"The plans:\n{pipes}"\nHours?|9 to 5\n',
             "sample.csv": f'question,answer\nHow should my file look?,"Like this:\n{sample}"\nHours?,9 to 5\n'}
    for name, content in cases.items():
        docs = load_knowledge(write(tmp_path / name, content))
        assert [d.title for d in docs][1] == "Hours?" and len(docs) == 2, name
    listed = read_intent_file(write(tmp_path / "int.csv", f'text,label\n"Which branches:\n{branches}",branches\n'
                                                          "hi,greet\n"))
    assert len(listed.texts) == 2 and any("22 lines shaped like rows" in w for w in listed.warnings)


def test_a_strict_csv_slip_beside_a_multi_line_cell_is_no_open_quote(tmp_path):
    space = write(tmp_path / "space.csv", 'question,answer\nHow do I pay?,"Open the app, tap Pay.\nCheck the amount, '
                                          'the payee.\nConfirm, done." \nHours?,9 to 5\n')
    assert [d.text for d in load_knowledge(space)] == [
        "Open the app, tap Pay.\nCheck the amount, the payee.\nConfirm, done.", "9 to 5"]
    word = write(tmp_path / "word.csv", 'question,answer\n"Premium" account fees?,"It costs, per month:\n5 pounds, '
                                        'in the UK\n7 pounds, abroad"\nHours?,9 to 5\n')
    assert [d.title for d in load_knowledge(word)] == ["Premium account fees?", "Hours?"]
    intents = write(tmp_path / "int.csv", 'text,label\n"Premium" fees?,fees\n"Open the app, tap Pay.\nCheck the '
                                          'amount, the payee.\nConfirm, done." ,pay\nhello,greet\n')
    assert read_intent_file(intents).labels == ["fees", "pay", "greet"]
    # a quote closed by a later row's opening quote is still an open quote, named where it opened
    rows = "".join(f"Question {i}?,Answer {i}.\n" for i in range(5))
    later = write(tmp_path / "later.csv", f'question,answer\nHours?,9 to 5\nFees?,"None at all\n{rows}Last?,"Yes."\n')
    with pytest.raises(KnowledgeFormatError, match=r"later.csv:3: .*opened on line 3 holds 6 lines that read as rows"):
        load_knowledge(later)


def test_a_short_row_beside_a_multi_line_cell_with_commas_is_read(tmp_path):
    path = write(tmp_path / "faq.csv", 'question,answer,tags\nHow do I pay?,"Open the app, tap Cards, then Pay.\n'
                                       'Check the amount, the payee, and confirm."\nHours?,9 to 5,info\n')
    assert [d.title for d in load_knowledge(path)] == ["How do I pay?", "Hours?"]


def test_a_repeated_json_key_is_reported_on_its_own_lines(tmp_path):
    same = write(tmp_path / "same.json", '[\n{"text": "hi", "label": "greet"},\n{"text": "hello", "label": "greet"},\n'
                                         '{"text": "my card is late", "label": "card", "label": "card_arrival"}\n]\n')
    with pytest.raises(LabelledTextError, match=r"same.json, line 4: the key 'label' appears twice in one object;"):
        read_intent_file(same)
    apart = write(tmp_path / "apart.json", '{"intents": {\n"greet": ["hi"],\n"card": {"label": "x"},\n'
                                           '"balance": ["money"],\n"card": ["late"]}}')
    with pytest.raises(LabelledTextError, match=r"apart.json, line 5: the key 'card' .*\(lines 3 and 5\)"):
        read_intent_file(apart)


def test_a_three_word_header_over_capitalised_labels_is_a_header(tmp_path):
    data = read_intent_file(write(tmp_path / "es.csv", "Müşteri metni,Sınıf\nhola buenos días,Saludo\n"
                                  "buenos días a todos,Saludo\ndónde está mi tarjeta,Tarjeta\nmi tarjeta no ha llegado,"
                                  "Tarjeta\n"))
    assert (data.header, data.texts[0], data.labels[0]) == (True, "hola buenos días", "Saludo")
    assert "read as a header" in data.warnings[0]
    body = "where is my new card,Card\nmy card has not arrived yet,Card\nhow much money is left,Balance\n" \
           "what is my balance now,Balance\n"
    thanks = read_intent_file(write(tmp_path / "thanks.csv", "Thanks a lot,Thanks\n" + body))   # names its class
    assert (thanks.header, thanks.texts[0]) == (False, "Thanks a lot")


def test_train_intents_says_to_choose_another_out(tmp_path, capsys):
    write(tmp_path / "notes" / "a.txt", "keep")
    data = write(tmp_path / "d.csv", "text,label\nhi,greet\nbye,bye\n")
    assert main(["chat", "train-intents", "--data", str(data), "--out", str(tmp_path / "notes"), "--json"]) == 2
    assert "choose another path" in capsys.readouterr().err


# ---- a final review: silent reads and warnings that went missing ----

INTENTS_DE = ["Ich habe meine Karte verloren heute morgen,karte", "Wie hoch ist mein Kontostand bitte,konto",
          "Ich möchte eine Überweisung machen jetzt,ueberweisung", "Meine Karte wurde gestohlen gestern,karte",
          "Zeig mir meinen Kontostand bitte jetzt,konto", "Ich will Geld an meine Mutter senden,ueberweisung"]
FAQ_DE = ["Wie sperre ich meine Karte?;Öffnen Sie die App und tippen Sie auf Karte sperren.",
          "Wie ändere ich meine Adresse?;Gehen Sie in der App auf Profil und dann auf Adresse ändern.",
          "Wann sind Sie erreichbar?;Unser Telefonservice ist montags bis freitags für Sie da.",
          "Was kostet eine neue Karte?;Eine Ersatzkarte kostet fünf Euro und kommt per Post."]


def test_a_quote_left_open_that_swallows_one_row_is_an_error(tmp_path):
    path = write(tmp_path / "one.csv", 'text,label\nhello there,greet\ngood morning,greet\n"I lost my card,card\n'
                                       'my card was stolen,card\n"what is my balance",balance\nhow much money,balance\n')
    with pytest.raises(LabelledTextError, match=r"one.csv, line 4: malformed CSV: the quoted cell opened on line 4"):
        read_intent_file(path)


def test_a_header_told_by_its_shape_and_repeated_inside_is_left_out_with_a_warning(tmp_path):
    data = read_intent_file(write(tmp_path / "two.csv", "Satz,Kategorie\n" + "\n".join(INTENTS_DE[:3])
                                  + "\nSatz,Kategorie\n" + "\n".join(INTENTS_DE[3:]) + "\n"))
    assert (data.header, len(data.texts), "Kategorie" in data.labels) == (True, 6, False)
    assert any("appears again on line(s) 5" in w for w in data.warnings)
    with collected_warnings() as logged:
        docs = load_knowledge(write(tmp_path / "faq.csv", "Frage;Antwort\n" + "\n".join(FAQ_DE[:2])
                                    + "\nFrage;Antwort\n" + "\n".join(FAQ_DE[2:]) + "\n"))
    assert [d.title for d in docs] == [row.split(";")[0] for row in FAQ_DE]
    assert any("appears again on line(s) 4" in w for w in logged)


def test_a_key_repeated_in_one_json_object_is_an_error_in_every_json_reader(tmp_path):
    lines = write(tmp_path / "r.jsonl", '{"text": "hi", "label": "greet"}\n'
                                        '{"text": "lost my card", "label": "card", "label": "balance"}\n')
    with pytest.raises(LabelledTextError, match=r"r.jsonl, line 2: the key 'label' appears twice in one object"):
        read_intent_file(lines)
    kb = write(tmp_path / "kb.json", '{"Opening hours": "Mon-Fri 8-18.",\n"Fees": "None.",\n"Opening hours": "Sat."}')
    with pytest.raises(KnowledgeFormatError, match=r"kb.json:3: the key 'Opening hours' appears twice .*lines 1 and 3"):
        load_knowledge(kb)
    kb_lines = write(tmp_path / "kb.jsonl", '{"title": "Fees", "text": "None."}\n{"text": "a", "text": "b"}\n')
    with pytest.raises(KnowledgeFormatError, match=r"kb.jsonl:2: the key 'text' appears twice"):
        load_knowledge(kb_lines)


def test_chat_index_prints_the_readers_warnings(tmp_path, monkeypatch, capsys):
    from apps.customer_service import retrieval

    built = {}

    def build(docs, out, cfg, progress=None):   # the warnings come before the index; no model needed
        built["docs"] = len(docs)
        raise ValueError("stop before embedding")

    monkeypatch.setattr(retrieval.KnowledgeIndex, "build", staticmethod(build))
    faq = write(tmp_path / "faq.csv", "Kysymys;Vastaus\n" + "\n".join(FAQ_DE) + "\n")
    assert main(["chat", "index", "--kb", str(faq), "--out", str(tmp_path / "index")]) == 2
    err = capsys.readouterr().err
    assert built["docs"] == 4 and f"warning: {faq}: the first row ['Kysymys', 'Vastaus'] was read as a header" in err


def test_every_reader_warning_starts_with_the_file(tmp_path):
    path = write(tmp_path / "clinc.json", json.dumps({"train": [["hi", "greet"], ["bye", "leave"]],
                                                      "val": [["hello", "greet"]]}))
    assert read_intent_file(path, split="train").warnings == [
        f"{path}: read the lists train of this file (split 'train')"]


def test_the_retrain_page_leaves_the_upload_folder_out_of_errors(tmp_path):
    import gradio as gr

    from apps.customer_service import page

    bad = write(tmp_path / "uploads" / "bad.csv", "text,label\nhi,greet\nbye\n")
    with pytest.raises(gr.Error) as err:
        list(page.retrain(str(bad), None))
    assert "bad.csv, line 3" in str(err.value) and str(tmp_path) not in str(err.value)


def test_the_intent_and_knowledge_readers_tell_a_header_by_its_shape_alike(tmp_path):
    rows = "Karte verloren?;App öffnen\nKarte gestohlen?;Hotline anrufen\nKontostand sehen?;App nutzen\n" \
           "Saldo zeigen?;Online-Banking nutzen\n"
    path = write(tmp_path / "faq.csv", "Frage;Antwort\n" + rows)
    assert read_intent_file(path, text_column="2", label_column="1").header is True
    assert [d.title for d in load_knowledge(path)][0] == "Karte verloren?"
