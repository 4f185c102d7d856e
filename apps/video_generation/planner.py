"""Prompt -> Script: the core's text stream reads the prompt, text experts tag it, time-axis experts
lay out the timeline.

    planner = load_planner()                       # shipped checkpoint (assets/video_generation/planner)
    plan = planner.plan("a red ball rolls left on a beach, then a blue square rises at night", seconds=3)
    plan.script, plan.cut_seconds, plan.experts    # Script, [s], per-scene routing

Model (all parts but the stream are trained by `moe-suite video train-planner`):
1. The core's TextStream with all-MiniLM-L6-v2's weights (dense FFNs), frozen, gives contextual token states.
2. ScriptReader: one attention block whose FFN is a task-aware MoE layer (task "text_to_video": the
   text experts), then per-token heads: scene start, object start, and per attribute (shape, colour,
   motion, background, camera, style, seconds) a "none" logit plus value logits. A value's logit adds
   a learned metric between the token and the value's prototype phrase and the token's *value evidence*:
   how close the word windows around it (1-3 words, each embedded alone by the stream) come to the
   training phrases of the value, and for colours an RGB colour-name lexicon (colour_names.py). The
   evidence is what carries words never seen in training; training hides some value words' own states
   and adds random words to half the prompts, so that the reader learns to use it and the context.
   Decoding (DecodeConfig; chosen on the validation wording): the probabilities of the reader are averaged
   with those of a second pass that hides every word's own state (evidence and context only); scenes open
   at predicted starts (one background per scene; a scene naming neither a shape nor a colour is merged);
   object mentions are cut at predicted object starts and between coloured shape words, stray pieces
   merged; a camera move is taken when it beats "static" and passes a minimum, read only from words that
   read more as a camera move than as an object's motion; each other attribute comes from its most
   confident token.
3. TimeAxis: T time-slot tokens (learned time embeddings) cross-attend to the scene tokens
   (pooled reader states + the stated-length evidence) through MoE layers routed per slot
   (the time-axis experts); each slot predicts which scene it shows, so cut times are the expected
   boundaries between scenes.

Shape legend: B batch, T tokens, D width, S time slots, K scenes (max_scenes), E experts, V attribute
values (all attributes), C colours, X exemplar phrases.
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core import registry
from core.moe import MoEConfig, MoELayer, MoEStats
from core.tasks import NUM_TASKS, task_id

from . import colour_names, world
from .generator import one_torch_thread
from .world import Scene, SceneObject, Script

KIND = "video_planner"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "assets" / "video_generation" / "planner"
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": world.SHAPES, "colour": tuple(world.COLOURS), "motion": world.MOTIONS,
    "background": world.BACKGROUNDS, "camera": world.CAMERAS, "style": world.STYLES_IN_PROMPTS,
    "seconds": tuple(f"{s:g}" for s in world.SCENE_SECONDS),
}
ATTRIBUTE_INDEX = {a: i for i, a in enumerate(ATTRIBUTES)}
N_VALUES = sum(len(v) for v in ATTRIBUTES.values())
OBJECT_ATTRS = ("shape", "colour", "motion")
MAX_TOKENS = 256
START_POS_WEIGHT = 5.0
MIN_SCENE_SHARE = 0.25   # each scene lasts at least this fraction of an even split of the video
# Scene-start probability that opens a new scene. Chosen on new train-phrasing prompts (never on the held-out
# sets); a stray start is cheap because a "scene" that names no object is merged into the next one.
SCENE_THRESHOLD = 0.5


@dataclass
class DecodeConfig:
    """How per-token probabilities become a Script (code, not learned). Thresholds chosen on the
    validation wording (world's "val" phrasings) and, since 2026-12-01, the novel wording ("novel"), never
    on the held-out ("test") wording."""
    scene_threshold: float = SCENE_THRESHOLD  # scene-start probability that opens a scene
    camera_min: float = 0.3       # a camera move needs this probability on some token of its scene ...
    camera_margin: float = 0.0    # ... and to beat the scene's best "static" probability by this much
    evidence_pass_weight: float = 0.25   # weight of the evidence-only reader pass in the probabilities (0: off)


@dataclass
class PlannerConfig:
    text_dim: int = 384          # width of the text stream's token states (MiniLM)
    dim: int = 128               # reader / time-axis width D
    num_heads: int = 4
    num_experts: int = 6         # text experts in the reader's MoE FFN
    top_k: int = 2
    expert_hidden: int = 256     # hidden width of each expert
    time_slots: int = 24         # time tokens S per video
    time_layers: int = 2         # cross-attention + MoE blocks over the time slots
    time_experts: int = 4        # time-axis experts per block
    time_top_k: int = 1
    time_gate: str = "softmax_topk"   # gate of the time-axis experts (core MoEConfig.gate; not renormalised at
                                      # top-1, so the chosen expert is scaled by its probability and the router
                                      # learns from the task; "topk_softmax" gives weight 1, so the router
                                      # learns from the balance loss only: the shipped checkpoint, see card)
    max_scenes: int = world.MAX_SCENES
    dropout: float = 0.1
    metric_dim: int = 128        # width of the learned metric that compares tokens with value prototypes
    window_words: int = 3        # word windows of 1..window_words words are embedded alone (value evidence)
    state_dropout: float = 0.3   # training: share of value-word tokens whose own state is hidden from the reader
    exemplars: int = 0           # exemplar phrases stored with the model (set by train_planner)
    readers: int = 1             # ScriptReaders trained apart whose outputs are averaged (ensemble_planner); the
                                 # first one's states feed the time axis


def _moe(dim: int, hidden: int, experts: int, top_k: int, gate: str = "topk_softmax") -> MoELayer:
    return MoELayer(MoEConfig(dim=dim, hidden_dim=hidden, num_experts=experts, top_k=top_k, gate=gate,
                              renormalize=top_k > 1, capacity_factor=0.0, num_tasks=NUM_TASKS, balance_coef=0.01))


def prototype_phrases() -> list[str]:
    """One plain phrase per attribute value, in ATTRIBUTES order: their text-stream embeddings are the
    prototypes every token is compared with (how unseen synonyms find their value)."""
    plain = {"shape": [world.shape_noun(s) for s in world.SHAPES], "colour": list(world.COLOURS),
             "motion": [world.MOTION_PHRASES[m] for m in world.MOTIONS],
             "background": [world.BACKGROUND_PHRASES[b] for b in world.BACKGROUNDS],
             "camera": [world.CAMERA_PHRASES[c] for c in world.CAMERAS],
             "style": [f"{s} style" for s in world.STYLES_IN_PROMPTS],
             "seconds": [f"for {s} seconds" for s in ATTRIBUTES["seconds"]]}
    return [p for a in ATTRIBUTES for p in plain[a]]


class ScriptReader(nn.Module):
    """Token states [B, T, text_dim] and value evidence [B, T, V] -> per-token logits for structure and
    attributes.

    Value evidence (see value_evidence) is how close the word windows around a token, embedded alone, come
    to the training phrases of every value, plus the RGB colour lexicon for colour words. It is what carries
    words never seen in training: the reader's own token states only know the words it was trained on, so
    in training some value words' states are hidden (state_dropout) and the reader must read them from
    their evidence and their context."""

    def __init__(self, cfg: PlannerConfig, exemplars: bool = True):
        """exemplars=False: no exemplar buffers (an ensemble's other readers use the first one's)."""
        super().__init__()
        self.cfg = cfg
        n_values = N_VALUES
        n_colours = len(ATTRIBUTES["colour"])
        self.register_buffer("proto_VD", torch.zeros(n_values, cfg.text_dim))
        # the exemplar phrases' embeddings and values: the evidence a loaded model computes is its own
        n_exemplars = cfg.exemplars if exemplars else 0
        self.register_buffer("exemplar_XD", torch.zeros(n_exemplars, cfg.text_dim))
        self.register_buffer("exemplar_value_X", torch.zeros(n_exemplars, dtype=torch.long))
        self.evidence_proj = nn.Linear(n_values + n_colours, cfg.dim)
        self.proj = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.LayerNorm(cfg.dim))
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.moe = _moe(cfg.dim, cfg.expert_hidden, cfg.num_experts, cfg.top_k)
        self.drop = nn.Dropout(cfg.dropout)
        self.starts = nn.Linear(cfg.dim, 2)  # [scene start, object start] logits
        self.heads = nn.ModuleDict({a: nn.Linear(cfg.dim, 1) for a in ATTRIBUTES})  # "none" logit per attribute
        # Values: a learned metric between the token and each value's prototype, plus the evidence with a
        # learned weight per attribute (and, for colours, the lexicon's).
        self.metric = nn.Linear(cfg.text_dim, cfg.metric_dim)
        self.log_scale = nn.Parameter(torch.full((len(ATTRIBUTES),), float(np.log(15.0))))
        self.evidence_scale = nn.Parameter(torch.full((len(ATTRIBUTES),), 10.0))
        self.lexicon_scale = nn.Parameter(torch.tensor(5.0))
        offsets = np.cumsum([0] + [len(v) for v in ATTRIBUTES.values()])
        self.value_slices = {a: (int(offsets[i]), int(offsets[i + 1])) for i, a in enumerate(ATTRIBUTES)}

    def forward(self, h_BTd: torch.Tensor, mask_BT: torch.Tensor, task: int, evidence_BTV: torch.Tensor,
                lexicon_BTC: torch.Tensor, hide_BT: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], MoEStats]:
        """hide_BT (training): tokens whose own state is replaced by zeros, their evidence kept."""
        if hide_BT is not None:
            h_BTd = h_BTd.masked_fill(hide_BT[..., None], 0.0)
        x_BTD = self.proj(h_BTd) + self.evidence_proj(torch.cat([evidence_BTV, lexicon_BTC], -1))
        a_BTD, _ = self.attn(x_BTD, x_BTD, x_BTD, key_padding_mask=~mask_BT, need_weights=False)
        x_BTD = self.norm1(x_BTD + self.drop(a_BTD))
        y_BTD, stats = self.moe(x_BTD, task)
        x_BTD = self.norm2(x_BTD + self.drop(y_BTD))
        tok_BTM = F.normalize(self.metric(h_BTd), dim=-1)
        proto_VM = F.normalize(self.metric(self.proto_VD), dim=-1)
        logits = {}
        for i, (a, head) in enumerate(self.heads.items()):
            lo, hi = self.value_slices[a]
            values_BTC = self.log_scale[i].exp() * tok_BTM @ proto_VM[lo:hi].T + \
                self.evidence_scale[i] * evidence_BTV[..., lo:hi]
            if a == "colour":
                values_BTC = values_BTC + self.lexicon_scale * lexicon_BTC
            logits[a] = torch.cat([head(x_BTD), values_BTC], -1)  # [none, values...]
        return x_BTD, self.starts(x_BTD), logits, stats


class TimeAxis(nn.Module):
    """Scene tokens [B, K, D] -> per-slot scene logits [B, S, K] via time-axis experts."""

    def __init__(self, cfg: PlannerConfig):
        super().__init__()
        self.cfg = cfg
        self.slot_emb_SD = nn.Parameter(torch.randn(cfg.time_slots, cfg.dim) * 0.02)
        self.scene_pos_KD = nn.Parameter(torch.randn(cfg.max_scenes, cfg.dim) * 0.02)
        self.seconds_in = nn.Linear(len(ATTRIBUTES["seconds"]) + 1, cfg.dim)
        self.cross = nn.ModuleList(nn.MultiheadAttention(cfg.dim, cfg.num_heads, batch_first=True)
                                   for _ in range(cfg.time_layers))
        self.moes = nn.ModuleList(_moe(cfg.dim, cfg.expert_hidden, cfg.time_experts, cfg.time_top_k, cfg.time_gate)
                                  for _ in range(cfg.time_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.dim) for _ in range(2 * cfg.time_layers))
        self.head = nn.Linear(cfg.dim, cfg.max_scenes)

    def forward(self, scene_BKD: torch.Tensor, seconds_BKC: torch.Tensor, scene_mask_BK: torch.Tensor,
                task: int) -> tuple[torch.Tensor, list[MoEStats]]:
        B, K = scene_mask_BK.shape
        mem_BKD = scene_BKD + self.scene_pos_KD[:K] + self.seconds_in(seconds_BKC)
        x_BSD = self.slot_emb_SD.expand(B, -1, -1)
        stats = []
        for i, (cross, moe) in enumerate(zip(self.cross, self.moes)):
            a_BSD, _ = cross(x_BSD, mem_BKD, mem_BKD, key_padding_mask=~scene_mask_BK, need_weights=False)
            x_BSD = self.norms[2 * i](x_BSD + a_BSD)
            y_BSD, st = moe(x_BSD, task)
            x_BSD = self.norms[2 * i + 1](x_BSD + y_BSD)
            stats.append(st)
        logits_BSK = self.head(x_BSD)[..., :K].masked_fill(~scene_mask_BK[:, None, :], -1e4)
        return logits_BSK, stats


class PlannerModel(nn.Module):
    """The trained part of the planner (the text stream it reads is frozen and built separately)."""

    def __init__(self, cfg: PlannerConfig):
        super().__init__()
        self.cfg = cfg
        self.reader = ScriptReader(cfg)
        self.time_axis = TimeAxis(cfg)
        if cfg.readers < 1:
            raise ValueError(f"readers must be >= 1, got {cfg.readers}")
        self.extra_readers = nn.ModuleList(ScriptReader(cfg, exemplars=False) for _ in range(cfg.readers - 1))

    def read(self, h_BTd: torch.Tensor, mask_BT: torch.Tensor, task: int, evidence_BTV: torch.Tensor,
             lexicon_BTC: torch.Tensor, hide_BT: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], MoEStats]:
        """The reader's output (ScriptReader.forward); with several readers, the first one's states and
        MoE statistics, the mean of their start logits and the mean of their attribute log-probabilities."""
        first = self.reader(h_BTd, mask_BT, task, evidence_BTV, lexicon_BTC, hide_BT)
        if not len(self.extra_readers):
            return first
        outs = [first] + [r(h_BTd, mask_BT, task, evidence_BTV, lexicon_BTC, hide_BT) for r in self.extra_readers]
        starts_BT2 = torch.stack([o[1] for o in outs]).mean(0)
        logits = {a: torch.stack([o[2][a].log_softmax(-1) for o in outs]).mean(0) for a in first[2]}
        return first[0], starts_BT2, logits, first[3]

    def scene_tokens(self, x_BTD: torch.Tensor, scene_id_BT: torch.Tensor, seconds_logits_BTC: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean reader state per scene [B, K, D], the stated-length evidence per scene [B, K, C+1]
        (seconds distribution of the scene's most confident token) and the scene mask [B, K]."""
        K = self.cfg.max_scenes
        onehot_BTK = F.one_hot(scene_id_BT.clamp(min=0, max=K - 1), K).float() * (scene_id_BT >= 0)[..., None]
        count_BK = onehot_BTK.sum(1)
        scene_BKD = torch.einsum("btk,btd->bkd", onehot_BTK, x_BTD) / count_BK.clamp(min=1)[..., None]
        p_BTC = seconds_logits_BTC.softmax(-1).detach()
        # the token most sure a length is stated, per scene
        conf_BTK = (1 - p_BTC[..., 0])[..., None] * onehot_BTK - (1 - onehot_BTK)
        best_BK = conf_BTK.argmax(1)
        seconds_BKC = torch.gather(p_BTC, 1, best_BK[..., None].expand(-1, -1, p_BTC.shape[-1]))
        return scene_BKD, seconds_BKC, count_BK > 0


def build_planner(cfg: PlannerConfig) -> PlannerModel:
    return PlannerModel(cfg)


if KIND not in registry.MODELS:
    registry.register(KIND, PlannerConfig, build_planner)


# ---------------------------------------------------------------- the frozen text stream

@functools.cache
def text_stream():
    """The core's text stream with MiniLM's weights (dense FFNs: the routed text experts live in the
    trained reader), frozen, in eval mode. Loaded once per process."""
    from core.text import TextStreamConfig, upcycle_minilm
    stream = upcycle_minilm(TextStreamConfig(moe_layers=(), dropout=0.0)).eval()
    for p in stream.parameters():
        p.requires_grad_(False)
    return stream


def encode_prompts(texts: list[str], batch_size: int = 64) -> tuple[list[torch.Tensor], list[list[tuple[int, int]]]]:
    """Token states [T_i, text_dim] of each text (special tokens included) and each token's
    character offsets."""
    from core.text import load_tokenizer
    tok = load_tokenizer()
    stream = text_stream()
    states, offsets = [], []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                      return_offsets_mapping=True, return_tensors="pt")
            out = stream(enc["input_ids"], enc["attention_mask"], task_id=task_id("text_to_video"))
            for b in range(enc["input_ids"].shape[0]):
                n = int(enc["attention_mask"][b].sum())
                states.append(out.hidden[b, :n].clone())
                offsets.append([tuple(map(int, o)) for o in enc["offset_mapping"][b, :n].tolist()])
    return states, offsets


