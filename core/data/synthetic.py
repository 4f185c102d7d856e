"""Shape world: a tiny, seeded multimodal data set of coloured shapes, their captions and questions.

A scene holds one shape, or two on opposite sides (left and right, or top and bottom) with different
kinds and colours. Its caption names every shape ("a small red circle on the left and a large blue
square on the right"); a question asks about one of them ("what colour is the square ?" -> blue).
The same seed always gives the same images, captions and questions.

Shape legend: B samples, C = 3 colour channels, H = W = image side, T tokens.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from core.text.tokenizer import TokenBatch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.15, 0.1), "green": (0.15, 0.75, 0.2),
    "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
SIZES = ("small", "large")
ANSWERS: tuple[str, ...] = (*COLOURS, *SHAPES, *POSITIONS, *SIZES)  # the VQA answer classes
TEMPLATE_WORDS = ("a", "and", "on", "at", "the", "what", "colour", "shape", "size", "is", "where", "?")

# Centre (x, y) of each position as a fraction of the image side, and radius of each size.
_CENTRES = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}
_RADII = {"small": 0.11, "large": 0.18}
_PAIRS = (("left", "right"), ("top", "bottom"))  # where the two shapes of a two-shape scene go


@dataclass
class ShapeWorldConfig:
    image_size: int = 32             # side of the square RGB images (a multiple of the vision stride)
    max_shapes: int = 2              # 1: one shape per scene; 2: one or two
    jitter: float = 0.03             # shape centres move up to this fraction of the side
    colour_jitter: float = 0.08      # each channel of a shape's colour moves up to this much
    noise: float = 0.02              # std of the Gaussian pixel noise

    def __post_init__(self) -> None:
        if self.max_shapes not in (1, 2):
            raise ValueError(f"max_shapes must be 1 or 2, got {self.max_shapes}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")


@dataclass(frozen=True)
class Shape:
    kind: str                        # one of SHAPES
    colour: str                      # one of COLOURS
    position: str                    # one of POSITIONS
    size: str                        # one of SIZES

    @property
    def where(self) -> str:
        """"on the left", "at the top"."""
        return f"{'on' if self.position in ('left', 'right') else 'at'} the {self.position}"

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.kind} {self.where}"


Scene = tuple[Shape, ...]


@dataclass
class CaptionSet:
    images: torch.Tensor             # [B, C, H, W] float in [0, 1]
    captions: list[str]              # B captions


@dataclass
class VQASet:
    images: torch.Tensor             # [B, C, H, W] float in [0, 1]
    questions: list[str]             # B questions, each about one shape of its image
    answers: torch.Tensor            # [B] long, indices into ANSWERS


def caption(scene: Scene) -> str:
    """The shapes in position order, so a scene has exactly one caption."""
    ordered = sorted(scene, key=lambda s: POSITIONS.index(s.position))
    return " and ".join(s.phrase() for s in ordered)


def question(shape: Shape, kind: int) -> tuple[str, str]:
    """(question, answer) of one of the four question kinds about `shape`."""
    return (
        (f"what colour is the {shape.kind} ?", shape.colour),
        (f"what shape is {shape.where} ?", shape.kind),
        (f"where is the {shape.kind} ?", shape.position),
        (f"what size is the {shape.kind} ?", shape.size),
    )[kind]


class ShapeWorld:
    """Seeded generator of scenes, images, caption sets and VQA sets.

    `seed` is an int or a sequence of ints (numpy SeedSequence entropy): (seed, stage, step)
    gives every training step its own batch, without a generator state to carry across resumes.
    """

    def __init__(self, cfg: ShapeWorldConfig):
        self.cfg = cfg
        side = cfg.image_size
        self._xy_2HW = (np.mgrid[0:side, 0:side][::-1] + 0.5) / side  # pixel centres (x, y) in [0, 1]

    @property
    def num_captions(self) -> int:
        """How many different scenes (so captions) there are, jitter and noise aside."""
        one = len(SHAPES) * len(COLOURS) * len(POSITIONS) * len(SIZES)
        two = len(_PAIRS) * math.perm(len(SHAPES), 2) * math.perm(len(COLOURS), 2) * len(SIZES) ** 2
        return one + (two if self.cfg.max_shapes == 2 else 0)

    def scene(self, rng: np.random.Generator) -> Scene:
        n = int(rng.integers(1, self.cfg.max_shapes + 1))
        positions = (rng.choice(POSITIONS),) if n == 1 else _PAIRS[rng.integers(len(_PAIRS))]
        kinds = rng.choice(SHAPES, n, replace=False)
        colours = rng.choice(list(COLOURS), n, replace=False)
        sizes = rng.choice(SIZES, n)
        return tuple(Shape(str(k), str(c), str(p), str(s))
                     for k, c, p, s in zip(kinds, colours, positions, sizes))

    def render(self, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """[C, H, W] float32 in [0, 1]: shapes painted over a dark, noisy background."""
        cfg = self.cfg
        x_HW, y_HW = self._xy_2HW
        image_HWC = np.full((cfg.image_size, cfg.image_size, 3), 0.1)
        for shape in scene:
            cx, cy = np.asarray(_CENTRES[shape.position]) + rng.uniform(-cfg.jitter, cfg.jitter, 2)
            r = _RADII[shape.size]
            dx_HW, dy_HW = x_HW - cx, y_HW - cy
            if shape.kind == "circle":
                inside_HW = dx_HW ** 2 + dy_HW ** 2 <= r ** 2
            elif shape.kind == "square":
                inside_HW = np.maximum(np.abs(dx_HW), np.abs(dy_HW)) <= 0.85 * r
            else:  # triangle, apex up: the half-width grows from 0 at the apex to r at the base
                inside_HW = (np.abs(dy_HW) <= r) & (np.abs(dx_HW) <= (dy_HW + r) / 2)
            colour = np.asarray(COLOURS[shape.colour]) + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, 3)
            image_HWC[inside_HW] = colour
        image_HWC += rng.normal(0.0, cfg.noise, image_HWC.shape)
        return np.clip(image_HWC, 0.0, 1.0).astype(np.float32).transpose(2, 0, 1)

    def captions(self, n: int, seed: int | Sequence[int], distinct: bool = False) -> CaptionSet:
        """`n` images with their captions; `distinct`: no caption twice (for retrieval benchmarks)."""
        if distinct and n > self.num_captions:
            raise ValueError(f"asked for {n} distinct captions; this world has {self.num_captions}")
        rng = np.random.default_rng(seed)
        scenes: list[Scene] = []
        seen: set[str] = set()
        while len(scenes) < n:
            scene = self.scene(rng)
            if distinct and caption(scene) in seen:
                continue
            seen.add(caption(scene))
            scenes.append(scene)
        images_BCHW = torch.from_numpy(np.stack([self.render(s, rng) for s in scenes]))
        return CaptionSet(images_BCHW, [caption(s) for s in scenes])

    def vqa(self, n: int, seed: int | Sequence[int]) -> VQASet:
        """`n` images, each with a question about one of its shapes and the answer's class."""
        rng = np.random.default_rng(seed)
        images, questions, answers = [], [], []
        for _ in range(n):
            scene = self.scene(rng)
            text, answer = question(scene[rng.integers(len(scene))], int(rng.integers(4)))
            images.append(self.render(scene, rng))
            questions.append(text)
            answers.append(ANSWERS.index(answer))
        return VQASet(torch.from_numpy(np.stack(images)), questions, torch.tensor(answers))


