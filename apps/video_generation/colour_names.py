"""Colour words grounded in RGB: a prompt may name a colour the planner never saw in training ("teal",
"canary yellow"); its RGB value from a colour-name list tells which world colour it is closest to.

    colour_affinity("crimson")        # [C] affinity to each of world.COLOURS, or None for an unknown word
    word_colour_evidence(text)        # [(start, end, affinity_C)] for every colour word or two-word name

Names and values: the XKCD colour survey's 949 names and the 148 CSS4 names, as matplotlib ships them
(no download). A name is matched to the world's palette by hue in CIE Lab (lightness says little: "navy"
and "sky blue" are both blue), or to white when it has little chroma and is light. A colour name names some
colour, so its nearest palette hue gets affinity 1 however far it lies ("cerulean" lies 32 degrees from the
world's blue and 64 from its cyan: 0.28 and 0.01 before this scaling, 1 and 0.02 after).

Shape legend: C world colours.
"""
from __future__ import annotations

import functools
import math
import re

import cv2
import numpy as np

from . import world

HUE_SIGMA_DEG = 20.0    # width of a palette colour's hue band
MIN_CHROMA = 15.0       # below this a name is grey-ish: white when light, no world colour otherwise
WHITE_MIN_L = 70.0      # lightness a grey-ish name needs to count as white
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def _lch(rgb01: np.ndarray) -> tuple[float, float, float]:
    L, a, b = cv2.cvtColor(np.asarray(rgb01, np.float32).reshape(1, 1, 3), cv2.COLOR_RGB2Lab).reshape(3)
    return float(L), math.hypot(a, b), math.degrees(math.atan2(b, a)) % 360


@functools.cache
def _names() -> dict[str, np.ndarray]:
    from matplotlib import colors
    # The survey's names first: they are what people call a colour ("azure" is blue to them, near white in CSS).
    table = {name.removeprefix("xkcd:").replace("-", " "): np.array(colors.to_rgb(v))
             for name, v in colors.XKCD_COLORS.items()}
    for name, v in colors.CSS4_COLORS.items():
        table.setdefault(name.replace("-", " "), np.array(colors.to_rgb(v)))
    return table


@functools.cache
def _palette() -> tuple[list[str], np.ndarray, np.ndarray]:
    names = list(world.COLOURS)
    lch = np.array([_lch(np.array(world.COLOURS[n]) / 255.0) for n in names])
    return names, lch[:, 1], lch[:, 2]


def affinity_from_rgb(rgb01: np.ndarray) -> np.ndarray | None:
    """[C] in [0, 1]: how well an RGB colour (0..1) fits each world colour, the nearest hue 1; None when it
    fits none (grey, black)."""
    names, chroma_C, hue_C = _palette()
    L, chroma, hue = _lch(rgb01)
    out_C = np.zeros(len(names), np.float32)
    if chroma < MIN_CHROMA:
        if L < WHITE_MIN_L:
            return None
        out_C[names.index("white")] = 1.0
        return out_C
    d_C = np.abs((hue_C - hue + 180.0) % 360.0 - 180.0)
    out_C = np.exp(-0.5 * (d_C / HUE_SIGMA_DEG) ** 2).astype(np.float32)
    out_C[chroma_C < MIN_CHROMA] = 0.0   # white is not a hue
    return out_C / out_C.max()


def colour_affinity(phrase: str) -> np.ndarray | None:
    """[C] affinity of a colour name ("crimson", "canary yellow") to the world colours, None if unknown."""
    key = " ".join(_WORD.findall(phrase.lower().replace("-", " ")))
    rgb = _names().get(key)
    return None if rgb is None else affinity_from_rgb(rgb)


def word_colour_evidence(text: str) -> list[tuple[int, int, np.ndarray]]:
    """Character spans of the colour names in `text` with their affinities; a two-word name ("lime green")
    wins over its words."""
    words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"[A-Za-z]+", text)]
    out, i = [], 0
    while i < len(words):
        if i + 1 < len(words) and text[words[i][1]:words[i + 1][0]] in (" ", "-"):
            aff = colour_affinity(f"{words[i][2]} {words[i + 1][2]}")
            if aff is not None:
                out.append((words[i][0], words[i + 1][1], aff))
                i += 2
                continue
        aff = colour_affinity(words[i][2])
        if aff is not None:
            out.append((words[i][0], words[i][1], aff))
        i += 1
    return out