def prototypes() -> torch.Tensor:
    """[V, text_dim]: mean token state of each prototype phrase (special tokens left out)."""
    return _phrase_means(prototype_phrases())


def _phrase_means(phrases: list[str], batch_size: int = 64) -> torch.Tensor:
    """[N, text_dim]: each phrase encoded alone, the mean of its token states (special tokens left out)."""
    states, _ = encode_prompts(phrases, batch_size=batch_size)
    return torch.stack([h[1:-1].mean(0) if len(h) > 2 else h.mean(0) for h in states])


# ---------------------------------------------------------------- value evidence from word windows

_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def exemplar_phrases() -> tuple[list[str], list[int]]:
    """Every training phrase of every value (world's "train" words, never its "val" or "test" words) and
    each value's plain prototype phrase, with the value's index in ATTRIBUTES order."""
    phrases, value_idx = [], []
    plain = prototype_phrases()
    v = 0
    for attr, values in ATTRIBUTES.items():
        for value in values:
            words = world.phrase_words(attr, value, "train") if attr in world.PHRASED_ATTRIBUTES else []
            for phrase in dict.fromkeys([plain[v], *words]):
                if phrase:
                    phrases.append(phrase)
                    value_idx.append(v)
            v += 1
    return phrases, value_idx


@functools.cache
def exemplars() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """exemplar_phrases() with their embeddings [X, text_dim] and value indices [X] (computed once)."""
    phrases, value_idx = exemplar_phrases()
    return phrases, embed_phrases(phrases), torch.tensor(value_idx)


