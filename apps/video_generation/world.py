"""The synthetic world the video studio renders itself (Sync-DRAW / moving-MNIST-with-captions,
grown to several objects, backgrounds, camera moves and scenes with cuts).

    scene = Scene([SceneObject("circle", "red", "left")], background="beach", camera="pan_right", seconds=2.0)
    frames_FHW3 = render_scene(scene, frames=48, size_hw=(360, 640))
    frames_FHW3, cuts = render_script(Script([scene, other]), fps=24, size_hw=(360, 640))
    caption_scene(scene)   # "a red circle moves left on the beach; the camera pans right."

Geometry lives in normalised world coordinates (x, y in [0, 1] of the frame, sizes as a fraction of
the shorter side), so the same scene renders identically at any resolution. `object_layout` gives an
object's trajectory (centre, size, angle per frame); `camera_transform` the camera's affine per frame;
`draw_sprite` draws one object. The learned generator (generator.py) reuses the backgrounds and the
camera but predicts layout and sprites itself.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "heart",
                           "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (255, 140, 0), "yellow": (250, 220, 20), "green": (30, 170, 50),
    "cyan": (0, 210, 220), "blue": (30, 70, 230), "purple": (140, 40, 190), "pink": (255, 105, 180),
    "white": (245, 245, 245),
}
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "grow", "shrink", "rotate", "bounce")
BACKGROUNDS: tuple[str, ...] = ("beach", "night", "grass", "sky", "studio", "sunset")
CAMERAS: tuple[str, ...] = ("static", "pan_left", "pan_right", "zoom_in", "zoom_out")
STYLES_IN_PROMPTS: tuple[str, ...] = ("watercolor", "pencil", "cartoon", "oil", "sketch")  # words a prompt may name

# Shapes that look the same when rotated: "rotate" is never paired with them.
ROTATION_INVARIANT: frozenset[str] = frozenset({"circle"})
MAX_OBJECTS = 3          # objects per scene
MAX_SCENES = 4           # scenes per script
DEFAULT_SCENE_SECONDS = 2.0   # a scene whose length the prompt does not state
SCENE_SECONDS = (1.0, 2.0, 3.0, 4.0)

OUTLINE_RGB = (20, 20, 20)


@dataclass
class SceneObject:
    shape: str    # one of SHAPES
    colour: str   # one of COLOURS
    motion: str   # one of MOTIONS

    def __post_init__(self) -> None:
        _check("shape", self.shape, SHAPES)
        _check("colour", self.colour, tuple(COLOURS))
        _check("motion", self.motion, MOTIONS)


@dataclass
class Scene:
    objects: list[SceneObject]
    background: str = "studio"
    camera: str = "static"
    seconds: float = DEFAULT_SCENE_SECONDS

    def __post_init__(self) -> None:
        _check("background", self.background, BACKGROUNDS)
        _check("camera", self.camera, CAMERAS)
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        if self.seconds <= 0:
            raise ValueError(f"scene seconds must be > 0, got {self.seconds}")


@dataclass
class Script:
    scenes: list[Scene]
    style: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.scenes) <= MAX_SCENES:
            raise ValueError(f"a script holds 1 to {MAX_SCENES} scenes, got {len(self.scenes)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Script:
        return cls([Scene([SceneObject(**o) for o in s["objects"]], s["background"], s["camera"],
                          float(s["seconds"])) for s in d["scenes"]], d.get("style"))


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


# ---------------------------------------------------------------- held-out combinations

def _held_out() -> frozenset[tuple[str, str, str]]:
    """Two (shape, colour, motion) triples per shape on a fixed lattice: every shape, colour and motion
    still occurs in training, only these combinations never do."""
    colours, combos = list(COLOURS), set()
    for i, shape in enumerate(SHAPES):
        for j in range(2):
            colour = colours[(2 * i + 5 * j) % len(colours)]
            motion = MOTIONS[(3 * i + 4 * j + 1) % len(MOTIONS)]
            if motion == "rotate" and shape in ROTATION_INVARIANT:
                motion = "bounce"
            combos.add((shape, colour, motion))
    return frozenset(combos)


HELD_OUT_COMBOS: frozenset[tuple[str, str, str]] = _held_out()


def _valid(shape: str, motion: str) -> bool:
    return not (motion == "rotate" and shape in ROTATION_INVARIANT)


def sample_object(rng: np.random.Generator, split: str = "train") -> SceneObject:
    """One object; "train" never yields HELD_OUT_COMBOS, "test" only yields them."""
    if split == "test":
        combos = sorted(HELD_OUT_COMBOS)
        return SceneObject(*combos[rng.integers(len(combos))])
    if split != "train":
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    while True:
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        motion = MOTIONS[rng.integers(len(MOTIONS))]
        if _valid(shape, motion) and (shape, colour, motion) not in HELD_OUT_COMBOS:
            return SceneObject(shape, colour, motion)


def sample_scene(rng: np.random.Generator, split: str = "train") -> Scene:
    """A random scene of 1-3 objects with distinct shapes and distinct colours."""
    n = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    objects: list[SceneObject] = []
    while len(objects) < n:
        obj = sample_object(rng, split)
        if all(o.shape != obj.shape and o.colour != obj.colour for o in objects):
            objects.append(obj)
    seconds = float(rng.choice(SCENE_SECONDS, p=[0.15, 0.55, 0.2, 0.1]))
    return Scene(objects, BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
                 CAMERAS[rng.integers(len(CAMERAS))], seconds)


def sample_script(rng: np.random.Generator, split: str = "train", max_scenes: int = 3) -> Script:
    """A random script of 1..max_scenes scenes; a third of scripts name a style."""
    n = int(rng.integers(1, max_scenes + 1))
    style = STYLES_IN_PROMPTS[rng.integers(len(STYLES_IN_PROMPTS))] if rng.random() < 0.3 else None
    return Script([sample_scene(rng, split) for _ in range(n)], style)


# ---------------------------------------------------------------- captions and prompts

MOTION_PHRASES = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down",
                  "still": "stays still", "grow": "grows", "shrink": "shrinks", "rotate": "rotates",
                  "bounce": "bounces"}
BACKGROUND_PHRASES = {"beach": "on the beach", "night": "at night", "grass": "on the grass",
                      "sky": "in the sky", "studio": "in the studio", "sunset": "at sunset"}
CAMERA_PHRASES = {"static": "the camera is static", "pan_left": "the camera pans left",
                  "pan_right": "the camera pans right", "zoom_in": "the camera zooms in",
                  "zoom_out": "the camera zooms out"}


def shape_noun(shape: str) -> str:
    """"circle" -> "circle"; "7" -> "digit 7"."""
    return f"digit {shape}" if shape in DIGITS else shape


def caption_scene(scene: Scene) -> str:
    """The canonical reference caption of one shot, e.g.
    "a red circle moves left and a blue 7 grows on the beach; the camera pans right."."""
    objs = " and ".join(f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.colour} {shape_noun(o.shape)} "
                        f"{MOTION_PHRASES[o.motion]}" for o in scene.objects)
    return f"{objs} {BACKGROUND_PHRASES[scene.background]}; {CAMERA_PHRASES[scene.camera]}."


# Phrasings. Each attribute value has train words and test words (never in training prompts), and novel words
# (_NOVEL_WORDS, below: a second unseen wording); the train words are split again into fit and validation words
# (phrase_options), so that a planner can be chosen on words it was not fitted on without ever looking at the
# test words.
# The label vocabulary of a span is "<attribute>:<value>" (see script_to_prompt_spans).
_WORDS: dict[str, dict[str, tuple[list[str], ...]]] = {
    "shape": {
        "circle": (["circle", "ball", "round dot", "orb", "dot", "bubble", "globe", "round blob", "marble",
                    "spot", "coin", "pearl"], ["disc", "sphere"]),
        "square": (["square", "box", "block", "crate", "brick", "square shape", "quad", "boxy shape",
                    "square panel"], ["cube", "tile"]),
        "triangle": (["triangle", "pyramid", "triangular shape", "arrowhead", "delta shape", "triangular sign",
                      "tent shape", "cone"], ["wedge", "three-sided shape"]),
        "star": (["star", "five-pointed star", "star shape", "little star", "sparkle", "star icon", "pointy star",
                  "shining star"], ["starburst", "twinkling star"]),
        "diamond": (["diamond", "rhombus", "diamond shape", "kite", "rhomboid",
                     "card-suit diamond", "jewel", "kite shape"], ["lozenge", "gem"]),
        "heart": (["heart", "love heart", "love symbol", "heart icon", "little heart", "heart sign"],
                  ["valentine heart", "heart shape"]),
        **{d: ([f"digit {d}", f"number {d}", w, d, f"digit {w}", f"number {w}", f"the character {d}",
                f"{w} symbol"], [f"numeral {d}", f"figure {w}"])
           for d, w in zip(DIGITS, DIGIT_WORDS)},
    },
    "colour": {
        "red": (["red", "scarlet", "cherry red", "blood red", "brick red", "tomato red", "vermilion", "cardinal red",
                 "fire-engine red", "strawberry red"], ["crimson", "ruby"]),
        "orange": (["orange", "tangerine", "peach", "pumpkin", "carrot orange", "copper", "rust", "marigold",
                    "burnt orange"], ["amber", "apricot"]),
        "yellow": (["yellow", "golden", "mustard", "sunflower yellow", "banana yellow", "butter yellow", "saffron",
                    "gold", "buttercup"], ["lemon", "canary yellow"]),
        "green": (["green", "emerald", "olive", "grass green", "forest green", "mint", "jade", "sage", "pea green",
                   "kelly green"], ["lime green", "leafy green"]),
        "cyan": (["cyan", "turquoise", "light turquoise", "bright cyan", "electric cyan", "seafoam", "deep turquoise",
                  "cyan tint"], ["aqua", "teal"]),
        "blue": (["blue", "navy", "sapphire", "royal blue", "indigo", "ultramarine", "denim", "midnight blue",
                  "ocean blue", "dark blue"], ["cobalt", "azure"]),
        "purple": (["purple", "violet", "plum", "lavender", "mauve", "grape", "amethyst", "eggplant", "orchid"],
                   ["lilac", "magenta"]),
        "pink": (["pink", "rose", "blush pink", "hot pink", "bubblegum pink", "flamingo pink", "coral pink",
                  "baby pink", "cerise"], ["salmon pink", "fuchsia"]),
        "white": (["white", "snowy", "milky white", "snow white", "pearl white", "chalk white", "cream", "bone white",
                   "alabaster", "off-white"], ["ivory", "pale white"]),
    },
    "motion": {
        "left": (["moves left", "slides to the left", "goes left", "rolls left", "glides left", "heads left",
                  "runs to the left", "shifts left", "sails left", "crosses to the left", "scoots left"],
                 ["drifting leftwards", "travelling to the left"]),
        "right": (["moves right", "slides to the right", "goes right", "rolls right", "glides right", "heads right",
                   "runs to the right", "shifts right", "sails right", "crosses to the right", "scoots right"],
                  ["drifting rightwards", "travelling to the right"]),
        "up": (["moves up", "rises", "goes upward", "floats up", "flies up", "lifts off", "soars", "goes up",
                "shoots up", "heads upward", "rises upward"], ["climbing upwards", "ascending"]),
        "down": (["moves down", "falls", "sinks", "drops down", "heads down", "goes down", "drops", "tumbles down",
                  "slides down", "plunges", "falls down"], ["descending", "coming downwards"]),
        "still": (["stays still", "does not move", "sits still", "stays put", "is stationary", "rests", "holds still",
                   "stays in the same spot", "is frozen", "never moves", "stays where it is"],
                  ["standing motionless", "remaining in place"]),
        "grow": (["grows", "gets bigger", "expands", "becomes big", "enlarges", "inflates", "magnifies", "balloons",
                  "gets huge", "becomes bigger", "widens"], ["swelling in size", "getting larger"]),
        "shrink": (["shrinks", "gets smaller", "contracts", "shrinks down", "becomes small", "narrows",
                    "deflates", "gets little", "diminishes", "reduces", "compresses"], ["dwindling", "getting tinier"]),
        "rotate": (["rotates", "spins", "turns around", "spins around", "whirls", "turns in circles", "pivots",
                    "goes round and round", "swivels", "twists around", "cartwheels"], ["twirling", "revolving"]),
        "bounce": (["bounces", "hops", "jumps up and down", "bounces around", "jumps", "springs", "skips",
                    "bobs up and down", "pogoes", "rebounds", "hops around"], ["bouncing", "leaping repeatedly"]),
    },
    "background": {
        "beach": (["on the beach", "on a sandy beach", "by the sea", "on the sand", "near the ocean", "by the waves",
                   "on a tropical beach", "at the coast", "next to the sea"], ["at the seaside", "on the shore"]),
        "night": (["at night", "under the night sky", "in the dark night", "at midnight", "in the night",
                   "at nighttime", "under the moon", "in the moonlight", "late at night"],
                  ["after dark", "beneath the stars"]),
        "grass": (["on the grass", "in a meadow", "on a lawn", "on lush grass", "in the park", "on the turf",
                   "in a pasture", "on a grassy hill", "in the garden"], ["in a green field", "on the grassland"]),
        "sky": (["in the sky", "among the clouds", "in the blue sky", "high in the sky", "in the open sky",
                 "through the clouds", "above the clouds", "in the heavens"], ["up in the air", "against a cloudy sky"]),
        "studio": (["in the studio", "on a grey backdrop", "in a photo studio", "on a gray background",
                    "on a neutral backdrop", "in a film studio", "on a seamless backdrop", "on a studio set"],
                   ["on a plain stage", "in a studio room"]),
        "sunset": (["at sunset", "at dusk", "in the evening glow", "at sundown", "in the evening", "during sunset",
                    "in the late evening light", "at the end of the day", "as evening falls"],
                   ["as the sun goes down", "at twilight"]),
    },
    "camera": {
        "static": (["", "with a static camera", "the camera stays fixed", "the camera does not move", "fixed camera",
                    "locked-off shot", "the camera is still", "stationary camera"], ["", "shot on a tripod"]),
        "pan_left": (["the camera pans left", "panning left", "pan left", "the camera swings left",
                      "camera pans to the left", "the camera turns left", "with a pan to the left",
                      "the shot pans left"], ["the view sweeps to the left", "camera panning leftward"]),
        "pan_right": (["the camera pans right", "panning right", "pan right", "the camera swings right",
                       "camera pans to the right", "the camera turns right", "with a pan to the right",
                       "the shot pans right"], ["the view sweeps to the right", "camera panning rightward"]),
        "zoom_in": (["the camera zooms in", "zooming in", "zoom in", "the camera moves in", "with a zoom in",
                     "the shot tightens", "the lens zooms in", "dolly in"],
                    ["the camera pushes in", "moving closer with the camera"]),
        "zoom_out": (["the camera zooms out", "zooming out", "zoom out", "the camera moves out", "with a zoom out",
                      "the shot widens", "the lens zooms out", "dolly out"],
                     ["the camera pulls back", "moving away with the camera"]),
    },
    "style": {s: ([f"in {s} style", f"{s} style", f"in the style of {s}", f"{s}-style"],
                  [f"rendered as a {s}", f"looking like a {s}"])
              for s in STYLES_IN_PROMPTS},
}
# More training phrasings (2026-11-30): verbs in their -ing form too, direction words in several forms, a few colour
# words inside background phrases, more camera, shape and colour wordings. Appended after the
# first lists, so that every phrasing keeps its fit / validation split (phrase_options); none uses a held-out word.
_MORE_TRAIN_WORDS: dict[str, dict[str, list[str]]] = {
    "shape": {
        "circle": ["round shape", "circular shape", "polka dot", "round token", "button", "circle icon", "ball shape",
                   "round button"],
        "square": ["square block", "square box", "checker square", "square icon", "square sign", "boxy block",
                   "square card"],
        "triangle": ["triangle shape", "triangle icon", "pyramid shape", "arrow tip", "triangle sign",
                     "pointed triangle"],
        "star": ["star sign", "star symbol", "bright star", "starfish shape", "star badge", "glittering star",
                 "sheriff star"],
        "diamond": ["diamond icon", "rhombus shape", "diamond sign", "crystal", "diamond outline", "jewel shape",
                    "diamond badge"],
        "heart": ["heart symbol", "cute heart", "love-heart", "big heart", "heart badge", "loving heart",
                  "heart outline", "sweetheart symbol"],
    },
    "colour": {
        "red": ["bright red", "deep red", "cherry", "wine red", "lipstick red"],
        "orange": ["mango", "orange peel", "squash orange"],
        "yellow": ["bright yellow", "sunshine yellow", "daffodil", "corn yellow"],
        "green": ["bright green", "dark green", "apple green", "bottle green", "fern green"],
        "cyan": ["pool cyan", "light cyan", "aquamarine", "bright turquoise"],
        "blue": ["bright blue", "deep blue", "cornflower blue", "electric blue", "baby blue"],
        "purple": ["bright purple", "deep purple", "royal purple", "dark violet", "heather"],
        "pink": ["bright pink", "pastel pink", "light pink", "neon pink"],
        "white": ["pure white", "bright white", "paper white", "frost white", "chalky white"],
    },
    # Verbs in their -ing form as well ("a ball rolling left"), direction words in several forms.
    "motion": {
        "left": ["rolling left", "sliding left", "gliding to the left", "heading left", "moving to the left",
                 "runs off to the left", "sailing to the left", "wanders left", "swims left", "zips left",
                 "going left", "races to the left"],
        "right": ["rolling right", "sliding right", "gliding to the right", "heading right", "moving to the right",
                  "runs off to the right", "sailing to the right", "wanders right", "swims right", "zips right",
                  "going right", "races to the right"],
        "up": ["rising", "floating up", "flying upward", "soaring up", "lifting off", "moving up", "shooting up",
               "goes skyward", "heading upward", "raises itself", "floats toward the top", "mounting up"],
        "down": ["falling", "sinking", "dropping down", "moving down", "heading down", "plunging", "tumbling",
                 "goes toward the bottom", "sliding down", "drops to the ground", "lowering", "sags down"],
        "still": ["staying still", "sitting still", "not moving", "resting", "holding still", "keeps still",
                  "stays frozen", "waits without moving", "idles", "does nothing", "is at rest"],
        "grow": ["growing", "expanding", "enlarging", "inflating", "becomes bigger and bigger", "grows bigger",
                 "bulges", "widening"],
        "shrink": ["shrinking", "contracting", "becoming small", "deflating", "becomes smaller and smaller",
                   "shrivels", "shrinks to a speck", "shrinks to nothing", "diminishing", "narrowing"],
        "rotate": ["rotating", "spinning", "turning around", "whirling", "spinning on the spot", "pivoting",
                   "wheels round", "swiveling", "twisting around", "wheels around", "spins as a top does",
                   "pirouettes"],
        "bounce": ["hopping", "jumping", "springing", "skipping", "bobbing up and down", "rebounds off the ground",
                   "hopping around", "bouncy", "jumps around", "bounces high", "pogoing", "keeps hopping"],
    },
    # A few colour words inside background phrases: they name the place, not an object.
    "background": {
        "beach": ["by the ocean", "on the coast", "at the beach", "beside the surf", "by the blue sea",
                  "at the water's edge", "on a palm beach", "on the sandy coast"],
        "night": ["on a moonlit night", "in darkness", "at night time", "under a black sky", "in the black of night",
                  "in the middle of the night", "in the small hours", "under a full moon"],
        "grass": ["on a green lawn", "in a grassy park", "on the football pitch", "in the backyard", "on a hillside",
                  "in the countryside", "in an open meadow", "on a golf course"],
        "sky": ["high above the ground", "in the clear sky", "in the sky above", "across the sky", "between clouds",
                "in the wide sky"],
        "studio": ["on a grey background", "in front of a backdrop", "in a studio space", "on a blank backdrop",
                   "on a neutral set", "in a photo booth", "on seamless grey paper", "in a recording studio",
                   "on a gray set"],
        "sunset": ["at golden hour", "in the sunset glow", "during the evening", "as the day ends",
                   "at the close of day", "at evening time", "at the day's end", "in the dusky evening"],
    },
    "camera": {
        "static": ["the camera holds steady", "a steady shot", "no camera movement", "the camera stays locked",
                   "the camera holds its position", "a fixed frame", "the shot is locked", "steady camera",
                   "the camera never moves", "unmoving camera"],
        "pan_left": ["the camera tracks left", "the camera glides left", "a pan to the left",
                     "the camera slides left", "the frame pans left", "tracking shot to the left",
                     "the camera moves to the left side", "a left pan"],
        "pan_right": ["the camera tracks right", "the camera glides right", "a pan to the right",
                      "the camera slides right", "the frame pans right", "tracking shot to the right",
                      "the camera moves to the right side", "a right pan"],
        "zoom_in": ["the camera creeps in", "a tight zoom", "the lens punches in", "a slow zoom in",
                    "zooming toward the subject", "the camera dollies in", "the camera approaches",
                    "the frame tightens", "the camera glides in", "zoom into the scene"],
        "zoom_out": ["the camera backs off", "the camera retreats", "the camera dollies out", "a slow zoom out",
                     "the shot opens out", "zooming off into a wide shot", "the camera withdraws",
                     "zoom out to a wide frame"],
    },
}
for _attr, _values in _MORE_TRAIN_WORDS.items():
    for _value, _words in _values.items():
        _WORDS[_attr][_value][0].extend(_words)
del _attr, _values, _value, _words
PHRASED_ATTRIBUTES: tuple[str, ...] = tuple(_WORDS)   # attributes phrase_words knows
# A second unseen wording ("novel" split): words, joiners, articles and frames that neither the training nor
# the held-out ("test") wording uses, written like the test lists (2026-12-01). The "val" phrasings share the
# training's kinds of joiners and frames, so they do not show how a planner treats wording it never saw; the
# novel wording does, without spending the test wording on choices. tests/test_video_world.py checks that it
# shares no word with either beyond function words and the values' own names.
_NOVEL_WORDS: dict[str, dict[str, list[str]]] = {
    "shape": {"circle": ["roundel", "circlet"], "square": ["square plate", "checkbox"],
              "triangle": ["trigon", "three-cornered form"], "star": ["pentagram", "star emblem"],
              "diamond": ["rhomb", "facet"], "heart": ["heart emblem", "romantic heart"],
              **{d: [f"glyph {d}", f"the integer {w}"] for d, w in zip(DIGITS, DIGIT_WORDS)}},
    "colour": {"red": ["carmine", "poppy red"], "orange": ["persimmon", "clementine"],
               "yellow": ["dandelion", "maize yellow"], "green": ["shamrock green", "pine green"],
               "cyan": ["glacier cyan", "verdigris"], "blue": ["cerulean", "steel blue"],
               "purple": ["aubergine", "wisteria"], "pink": ["carnation pink", "candy pink"],
               "white": ["snowflake white", "porcelain"]},
    "motion": {"left": ["edging left", "creeping to the left"], "right": ["edging right", "creeping to the right"],
               "up": ["levitating", "rocketing up"], "down": ["plummeting", "settling downward"],
               "still": ["inert", "immobile"], "grow": ["increasing in scale", "puffing outward"],
               "shrink": ["decreasing in scale", "collapsing inward"], "rotate": ["gyrating", "corkscrewing"],
               "bounce": ["bounding about", "ricocheting"]},
    "background": {"beach": ["on the coastline", "at a bay"], "night": ["at nightfall", "in the nocturnal gloom"],
                   "grass": ["on a prairie", "on the steppe"], "sky": ["aloft in the blue", "in the atmosphere"],
                   "studio": ["before a bare wall", "in a photography studio"],
                   "sunset": ["as daylight fades", "at eventide"]},
    "camera": {"static": ["", "the camera is immobile"], "pan_left": ["panned to the left", "the camera traverses left"],
               "pan_right": ["panned to the right", "the camera traverses right"],
               "zoom_in": ["the camera closes in", "the framing closes up"],
               "zoom_out": ["the camera recedes", "a retreating framing"]},
    "style": {s: [f"done as a {s}", f"with a {s} feel"] for s in STYLES_IN_PROMPTS},
}
for _attr, _values in _WORDS.items():
    for _value, (_train, _test) in _values.items():
        _values[_value] = (_train, _test, _NOVEL_WORDS[_attr][_value])
del _attr, _values, _value, _train, _test
_SECONDS_WORDS = {1.0: "one", 2.0: "two", 3.0: "three", 4.0: "four"}
SCENE_JOINERS = (["then", "after that", "next,", "cut to", "and then", "subsequently", "new scene:",
                  "in the next shot", "switch to", "and next", "the scene changes:", "then the film cuts to",
                  "after this,", "next up,", "once that ends,", "and now", "in another shot", "change to",
                  "then comes", "after which", "and finally", "then it cuts to", "the next scene shows",
                  "second scene:", "next shot:", "the video then shows", "after that comes", "cut:", "now",
                  "and after that", "then switch to", "the shot changes to"],
                 ["later on,", "followed by", "and afterwards"],
                 ["after an edit,", "thereafter", "onward,"])
OBJECT_JOINERS = (["and", "while", "and also", "plus", "as well as", "next to", "beside", "and another",
                   "near", "with", "accompanied by", "in addition to", "coupled with", "joined by",
                   "side by side with", "besides", "and a second"], ["together with", "alongside"],
                   ["along with", "accompanying"])
_ARTICLES = (["a", "the", "a small", "a big", "a little", "a bright", "a shiny", "an", "a large", "a huge", "a cute",
              "a glowing", "a lone", "a solitary", "a pretty", "a sparkling"], ["a single", "some"],
             ["a tiny", "a certain"])
_STATES = {  # scene-level sentence frames: {objects} {background} {camera}
    "train": ["{objects} {background}{camera}", "{background}, {objects}{camera}",
              "there is {objects} {background}{camera}", "{background} you can see {objects}{camera}",
              "show {objects} {background}{camera}", "a shot of {objects} {background}{camera}",
              "{objects}, {background}{camera}", "i want {objects} {background}{camera}",
              "make a video where {objects} {background}{camera}", "picture {objects} {background}{camera}",
              "{background}: {objects}{camera}", "imagine {objects} {background}{camera}",
              "a clip of {objects} {background}{camera}", "here {objects} {background}{camera}",
              "scene: {objects} {background}{camera}", "please show {objects} {background}{camera}",
              "a video in which {objects} {background}{camera}", "{background} {objects}{camera}",
              "display {objects} {background}{camera}", "it shows {objects} {background}{camera}",
              "there's {objects} {background}{camera}", "look: {objects} {background}{camera}",
              "watch {objects} {background}{camera}", "a scene with {objects} {background}{camera}",
              "an animation of {objects} {background}{camera}", "render {objects} {background}{camera}"],
    "test": ["we see {objects} {background}{camera}", "{background} there is {objects}{camera}"],
    "novel": ["the footage depicts {objects} {background}{camera}", "{background} appears {objects}{camera}"],
}
_MANNER = ["slowly", "quickly", "gently", "steadily", "smoothly"]   # optional words after a motion (train, val)
SPLITS = ("train", "val", "test", "novel")


def phrase_options(options: tuple[list[str], list[str], list[str]], split: str) -> list[str]:
    """The phrasings of one kind a split may use: options = (train list, test list, novel list). "test":
    the held-out list; "novel": a second list of unseen wording (see _NOVEL_WORDS). The train list is split
    again: every fourth entry (from the fourth on) is a "val" phrasing, the rest are "train" phrasings; a
    list too short to spare one gives "val" all of it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split in ("test", "novel"):
        return options[1 if split == "test" else 2]
    val = [w for i, w in enumerate(options[0]) if i % 4 == 3]
    if split == "val":
        return val or options[0]
    return [w for i, w in enumerate(options[0]) if i % 4 != 3]


