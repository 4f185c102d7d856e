"""`moe-suite bench lm`: does an MoE text stream model English better than a dense one of equal active size?

Corpus: CPython's own documentation, `pydoc_data.topics.topics`: the ~80 long topics of the Python
Language Reference that `help()` shows (about 465k characters, 128k MiniLM tokens on Python 3.11,
under the PSF licence). It is real English prose (with code samples), ships with every Python, and
so is there offline and the same on every machine of one Python version; the suite holds no other
text corpus.

Split by topic: the topics are shuffled by the seed and held out one by one until they hold
`heldout_fraction` of the tokens; no sequence mixes the two sides. Each side's topics are
concatenated, tokenised with MiniLM's WordPiece (core.text) and packed into [CLS] ... [SEP] rows
of `seq_len` tokens. The vocabulary is the ~3k WordPiece types the corpus uses (CorpusVocab), not
all 30,522: no target ever takes the others, and their rows would make each step ~2.5x slower.
The perplexity is thus over the corpus's types, the same for both models.

Models: `TextStream`s from scratch (core.text) with core.training's MLM head, one with an MoE FFN in
every layer (E experts of hidden width h, top-K), the control dense with FFNs of width K * h: the same
active parameters and FLOPs per token but for the router. Both start from the same seed and train on
the same batches and [MASK] draws (drawn once, before either trains), for the same steps, with the
suite's AdamW and warm-up + cosine schedule (core.training). Reported: the mean cross-entropy of
the masked held-out tokens and its exp, the perplexity.

The seed's claim is 18-25% lower perplexity for MoE; this measures it at a small scale on a small
corpus. The default run (300 steps) takes about 3 minutes on one busy CPU thread; a longer one
(about 9): `moe-suite bench lm --steps 1000 --json`.

Shape legend: S sequences, T tokens per sequence (R = T - 2 of them text), B batch, N masked tokens,
V vocabulary.
"""
from __future__ import annotations

import math
import platform
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.moe import MoELayer
from core.text import TextStreamConfig, from_scratch, load_tokenizer
from core.text.tokenizer import TokenBatch
from core.training import TrainConfig, lr_at, make_optimizer, mask_tokens
from core.training.stages import TokenHead

CORPUS = "pydoc_data.topics (CPython's Python Language Reference topics, PSF licence)"
IGNORE = -100  # label of the tokens that are not masked (F.cross_entropy skips them)
Batch = tuple[torch.Tensor, torch.Tensor]  # (input ids with [MASK]s [B, T], labels [B, T])