def embed_phrases(phrases: list[str]) -> torch.Tensor:
    """[N, text_dim] unit vectors: each phrase embedded alone (mean of its token states)."""
    return F.normalize(_phrase_means(phrases, batch_size=256), dim=-1)


def _word_windows(text: str, max_words: int) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
    """(first word, last word, text) of every run of 1..max_words consecutive words, and the words'
    character spans."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    return [(i, j, text[words[i][0]:words[j][1]]) for i in range(len(words))
            for j in range(i, min(i + max_words, len(words)))], words


def value_evidence(texts: list[str], offsets: list[list[tuple[int, int]]], exemplar_XD: torch.Tensor,
                   exemplar_value_X: torch.Tensor, n_values: int, max_words: int,
                   exemplar_texts: list[str] | None = None) -> list[torch.Tensor]:
    """Per text, [T, n_values]: for each token, the best cosine between any window of 1..max_words words
    holding it (embedded alone) and any exemplar of each value (0 when none is positive). With
    exemplar_texts (training), a window never counts its own text as an exemplar, so training prompts see
    the evidence that words outside the exemplars get."""
    per_text = [_word_windows(t, max_words) for t in texts]
    unique = list(dict.fromkeys(w for windows, _ in per_text for *_, w in windows))
    if not unique:
        return [torch.zeros(len(o), n_values) for o in offsets]
    cos_WX = embed_phrases(unique) @ exemplar_XD.T
    if exemplar_texts is not None:
        where = {}
        for x, phrase in enumerate(exemplar_texts):
            where.setdefault(phrase.lower(), []).append(x)
        for w, phrase in enumerate(unique):
            for x in where.get(phrase.lower(), ()):
                cos_WX[w, x] = -1.0
    best_WV = torch.full((len(unique), n_values), -1.0).scatter_reduce(
        1, exemplar_value_X.expand(len(unique), -1), cos_WX, reduce="amax").clamp(min=0.0)
    row = {phrase: i for i, phrase in enumerate(unique)}
    out = []
    for (windows, words), offs in zip(per_text, offsets):
        word_best_NV = torch.zeros(len(words), n_values)
        for i, j, phrase in windows:
            word_best_NV[i:j + 1] = torch.maximum(word_best_NV[i:j + 1], best_WV[row[phrase]])
        ev_TV = torch.zeros(len(offs), n_values)
        for k, (ws, we) in enumerate(words):          # each token takes the evidence of the word holding it
            ev_TV[_covered(offs, ws, we)] = word_best_NV[k]
        out.append(ev_TV)
    return out


def lexicon_evidence(texts: list[str], offsets: list[list[tuple[int, int]]]) -> list[torch.Tensor]:
    """Per text, [T, colours]: the RGB lexicon's affinity of the colour name each token is part of."""
    out = []
    for text, offs in zip(texts, offsets):
        lex_TC = torch.zeros(len(offs), len(ATTRIBUTES["colour"]))
        for s0, s1, aff_C in colour_names.word_colour_evidence(text):
            for t in _covered(offs, s0, s1):
                lex_TC[t] = torch.from_numpy(aff_C)
        out.append(lex_TC)
    return out


# ---------------------------------------------------------------- labels from world prompts

@dataclass
class Example:
    states_Td: torch.Tensor
    starts_T2: torch.Tensor          # [T, 2] float: scene start, object start
    attrs: dict[str, torch.Tensor]   # attribute -> [T] long (0 = none)
    scene_id_T: torch.Tensor         # [T] long, -1 for special tokens
    slots_S: torch.Tensor            # [S] long: the scene each time slot shows
    script: Script
    evidence_TV: torch.Tensor        # [T, V] value evidence (value_evidence, own text left out)
    lexicon_TC: torch.Tensor         # [T, C] colour lexicon affinity


