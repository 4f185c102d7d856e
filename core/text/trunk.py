"""One trunk for text streams that hold the same lower layers.

An intent classifier fine-tuned above a frozen MiniLM trunk and a retrieval embedder upcycled from the
same MiniLM compute identical token states through that trunk. `share_trunk(a, b)` finds the longest
such prefix (the embeddings, then dense layers with equal weights), makes `b` use `a`'s modules there
(held in memory once) and gives both streams one `PrefixCache` of the states after the trunk, keyed
by the token ids: a chat turn's message, read for its intent and then searched for in the knowledge
base, goes through the trunk once.

    shared = share_trunk(classifier.stream, embedder.model)   # number of layers shared (0: none)
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch
import torch.nn as nn

from core.moe import MoELayer

from .model import TextStream


class PrefixCache:
    """Token states [B, T, D] after the first `layers` layers of the streams that share them, for the
    most recent `capacity` inputs. Thread-safe; used only for inference (no grad, eval mode)."""

    def __init__(self, layers: int, capacity: int = 64):
        self.layers, self.capacity = layers, capacity
        self._states: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> bytes:
        shape = repr(tuple(input_ids_BT.shape)).encode()
        return shape + input_ids_BT.cpu().numpy().tobytes() + attention_mask_BT.cpu().numpy().tobytes()

    def get(self, key: bytes) -> torch.Tensor | None:
        with self._lock:
            states = self._states.get(key)
            if states is None:
                self.misses += 1
                return None
            self._states.move_to_end(key)
            self.hits += 1
            return states

    def put(self, key: bytes, states_BTD: torch.Tensor) -> None:
        with self._lock:
            self._states[key] = states_BTD
            self._states.move_to_end(key)
            while len(self._states) > self.capacity:
                self._states.popitem(last=False)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and sa[k].device == sb[k].device
        and torch.equal(sa[k], sb[k]) for k in sa)


def common_trunk(a: TextStream, b: TextStream) -> int:
    """How many leading layers `a` and `b` compute identically: 0 unless their embeddings match, then
    the dense (task-independent) layers with equal weights, up to the first that differs."""
    if a.cfg.dim != b.cfg.dim or a.cfg.num_heads != b.cfg.num_heads or not _same_weights(a.embed, b.embed):
        return 0
    shared = 0
    for la, lb in zip(a.layers, b.layers):
        if isinstance(la.ffn, MoELayer) or isinstance(lb.ffn, MoELayer) or not _same_weights(la, lb):
            break
        shared += 1
    return shared


def share_trunk(a: TextStream, b: TextStream, capacity: int = 64) -> int:
    """Let `b` run on `a`'s embeddings and common layers, with one prefix cache for both; returns the
    number of layers shared (0 leaves both streams untouched). Do not train either stream afterwards."""
    if a is b:
        return 0
    shared = common_trunk(a, b)
    if shared == 0:
        return 0
    b.embed = a.embed
    for i in range(shared):
        b.layers[i] = a.layers[i]
    a.prefix_cache = b.prefix_cache = PrefixCache(shared, capacity)
    return shared
