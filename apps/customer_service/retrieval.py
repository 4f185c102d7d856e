"""Knowledge retrieval for the customer-service assistant: chunk, embed, index in FAISS, search.

    index = KnowledgeIndex.build(load_knowledge("kb/"), "indexes/bank")  # written atomically
    index = KnowledgeIndex.load("indexes/bank")
    index.search("how do I block my card?", k=5)  # -> [Passage(id, title, text, score, source)]
    index = load_default_index()                  # the bank KB, built into the cache on first use

Chunks are overlapping word windows of each document, embedded as "title\\ntext" by the text stream
under the "retrieval" task (copy-upcycled MiniLM by default): mean-pooled, L2-normalised vectors, so
FAISS inner product = cosine. With `hybrid`, a BM25 ranking of the same texts is fused with the dense
one. Results keep the best chunk per document. An index folder holds index.faiss, chunks.json and
manifest.json (written last: a folder with a manifest is a complete index).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import shutil
import time
import unicodedata
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from core.tasks import task_id
from core.text import TextStream, TextStreamConfig, tokenize, upcycle_minilm
from core.text.tokenizer import unknown_share
from data_connectors.knowledge import KnowledgeDoc, load_knowledge
from data_connectors.text_files import CJK_CHARS, WORD
from apps.settings import cache_dir

DEFAULT_KB = Path(__file__).resolve().parents[2] / "assets" / "customer_service" / "knowledge"
DEFAULT_MODEL = "all-MiniLM-L6-v2 copy-upcycled top-1"  # the name default_embedder() records in manifests
FUSIONS = ("rrf", "weighted")
VECTORS, CHUNKS, MANIFEST = "index.faiss", "chunks.json", "manifest.json"


# Chinese and Japanese text is chunked by character (text_files.WORD) and BM25 indexes the characters
# and their bigrams.
_WORD = WORD
_LEXICAL_WORD = re.compile(r"(?:\w|[\u0300-\u036f\u0900-\u0dff\u0e00-\u0eff\u1000-\u109f])+")   # marks too
_CJK_RUNS = re.compile(rf"([{CJK_CHARS}]+)|[^{CJK_CHARS}]+")  # group 1 set for a run of CJK characters


@dataclass
class IndexConfig:
    """How documents are chunked, indexed and ranked; saved in the manifest and restored on load."""

    chunk_words: int = 120       # words per chunk (~160 MiniLM tokens, under its 256-token window)
    overlap_words: int = 30      # words shared by consecutive chunks of a document
    hybrid: bool = True          # fuse a BM25 ranking with the dense one
    fusion: str = "weighted"     # "weighted": weighted sum of scores | "rrf": reciprocal rank fusion
    lexical_weight: float = 0.1  # "weighted": (1 - w) * cosine + w * BM25 / best BM25 (0.1 was best
                                 # on paraphrased bank queries; BM25 mostly breaks ties on rare words)
    rrf_k: int = 60              # "rrf": a chunk scores sum over rankings of 1 / (rrf_k + rank)
    candidates: int = 50         # chunks each ranker proposes per search (at least 10 * k)
    hnsw_above: int = 100_000    # more chunks than this: approximate HNSW graph, else exact flat search
    hnsw_m: int = 32             # HNSW links per node

    def __post_init__(self) -> None:
        if not 0 <= self.overlap_words < self.chunk_words:
            raise ValueError(f"overlap_words ({self.overlap_words}) must lie in [0, chunk_words "
                             f"({self.chunk_words}))")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not 0 <= self.lexical_weight <= 1:
            raise ValueError(f"lexical_weight must lie in [0, 1], got {self.lexical_weight}")


@dataclass(frozen=True)
class Chunk:
    doc_id: str  # id of the document it was cut from
    title: str
    text: str    # a window of the document's words, original spacing kept
    source: str
    start: int   # index of its first word in the document


@dataclass(frozen=True)
class Passage:
    id: str       # document id
    title: str
    text: str     # the document's best-matching chunk
    score: float  # cosine, or the fused score when the index is hybrid
    source: str


def chunk_documents(docs: Sequence[KnowledgeDoc], chunk_words: int, overlap_words: int) -> list[Chunk]:
    """Each document as windows of `chunk_words` words, consecutive windows sharing `overlap_words`."""
    step, chunks = chunk_words - overlap_words, []
    for doc in docs:
        spans = [m.span() for m in _WORD.finditer(doc.text)]
        for start in range(0, max(len(spans) - overlap_words, 1), step):
            end = min(start + chunk_words, len(spans))
            chunks.append(Chunk(doc.id, doc.title, doc.text[spans[start][0]:spans[end - 1][1]],
                                doc.source, start))
    return chunks


class Embedder:
    """Texts -> L2-normalised pooled vectors [n, D] (float32) of a text stream under one task."""

    def __init__(self, model: TextStream, name: str, task: str = "retrieval", batch_size: int = 64,
                 max_length: int = 256):
        self.model = model.eval()
        self.name = name              # recorded in manifests: an index only loads with the same model
        self.task_id = task_id(task)
        self.batch_size = batch_size  # texts per forward
        self.max_length = max_length  # tokens per text, the rest truncated

    @property
    def dim(self) -> int:
        return self.model.cfg.dim

    def encode(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """[len(texts), dim] vectors; `progress(done, total)` is called after each batch."""
        device = next(self.model.parameters()).device
        out = np.empty((len(texts), self.dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                rows = order[s:s + self.batch_size]
                batch = tokenize([texts[i] for i in rows], self.max_length)
                pooled = self.model(batch.input_ids.to(device), batch.attention_mask.to(device),
                                    task_id=self.task_id).pooled
                out[rows] = F.normalize(pooled.float(), dim=-1).cpu().numpy()
                if progress is not None:
                    progress(s + len(rows), len(texts))
        return out


@functools.cache
def default_embedder() -> Embedder:
    """The copy-upcycled MiniLM (MiniLM's own sentence embeddings), loaded once per process.

    Every copy-mode expert is the whole FFN, so routing to one expert (top_k=1) gives the same vectors
    as top-2 at half the FFN cost (measured: 2x faster embedding on CPU). Experts sit in the top two
    layers, as in the intent classifier (core.text.classifier.default_stream): the four dense layers
    below are then MiniLM's in both, and the assistant runs a message through them once for both
    (core.text.trunk).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = upcycle_minilm(TextStreamConfig(upcycle="copy", moe_layers=(4, 5), top_k=1)).to(device)
    return Embedder(model, DEFAULT_MODEL)


def lexical_terms(text: str) -> list[str]:
    """Case-folded word tokens in compatibility form (NFKC: "ＡＴＭ" is "atm"), as BM25 sees them, vowel signs
    kept inside their words (Hindi, Thai); text in scripts written without spaces (Chinese, Japanese) gives
    its characters and their bigrams."""
    terms = []
    for word in _LEXICAL_WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        for run in _CJK_RUNS.finditer(word):
            cjk = run.group(1)
            terms += [run.group()] if cjk is None else list(cjk) + [cjk[i:i + 2] for i in range(len(cjk) - 1)]
    return terms


class BM25:
    """Okapi BM25 over fixed texts: an inverted index of precomputed per-(term, text) weights."""

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75):
        counts = [Counter(lexical_terms(text)) for text in texts]
        lengths = np.array([sum(c.values()) for c in counts], np.float32)
        norm = k1 * (1 - b + b * lengths / max(float(lengths.mean()), 1.0))  # length normalisation
        postings: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for row, count in enumerate(counts):
            for term, tf in count.items():
                postings[term][0].append(row)
                postings[term][1].append(tf)
        self.size = len(texts)
        self._weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # term -> (rows, weights)
        for term, (rows, tfs) in postings.items():
            rows_a, tf_a = np.array(rows), np.array(tfs, np.float32)
            idf = math.log(1 + (self.size - len(rows) + 0.5) / (len(rows) + 0.5))
            self._weights[term] = (rows_a, idf * tf_a * (k1 + 1) / (tf_a + norm[rows_a]))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every text for `query` [size]."""
        out = np.zeros(self.size, np.float32)
        for term in lexical_terms(query):
            if term in self._weights:
                rows, weights = self._weights[term]
                out[rows] += weights
        return out


class KnowledgeIndex:
    """Chunks of a knowledge base, their vectors in FAISS and (if hybrid) a BM25 ranker over them."""

    def __init__(self, vectors: faiss.Index, chunks: list[Chunk], manifest: dict, embedder: Embedder):
        self.vectors, self.chunks, self.manifest, self.embedder = vectors, chunks, manifest, embedder
        self.config = IndexConfig(**manifest["config"])
        self.documents = len({c.doc_id for c in chunks})  # a search returns at most this many
        self.bm25 = BM25([_chunk_text(c) for c in chunks]) if self.config.hybrid else None

    @classmethod
    def build(cls, docs: Sequence[KnowledgeDoc], out_dir: str | Path, config: IndexConfig | None = None,
              embedder: Embedder | None = None,
              progress: Callable[[int, int], None] | None = None) -> KnowledgeIndex:
        """Chunk, embed and index `docs`, then write the index to `out_dir`, replacing any index there;
        `progress(chunks embedded, total)` follows the embedding (minutes for a large knowledge base).

        The folder is swapped in only once complete: if anything fails, a previous index stays as it was.
        """
        out_dir, config = Path(out_dir), config or IndexConfig()
        _check_replaceable(out_dir)
        if not docs:
            raise ValueError("no documents to index")
        embedder = embedder or default_embedder()
        chunks = chunk_documents(docs, config.chunk_words, config.overlap_words)
        vectors = _faiss_index(embedder.encode([_chunk_text(c) for c in chunks], progress), config)
        manifest = {
            "model": embedder.name, "task": "retrieval", "dims": embedder.dim, "count": len(chunks),
            "documents": len(docs), "index": type(vectors).__name__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fingerprint": fingerprint(docs, config, embedder.name), "config": asdict(config),
        }
        _write_atomically(out_dir, vectors, chunks, manifest)
        return cls(vectors, chunks, manifest, embedder)

    @classmethod
    def load(cls, index_dir: str | Path, embedder: Embedder | None = None) -> KnowledgeIndex:
        """An index written by `build`; `embedder` (default: default_embedder()) must be the one it used."""
        index_dir = Path(index_dir)
        if not (index_dir / MANIFEST).is_file():
            raise ValueError(f"{index_dir}: not a knowledge index (no {MANIFEST}); "
                             "build one with `moe-suite chat index`")
        manifest = json.loads((index_dir / MANIFEST).read_text())
        embedder = embedder or default_embedder()
        if (manifest["model"], manifest["dims"]) != (embedder.name, embedder.dim):
            raise ValueError(f"{index_dir} was built with {manifest['model']!r} ({manifest['dims']} dims), "
                             f"not {embedder.name!r} ({embedder.dim} dims)")
        chunks = [Chunk(**c) for c in json.loads((index_dir / CHUNKS).read_text(encoding="utf-8"))]
        vectors = faiss.read_index(str(index_dir / VECTORS))
        if vectors.ntotal != len(chunks):
            raise ValueError(f"{index_dir}: {vectors.ntotal} vectors for {len(chunks)} chunks")
        return cls(vectors, chunks, manifest, embedder)

    def __len__(self) -> int:
        return len(self.chunks)

    def search(self, query: str, k: int = 5) -> list[Passage]:
        """The `k` best documents for `query` (all of them when there are fewer), each with its best
        chunk, best first."""
        if not query.strip():
            raise ValueError("empty query")
        k = min(k, self.documents)  # asking for more than there are must not scan every chunk
        if k <= 0:
            return []
        query_1D = self.embedder.encode([query])
        lexical = None if self.bm25 is None else self.bm25.scores(query)
        # the more of the query the text model cannot read (Chinese, Thai...), the more its words decide
        weight = 0.0 if lexical is None else max(self.config.lexical_weight, unknown_share([query]))
        n = min(max(self.config.candidates, 10 * k), len(self.chunks))
        while True:  # widen the candidates until they hold k documents (one long document's chunks can fill them)
            best = self._best_per_document(query_1D, lexical, n, k, weight)
            if len(best) == k or n == len(self.chunks):
                break
            n = min(4 * n, len(self.chunks))
        hits = [(self.chunks[row], score) for row, score in best.values()]
        return [Passage(c.doc_id, c.title, c.text, score, c.source) for c, score in hits]

    def _best_per_document(self, query_1D: np.ndarray, lexical: np.ndarray | None, n: int, k: int,
                           lexical_weight: float) -> dict[str, tuple[int, float]]:
        """Doc id -> (chunk row, score) of its best chunk among the `n` best candidates, at most `k`
        documents, best first."""
        if isinstance(self.vectors, faiss.IndexHNSW):
            self.vectors.hnsw.efSearch = max(n, 64)
        sims, rows = self.vectors.search(query_1D, n)
        dense = {int(r): float(s) for r, s in zip(rows[0], sims[0]) if r >= 0}
        scores = dense if lexical is None else self._fuse(query_1D[0], dense, lexical, n, lexical_weight)
        best: dict[str, tuple[int, float]] = {}
        for row, score in sorted(scores.items(), key=lambda item: item[1], reverse=True):
            best.setdefault(self.chunks[row].doc_id, (row, score))
            if len(best) == k:
                break
        return best

    def _fuse(self, query_D: np.ndarray, dense: dict[int, float], lexical: np.ndarray, n: int,
              lexical_weight: float) -> dict[int, float]:
        """Chunk row -> fused score over the dense candidates and the `n` best BM25 matches ("weighted": BM25
        weighs `lexical_weight`)."""
        top = np.argsort(-lexical)[:n]
        lexical_rows = [int(r) for r in top if lexical[r] > 0]
        if self.config.fusion == "rrf":
            fused: dict[int, float] = defaultdict(float)
            for ranking in (sorted(dense, key=dense.get, reverse=True), lexical_rows):
                for rank, row in enumerate(ranking, 1):
                    fused[row] += 1 / (self.config.rrf_k + rank)
            return fused
        rows = sorted(set(dense) | set(lexical_rows))
        cosines = self.vectors.reconstruct_batch(np.array(rows)) @ query_D
        w, best_lexical = lexical_weight, float(lexical.max()) or 1.0
        return {row: (1 - w) * float(c) + w * float(lexical[row]) / best_lexical
                for row, c in zip(rows, cosines)}


def fingerprint(docs: Sequence[KnowledgeDoc], config: IndexConfig, model: str) -> str:
    """What an index was built from (model, config, documents): equal fingerprints, equal indexes."""
    payload = json.dumps([model, asdict(config), [(d.id, d.title, d.text) for d in docs]])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@functools.cache
def load_default_index() -> KnowledgeIndex:
    """The bank KB's hybrid index, from <cache_dir()>/knowledge/bank; (re)built there on first use and
    whenever the KB, the config or the model changed. Cached per process."""
    docs, config, out = load_knowledge(DEFAULT_KB), IndexConfig(), cache_dir() / "knowledge" / "bank"
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("fingerprint") == fingerprint(
            docs, config, DEFAULT_MODEL):
        return KnowledgeIndex.load(out)
    return KnowledgeIndex.build(docs, out, config)


def retrieval_metrics(ranked: Sequence[Sequence[str]], expected: Sequence[str]) -> dict[str, float]:
    """recall@1, recall@5 and MRR of ranked id lists against the expected id of each query."""
    ranks = [ids.index(gold) + 1 if gold in ids else math.inf for ids, gold in zip(ranked, expected)]
    n = len(ranks)
    return {"recall_at_1": sum(r <= 1 for r in ranks) / n, "recall_at_5": sum(r <= 5 for r in ranks) / n,
            "mrr": sum(1 / r for r in ranks) / n, "queries": n}


def evaluate(index: KnowledgeIndex, queries: Sequence[tuple[str, str]], depth: int = 10) -> dict[str, float]:
    """`retrieval_metrics` of (query, expected id) pairs; MRR counts hits within the top `depth`."""
    unknown = sorted({gold for _, gold in queries} - {c.doc_id for c in index.chunks})
    if unknown:
        raise ValueError(f"expected ids not in the index: {', '.join(unknown)}")
    ranked = [[p.id for p in index.search(query, depth)] for query, _ in queries]
    return retrieval_metrics(ranked, [gold for _, gold in queries])


def time_search(index: KnowledgeIndex, queries: Sequence[str], k: int = 5,
                warmup: int = 2) -> dict[str, float]:
    """Wall-clock milliseconds of one `index.search` per query: {"searches", "median_ms", "p95_ms"}."""
    for query in queries[:warmup]:
        index.search(query, k)
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search(query, k)
        times.append(1000 * (time.perf_counter() - start))
    return {"searches": len(times), "median_ms": float(np.median(times)),
            "p95_ms": float(np.percentile(times, 95))}


def _chunk_text(chunk: Chunk) -> str:
    """What is embedded and BM25-indexed for a chunk: its title gives the context."""
    return f"{chunk.title}\n{chunk.text}"


def _faiss_index(vectors_ND: np.ndarray, config: IndexConfig) -> faiss.Index:
    if len(vectors_ND) > config.hnsw_above:
        index = faiss.IndexHNSWFlat(vectors_ND.shape[1], config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexFlatIP(vectors_ND.shape[1])
    index.add(vectors_ND)
    return index


def saved_indexes(folder: str | Path) -> list[Path]:
    """The saved indexes (folders holding a manifest and vectors) inside `folder`, e.g. one written into
    the knowledge folder it indexes: what reading that folder as knowledge must leave out."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(manifest.parent for manifest in folder.rglob(MANIFEST) if (manifest.parent / VECTORS).is_file())


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to overwrite a folder that holds something other than an index."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not an index folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise ValueError(f"{out_dir} is a non-empty folder without {MANIFEST}, not an index; "
                         "refusing to replace it")


def _write_atomically(out_dir: Path, vectors: faiss.Index, chunks: list[Chunk], manifest: dict) -> None:
    """Write into a sibling temp folder, then swap it in with renames; on failure leave `out_dir` alone."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        faiss.write_index(vectors, str(tmp / VECTORS))
        (tmp / CHUNKS).write_text(json.dumps([asdict(c) for c in chunks], ensure_ascii=False),
                                  encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            old = tmp.with_suffix(".old")
            out_dir.rename(old)
            try:
                tmp.rename(out_dir)
            except OSError:
                old.rename(out_dir)
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already unless something failed