def _covered(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    return [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]


def scene_ids_from_starts(scene_start_T: np.ndarray, special_T: np.ndarray) -> np.ndarray:
    """Scene index per token: tokens from one scene start to the next; before the first, scene 0."""
    ids = np.maximum(np.cumsum(scene_start_T > 0) - 1, 0).astype(np.int64)
    ids[special_T] = -1
    return ids


def slot_targets(seconds: list[float], slots: int) -> np.ndarray:
    """The scene shown at the centre of each of `slots` equal time slots."""
    bounds = np.cumsum(seconds) / np.sum(seconds)
    centres = (np.arange(slots) + 0.5) / slots
    return np.searchsorted(bounds, centres, side="right").clip(max=len(seconds) - 1)


def make_examples(scripts: list[Script], texts: list[str], spans: list[list[tuple[int, int, str]]],
                  cfg: PlannerConfig) -> list[Example]:
    states, offsets = encode_prompts(texts)
    phrases, exemplar_XD, exemplar_value_X = exemplars()
    evidence = value_evidence(texts, offsets, exemplar_XD, exemplar_value_X, N_VALUES, cfg.window_words, phrases)
    lexicon = lexicon_evidence(texts, offsets)
    out = []
    for script, text_spans, h, offs, ev_TV, lex_TC in zip(scripts, spans, states, offsets, evidence, lexicon):
        T = len(offs)
        starts = np.zeros((T, 2), np.float32)
        attrs = {a: np.zeros(T, np.int64) for a in ATTRIBUTES}
        special = np.array([b <= a for a, b in offs])
        for s0, s1, label in text_spans:
            toks = _covered(offs, s0, s1)
            if not toks:
                continue
            if label in ("scene", "object"):
                starts[toks[0], 0 if label == "scene" else 1] = 1.0
            else:
                attr, value = label.split(":", 1)
                attrs[attr][toks] = ATTRIBUTES[attr].index(value) + 1
        scene_id = scene_ids_from_starts(starts[:, 0], special)
        out.append(Example(h, torch.from_numpy(starts), {a: torch.from_numpy(v) for a, v in attrs.items()},
                           torch.from_numpy(scene_id),
                           torch.from_numpy(slot_targets([s.seconds for s in script.scenes], cfg.time_slots)),
                           script, ev_TV, lex_TC))
    return out


@functools.cache
def noise_words() -> tuple[str, ...]:
    """Whole lower-case words of the tokenizer's vocabulary (3-10 letters): random words for augmentation."""
    from core.text import load_tokenizer
    return tuple(sorted(w for w in load_tokenizer().get_vocab() if w.isalpha() and w.islower() and 3 <= len(w) <= 10))


def add_word_noise(text: str, spans: list[tuple[int, int, str]], rng: np.random.Generator, p: float
                   ) -> tuple[str, list[tuple[int, int, str]]]:
    """Insert random words between words, and replace words that name no value, each with probability p,
    shifting the labelled spans. The reader learns to find scenes and objects around words it has never
    seen (joiners, frames, articles), not only around the ones it was trained on."""
    value_spans = [(a, b) for a, b, label in spans if label not in ("scene", "object")]
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    vocab = noise_words()
    edits = []   # (start, end, replacement): sorted, disjoint
    for a, b in words:
        if rng.random() < p and not any(va < a < vb for va, vb in value_spans):
            edits.append((a, a, vocab[rng.integers(len(vocab))] + " "))
        inside = any(va < b and a < vb for va, vb in value_spans)
        if not inside and text[a:b].isalpha() and rng.random() < p:
            edits.append((a, b, vocab[rng.integers(len(vocab))]))

    return _apply_edits(text, spans, edits)


def replace_joiners(text: str, spans: list[tuple[int, int, str]], rng: np.random.Generator, p: float
                    ) -> tuple[str, list[tuple[int, int, str]]]:
    """Replace the words between two scenes ("then", "cut to") with probability p by 0-2 random vocabulary
    words, shifting the labelled spans: the reader learns to open a scene from what follows (new objects, a
    new place), not only from the joiners it was trained on."""
    scenes = sorted((a, b) for a, b, label in spans if label == "scene")
    vocab = noise_words()
    edits = []
    for (_, end), (start, _) in zip(scenes[:-1], scenes[1:]):
        if rng.random() < p:
            words = [vocab[rng.integers(len(vocab))] for _ in range(rng.integers(0, 3))]
            edits.append((end, start, ", " + "".join(w + " " for w in words)))
    return _apply_edits(text, spans, edits)


def _apply_edits(text: str, spans: list[tuple[int, int, str]], edits: list[tuple[int, int, str]]
                 ) -> tuple[str, list[tuple[int, int, str]]]:
    """`text` with each (start, end, replacement) of `edits` (sorted, disjoint) applied, and `spans` moved
    with it (a span ending where an insertion starts keeps its end)."""
    def moved(i: int, end: bool) -> int:
        shift = 0
        for a, b, rep in edits:
            if b < i or (b == i and (a < b or not end)):
                shift += len(rep) - (b - a)
        return i + shift
    out, last = [], 0
    for a, b, rep in edits:
        out += [text[last:a], rep]
        last = b
    out.append(text[last:])
    return "".join(out), [(moved(a, False), moved(b, True), label) for a, b, label in spans]


def synthetic_examples(n: int, seed: int, script_split: str, phrase_split: str, cfg: PlannerConfig,
                       noise: float = 0.0, joiner_noise: float = 0.0) -> list[Example]:
    """n random scripts from world.sample_script(script_split) phrased with world's phrase_split templates;
    `noise` > 0: half the prompts get add_word_noise(p=noise); `joiner_noise` > 0: replace_joiners(p)."""
    rng = np.random.default_rng(seed)
    scripts = [world.sample_script(rng, script_split) for _ in range(n)]
    pairs = [world.script_to_prompt_spans(s, rng, phrase_split) for s in scripts]
    if noise > 0:
        pairs = [add_word_noise(*pair, rng, noise) if rng.random() < 0.5 else pair for pair in pairs]
    if joiner_noise > 0:
        pairs = [replace_joiners(*pair, rng, joiner_noise) for pair in pairs]
    return make_examples(scripts, [p[0] for p in pairs], [p[1] for p in pairs], cfg)


def collate(batch: list[Example]) -> dict[str, torch.Tensor]:
    T = max(e.states_Td.shape[0] for e in batch)
    B = len(batch)
    pad = lambda t, v: F.pad(t, (0, 0) * (t.dim() - 1) + (0, T - t.shape[0]), value=v)  # noqa: E731
    return {
        "states": torch.stack([pad(e.states_Td.float(), 0.0) for e in batch]),
        "mask": torch.stack([pad(torch.ones(e.states_Td.shape[0], dtype=torch.bool), False) for e in batch]),
        "starts": torch.stack([pad(e.starts_T2, 0.0) for e in batch]),
        "evidence": torch.stack([pad(e.evidence_TV, 0.0) for e in batch]),
        "lexicon": torch.stack([pad(e.lexicon_TC, 0.0) for e in batch]),
        "scene_id": torch.stack([pad(e.scene_id_T, -1) for e in batch]),
        "slots": torch.stack([e.slots_S for e in batch]),
        **{f"attr_{a}": torch.stack([pad(e.attrs[a], -100) for e in batch]) for a in ATTRIBUTES},
    }


# ---------------------------------------------------------------- training

@dataclass
class PlannerTrainConfig:
    train_prompts: int = 6000    # synthetic training prompts (train scripts, train phrasing)
    steps: int = 2500
    batch_size: int = 24
    lr: float = 2e-3
    weight_decay: float = 0.01
    word_noise: float = 0.1      # add_word_noise probability on half the training prompts (0: none)
    joiner_noise: float = 0.0    # replace_joiners probability per scene joiner (0: none)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.word_noise < 1.0:
            raise ValueError(f"--word-noise must be in [0, 1), got {self.word_noise}")
        if not 0.0 <= self.joiner_noise <= 1.0:
            raise ValueError(f"--joiner-noise must be in [0, 1], got {self.joiner_noise}")


def planner_loss(model: PlannerModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    task = task_id("text_to_video")
    mask_BT = batch["mask"]
    hide_BT = None
    if model.training and model.cfg.state_dropout > 0:
        value_word_BT = torch.stack([batch[f"attr_{a}"] > 0 for a in ATTRIBUTES]).any(0)
        hide_BT = value_word_BT & (torch.rand(value_word_BT.shape) < model.cfg.state_dropout)
    x_BTD, starts_BT2, logits, stats = model.reader(batch["states"], mask_BT, task, batch["evidence"],
                                                    batch["lexicon"], hide_BT)
    # starts are rare (a few per prompt): weigh them up, or the head learns "first token only"
    loss_starts = F.binary_cross_entropy_with_logits(starts_BT2[mask_BT], batch["starts"][mask_BT],
                                                     pos_weight=torch.tensor(START_POS_WEIGHT))
    loss_attr = sum(F.cross_entropy(logits[a].flatten(0, 1), batch[f"attr_{a}"].flatten(), ignore_index=-100)
                    for a in ATTRIBUTES) / len(ATTRIBUTES)
    # time axis, teacher-forced on the gold scene segmentation
    scene_BKD, seconds_BKC, scene_mask_BK = model.scene_tokens(x_BTD, batch["scene_id"], logits["seconds"])
    slot_logits_BSK, t_stats = model.time_axis(scene_BKD, seconds_BKC, scene_mask_BK, task)
    loss_time = F.cross_entropy(slot_logits_BSK.flatten(0, 1), batch["slots"].flatten())
    aux = stats.aux_loss + sum(s.aux_loss for s in t_stats)
    loss = loss_starts + loss_attr + loss_time + aux
    return loss, {"starts": loss_starts.item(), "attributes": loss_attr.item(), "time": loss_time.item()}


def train_planner(cfg: PlannerConfig, tcfg: PlannerTrainConfig, log=print,
                  examples: list[Example] | None = None) -> PlannerModel:
    """Train reader and time axis on synthetic prompts (train scripts, train phrasing only)."""
    if cfg.readers != 1:
        raise ValueError("a planner trains one reader; train several and join them with ensemble_planner")
    torch.manual_seed(tcfg.seed)
    if examples is None:
        t0 = time.perf_counter()
        examples = synthetic_examples(tcfg.train_prompts, tcfg.seed, "train", "train", cfg, tcfg.word_noise,
                                      tcfg.joiner_noise)
        log(f"encoded {len(examples)} training prompts in {time.perf_counter() - t0:.1f} s")
    _, exemplar_XD, exemplar_value_X = exemplars()
    cfg = replace(cfg, exemplars=len(exemplar_value_X))
    model = PlannerModel(cfg).train()
    model.reader.proto_VD.copy_(prototypes())
    model.reader.exemplar_XD.copy_(exemplar_XD)
    model.reader.exemplar_value_X.copy_(exemplar_value_X)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, tcfg.lr, total_steps=tcfg.steps, pct_start=0.1)
    g = np.random.default_rng(tcfg.seed)
    for step in range(tcfg.steps):
        idx = g.choice(len(examples), size=min(tcfg.batch_size, len(examples)), replace=False)
        loss, parts = planner_loss(model, collate([examples[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == tcfg.steps - 1:
            log(f"step {step:5d} loss {loss.item():.4f} " + " ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    return model.eval()


# ---------------------------------------------------------------- inference

@dataclass
class SceneExperts:
    """Which experts handled one scene: expert id -> mean gate weight over the scene's tokens/slots."""
    text_experts: dict[int, float]
    time_experts: dict[int, float]


@dataclass
class PlanReading:
    """What the decoder read the plan from (for reporting which words carried what; no decision uses it).
    Token t spans prompt[offsets[t][0]:offsets[t][1]] (special tokens: empty spans)."""
    offsets: list[tuple[int, int]]
    probs: dict[str, np.ndarray]                # attribute -> [T, 1 + values]: column 0 is "names none"
    p_object_start_T: np.ndarray                # [T] object-start probability
    scene_id_T: np.ndarray                      # [T] scene of each token, -1 for special tokens
    link_T: np.ndarray | None = None            # [T] bool: token of a joining word (link_words_T, motion_rows)


@dataclass
class Plan:
    script: Script
    cut_seconds: list[float]                    # where scenes 2..n start
    experts: list[SceneExperts]
    confidence: list[dict[str, float]]          # per scene: attribute -> probability of the chosen value
    timings_ms: dict[str, float] = field(default_factory=dict)
    reading: PlanReading | None = None          # the per-token probabilities the plan was decoded from


def join_plans(parts: list[Plan], texts: list[str], joiner: str, style: str | None = None) -> Plan:
    """One Plan from the plans of texts[i] laid end to end: scenes, cuts, experts and confidences in order, the
    reading on joiner.join(texts) (token spans shifted, scene ids counted on); the style given, else the first
    part's that names one."""
    offsets, probs, p_obj, scene_id, links, scenes, experts, confidence = [], {}, [], [], [], [], [], []
    start = 0
    for part, text in zip(parts, texts):
        r = part.reading
        offsets += [(a + start, b + start) if b > a else (a, b) for a, b in r.offsets]
        for attr, p in r.probs.items():
            probs.setdefault(attr, []).append(p)
        p_obj.append(r.p_object_start_T)
        links.append(r.link_T if r.link_T is not None else np.zeros(len(r.offsets), bool))
        scene_id.append(np.where(r.scene_id_T >= 0, r.scene_id_T + len(scenes), r.scene_id_T))
        scenes += part.script.scenes
        experts += part.experts
        confidence += part.confidence
        start += len(text) + len(joiner)
    named = style if style is not None else next((p.script.style for p in parts if p.script.style), None)
    cuts = [float(c) for c in np.cumsum([s.seconds for s in scenes])[:-1]]
    timings = {k: sum(p.timings_ms.get(k, 0.0) for p in parts) for k in parts[0].timings_ms}
    reading = PlanReading(offsets, {a: np.concatenate(ps) for a, ps in probs.items()}, np.concatenate(p_obj),
                          np.concatenate(scene_id), np.concatenate(links))
    return Plan(Script(scenes, named), cuts, experts, confidence, timings, reading)


def _expert_share(stats: MoEStats, rows: torch.Tensor, E: int) -> dict[int, float]:
    """Mean gate weight each expert got over the token rows `rows` (indices into stats.expert_idx)."""
    if rows.numel() == 0:
        return {}
    idx_RK, w_RK = stats.expert_idx[rows], stats.gate_weight[rows]
    share_E = torch.zeros(E).index_add_(0, idx_RK.flatten(), w_RK.flatten().float()) / rows.numel()
    return {int(e): round(float(v), 4) for e, v in enumerate(share_E) if v > 0}


class Planner:
    """A loaded planner: the frozen text stream plus the trained reader and time axis."""

    def __init__(self, model: PlannerModel, scene_threshold: float | None = None,
                 decode: DecodeConfig | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        self.decode = decode or DecodeConfig()
        if scene_threshold is not None:
            self.decode = replace(self.decode, scene_threshold=scene_threshold)

    @property
    def scene_threshold(self) -> float:
        return self.decode.scene_threshold

    def plan(self, prompt: str, seconds: float, style: str | None = None) -> Plan:
        """Read `prompt` and lay out a Script lasting `seconds` in total; `style` overrides one
        named in the prompt. Runs on one torch thread (see generator.one_torch_thread)."""
        with one_torch_thread():
            return self._plan(prompt, seconds, style)

    def _plan(self, prompt: str, seconds: float, style: str | None) -> Plan:
        t0 = time.perf_counter()
        states, offsets = encode_prompts([prompt])
        reader = self.model.reader
        evidence_1TV = value_evidence([prompt], offsets, reader.exemplar_XD, reader.exemplar_value_X, N_VALUES,
                                      self.cfg.window_words)[0][None]
        lexicon_1TC = lexicon_evidence([prompt], offsets)[0][None]
        t1 = time.perf_counter()
        h_1Td = states[0][None].float()
        T = h_1Td.shape[1]
        mask_1T = torch.ones(1, T, dtype=torch.bool)
        task = task_id("text_to_video")
        x_1TD, starts_1T2, logits, stats = self.model.read(h_1Td, mask_1T, task, evidence_1TV, lexicon_1TC)
        special_T = np.array([b <= a for a, b in offsets[0]])
        p_start_T2 = torch.sigmoid(starts_1T2[0]).numpy()
        probs = {a: logits[a][0].softmax(-1).numpy() for a in ATTRIBUTES}
        w = self.decode.evidence_pass_weight
        if w > 0:
            # A second pass with every word's own state hidden: words read from their evidence and context
            # alone (what state dropout trains for), which an unseen word's misleading own state cannot sway.
            hide_1T = torch.from_numpy(~special_T)[None]
            _, starts_ev_1T2, logits_ev, _ = self.model.read(h_1Td, mask_1T, task, evidence_1TV, lexicon_1TC, hide_1T)
            p_start_T2 = (1 - w) * p_start_T2 + w * torch.sigmoid(starts_ev_1T2[0]).numpy()
            probs = {a: (1 - w) * probs[a] + w * logits_ev[a][0].softmax(-1).numpy() for a in ATTRIBUTES}

        # a "scene" naming no object (no shape word, nor a colour word: an unseen shape word still comes with
        # its colour) is a stray start (e.g. "on a lawn, | the red box ..."): _scene_starts merges it
        object_conf_T = np.maximum(1 - probs["shape"][:, 0], 1 - probs["colour"][:, 0])
        all_T = np.arange(T)
        starts = _scene_starts(p_start_T2[:, 0], special_T, self.scene_threshold, self.cfg.max_scenes, object_conf_T)
        # one background and one camera phrase per scene: from the words that name a background most surely
        # ("lean" of "cerulean" read as a beach at 0.75 but as blue at 0.79 is no place) and those that may vote
        # for a camera
        background_conf_T = (1 - probs["background"][:, 0]) * names_attribute(probs, all_T, "background")
        camera_conf_T = np.zeros(T)
        rows = self.camera_rows(all_T, probs)
        camera_conf_T[rows] = 1 - probs["camera"][rows, 0]
        starts = _split_double_settings(starts, T, p_start_T2[:, 0], object_conf_T,
                                        [background_conf_T, camera_conf_T], self.cfg.max_scenes)
        # a scene joiner with objects named on both sides opens a scene (where no place or camera is named)
        starts = _split_at_joiners(starts, scene_joiner_cuts(prompt, offsets[0]), object_conf_T,
                                   names_attribute(probs, all_T, "motion"), self.cfg.max_scenes)
        scene_start_T = np.zeros(T, bool)
        scene_start_T[starts] = True
        scene_id_T = scene_ids_from_starts(scene_start_T.astype(int), special_T)
        n_scenes = int(scene_id_T.max()) + 1 if (scene_id_T >= 0).any() else 1
        link_T = link_words_T(prompt, offsets[0])
        scenes, confidence = [], []
        for k in range(n_scenes):
            toks = np.flatnonzero(scene_id_T == k)
            scene, conf = self._read_scene(toks, p_start_T2[:, 1], probs, link_T)
            scenes.append(scene)
            confidence.append(conf)
        style_name = style
        if style_name is None:
            p_style = probs["style"][~special_T]
            best = np.unravel_index(np.argmax(p_style[:, 1:]), p_style[:, 1:].shape)
            if p_style[best[0], best[1] + 1] > 0.5:
                style_name = ATTRIBUTES["style"][best[1]]

        # time axis
        scene_id_1T = torch.from_numpy(scene_id_T)[None]
        scene_1KD, seconds_1KC, scene_mask_1K = self.model.scene_tokens(x_1TD, scene_id_1T, logits["seconds"])
        scene_mask_1K[:, n_scenes:] = False
        scene_mask_1K[:, :n_scenes] = True
        slot_logits_1SK, t_stats = self.model.time_axis(scene_1KD, seconds_1KC, scene_mask_1K, task)
        p_SK = slot_logits_1SK[0].softmax(-1)[:, :n_scenes]
        # fraction of the video before scene k = mean over slots of P(slot shows a scene < k)
        before_K = torch.cat([torch.zeros(1), p_SK.cumsum(-1).mean(0)[:-1]]).numpy()
        # no scene shorter than a quarter of an even share: a flash of a few frames reads as a glitch
        fractions = np.diff(np.append(before_K, 1.0)).clip(min=MIN_SCENE_SHARE / n_scenes)
        fractions = fractions / fractions.sum()
        for scene, frac in zip(scenes, fractions):
            scene.seconds = float(seconds * frac)
        cut_seconds = [float(c) for c in np.cumsum([s.seconds for s in scenes])[:-1]]

        # experts per scene: text experts over the scene's tokens, time experts over its slots
        slot_scene_S = p_SK.argmax(-1)
        experts = []
        for k in range(n_scenes):
            rows = torch.from_numpy(np.flatnonzero(scene_id_T == k))
            slot_rows = torch.nonzero(slot_scene_S == k).flatten()
            time_share: dict[int, float] = {}
            for layer, st in enumerate(t_stats):
                for e, w in _expert_share(st, slot_rows, self.cfg.time_experts).items():
                    time_share[layer * self.cfg.time_experts + e] = w
            experts.append(SceneExperts(_expert_share(stats, rows, self.cfg.num_experts), time_share))
        t2 = time.perf_counter()
        return Plan(Script(scenes, style_name), cut_seconds, experts, confidence,
                    {"text_stream_ms": 1e3 * (t1 - t0), "experts_ms": 1e3 * (t2 - t1)},
                    PlanReading(offsets[0], probs, p_start_T2[:, 1], scene_id_T, link_T))

    @staticmethod
    def _object_spans(toks: np.ndarray, p_obj_T: np.ndarray, probs: dict[str, np.ndarray]
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Split a scene's tokens into object mentions: [(rows, shape_rows)], shape_rows being the rows the
        mention's shape is read from. A word counts as a shape, colour or motion word only when that is the
        attribute it names most surely. Mentions are cut at predicted object starts and, between two runs of
        shape words with colour words but no predicted start between them, before those colour words
        ("a red ball a blue box"). Then pieces are merged: a piece naming neither a shape nor a colour
        (a stray start: "dolly | out") joins the previous mention; a colour-only piece joins a shape-only
        piece right after it ("a red | ball"); a shape word with neither colour nor motion cut off only by
        colour words is a modifier of the next mention ("a single | blue box": not the digit 1), whose shape
        it does not vote on. A piece naming a colour but no known shape word stays a mention (an unseen shape
        word: its shape is the best guess over its rows)."""
        if toks.size == 0:
            return [(toks, toks)]
        n = len(toks)
        shape_on, colour_on, motion_on = (names_attribute(probs, toks, a) for a in ("shape", "colour", "motion"))
        obj_on = p_obj_T[toks] > 0.5
        runs: list[list[int]] = []
        for j in np.flatnonzero(shape_on):
            # a new shape run needs a colour word or a predicted object start since the last shape word;
            # otherwise this shape word belongs to the current run ("figure | three", "swelling in size")
            if runs and not (colour_on[runs[-1][1] + 1:j + 1].any() or obj_on[runs[-1][1] + 1:j + 1].any()):
                runs[-1][1] = j
            else:
                runs.append([j, j])
        cuts = {int(j): False for j in np.flatnonzero(obj_on) if j > 0}   # cut -> made by colour words only
        for prev, run in zip(runs[:-1], runs[1:]):
            if any(prev[1] < j <= run[0] for j in cuts):
                continue
            b = run[0]
            while b - 1 > prev[1] and colour_on[b - 1]:
                b -= 1
            cuts[b] = True
        bounds = [0] + sorted(cuts) + [n]
        pieces = [[a, b, a] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]   # [start, end, shape rows from]
        colour_cut = [cuts.get(a, False) for a, _, _ in pieces]

        def has(on: np.ndarray, piece: list[int]) -> bool:   # shape words count from the piece's shape rows
            return bool(on[piece[2] if on is shape_on else piece[0]:piece[1]].any())

        i = 0
        while i < len(pieces) and len(pieces) > 1:
            cur = pieces[i]
            nxt = pieces[i + 1] if i + 1 < len(pieces) else None
            if not has(shape_on, cur) and not has(colour_on, cur):
                if i == 0:   # leading words (a frame: "make a video where") join the next piece
                    nxt[0] = cur[0]
                else:
                    pieces[i - 1][1] = cur[1]
                pieces.pop(i)
                colour_cut.pop(i)
                i = max(i - 1, 0)
                continue
            if nxt is not None and has(colour_on, cur) and not has(shape_on, cur) and has(shape_on, nxt) \
                    and not has(colour_on, nxt):
                cur[1] = nxt[1]
                pieces.pop(i + 1)
                colour_cut.pop(i + 1)
                continue
            if nxt is not None and colour_cut[i + 1] and has(shape_on, cur) and not has(colour_on, cur) \
                    and not has(motion_on, cur) and has(colour_on, nxt):
                nxt[0], nxt[2] = cur[0], nxt[0]
                pieces.pop(i)
                colour_cut.pop(i)
                continue
            i += 1
        while len(pieces) > world.MAX_OBJECTS:   # at most MAX_OBJECTS: the last ones are one mention
            pieces[-2][1] = pieces[-1][1]
            pieces.pop()
        return [(toks[a:b], toks[c:b]) for a, b, c in pieces]

    @staticmethod
    def motion_rows(spans: list[tuple[np.ndarray, np.ndarray]], probs: dict[str, np.ndarray],
                    link_T: np.ndarray | None) -> list[np.ndarray]:
        """The rows each object mention's motion is read from: its own, or, when it shares the next
        mention's verb ("a red ball and a blue box | bounce", _shares_next_verb), those of the next mention
        that names a motion."""
        out = []
        for i, (rows, _) in enumerate(spans):
            if link_T is not None and _shares_next_verb(rows, probs, link_T):
                rows = next((r for r, _ in spans[i + 1:] if names_attribute(probs, r, "motion").any()), rows)
            out.append(rows)
        return out

    @staticmethod
    def camera_rows(toks: np.ndarray, probs: dict[str, np.ndarray]) -> np.ndarray:
        """The scene's tokens that may vote for its camera: those that read more as a camera move than as
        an object's motion ("sliding to the left" is no pan)."""
        return toks[probs["camera"][toks, 0] <= probs["motion"][toks, 0]]

    def _camera(self, p_RC: np.ndarray) -> tuple[str, float]:
        """A scene's camera from its camera_rows' camera probabilities [R, cameras]: the most
        likely move when some token gives it at least camera_min and it beats the best "static" token
        by camera_margin; else static (a prompt naming no camera means a static one)."""
        if p_RC.size == 0:
            return "static", 0.0
        best_C = p_RC.max(0)
        static = ATTRIBUTES["camera"].index("static")
        moves = [c for c in range(len(best_C)) if c != static]
        c = max(moves, key=lambda c: best_C[c])
        if best_C[c] >= self.decode.camera_min and best_C[c] >= best_C[static] + self.decode.camera_margin:
            return ATTRIBUTES["camera"][c], float(best_C[c])
        return "static", float(best_C[static])

    def _read_scene(self, toks: np.ndarray, p_obj_T: np.ndarray, probs: dict[str, np.ndarray],
                    link_T: np.ndarray | None = None) -> tuple[Scene, dict[str, float]]:
        def best(attr: str, rows: np.ndarray) -> tuple[str | None, float]:
            if rows.size == 0:
                return None, 0.0
            p_RC = probs[attr][rows, 1:]
            r, c = np.unravel_index(np.argmax(p_RC), p_RC.shape)
            return ATTRIBUTES[attr][c], float(p_RC[r, c])

        objects, conf = [], {}
        spans = self._object_spans(toks, p_obj_T, probs)
        motion_rows = self.motion_rows(spans, probs, link_T)
        colours = _distinct_colours([probs["colour"][rows, 1:].max(0) if rows.size else None for rows, _ in spans])
        for i, (rows, shape_rows) in enumerate(spans):
            if not (probs["shape"][shape_rows, 0] < 0.5).any():
                # no known shape word (an unseen one): guess from the rows that name nothing else
                free = np.ones(len(shape_rows), bool)
                for attr in ("colour", "motion", "background", "camera", "seconds", "style"):
                    free &= probs[attr][shape_rows, 0] >= 0.5
                shape_rows = shape_rows[free] if free.any() else shape_rows
            values = {"shape": best("shape", shape_rows), "motion": best("motion", motion_rows[i])}
            values["colour"] = colours[i]
            shape = values["shape"][0] or "circle"
            motion = values["motion"][0] or "still"
            if motion == "rotate" and shape in world.ROTATION_INVARIANT:
                motion = "still"
            objects.append(SceneObject(shape, values["colour"][0] or "white", motion))
            for attr, (_, p) in values.items():
                conf[f"object{i}_{attr}"] = round(p, 4)
        background, p_bg = best("background", toks)
        camera, p_cam = self._camera(probs["camera"][self.camera_rows(toks, probs), 1:])
        conf.update(background=round(p_bg, 4), camera=round(p_cam, 4))
        seconds, p_sec = best("seconds", toks)
        scene = Scene(objects, background if background and p_bg > 0.3 else "studio", camera,
                      float(seconds) if seconds and p_sec > 0.5 else world.DEFAULT_SCENE_SECONDS)
        return scene, conf


def _scene_starts(p_start_T: np.ndarray, special_T: np.ndarray, threshold: float, max_scenes: int,
                  object_conf_T: np.ndarray) -> list[int]:
    """Scene-start tokens: the first word always opens a scene (an unknown opening, "the footage depicts ...",
    often gets no start of its own, and a first start found only at the second scene would otherwise make
    both one scene), then every token over `threshold`; scenes naming no object are merged
    (_merge_objectless_scenes), then at most max_scenes are kept: the first and the most confident others."""
    words = np.flatnonzero(~special_T)
    if words.size == 0:
        return []
    first = int(words[0])
    starts = [first] + [int(t) for t in words[1:] if p_start_T[t] > threshold]
    starts = _merge_objectless_scenes(starts, len(p_start_T), object_conf_T)
    if len(starts) > max_scenes:
        starts = [starts[0]] + sorted(sorted(starts[1:], key=lambda t: -p_start_T[t])[:max_scenes - 1])
    return starts


def _split_double_settings(starts: list[int], T: int, p_start_T: np.ndarray, object_conf_T: np.ndarray,
                           setting_conf_Ts: list[np.ndarray], max_scenes: int) -> list[int]:
    """One background and one camera phrase per scene: a scene naming two of one kind (runs of tokens over 0.5 in
    one of `setting_conf_Ts`), with objects on both sides, is split where the scene-start head is most confident
    between the two phrases; at most max_scenes scenes."""
    starts = sorted(starts)
    for conf_T in setting_conf_Ts:
        changed = True
        while changed and len(starts) < max_scenes:
            changed = False
            for a, b in zip(starts, starts[1:] + [T]):
                runs = _runs(np.flatnonzero(conf_T[a:b] > 0.5) + a)
                if len(runs) < 2:
                    continue
                lo, hi = runs[0][1] + 1, runs[1][0]
                cut = lo + int(np.argmax(p_start_T[lo:hi + 1]))
                if object_conf_T[a:cut].max(initial=0) > 0.5 and object_conf_T[cut:b].max(initial=0) > 0.5:
                    starts = sorted(starts + [cut])
                    changed = True
                    break
    return starts


# Scene joiners of the training wording (the first list: fit and validation phrasings) that a decoding rule may
# cut at; "now" is left out, being as often an adverb inside a scene ("a ball now moves left").
CUT_JOINERS = tuple(j for j in world.SCENE_JOINERS[0] if j != "now")


def scene_joiner_cuts(prompt: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(first token of the joiner, first token after it) for each scene joiner of CUT_JOINERS in `prompt`
    ("..., | then | a blue box"), matched whole-word and case-blind; of overlapping joiners the longest ("then
    it cuts to" over its "then")."""
    found = [(m.start(), m.end()) for j in CUT_JOINERS for m in re.finditer(
        r"(?<![\w-])" + re.escape(j) + (r"(?![\w-])" if j[-1].isalnum() else ""), prompt, re.IGNORECASE)]
    longest = [(a, b) for a, b in found if not any(c <= a and b <= d and (c, d) != (a, b) for c, d in found)]
    cuts = set()
    for start, end in longest:
        first = next((t for t, (a, b) in enumerate(offsets) if b > a and b > start), None)
        after = next((t for t, (a, b) in enumerate(offsets) if b > a and a >= end), None)
        if first is not None and after is not None:
            cuts.add((first, after))
    return sorted(cuts)


def _split_at_joiners(starts: list[int], cuts: list[tuple[int, int]], object_conf_T: np.ndarray,
                      motion_T: np.ndarray, max_scenes: int) -> list[int]:
    """A scene that holds a scene joiner with objects named on both sides ("a red ball rolls left, then a blue
    box rises" with no place or camera named, which the scene-start head, trained on scenes that always end
    with their place, misses) is cut after the joiner, unless a scene already starts between the joiner and
    the next object word (the head placed the start a word or two off) or a motion is named before that
    object word (an adverb: "a red ball falls and then bounces, ..."); at most max_scenes scenes.
    motion_T: [T] bool, the token names a motion."""
    starts = sorted(starts)
    T = len(object_conf_T)
    for first, cut in cuts:
        if len(starts) >= max_scenes:
            break
        named_after = np.flatnonzero(object_conf_T[cut:] > 0.5)
        if named_after.size == 0:
            continue
        next_object = cut + int(named_after[0])
        if any(first <= s <= next_object for s in starts) or motion_T[cut:next_object].any():
            continue
        a = max([s for s in starts if s < cut], default=0)
        b = min([s for s in starts if s > cut], default=T)
        if object_conf_T[a:first].max(initial=0) > 0.5 and next_object < b:
            starts = sorted(starts + [cut])
    return starts


def _merge_objectless_scenes(starts: list[int], T: int, object_conf_T: np.ndarray) -> list[int]:
    """Scene starts without those whose scene names no object (object_conf_T: per token, how sure it names
    a shape or a colour; a scene needs one token over 0.5): such a scene is merged into the next one (the
    last into the previous one)."""
    starts, i = list(starts), 0
    while len(starts) > 1 and i < len(starts):
        end = starts[i + 1] if i + 1 < len(starts) else T
        if object_conf_T[starts[i]:end].max() < 0.5:
            starts.pop(i + 1 if i + 1 < len(starts) else i)  # merge into the next (last: previous) scene
            continue
        i += 1
    return starts


def _distinct_colours(p_OC: list[np.ndarray | None]) -> list[tuple[str | None, float]]:
    """One colour per object mention, no two alike (a world scene never repeats a colour, and the captioner
    reads one object per colour): the most confident mention chooses first, the others take their best
    colour still free. p_OC[i]: the mention's colour probabilities, None for an empty mention."""
    out: list[tuple[str | None, float]] = [(None, 0.0)] * len(p_OC)
    taken: set[int] = set()
    order = sorted((i for i, p in enumerate(p_OC) if p is not None), key=lambda i: -float(p_OC[i].max()))
    for i in order:
        for c in np.argsort(-p_OC[i]):
            if int(c) not in taken:
                taken.add(int(c))
                out[i] = (ATTRIBUTES["colour"][int(c)], float(p_OC[i][c]))
                break
    return out


# Words that join two object mentions sharing one verb ("a red ball and a blue box | bounce"): the words of the
# object joiners of the training wording (the first list: fit and validation phrasings) and a few quantifiers.
LINK_WORDS = frozenset(w for j in world.OBJECT_JOINERS[0] for w in j.split()) | {"both", "each", "all"}


def names_attribute(probs: dict[str, np.ndarray], rows: np.ndarray, attr: str) -> np.ndarray:
    """[R] bool: the word of each row names `attr`: the reader tags it so (p(none) < 0.5) and that is the
    attribute it names most surely ("moves" read as a shape at 0.7 and a motion at 1.0 is a motion word; an
    unsure article opens no mention of its own). Exact ties go to the attribute listed first in ATTRIBUTES."""
    owner_R = np.stack([probs[a][rows, 0] for a in ATTRIBUTES]).argmin(0)
    return (probs[attr][rows, 0] < 0.5) & (owner_R == ATTRIBUTE_INDEX[attr])


def link_words_T(prompt: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """[T] bool: the token is part of a joining word (LINK_WORDS) or is punctuation ("a red ball, and ...",
    "a red ball & ..."); special tokens (empty spans) are not."""
    return np.array([b > a and (not any(c.isalnum() for c in prompt[a:b]) or _word_at(prompt, a) in LINK_WORDS)
                     for a, b in offsets])


def _shares_next_verb(rows: np.ndarray, probs: dict[str, np.ndarray], link_T: np.ndarray) -> bool:
    """Whether an object mention shares the next one's verb: it names no motion, and every word after its
    last shape or colour word (none: "a red ball | a blue box bounce") is a joining word or punctuation ("a
    red ball and | a blue box bounce"). A mention whose motion words went unread ("a red ball inert and ...")
    keeps its own best guess."""
    if names_attribute(probs, rows, "motion").any():
        return False
    named_R = names_attribute(probs, rows, "shape") | names_attribute(probs, rows, "colour")
    tail = rows[np.flatnonzero(named_R)[-1] + 1:] if named_R.any() else rows
    return bool(link_T[tail].all())


def _word_at(text: str, i: int) -> str:
    """The lower-cased word of `text` holding character i."""
    a, b = i, i
    while a > 0 and text[a - 1].isalnum():
        a -= 1
    while b < len(text) and text[b].isalnum():
        b += 1
    return text[a:b].lower()


def _runs(idx: np.ndarray) -> list[list[int]]:
    """Sorted indices -> [first, last] of each run of consecutive indices."""
    runs: list[list[int]] = []
    for j in idx.tolist():
        if runs and j == runs[-1][1] + 1:
            runs[-1][1] = j
        else:
            runs.append([j, j])
    return runs


# ---------------------------------------------------------------- evaluation, save, load

def evaluate_planner(planner: Planner, scripts: list[Script], prompts: list[str], lexicon: bool = True
                     ) -> dict[str, float]:
    """Accuracy per attribute of planned scripts against the true ones (scenes and objects matched
    by order; a missing scene or object counts as wrong), scene-count accuracy, exact-script rate and
    the mean absolute error of the cut times (seconds, when the scene count is right). lexicon: each
    prompt rewritten by prompt_lexicon first, as the studio does."""
    from .prompt_lexicon import rewrite_prompt

    hits: dict[str, list[float]] = {k: [] for k in
                                    ("scene_count", "object_count", "shape", "colour", "motion", "background",
                                     "camera", "style", "script_exact")}
    cut_err = []
    for script, prompt in zip(scripts, prompts):
        total = sum(s.seconds for s in script.scenes)
        plan = planner.plan(rewrite_prompt(prompt).text if lexicon else prompt, total)
        got = plan.script
        hits["scene_count"].append(len(got.scenes) == len(script.scenes))
        hits["style"].append(got.style == script.style)
        exact = len(got.scenes) == len(script.scenes) and got.style == script.style
        for k, scene in enumerate(script.scenes):
            g = got.scenes[k] if k < len(got.scenes) else None
            hits["background"].append(g is not None and g.background == scene.background)
            hits["camera"].append(g is not None and g.camera == scene.camera)
            hits["object_count"].append(g is not None and len(g.objects) == len(scene.objects))
            exact &= g is not None and (g.background, g.camera, len(g.objects)) == (
                scene.background, scene.camera, len(scene.objects))
            for i, obj in enumerate(scene.objects):
                go = g.objects[i] if g is not None and i < len(g.objects) else None
                for attr in OBJECT_ATTRS:
                    ok = go is not None and getattr(go, attr) == getattr(obj, attr)
                    hits[attr].append(ok)
                    exact &= ok
        hits["script_exact"].append(exact)
        if len(got.scenes) == len(script.scenes) and len(script.scenes) > 1:
            true_cuts = np.cumsum([s.seconds for s in script.scenes])[:-1]
            cut_err.append(float(np.abs(np.array(plan.cut_seconds) - true_cuts).mean()))
    out = {f"{k}_accuracy": round(float(np.mean(v)), 4) for k, v in hits.items() if v}
    out["cut_mae_seconds"] = round(float(np.mean(cut_err)), 4) if cut_err else 0.0
    out["prompts"] = len(prompts)
    return out


def heldout_sets(n: int, seed: int) -> dict[str, tuple[list[Script], list[str]]]:
    """Evaluation sets: train phrasing (new prompts), validation phrasing (train words held out of
    fitting: for choosing models), novel phrasing (a second unseen wording, neither train nor test: for
    choosing how unseen words are read), held-out phrasing, and held-out phrasing of held-out (shape,
    colour, motion) combinations."""
    sets = {}
    for name, script_split, phrase_split, s in (("train_phrasing", "train", "train", 1),
                                                 ("val_phrasing", "train", "val", 4),
                                                 ("novel_phrasing", "train", "novel", 5),
                                                 ("heldout_phrasing", "train", "test", 2),
                                                 ("heldout_combos", "test", "test", 3)):
        rng = np.random.default_rng(seed * 1000 + s)
        scripts = [world.sample_script(rng, script_split) for _ in range(n)]
        sets[name] = (scripts, [world.script_to_prompt(sc, rng, phrase_split) for sc in scripts])
    return sets


def ensemble_planner(members: list[PlannerModel]) -> PlannerModel:
    """One planner reading with the readers of several trained ones (PlannerModel.read averages them):
    the first member's reader, time axis and exemplars, the others' readers. The members must share
    their config (but for `readers`) and exemplar phrases."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 planners, got {len(members)}")
    for i, m in enumerate(members):
        if m.cfg.readers != 1:
            raise ValueError(f"member {i} is an ensemble already ({m.cfg.readers} readers); give its members")
    base = replace(members[0].cfg, readers=1)
    for i, m in enumerate(members[1:], 1):
        if replace(m.cfg, readers=1) != base:
            raise ValueError(f"member {i}'s config differs from member 0's: {m.cfg} vs {base}")
        a_XD, b_XD = m.reader.exemplar_XD, members[0].reader.exemplar_XD
        if a_XD.shape != b_XD.shape or not torch.allclose(a_XD, b_XD, atol=2e-3):   # float16 storage rounds
            raise ValueError(f"member {i} was trained with other exemplar phrases than member 0")
    model = PlannerModel(replace(base, readers=len(members))).eval()
    model.reader.load_state_dict(members[0].reader.state_dict())
    model.time_axis.load_state_dict(members[0].time_axis.state_dict())
    for extra, m in zip(model.extra_readers, members[1:]):
        state = {k: v for k, v in m.reader.state_dict().items() if not k.startswith("exemplar_")}
        extra.load_state_dict(state, strict=False)   # all but the (empty) exemplar buffers
    return model


def save_planner(model: PlannerModel, path: str | Path, metadata: dict | None = None) -> Path:
    from core.checkpoint import save_checkpoint
    return save_checkpoint(model, path, kind=KIND, config=model.cfg, metadata=metadata)


@functools.cache
def _load(path: str) -> Planner:
    from core.checkpoint import load_checkpoint
    model, _ = load_checkpoint(path)
    return Planner(model)


def load_planner(path: str | Path | None = None) -> Planner:
    """The planner checkpoint at `path` (default: the shipped one), cached per process."""
    from core.checkpoint import MissingCheckpointError

    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        return _load(str(path.resolve()))
    except MissingCheckpointError as exc:
        raise MissingCheckpointError(f"no planner checkpoint: {exc}; build it with "
                                     f"`moe-suite video train-planner`") from None