def phrase_words(attribute: str, value: str, split: str) -> list[str]:
    """The words a split uses for one attribute value, e.g. phrase_words("colour", "red", "test")."""
    return phrase_options(_WORDS[attribute][value], split)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[rng.integers(len(options))]


class _Builder:
    """Builds a prompt string and the character spans of its labelled phrases."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[tuple[int, int, str]] = []

    def add(self, piece: str, label: str | None = None) -> None:
        if not piece:
            return
        if self.text and not self.text.endswith(" ") and not piece.startswith((",", ".", ";", ":")):
            self.text += " "
        start = len(self.text)
        self.text += piece
        if label:
            self.spans.append((start, len(self.text), label))


def script_to_prompt_spans(script: Script, rng: np.random.Generator,
                           split: str = "train") -> tuple[str, list[tuple[int, int, str]]]:
    """A prompt for `script` and its labelled character spans, (start, end, label) with labels
    "<attribute>:<value>", "scene" (a whole scene's text, in order), "object" (one object's mention,
    in order) and "seconds:<n>" (a stated scene length). The planner trains on these. `split` picks the
    phrasings (phrase_options): "train" and "val" share sentence frames but not words; "test" and "novel"
    use words, frames and joiners that no other split uses. Train and val prompts also get optional manner
    words."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    frames = _STATES[split if split in _STATES else "train"]
    b = _Builder()
    for si, scene in enumerate(script.scenes):
        if si:
            b.add(_pick(rng, phrase_options(SCENE_JOINERS, split)))
        scene_start = len(b.text) + (1 if b.text else 0)
        frame = _pick(rng, frames)
        # Fill the frame in order of its placeholders.
        for part in re.split(r"(\{\w+\})", frame):
            if part == "{objects}":
                for oi, obj in enumerate(scene.objects):
                    if oi:
                        b.add(_pick(rng, phrase_options(OBJECT_JOINERS, split)))
                    obj_start = len(b.text) + (1 if b.text else 0)
                    b.add(_pick(rng, phrase_options(_ARTICLES, split)))
                    b.add(_pick(rng, phrase_words("colour", obj.colour, split)), f"colour:{obj.colour}")
                    b.add(_pick(rng, phrase_words("shape", obj.shape, split)), f"shape:{obj.shape}")
                    b.add(_pick(rng, phrase_words("motion", obj.motion, split)), f"motion:{obj.motion}")
                    if split in ("train", "val") and rng.random() < 0.15:
                        b.add(_pick(rng, _MANNER))
                    b.spans.append((obj_start, len(b.text), "object"))
            elif part == "{background}":
                b.add(_pick(rng, phrase_words("background", scene.background, split)),
                      f"background:{scene.background}")
            elif part == "{camera}":
                words = _pick(rng, phrase_words("camera", scene.camera, split))
                if words:
                    b.add(",")
                    b.add(words, f"camera:{scene.camera}")
            elif part.strip():
                b.add(part.strip())
        if scene.seconds != DEFAULT_SCENE_SECONDS or rng.random() < 0.25:
            n = scene.seconds
            words = f"for {_SECONDS_WORDS.get(n, f'{n:g}') if rng.random() < 0.5 else f'{n:g}'} seconds"
            if n == 1.0:
                words = words.replace("seconds", "second")
            b.add(",")
            b.add(words, f"seconds:{n:g}")
        b.spans.append((scene_start, len(b.text), "scene"))
        if si < len(script.scenes) - 1:
            b.add(",")
    if script.style:
        b.add(",")
        b.add(_pick(rng, phrase_words("style", script.style, split)), f"style:{script.style}")
    return b.text, b.spans