class Tokenizer(Protocol):
    """What the trainer needs of a tokenizer: BERT-style special ids and batches of padded ids."""
    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int

    def __call__(self, texts: Sequence[str]) -> TokenBatch: ...


class WordTokenizer:
    """Whitespace words over a fixed vocabulary, as [CLS] words [SEP], right-padded to the longest text."""

    SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(self, words: Sequence[str]):
        self.vocab = [*self.SPECIALS, *sorted(set(words) - set(self.SPECIALS))]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(len(self.SPECIALS))

    @classmethod
    def shape_world(cls) -> WordTokenizer:
        """Every word shape world's captions and questions use, and no other."""
        return cls([*TEMPLATE_WORDS, *ANSWERS])

    def encode(self, text: str) -> list[int]:
        return [self.cls_id, *(self.ids.get(w, self.unk_id) for w in text.lower().split()), self.sep_id]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i >= len(self.SPECIALS))

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        rows = [self.encode(t) for t in texts]
        T = max(len(r) for r in rows)
        input_ids_BT = torch.tensor([r + [self.pad_id] * (T - len(r)) for r in rows])
        return TokenBatch(input_ids_BT, (input_ids_BT != self.pad_id).long())


class MiniLMTokenizer:
    """MiniLM's WordPiece tokenizer (core.text), for the upcycled text stream."""

    def __init__(self, max_length: int = 64):
        from core.text import load_tokenizer

        tok = load_tokenizer()
        self.max_length = max_length
        self.vocab_size = tok.vocab_size
        self.pad_id, self.cls_id = tok.pad_token_id, tok.cls_token_id
        self.sep_id, self.mask_id = tok.sep_token_id, tok.mask_token_id

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        from core.text import tokenize

        return tokenize(list(texts), max_length=self.max_length)


TOKENIZERS = ("word", "minilm")


def make_tokenizer(kind: str) -> Tokenizer:
    """"word": shape world's own vocabulary (no files needed); "minilm": MiniLM's WordPiece."""
    if kind == "word":
        return WordTokenizer.shape_world()
    if kind == "minilm":
        return MiniLMTokenizer()
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {kind!r}")