@dataclass
class LMBenchConfig:
    steps: int = 300                 # optimizer steps of each model
    batch_size: int = 16             # sequences per step
    seq_len: int = 128               # tokens per packed sequence, [CLS] and [SEP] included
    dim: int = 128                   # model width D
    num_layers: int = 4
    num_heads: int = 4
    expert_hidden: int = 256         # hidden width h of each expert; the dense FFN is top_k * h wide
    num_experts: int = 8             # routed experts E per MoE layer
    top_k: int = 2                   # experts per token K
    dropout: float = 0.1             # TextStream's hidden and attention dropout
    mask_prob: float = 0.15          # share of tokens replaced by [MASK] (BERT's)
    lr: float = 1e-3                 # AdamW peak learning rate (core.training's schedule and decay)
    warmup_steps: int = 30           # linear warm-up, then cosine decay to lr / 10
    heldout_fraction: float = 0.15   # share of the corpus's tokens in held-out topics
    eval_mask_draws: int = 4         # [MASK] draws over the held-out rows (more predictions, less noise)
    seed: int = 0                    # the split, the weights, the batches and every [MASK] draw

    def __post_init__(self) -> None:
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")
        for name in ("steps", "batch_size", "eval_mask_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class CorpusVocab:
    """The WordPiece ids a corpus uses, renumbered from 0 after [PAD] [CLS] [SEP] [MASK].

    Has what core.training's mask_tokens reads of a tokenizer: cls_id, sep_id, mask_id.
    """

    pad_id, cls_id, sep_id, mask_id = range(4)

    def __init__(self, wordpiece_ids: Iterable[int]):
        tok = load_tokenizer()
        specials = (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)
        self.wordpiece = [*specials, *sorted(set(wordpiece_ids) - set(specials))]
        self.index = {w: i for i, w in enumerate(self.wordpiece)}
        self.vocab_size = len(self.wordpiece)

    def encode(self, wordpiece_ids: Iterable[int]) -> list[int]:
        return [self.index[w] for w in wordpiece_ids]


@dataclass
class LMData:
    vocab: CorpusVocab
    train_topics: list[str]
    heldout_topics: list[str]
    train_ids_ST: torch.Tensor       # [S, T] packed training rows
    heldout_ids_ST: torch.Tensor     # [S', T] packed held-out rows
    corpus_chars: int


def load_corpus() -> dict[str, str]:
    """Topic name -> its text, from the running Python's documentation."""
    from pydoc_data.topics import topics

    return dict(topics)


def split_topics(token_counts: dict[str, int], heldout_fraction: float,
                 seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) topic names: shuffled by `seed`, held out in turn until they hold
    `heldout_fraction` of the tokens."""
    names = sorted(token_counts)
    order = np.random.default_rng(seed).permutation(len(names))
    target, heldout, held = heldout_fraction * sum(token_counts.values()), [], 0
    for i in order:
        if held >= target:
            break
        heldout.append(names[i])
        held += token_counts[names[i]]
    return [n for n in names if n not in heldout], heldout


def pack(ids: list[int], seq_len: int, vocab: CorpusVocab) -> torch.Tensor:
    """[S, T]: the token stream cut into rows of R tokens, each as [CLS] row [SEP]; the tail is dropped."""
    R = seq_len - 2
    rows_SR = torch.tensor(ids[:len(ids) // R * R]).view(-1, R)
    cls_S1 = torch.full((rows_SR.shape[0], 1), vocab.cls_id)
    sep_S1 = torch.full((rows_SR.shape[0], 1), vocab.sep_id)
    return torch.cat([cls_S1, rows_SR, sep_S1], dim=1)


def tokenize_topics(topics: dict[str, str]) -> dict[str, list[int]]:
    """Topic name -> its WordPiece ids, without [CLS] and [SEP]."""
    ids = load_tokenizer()(list(topics.values()), add_special_tokens=False, verbose=False)["input_ids"]
    return dict(zip(topics, ids))


def load_data(cfg: LMBenchConfig) -> LMData:
    topics = load_corpus()
    wordpiece = tokenize_topics(topics)
    vocab = CorpusVocab(w for ids in wordpiece.values() for w in ids)
    ids = {name: vocab.encode(w) for name, w in wordpiece.items()}
    train_topics, heldout_topics = split_topics({name: len(t) for name, t in ids.items()},
                                                cfg.heldout_fraction, cfg.seed)

    def packed(names: list[str]) -> torch.Tensor:
        return pack([i for name in names for i in ids[name]], cfg.seq_len, vocab)

    return LMData(vocab, train_topics, heldout_topics, packed(train_topics), packed(heldout_topics),
                  sum(map(len, topics.values())))


def masked_batches(ids_ST: torch.Tensor, num_batches: int, batch_size: int, vocab: CorpusVocab,
                   mask_prob: float, seed: int) -> list[Batch]:
    """(input ids with [MASK]s [B, T], labels [B, T]: the original id where masked, else IGNORE),
    `num_batches` of them, through seeded shuffles of the rows epoch after epoch."""
    g = torch.Generator().manual_seed(seed)
    epochs = math.ceil(num_batches * batch_size / len(ids_ST))
    order = torch.cat([torch.randperm(len(ids_ST), generator=g) for _ in range(epochs)])
    torch.manual_seed(seed)  # mask_tokens draws from the global generator
    batches = []
    for rows_B in order[:num_batches * batch_size].view(num_batches, batch_size):
        ids_BT = ids_ST[rows_B]
        masked_BT, chosen_BT = mask_tokens(TokenBatch(ids_BT, torch.ones_like(ids_BT)), vocab, mask_prob)
        batches.append((masked_BT, ids_BT.masked_fill(~chosen_BT, IGNORE)))
    return batches


class MaskedLM(nn.Module):
    """A TextStream and core.training's MLM head (LayerNorm, then the vocabulary projection)."""

    def __init__(self, cfg: TextStreamConfig):
        super().__init__()
        self.stream = from_scratch(cfg)
        self.head = TokenHead(cfg.dim, cfg.vocab_size)

    def forward(self, input_ids_BT: torch.Tensor,
                labels_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy of the masked tokens, the MoE layers' aux loss)."""
        out = self.stream(input_ids_BT, torch.ones_like(input_ids_BT))
        chosen_BT = labels_BT != IGNORE
        logits_NV = self.head(out.hidden[chosen_BT])
        return F.cross_entropy(logits_NV, labels_BT[chosen_BT]), out.aux_loss


def stream_configs(cfg: LMBenchConfig, vocab_size: int) -> dict[str, TextStreamConfig]:
    """The MoE stream and its dense control, of width top_k * expert_hidden: equal active FFN parameters."""
    moe = TextStreamConfig(vocab_size=vocab_size, dim=cfg.dim, num_layers=cfg.num_layers,
                           num_heads=cfg.num_heads, ffn_dim=cfg.expert_hidden, max_positions=cfg.seq_len,
                           dropout=cfg.dropout, num_experts=cfg.num_experts, top_k=cfg.top_k, num_tasks=0)
    return {"moe": moe, "dense": replace(moe, moe_layers=(), ffn_dim=cfg.top_k * cfg.expert_hidden)}


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(total, active per token): a token runs top_k of the num_experts routed experts of each MoE layer."""
    total = sum(p.numel() for p in model.parameters())
    idle = 0
    for module in model.modules():
        if isinstance(module, MoELayer):
            E, K = module.cfg.num_experts, module.cfg.top_k
            idle += sum(p.numel() for p in module.experts.parameters()) // E * (E - K)
    return total, total - idle


def train(model: MaskedLM, batches: list[Batch], cfg: LMBenchConfig) -> float:
    """Train on `batches` in order; returns the mean masked-token loss of the last 10 steps."""
    schedule = TrainConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps)  # the suite's AdamW and lr schedule
    optimizer = make_optimizer(model, schedule)
    model.train()
    losses = []
    for step, (input_ids_BT, labels_BT) in enumerate(batches, start=1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, len(batches), schedule)
        mlm, aux = model(input_ids_BT, labels_BT)
        optimizer.zero_grad(set_to_none=True)
        (mlm + aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        optimizer.step()
        losses.append(mlm.item())
    return float(np.mean(losses[-10:]))


@torch.no_grad()
def heldout_loss(model: MaskedLM, batches: list[Batch]) -> float:
    """Mean cross-entropy over every masked token of `batches` (dropout off)."""
    model.eval()
    total, count = 0.0, 0
    for input_ids_BT, labels_BT in batches:
        n = int((labels_BT != IGNORE).sum())
        total += model(input_ids_BT, labels_BT)[0].item() * n
        count += n
    return total / count


def run(cfg: LMBenchConfig) -> dict:
    began = time.perf_counter()
    data = load_data(cfg)
    train_batches = masked_batches(data.train_ids_ST, cfg.steps, cfg.batch_size, data.vocab,
                                   cfg.mask_prob, cfg.seed)
    eval_rows = len(data.heldout_ids_ST) * cfg.eval_mask_draws
    eval_batches = masked_batches(data.heldout_ids_ST, math.ceil(eval_rows / cfg.batch_size),
                                  cfg.batch_size, data.vocab, cfg.mask_prob, cfg.seed + 1)

    models = {}
    for name, stream_cfg in stream_configs(cfg, data.vocab.vocab_size).items():
        torch.manual_seed(cfg.seed)
        model = MaskedLM(stream_cfg)
        total, active = param_counts(model)
        t0 = time.perf_counter()
        final_train_loss = train(model, train_batches, cfg)
        seconds = time.perf_counter() - t0
        loss = heldout_loss(model, eval_batches)
        models[name] = {"heldout_loss": loss, "perplexity": math.exp(loss),
                        "final_train_loss": final_train_loss, "params_total": total,
                        "params_active_per_token": active, "train_seconds": round(seconds, 1)}

    def tokens(ids_ST: torch.Tensor) -> int:
        return ids_ST.numel() - 2 * len(ids_ST)  # text tokens, without [CLS] and [SEP]

    return {
        "benchmark": "masked_lm_moe_vs_dense",
        "corpus": CORPUS, "corpus_python": platform.python_version(), "corpus_chars": data.corpus_chars,
        "corpus_topics": len(data.train_topics) + len(data.heldout_topics),
        "heldout_topics": data.heldout_topics,
        "train_tokens": tokens(data.train_ids_ST), "heldout_tokens": tokens(data.heldout_ids_ST),
        "heldout_masked_predictions": sum(int((labels != IGNORE).sum()) for _, labels in eval_batches),
        "tokenizer": "all-MiniLM-L6-v2 WordPiece", "vocab_size": data.vocab.vocab_size, "config": asdict(cfg),
        "moe": models["moe"], "dense": models["dense"],
        "moe_vs_dense_perplexity_reduction": 1 - models["moe"]["perplexity"] / models["dense"]["perplexity"],
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