def script_to_prompt(script: Script, rng: np.random.Generator, split: str = "train") -> str:
    """A natural-language prompt for `script`; "test" and "novel" use words and sentence frames never used
    in training (nor in "val"), "val" words never used in "train"."""
    return script_to_prompt_spans(script, rng, split)[0]


# ---------------------------------------------------------------- rendering

@dataclass
class Layout:
    """One object's trajectory over F frames, in normalised world coordinates."""
    cx_F: np.ndarray      # centre x, fraction of frame width
    cy_F: np.ndarray      # centre y, fraction of frame height
    size_F: np.ndarray    # half-size, fraction of the frame's shorter side
    angle_F: np.ndarray   # rotation, degrees


def object_slots(n: int, seed: int) -> list[tuple[float, float]]:
    """Start anchors (x, y) of n objects: distinct rows and columns so objects seldom overlap."""
    rng = np.random.default_rng(seed)
    cols = [0.5] if n == 1 else list(np.linspace(0.25, 0.75, n))
    rows = [0.5] if n == 1 else list(np.linspace(0.3, 0.7, n))
    order = rng.permutation(n)
    jitter = rng.uniform(-0.04, 0.04, size=(n, 2))
    return [(float(cols[i] + jitter[i, 0]), float(rows[order[i]] + jitter[i, 1])) for i in range(n)]


