"""Synthetic multimodal data: shape world's images, captions and visual questions, and tokenizers.

    from core.data import ShapeWorld, ShapeWorldConfig, WordTokenizer
    world = ShapeWorld(ShapeWorldConfig(image_size=32))
    pairs = world.captions(32, seed=0)        # pairs.images [32, 3, 32, 32], pairs.captions
    batch = WordTokenizer.shape_world()(pairs.captions)
"""
from .synthetic import (
    ANSWERS, COLOURS, POSITIONS, SHAPES, SIZES, TOKENIZERS, CaptionSet, MiniLMTokenizer, Shape,
    ShapeWorld, ShapeWorldConfig, Tokenizer, VQASet, WordTokenizer, caption, make_tokenizer, question,
)

__all__ = [
    "ANSWERS", "COLOURS", "POSITIONS", "SHAPES", "SIZES", "TOKENIZERS", "CaptionSet", "MiniLMTokenizer",
    "Shape", "ShapeWorld", "ShapeWorldConfig", "Tokenizer", "VQASet", "WordTokenizer", "caption",
    "make_tokenizer", "question",
]