def motion_params(n_objects: int) -> tuple[float, float]:
    """(base half-size, travel distance) for a scene of n objects."""
    base = {1: 0.16, 2: 0.12, 3: 0.10}[n_objects]
    return base, 0.45


def object_layout(motion: str, frames: int, anchor_xy: tuple[float, float], n_objects: int) -> Layout:
    """Ground-truth trajectory of one object (what the generator learns to predict)."""
    t_F = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    base, travel = motion_params(n_objects)
    ax, ay = anchor_xy
    cx_F = np.full(frames, ax)
    cy_F = np.full(frames, ay)
    size_F = np.full(frames, base)
    angle_F = np.zeros(frames)
    if motion in ("left", "right"):
        sign = -1.0 if motion == "left" else 1.0
        cx_F = 0.5 + sign * travel * (t_F - 0.5)
    elif motion in ("up", "down"):
        sign = -1.0 if motion == "up" else 1.0
        cy_F = 0.5 + sign * 0.6 * travel * (t_F - 0.5)
    elif motion == "grow":
        size_F = base * (0.5 + t_F)
    elif motion == "shrink":
        size_F = base * (1.5 - t_F)
    elif motion == "rotate":
        angle_F = 360.0 * t_F
    elif motion == "bounce":
        cy_F = ay + 0.15 - 0.3 * np.abs(np.sin(2 * np.pi * t_F))
    return Layout(cx_F, cy_F, size_F, angle_F)


def camera_transform(camera: str, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale_F, shift_F): the camera maps world x to (x - 0.5 - shift) * scale + 0.5 (likewise y, no shift)."""
    t_F = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    scale_F, shift_F = np.ones(frames), np.zeros(frames)
    if camera == "pan_left":
        shift_F = -0.25 * t_F   # the view moves left: the world slides right on screen
    elif camera == "pan_right":
        shift_F = 0.25 * t_F
    elif camera == "zoom_in":
        scale_F = 1.0 + 0.5 * t_F
    elif camera == "zoom_out":
        scale_F = 1.5 - 0.5 * t_F
    return scale_F, shift_F


def _gradient(h: int, w: int, top: tuple, bottom: tuple) -> np.ndarray:
    t_H1 = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    col_H3 = (1 - t_H1) * np.array(top, np.float32) + t_H1 * np.array(bottom, np.float32)
    return np.ascontiguousarray(np.broadcast_to(col_H3[:, None, :], (h, w, 3)), dtype=np.uint8)


# Stars and clouds per canvas: a fixed count at positions drawn in fractions of the canvas, so one seed gives
# the same backdrop at every resolution. The counts are those the captioner's training renders (108-180 px
# high) had when they grew with the canvas; a 360p plate then had 6 clouds and 115 stars, 1080p 18 and 1036.
NIGHT_STARS = 25
SKY_CLOUDS = 3
SEEDED_DETAILS = ("night", "sky")   # the backgrounds whose details (stars, clouds) their seed places


def render_background(name: str, size_hw: tuple[int, int], seed: int = 0, details: bool = True) -> np.ndarray:
    """A background canvas [H, W, 3] with a distinct look, the same at any resolution (up to resampling);
    callers render it wider for pans. details: the night's stars and the sky's clouds, which the seed
    places; without them, what every seed of the background shares."""
    _check("background", name, BACKGROUNDS)
    h, w = size_hw
    rng = np.random.default_rng(seed)
    if name == "beach":
        img = np.empty((h, w, 3), np.uint8)
        s1, s2 = int(0.35 * h), int(0.6 * h)
        img[:s1] = _gradient(s1, w, (120, 190, 250), (180, 220, 250))
        img[s1:s2] = _gradient(s2 - s1, w, (20, 110, 180), (40, 150, 200))
        img[s2:] = _gradient(h - s2, w, (235, 210, 150), (210, 180, 120))
        for i in range(3):   # foam lines
            y = s2 - 2 - i * max(1, (s2 - s1) // 5)
            cv2.line(img, (0, y), (w, y), (230, 240, 250), max(1, h // 180), cv2.LINE_AA)
    elif name == "night":
        img = _gradient(h, w, (5, 10, 40), (20, 30, 80))
        dot = max(1, round(h / 360))   # one pixel at 360p, grown with the frame
        stars = NIGHT_STARS if details else 0
        for x, y in zip(rng.random(stars) * w, rng.random(stars) * 0.8 * h):
            img[int(y):int(y) + dot, int(x):int(x) + dot] = (255, 255, 230)
        cv2.circle(img, (int(0.85 * w), int(0.15 * h)), max(2, h // 14), (240, 240, 210), -1, cv2.LINE_AA)
    elif name == "grass":
        img = _gradient(h, w, (60, 160, 60), (30, 110, 30))
        y_H1 = np.arange(h)[:, None]
        x_1W = np.arange(w)[None, :]
        stripes = ((x_1W // max(1, w // 16)) % 2).astype(np.float32) * 12 - 6 + 0 * y_H1
        img = np.clip(img.astype(np.float32) + stripes[..., None], 0, 255).astype(np.uint8)
    elif name == "sky":
        img = _gradient(h, w, (70, 140, 230), (170, 210, 250))
        for _ in range(SKY_CLOUDS if details else 0):
            cx, cy = int(rng.random() * w), int(rng.random() * 0.7 * h)
            r = max(3, int(h * rng.uniform(0.05, 0.1)))
            for dx in (-r, 0, r):
                cv2.circle(img, (cx + dx, cy + (0 if dx else -r // 2)), r, (250, 250, 255), -1, cv2.LINE_AA)
    elif name == "studio":
        y_H1 = (np.arange(h, dtype=np.float32)[:, None] / h - 0.5) * 2
        x_1W = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * 2
        v_HW = np.clip(1.0 - 0.35 * (x_1W ** 2 + y_H1 ** 2), 0, 1)
        img = np.repeat((60 + 90 * v_HW)[..., None], 3, axis=2).astype(np.uint8)
    else:  # sunset
        img = _gradient(h, w, (110, 40, 120), (250, 150, 60))
        cv2.circle(img, (int(0.5 * w), int(0.8 * h)), max(3, h // 6), (255, 210, 90), -1, cv2.LINE_AA)
        img[int(0.8 * h):] = _gradient(h - int(0.8 * h), w, (60, 30, 60), (40, 20, 40))
    return np.ascontiguousarray(img)


def _polygon(shape: str) -> np.ndarray:
    """Unit outline (radius 1) of a polygonal shape, [N, 2]."""
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * 0.85
    if shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a) + 0.15], 1).astype(np.float32)
    if shape == "diamond":
        return np.array([[0, -1], [0.7, 0], [0, 1], [-0.7, 0]], np.float32)
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1).astype(np.float32)
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return (np.stack([x, y], 1) / 17.0).astype(np.float32)
    raise ValueError(f"no polygon for {shape!r}")


def sprite_mask(shape: str, size: int, angle: float = 0.0) -> np.ndarray:
    """Antialiased coverage [size, size] float32 in [0, 1] of `shape` centred, radius ~size/2."""
    scale = 8  # draw with sub-pixel precision
    img = np.zeros((size, size), np.uint8)
    c, r = size / 2.0, size / 2.0 * 0.92
    if shape == "circle":
        cv2.circle(img, (int(c * scale), int(c * scale)), int(r * scale), 255, -1, cv2.LINE_AA, 3)
    elif shape in DIGITS:
        font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(2, int(size / 5))
        fs = cv2.getFontScaleFromHeight(font, int(size * 0.62), thick)
        (tw, th), _ = cv2.getTextSize(shape, font, fs, thick)
        cv2.putText(img, shape, (int(c - tw / 2), int(c + th / 2)), font, fs, 255, thick, cv2.LINE_AA)
    else:
        pts = (_polygon(shape) * r + c) * scale
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA, 3)
    if angle:
        m = cv2.getRotationMatrix2D((c, c), -angle, 1.0)
        img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR)
    return img.astype(np.float32) / 255.0


def composite(frame: np.ndarray, rgba_ss4: np.ndarray, cx: float, cy: float, half: float) -> None:
    """Alpha-blend a sprite (float32 RGBA in [0, 1], any size) into `frame` in place, centred at pixel
    (cx, cy) with half-size `half` pixels; parts outside the frame are clipped."""
    h, w = frame.shape[:2]
    side = max(2, int(round(2 * half)))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    interp = cv2.INTER_LINEAR if side > rgba_ss4.shape[0] else cv2.INTER_AREA
    sprite = cv2.resize(rgba_ss4, (side, side), interpolation=interp)
    sprite = sprite[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    # out = sprite + (frame - sprite) * (1 - alpha), in place on one float buffer (fewer passes)
    rgb = sprite[..., :3] * 255.0
    buf = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    buf -= rgb
    buf *= 1.0 - sprite[..., 3:4]
    buf += rgb
    frame[fy0:fy1, fx0:fx1] = buf


def render_sprite(shape: str, colour: str, size: int = 48, angle: float = 0.0) -> np.ndarray:
    """Ground-truth RGBA sprite [size, size, 4] float32 in [0, 1]: colour fill with a dark outline."""
    cov = sprite_mask(shape, size, angle)
    k = max(3, (size // 40) * 2 + 1)   # outline about 5% of the sprite
    inner = cv2.erode(cov, np.ones((k, k), np.uint8))
    rgb = np.array(COLOURS[colour], np.float32) / 255.0
    out_rgb = np.array(OUTLINE_RGB, np.float32) / 255.0
    rgba = np.empty((size, size, 4), np.float32)
    rgba[..., :3] = inner[..., None] * rgb + (1 - inner[..., None]) * out_rgb
    rgba[..., 3] = cov
    return rgba


def background_plate(name: str, size_hw: tuple[int, int], seed: int = 0, details: bool = True) -> np.ndarray:
    """The background rendered with a margin wide enough for any camera move: [H, W*1.5, 3]."""
    h, w = size_hw
    return render_background(name, (h, int(round(w * 1.5))), seed, details)


def camera_view(plate: np.ndarray, size_hw: tuple[int, int], scale: float, shift: float) -> np.ndarray:
    """The frame the camera sees of a background plate (from background_plate)."""
    h, w = size_hw
    pw = plate.shape[1]
    # plate pixel px = x_w * w + (pw - w) / 2 (plate centred on x_w = 0.5);
    # screen x_s = (x_w - 0.5 - shift) * scale * w + w / 2, as in to_screen
    a = scale
    tx = w / 2 - scale * ((0.5 + shift) * w + (pw - w) / 2)
    ty = h / 2 - scale * h / 2
    m = np.array([[a, 0, tx], [0, a, ty]], np.float32)
    return cv2.warpAffine(plate, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def background_views(background: str, camera: str, frames: int, idx: Sequence[int], size_hw: tuple[int, int],
                     seed: int = 0, details: bool = True) -> list[np.ndarray]:
    """The background (render_background's seed and details) as `camera` shows it at frames `idx` of a
    shot of `frames` frames: [H, W, 3] uint8 each."""
    plate = background_plate(background, size_hw, seed, details)
    scale_F, shift_F = camera_transform(camera, frames)
    return [camera_view(plate, size_hw, scale_F[f], shift_F[f]) for f in idx]


def to_screen(x: float, y: float, half: float, size_hw: tuple[int, int], scale: float,
              shift: float) -> tuple[float, float, float]:
    """World (x, y, half-size) -> screen pixels under the camera."""
    h, w = size_hw
    sx = ((x - 0.5 - shift) * scale + 0.5) * w
    sy = ((y - 0.5) * scale + 0.5) * h
    return sx, sy, half * scale * min(h, w)


def render_scene(scene: Scene, frames: int, size_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Ground-truth frames [F, H, W, 3] uint8 RGB of one scene."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    h, w = size_hw
    if h < 8 or w < 8:
        raise ValueError(f"size_hw must be at least 8x8, got {size_hw}")
    plate = background_plate(scene.background, size_hw, seed)
    scale_F, shift_F = camera_transform(scene.camera, frames)
    anchors = object_slots(len(scene.objects), seed)
    layouts = [object_layout(o.motion, frames, a, len(scene.objects)) for o, a in zip(scene.objects, anchors)]
    sprite_px = int(np.clip(2 * 1.5 * 0.16 * 1.5 * min(h, w), 16, 256))
    static = {i: render_sprite(o.shape, o.colour, sprite_px) for i, o in enumerate(scene.objects)
              if o.motion != "rotate"}
    out = np.empty((frames, h, w, 3), np.uint8)
    for f in range(frames):
        frame = camera_view(plate, size_hw, scale_F[f], shift_F[f])
        for i, (obj, lay) in enumerate(zip(scene.objects, layouts)):
            sprite = static.get(i)
            if sprite is None:
                sprite = render_sprite(obj.shape, obj.colour, sprite_px, lay.angle_F[f])
            sx, sy, half = to_screen(lay.cx_F[f], lay.cy_F[f], lay.size_F[f], size_hw, scale_F[f], shift_F[f])
            composite(frame, sprite, sx, sy, half)
        out[f] = frame
    return out


def scene_frame_counts(script: Script, fps: float) -> list[int]:
    """Frames per scene: boundaries at round(cumulative seconds * fps), every scene at least one frame."""
    bounds = np.round(np.cumsum([0.0] + [s.seconds for s in script.scenes]) * fps).astype(int)
    counts = [max(1, int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]
    return counts


def render_script(script: Script, fps: float, size_hw: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """Ground-truth frames of every scene, back to back, and the frame index where each cut lands
    (the first frame of scenes 2..n)."""
    counts = scene_frame_counts(script, fps)
    clips = [render_scene(s, n, size_hw, seed=i) for i, (s, n) in enumerate(zip(script.scenes, counts))]
    cuts = list(np.cumsum(counts)[:-1].astype(int).tolist())
    return np.concatenate(clips, 0), cuts
