"""Captioning per shot (task "captioning"): a vision encoder reads a few frames of a shot at once
(a convolutional stem, then transformer blocks whose feed-forward layers are core MoE experts routed
with the "captioning" task id), and a small text decoder whose feed-forward blocks are MoE experts
too (visual-language experts) writes the caption while cross-attending to the visual tokens.
Attribute heads (objects' shape, colour, motion; background, camera) read the same tokens through
learned queries: one for the scene and one per colour, so each object is bound to the query of its
colour (the world's objects in a scene have distinct colours), which needs no object ordering.
Each colour's token also carries object crops: its largest foreground region in each sampled
frame, cut out square around its bounding box (scale normalised) and read by a small conv net,
since at stride 32 an object is about one visual token, too coarse to tell a digit's shape (a
linear probe on those token blocks: 9 % held-out shape accuracy; on the 24 x 24 crops: 79 %).
The colour masks the crops come from keep foreground pixels only (unlike their neighbourhood and
their row: backdrops vary from row to row), give each pixel to its nearest palette colour, and
drop line-like regions (shorelines, horizons), so background patches are seldom taken for objects.

The caption is the heads' decision put into words (world.caption_scene of the predicted scene),
so caption and attributes never disagree; the decoder's own greedy caption is kept beside it
(Prediction.decoder_caption): it named the objects worse than the heads (5 % exact captions
against 65 % for the heads' scene, on the same held-out clips).

    shots = caption_video("clip.mp4")         # [ShotCaption(start_s, end_s, caption, attributes, ...)]
    result = caption_file("clip.mp4")         # .shots, .warnings (e.g. the captioned span of a long clip)

The model is trained on the synthetic world (world.render_scene clips, world.caption_scene
captions, train split). On footage that does not look like that world (low confidence, or frame
statistics far from the training frames') the caption is built from what shots.describe_shot
measures in the pixels only: brightness, dominant colours, camera movement and motion. It never
claims synthetic-world objects in such footage.

Shape legend: B clips, T sampled frames per clip, C input channels per frame (RGB + difference to
the previous sampled frame), H, W model input size, M visual tokens (one per stride x stride
block), L caption tokens, D model width, O object slots (one per palette colour), S crop side.
"""
from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core import registry
from core.moe import MoEConfig, MoELayer
from core.tasks import NUM_TASKS, task_id

from . import world
from .evaluation import corpus_bleu, foreground, to_lab
from .shots import Shot, ShotConfig, ShotDescriptors, describe_shot, detect_shots

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "video_generation" / "captioner"
KIND = "video_captioner"
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
NONE_SHAPE = "none"


def caption_vocab() -> tuple[str, ...]:
    """Every word world.caption_scene can write, plus ; and . and the special tokens."""
    words: set[str] = {"a", "an", "and", "digit", ";", "."}
    words.update(world.COLOURS)
    words.update(world.SHAPES)
    for phrases in (world.MOTION_PHRASES, world.BACKGROUND_PHRASES, world.CAMERA_PHRASES):
        for phrase in phrases.values():
            words.update(phrase.split())
    return (PAD, BOS, EOS) + tuple(sorted(words))


def tokenize(caption: str) -> list[str]:
    return caption.replace(";", " ;").replace(".", " .").split()


def detokenize(words: list[str]) -> str:
    return " ".join(words).replace(" ;", ";").replace(" .", ".")


@dataclass
class CaptionerConfig:
    frames: int = 4                  # frames sampled evenly from a shot (first and last included)
    height: int = 96                 # model input size; multiples of the stem's stride
    width: int = 160
    dim: int = 128                   # shared token width D
    patch: int = 4                   # the stem's first conv: patch x patch, stride patch (digits are
                                     # a few pixels thick, so no detail is thrown away before it)
    stem_widths: tuple[int, ...] = (48, 64, 96)  # stem widths: the patch conv, then stride-2 convs; a last one to dim
    vision_layers: int = 2           # MoE transformer blocks over the visual tokens
    vision_experts: int = 4          # routed experts per vision block
    heads: int = 4
    decoder_layers: int = 2
    num_experts: int = 6             # visual-language experts per decoder layer
    top_k: int = 2
    expert_hidden: int = 192         # hidden width of each decoder expert
    max_len: int = 40                # caption tokens, <bos> and <eos> included
    max_objects: int = world.MAX_OBJECTS   # objects a world scene holds (the heads have one slot per colour)
    crop: int = 24                   # object crops: per colour and frame, its largest region cut out square
                                     # and resized to crop x crop (0: none); the stride-32 tokens are too
                                     # coarse to tell a digit's shape (an object is about one token)
    crop_widths: tuple[int, ...] = (16, 32, 64)  # crop encoder: conv widths (stride 1, then stride 2)
    crop_candidates: int = 4         # regions per colour and frame cut out (largest first): a backdrop patch
                                     # of an object's colour (a cloud, the sun) can be larger than the object,
                                     # so the crop encoder weighs the candidates by a learned objectness
    crop_changes: bool = True        # per colour and frame pair: how its crop changed (silhouette IoU,
                                     # log size ratio), which the crop encoder's mean over frames loses
                                     # (rotation keeps a region's place and area)
    motion_frames: int = 0           # the motion stage (0: none; fit_stages): per object, an MLP over the heads' motion and
                                     # camera probabilities and its colour's region measured at this many frames
                                     # of the whole shot, moved back through the predicted camera (at 4 frames a
                                     # still object under a zoom drifts like a moving one, and a triangle's
                                     # 120-degree turns look like standing still)
    motion_hidden: int = 64          # hidden width of the motion stage's MLP
    shape_crop: int = 0              # the shape stage (0: none): each colour's largest region cut out at this side
                                     # from shape_frames frames of the shot at its own resolution (height capped at
                                     # twice the model's input) and read by a second crop encoder: at 96x160 a digit
                                     # is about 10 pixels tall
    shape_frames: int = 7
    stage_backdrop_de: float = 0.0   # the stages' colour masks leave out pixels within this Lab distance of the heads'
                                     # background as the heads' camera shows it (what every seed of it shares: the
                                     # sun, the moon, the lawn, the sea and sand); 0: kept
    stage_backdrop_seeds: int = 0    # ... and the stars or clouds of the first this many backdrop seeds when the
                                     # frames show one's (a script's scene i has seed i, as the studio renders it)
    vocab: tuple[str, ...] = ()      # caption words; () = caption_vocab()
    shapes: tuple[str, ...] = ()     # class lists of the heads; () = the world's
    colours: tuple[str, ...] = ()
    motions: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.vocab = tuple(self.vocab) or caption_vocab()
        self.shapes = tuple(self.shapes) or world.SHAPES + (NONE_SHAPE,)
        self.colours = tuple(self.colours) or tuple(world.COLOURS)
        self.motions = tuple(self.motions) or world.MOTIONS
        self.backgrounds = tuple(self.backgrounds) or world.BACKGROUNDS
        self.cameras = tuple(self.cameras) or world.CAMERAS
        if self.height % self.stride or self.width % self.stride:
            raise ValueError(f"height and width must be multiples of {self.stride}, got {self.height}x{self.width}")
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2 (motion needs time), got {self.frames}")
        if self.motion_frames and (self.motion_frames < 2 or not self.crop):
            raise ValueError(f"motion_frames must be 0 or >= 2 and needs crops, got {self.motion_frames}")
        if self.motion_frames and self.motion_hidden < 1:
            raise ValueError(f"motion_hidden must be >= 1, got {self.motion_hidden}")
        if not self.stage_backdrop_de >= 0 or self.stage_backdrop_seeds < 0:
            raise ValueError(f"stage_backdrop_de and stage_backdrop_seeds must be >= 0, got {self.stage_backdrop_de} "
                             f"and {self.stage_backdrop_seeds}")
        if self.shape_crop < 0 or self.shape_crop % 2 ** (len(self.crop_widths) - 1) or self.shape_frames < 1:
            raise ValueError(f"shape_crop must be 0 or a positive multiple of {2 ** (len(self.crop_widths) - 1)}, and "
                             f"shape_frames >= 1; got {self.shape_crop}, {self.shape_frames}")

    @property
    def none_index(self) -> int:
        """Where the shape head's "none" (no object of this colour) sits among cfg.shapes."""
        return self.shapes.index(NONE_SHAPE)

    @property
    def stride(self) -> int:
        return self.patch * 2 ** len(self.stem_widths)

    @property
    def tokens(self) -> int:
        return (self.height // self.stride) * (self.width // self.stride)

    def moe(self, experts: int, hidden: int) -> MoEConfig:
        return MoEConfig(dim=self.dim, hidden_dim=hidden, num_experts=experts, top_k=self.top_k,
                         num_shared_experts=1, capacity_factor=0.0, num_tasks=NUM_TASKS)


class VisionBlock(nn.Module):
    """Pre-norm self-attention over the visual tokens, then MoE feed-forward (visual experts)."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.moe = MoELayer(cfg.moe(cfg.vision_experts, cfg.expert_hidden))

    def forward(self, x_BMD, task):
        h = self.norm1(x_BMD)
        x_BMD = x_BMD + self.attn(h, h, h, need_weights=False)[0]
        y_BMD, stats = self.moe(self.norm2(x_BMD), task)
        return x_BMD + y_BMD, stats


class DecoderBlock(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the visual memory, MoE feed-forward."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        d = cfg.dim
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
        self.moe = MoELayer(cfg.moe(cfg.num_experts, cfg.expert_hidden))

    def forward(self, x_BLD, memory_BMD, causal_LL, task):
        h = self.norm1(x_BLD)
        x_BLD = x_BLD + self.self_attn(h, h, h, attn_mask=causal_LL, need_weights=False)[0]
        h = self.norm2(x_BLD)
        x_BLD = x_BLD + self.cross_attn(h, memory_BMD, memory_BMD, need_weights=False)[0]
        y_BLD, stats = self.moe(self.norm3(x_BLD), task)
        return x_BLD + y_BLD, stats


class CropEncoder(nn.Module):
    """Object crops [B, O, T * K, CROP_CHANNELS, S, S] (K candidate regions per colour and frame) and
    their geometry [B, O, T * K, GEOMETRY_FEATURES] -> one token per colour [B, O, D]: a small conv
    net on every crop that holds its colour (absent ones stay zero and are skipped) plus an MLP of
    the candidate's place, size, change to the next frame and frame index; per frame the candidates
    are weighed by a learned objectness (softmax), then averaged over the frames where the colour
    was seen. With K = 1 this is the plain mean over frames."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.candidates = cfg.crop_candidates
        layers, c_in = [], CROP_CHANNELS
        for i, c_out in enumerate(cfg.crop_widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(4, c_out),
                       nn.GELU()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        side = cfg.crop // 2 ** (len(cfg.crop_widths) - 1)
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, cfg.dim), nn.GELU(),
                                  nn.Linear(cfg.dim, cfg.dim))
        if self.candidates > 1:
            self.geometry = nn.Sequential(nn.Linear(GEOMETRY_FEATURES + cfg.frames, cfg.dim), nn.GELU(),
                                          nn.Linear(cfg.dim, cfg.dim))
            self.objectness = nn.Linear(cfg.dim, 1)
            nn.init.zeros_(self.objectness.weight)   # starts as the plain mean over candidates
            nn.init.zeros_(self.objectness.bias)

    def forward(self, crops_BONCSS: torch.Tensor, geometry_BONG: torch.Tensor | None = None) -> torch.Tensor:
        B, O, N = crops_BONCSS.shape[:3]
        T, K = N // self.candidates, self.candidates
        flat_NCSS = crops_BONCSS.flatten(0, 2)
        seen_N = flat_NCSS[:, 0].flatten(1).amax(1) > 0          # the colour's mask is not empty
        tok_ND = flat_NCSS.new_zeros(len(flat_NCSS), self.proj[-1].out_features)
        if seen_N.any():
            tok_ND = tok_ND.index_put((seen_N.nonzero()[:, 0],), self.proj(self.convs(flat_NCSS[seen_N])))
        seen_BOTK = seen_N.view(B, O, T, K)
        tok_BOTKD = tok_ND.view(B, O, T, K, -1)
        if K > 1:
            frame_TT = torch.eye(T, device=tok_ND.device)
            when_BOTKT = frame_TT[None, None, :, None].expand(B, O, T, K, T)
            geo_BOTKD = self.geometry(torch.cat([geometry_BONG.view(B, O, T, K, -1), when_BOTKT], -1))
            tok_BOTKD = tok_BOTKD + geo_BOTKD * seen_BOTK[..., None]
            logit_BOTK = self.objectness(tok_BOTKD)[..., 0].masked_fill(~seen_BOTK, -1e4)
            w_BOTK = logit_BOTK.softmax(-1) * seen_BOTK
            frame_BOTD = (tok_BOTKD * w_BOTK[..., None]).sum(3)
        else:
            frame_BOTD = tok_BOTKD[:, :, :, 0]
        seen_BOT1 = seen_BOTK.any(-1, keepdim=True).float()
        return (frame_BOTD * seen_BOT1).sum(2) / seen_BOT1.sum(2).clamp_min(1.0)


def _zero_start(mlp: nn.Sequential) -> nn.Sequential:
    """The MLP with its last layer zeroed: a stage's correction starts at nothing."""
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


class MotionStage(nn.Module):
    """Per object slot: (the heads' motion log-probabilities [N, M], the camera probabilities [N, C],
    the colour's motion_evidence [N, E]) -> motion logits [N, M]: the heads' log-probabilities plus
    an MLP's correction, which starts at zero (an unfitted stage keeps the heads' choice). Inputs are
    standardised by the fitting data's mean and spread (buffers, set by fit_stages)."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        n_in = len(cfg.motions) + len(cfg.cameras) + MOTION_EVIDENCE
        self.register_buffer("mean_I", torch.zeros(n_in))
        self.register_buffer("std_I", torch.ones(n_in))
        h = cfg.motion_hidden
        self.mlp = _zero_start(nn.Sequential(nn.Linear(n_in, h), nn.GELU(), nn.Linear(h, h), nn.GELU(),
                                             nn.Linear(h, len(cfg.motions))))

    def forward(self, motion_logp_NM: torch.Tensor, camera_p_NC: torch.Tensor,
                evidence_NE: torch.Tensor) -> torch.Tensor:
        x_NI = torch.cat([motion_logp_NM, camera_p_NC, evidence_NE], -1)
        return motion_logp_NM + self.mlp((x_NI - self.mean_I) / self.std_I)


class ShapeStage(nn.Module):
    """Per object slot: (the heads' log-probabilities over the object shapes, "none" left out [N, S], the
    colour's shape crops [N, T, CROP_CHANNELS, P, P] uint8 (shape_crops)) -> shape logits [N, S]: the heads'
    log-probabilities plus a correction from a crop encoder (CropEncoder with one candidate: a conv net per
    crop, the mean over the frames that hold the colour) and the heads' answer; zero at the start."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.encoder = CropEncoder(replace(cfg, crop=cfg.shape_crop, crop_candidates=1))
        n = len(cfg.shapes) - 1
        self.mlp = _zero_start(nn.Sequential(nn.Linear(cfg.dim + n, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, n)))

    def forward(self, shape_logp_NS: torch.Tensor, crops_NTCPP: torch.Tensor) -> torch.Tensor:
        tok_ND = self.encoder(crops_tensor(crops_NTCPP)[:, None])[:, 0]
        return shape_logp_NS + self.mlp(torch.cat([tok_ND, shape_logp_NS], -1))


@dataclass
class CaptionerOutput:
    logits: dict[str, torch.Tensor]  # head name -> [B, classes] or [B, O, classes]
    memory_BMD: torch.Tensor
    aux_loss: torch.Tensor
    vision_stats: list


class CaptionModel(nn.Module):
    """(frames [B, T, 6, H, W], measured features [B, K]) -> visual memory and attribute logits;
    decode(memory, tokens) -> word logits."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        # Early fusion: the T sampled frames and their differences enter as one 6T-channel image,
        # so one pass per shot sees the motion.
        convs, c_in = [], 6 * cfg.frames
        for i, c_out in enumerate(cfg.stem_widths + (d,)):
            conv = nn.Conv2d(c_in, c_out, cfg.patch, stride=cfg.patch) if i == 0 else \
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            convs += [conv, nn.GroupNorm(8, c_out), nn.GELU()]
            c_in = c_out
        self.stem = nn.Sequential(*convs)
        self.pos_MD = nn.Parameter(torch.randn(cfg.tokens, d) * 0.02)
        self.colour_proj = nn.Sequential(nn.Linear(cfg.frames * COLOUR_FEATURES, d), nn.GELU(), nn.Linear(d, d))
        self.colour_id_OD = nn.Parameter(torch.randn(len(cfg.colours), d) * 0.02)
        self.motion_proj = nn.Sequential(nn.Linear((cfg.frames - 1) * MOTION_FEATURES, d), nn.GELU(), nn.Linear(d, d))
        self.crop_encoder = CropEncoder(cfg) if cfg.crop else None
        self.change_proj = nn.Sequential(nn.Linear((cfg.frames - 1) * CHANGE_FEATURES, d), nn.GELU(),
                                         nn.Linear(d, d)) if cfg.crop and cfg.crop_changes else None
        self.vision_blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.vision_layers))
        self.memory_norm = nn.LayerNorm(d)
        # Attribute heads: one learned query for the scene, one per colour (its object's shape, or
        # "none", and its motion).
        self.queries_QD = nn.Parameter(torch.randn(1 + len(cfg.colours), d) * 0.02)
        self.query_attn = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
        self.query_mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.heads = nn.ModuleDict({
            "background": nn.Linear(d, len(cfg.backgrounds)), "camera": nn.Linear(d, len(cfg.cameras)),
            "shape": nn.Linear(d, len(cfg.shapes)), "motion": nn.Linear(d, len(cfg.motions))})
        self.embed = nn.Embedding(len(cfg.vocab), d)
        nn.init.normal_(self.embed.weight, std=0.02)  # tied to the output layer: keep first logits small
        self.word_pos_LD = nn.Parameter(torch.randn(cfg.max_len, d) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_layers))
        self.out_norm = nn.LayerNorm(d)
        self.set_stages(cfg)

    def set_stages(self, cfg: CaptionerConfig) -> None:
        """Take `cfg` as the config, with fresh (zero-start) motion and shape stages where it asks for them."""
        self.cfg = cfg
        self.motion_stage = MotionStage(cfg) if cfg.motion_frames else None
        self.shape_stage = ShapeStage(cfg) if cfg.shape_crop else None

    @property
    def task(self) -> int:
        return task_id("captioning")

    def encode(self, frames_BTCHW: torch.Tensor, measured_BK: torch.Tensor,
               crops_BOTCSS: torch.Tensor | None = None) -> CaptionerOutput:
        B, cfg = frames_BTCHW.shape[0], self.cfg
        x_BMD = self.stem(frames_BTCHW.flatten(1, 2)).flatten(2).transpose(1, 2) + self.pos_MD
        # Measured tokens: one per colour (its region's track and crops) and one for the global motion.
        n_col = len(cfg.colours) * cfg.frames * COLOUR_FEATURES
        colour_BOD = self.colour_proj(measured_BK[:, :n_col].view(B, len(cfg.colours), -1))
        if self.crop_encoder is not None and crops_BOTCSS is None:
            raise ValueError("this captioner needs object crops (object_crops) with its frames")
        n_mot = (cfg.frames - 1) * MOTION_FEATURES
        n_chg = len(cfg.colours) * (cfg.frames - 1) * CHANGE_FEATURES if self.change_proj is not None else 0
        if self.crop_encoder is not None:
            geometry = measured_BK[:, n_col + n_mot + n_chg:].reshape(B, len(cfg.colours), -1, GEOMETRY_FEATURES) \
                if cfg.crop_candidates > 1 else None
            colour_BOD = colour_BOD + self.crop_encoder(crops_BOTCSS, geometry)
        motion_B1D = self.motion_proj(measured_BK[:, n_col:n_col + n_mot])[:, None]
        if self.change_proj is not None:
            colour_BOD = colour_BOD + self.change_proj(
                measured_BK[:, n_col + n_mot:n_col + n_mot + n_chg].view(B, len(cfg.colours), -1))
        x_BMD = torch.cat([x_BMD, colour_BOD + self.colour_id_OD, motion_B1D], dim=1)
        aux, stats = x_BMD.new_zeros(()), []
        for block in self.vision_blocks:
            x_BMD, s = block(x_BMD, self.task)
            aux, stats = aux + s.aux_loss, stats + [s]
        memory_BMD = self.memory_norm(x_BMD)
        q_BQD = self.queries_QD.expand(B, -1, -1) + torch.cat([motion_B1D, colour_BOD], dim=1)
        q_BQD = q_BQD + self.query_attn(q_BQD, memory_BMD, memory_BMD, need_weights=False)[0]
        q_BQD = q_BQD + self.query_mlp(q_BQD)
        scene_BD, colours_BOD = q_BQD[:, 0], q_BQD[:, 1:]
        logits = {name: self.heads[name](scene_BD) for name in ("background", "camera")}
        logits.update({name: self.heads[name](colours_BOD) for name in ("shape", "motion")})
        return CaptionerOutput(logits, memory_BMD, aux, stats)

    def decode(self, memory_BMD: torch.Tensor, tokens_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Word logits [B, L, vocab], the MoE aux loss and the decoder layers' MoE stats."""
        L = tokens_BL.shape[1]
        x_BLD = self.embed(tokens_BL) + self.word_pos_LD[:L]
        causal_LL = torch.triu(torch.ones(L, L, dtype=torch.bool, device=tokens_BL.device), 1)
        aux, stats = memory_BMD.new_zeros(()), []
        for block in self.blocks:
            x_BLD, s = block(x_BLD, memory_BMD, causal_LL, self.task)
            aux, stats = aux + s.aux_loss, stats + [s]
        return self.out_norm(x_BLD) @ self.embed.weight.T, aux, stats

    def forward(self, frames_BTCHW: torch.Tensor, measured_BK: torch.Tensor, tokens_BL: torch.Tensor,
                crops_BOTCSS: torch.Tensor | None = None):
        enc = self.encode(frames_BTCHW, measured_BK, crops_BOTCSS)
        word_logits, aux, _ = self.decode(enc.memory_BMD, tokens_BL)
        return enc, word_logits, enc.aux_loss + aux


if KIND not in registry.MODELS:
    registry.register(KIND, CaptionerConfig, CaptionModel)


# ---- data ----

def sample_indices(frames: int, n: int) -> np.ndarray:
    """n frame indices spread evenly over a shot of `frames` frames, first and last included."""
    return np.linspace(0, frames - 1, n).round().astype(int)


COLOUR_FEATURES = 4                  # per colour and frame: area share, centre x, centre y, spread
MOTION_FEATURES = 4                  # per frame pair: shift x, shift y, peak response, log scale
CHANGE_FEATURES = 2                  # per colour and frame pair: crop silhouette IoU, log region size ratio
GEOMETRY_FEATURES = 5                # per crop candidate: centre x, y, log size, and its change to the next
                                     # frame (silhouette IoU with its best match there, log size ratio)
COLOUR_DE = 30.0                     # Lab distance within which a pixel counts as a palette colour
FG_CONTRAST = 30                     # |pixel - neighbourhood median| (any channel) of a foreground pixel


def colour_tracks(rgb_THW3: np.ndarray, palette: list[tuple[int, int, int]],
                  masks_CTHW: np.ndarray | None = None) -> np.ndarray:
    """[colours, T * COLOUR_FEATURES]: for each palette colour, where its foreground pixels are in
    each frame (area share x 10, centre x and y relative to the middle, spread), from uint8 frames."""
    mask_CTHW = (colour_masks(rgb_THW3, palette) if masks_CTHW is None else masks_CTHW).astype(np.float32)
    h, w = mask_CTHW.shape[2:]
    ys, xs = np.arange(h, dtype=np.float32) / h - 0.5, np.arange(w, dtype=np.float32) / w - 0.5
    n_CT = mask_CTHW.sum(axis=(2, 3))
    safe_CT = np.maximum(n_CT, 1.0)
    px_CTW, py_CTH = mask_CTHW.sum(axis=2) / safe_CT[..., None], mask_CTHW.sum(axis=3) / safe_CT[..., None]
    cx_CT, cy_CT = px_CTW @ xs, py_CTH @ ys
    var_CT = px_CTW @ xs ** 2 - cx_CT ** 2 + py_CTH @ ys ** 2 - cy_CT ** 2
    out_CTF = np.stack([10.0 * n_CT / (h * w), cx_CT, cy_CT, np.sqrt(np.maximum(var_CT, 0.0))], axis=-1)
    return out_CTF.reshape(len(palette), -1).astype(np.float32)


CROP_CHANNELS = 2                    # per object crop: the colour's mask, grey level
CROP_MARGIN = 1.3                    # crop side / the region's longer bounding-box side


def colour_masks(rgb_THW3: np.ndarray, palette: list[tuple[int, int, int]],
                 backdrop_THW: np.ndarray | None = None) -> np.ndarray:
    """[colours, T, H, W] bool: foreground pixels (unlike the median of their neighbourhood and
    of their row, so small regions rather than backdrops) whose nearest palette colour (Lab) is
    within COLOUR_DE, so a pixel belongs to one colour at most (a blue object is not also
    purple), less the line-like regions (line_like: horizons, shorelines, foam) no object forms
    and less `backdrop_THW` (known backdrop pixels, backdrop_pixels) where given."""
    T, H, W = rgb_THW3.shape[:3]
    lab_THW3 = np.stack([cv2.cvtColor(f.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab) for f in rgb_THW3])
    k = 2 * (min(H, W) // 4) + 1
    fg_THW = np.stack([np.abs(f.astype(np.int16) - cv2.medianBlur(f, k)).max(axis=-1) > FG_CONTRAST
                       for f in rgb_THW3])
    # Backdrops vary mostly from row to row (horizons, shores, gradients): a foreground pixel also
    # differs from its row's median, which an object narrower than half the frame leaves unchanged.
    row_THW13 = np.median(rgb_THW3, axis=2, keepdims=True)
    fg_THW &= np.abs(rgb_THW3.astype(np.float32) - row_THW13).max(axis=-1) > FG_CONTRAST
    if backdrop_THW is not None:
        fg_THW &= ~backdrop_THW
    target_C3 = cv2.cvtColor(np.array(palette, np.float32).reshape(1, -1, 3) / 255.0, cv2.COLOR_RGB2Lab)[0]
    dist_CTHW = np.linalg.norm(lab_THW3[None] - target_C3[:, None, None, None], axis=-1)
    nearest_THW = dist_CTHW.argmin(0)
    fg_THW &= dist_CTHW.min(0) < COLOUR_DE
    masks_CTHW = (nearest_THW[None] == np.arange(len(palette))[:, None, None, None]) & fg_THW[None]
    for c, t in zip(*np.nonzero(masks_CTHW.any(axis=(2, 3)))):
        masks_CTHW[c, t] &= ~line_like(masks_CTHW[c, t])
    return masks_CTHW


LINE_SPAN = 0.6                      # a region longer than this share of the frame's longer side is no object
LINE_THICKNESS = 2.0                 # pixels: a region thinner than this on average (area / length) ...
LINE_ELONGATION = 4.0                # ... and this many times longer than wide is a line
LINE_MIN_LENGTH = 12                 # ... and longer than this many pixels (at the model's input size)


def line_like(mask_HW: np.ndarray) -> np.ndarray:
    """[H, W] bool: the pixels of `mask_HW`'s connected regions that are lines or frame-spanning
    bands (a shoreline, a horizon, foam), which the colour masks would otherwise take for objects,
    or join to an object touching them."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask_HW.astype(np.uint8), connectivity=8)
    if n < 2:
        return np.zeros_like(mask_HW, dtype=bool)
    w, h, area = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT], stats[:, cv2.CC_STAT_AREA]
    long, short = np.maximum(w, h), np.maximum(np.minimum(w, h), 1)
    drop = (long > LINE_SPAN * max(mask_HW.shape)) | (
        (area / np.maximum(long, 1) < LINE_THICKNESS) & (long >= LINE_ELONGATION * short) & (long > LINE_MIN_LENGTH))
    drop[0] = False
    return drop[labels]


DETAIL_MATCH = 0.7                   # share of a seed's star and cloud pixels the frames must show for them to count
DETAIL_GREY = 40                     # ... each within this many grey levels (any channel) of the seed's rendering


def details_seed(rgb_THW3: np.ndarray, background: str, camera: str, idx_T: np.ndarray, frames: int,
                 seeds: int) -> int | None:
    """Of backdrop seeds 0..seeds-1, the one whose stars or clouds frames `idx_T` of a shot of `frames` frames
    show best, if it shows at least DETAIL_MATCH of them; None for another seed, or a background without
    seeded details. (A wrong seed's clouds, taken for backdrop, would erase a white object where they lie.)"""
    if background not in world.SEEDED_DETAILS:
        return None
    size_hw = rgb_THW3.shape[1:3]
    plain_THW3 = np.stack(world.background_views(background, camera, frames, idx_T, size_hw, details=False)).astype(int)
    best, best_share = None, DETAIL_MATCH
    for seed in range(seeds):
        views_THW3 = np.stack(world.background_views(background, camera, frames, idx_T, size_hw, seed)).astype(int)
        detail_THW = np.abs(views_THW3 - plain_THW3).max(-1) > DETAIL_GREY
        if detail_THW.sum() < 4:     # details all out of view: nothing to match
            continue
        shown_THW = np.abs(rgb_THW3.astype(int) - views_THW3).max(-1) < DETAIL_GREY
        share = shown_THW[detail_THW].mean()
        if share > best_share:
            best, best_share = seed, share
    return best


def backdrop_pixels(rgb_THW3: np.ndarray, background: str, camera: str, idx_T: np.ndarray, frames: int,
                    tolerance: float, details_seed: int | None = None) -> np.ndarray:
    """[T, H, W] bool: the pixels of frames `idx_T` of a shot of `frames` frames that are the world's
    `background` as `camera` shows it: within `tolerance` Lab units of the rendering's range over their 3x3
    neighbourhood (evaluation.foreground's test, a pixel of slack for resampling and compression). The
    rendering holds no stars or clouds, unless `details_seed` is given: then that seed's (see details_seed)."""
    views = world.background_views(background, camera, frames, idx_T, rgb_THW3.shape[1:3],
                                   details_seed or 0, details=details_seed is not None)
    return np.stack([~foreground(to_lab(f), to_lab(v), radius=1, de=tolerance) for f, v in zip(rgb_THW3, views)])


def shot_details_seed(frames_FHW3: np.ndarray, cfg: CaptionerConfig, camera: str, background: str | None
                      ) -> int | None:
    """The backdrop seed whose stars or clouds a shot shows (details_seed over cfg.stage_backdrop_seeds seeds),
    searched once per shot on the motion stage's frames at the model's input size; both stages then leave out
    that seed's details. None when the stages keep the backdrop or search no seed."""
    if not (cfg.motion_frames or cfg.shape_crop) or not cfg.stage_backdrop_de or not cfg.stage_backdrop_seeds \
            or background not in world.SEEDED_DETAILS:
        return None
    idx, rgb_THW3 = input_frames(frames_FHW3, cfg, cfg.motion_frames or cfg.shape_frames)
    return details_seed(rgb_THW3, background, camera, idx, len(frames_FHW3), cfg.stage_backdrop_seeds)


def _stage_masks(rgb_THW3: np.ndarray, idx_T: np.ndarray, frames: int, cfg: CaptionerConfig,
                 camera: str, background: str | None, details_seed: int | None = None) -> np.ndarray:
    """colour_masks of a stage's frames `idx_T`, less the backdrop (with `details_seed`'s stars or clouds)
    when cfg.stage_backdrop_de and the heads' `background` are given."""
    palette = [world.COLOURS[c] for c in cfg.colours]
    if not cfg.stage_backdrop_de or background is None:
        return colour_masks(rgb_THW3, palette)
    known = backdrop_pixels(rgb_THW3, background, camera, idx_T, frames, cfg.stage_backdrop_de, details_seed)
    return colour_masks(rgb_THW3, palette, known)


def object_crops(rgb_THW3: np.ndarray, masks_CTHW: np.ndarray, side: int,
                 candidates: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[colours, T, K, CROP_CHANNELS, side, side] uint8: per colour and frame, square crops around
    the colour's K = `candidates` largest connected regions (CROP_MARGIN x its bounding box, so
    scale is normalised and the silhouette fills the crop): the region's mask and the grey frame.
    Zeros where there is no such region. Also [colours, T, K] float32, each region's longer
    bounding-box side in pixels (0: none), and [colours, T, K, 2] its centre (x, y) in pixels."""
    C, T, H, W = masks_CTHW.shape
    out = np.zeros((C, T, candidates, CROP_CHANNELS, side, side), np.uint8)
    sizes_CTK = np.zeros((C, T, candidates), np.float32)
    centres_CTK2 = np.zeros((C, T, candidates, 2), np.float32)
    if side == 0:
        return out, sizes_CTK, centres_CTK2
    grey_THW = rgb_THW3.mean(axis=-1).astype(np.uint8)
    for c, t in zip(*np.nonzero(masks_CTHW.any(axis=(2, 3)))):
        mask = masks_CTHW[c, t].astype(np.uint8)
        # Join a region's pieces (a digit's strokes, an outline's gaps) before ranking them.
        n, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(mask, np.ones((3, 3), np.uint8)))
        for k, best in enumerate(1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")[:candidates]):
            x, y, w, h = stats[best, :4]
            half = max(w, h) * CROP_MARGIN / 2
            sizes_CTK[c, t, k] = max(w, h)
            cx, cy = x + w / 2, y + h / 2
            centres_CTK2[c, t, k] = cx, cy
            # Affine crop: the square [cx - half, cx + half] -> [0, side]; outside the frame is zero.
            a = side / (2 * half)
            m = np.array([[a, 0, -a * (cx - half)], [0, a, -a * (cy - half)]], np.float32)
            region = (labels == best).astype(np.uint8) * mask * 255
            interp = cv2.INTER_AREA if a < 1 else cv2.INTER_LINEAR
            out[c, t, k, 0] = cv2.warpAffine(region, m, (side, side), flags=interp)
            out[c, t, k, 1] = cv2.warpAffine(grey_THW[t], m, (side, side), flags=cv2.INTER_LINEAR)
    return out, sizes_CTK, centres_CTK2


def _silhouettes(crops_CTKCSS: np.ndarray) -> np.ndarray:
    return crops_CTKCSS[:, :, :, 0].reshape(*crops_CTKCSS.shape[:3], -1) > 127


def crop_changes(crops_CTKCSS: np.ndarray, sizes_CTK: np.ndarray) -> np.ndarray:
    """[colours, (T - 1) * CHANGE_FEATURES]: per colour and consecutive frame pair, the IoU of its
    largest region's two crop silhouettes (scale normalised, so a still, growing or moving object
    scores high and a rotating one low) and the log ratio of the region's size; zeros where either
    frame lacks it."""
    sil_CTN, sizes_CT = _silhouettes(crops_CTKCSS)[:, :, 0], sizes_CTK[:, :, 0]
    a, b = sil_CTN[:, :-1], sil_CTN[:, 1:]
    inter, union = (a & b).sum(-1), (a | b).sum(-1)
    both = (sizes_CT[:, :-1] > 0) & (sizes_CT[:, 1:] > 0)
    iou = np.where(both, inter / np.maximum(union, 1), 0.0)
    ratio = np.where(both, np.log(np.maximum(sizes_CT[:, 1:], 1) / np.maximum(sizes_CT[:, :-1], 1)), 0.0)
    return np.stack([iou, ratio], axis=-1).reshape(len(crops_CTKCSS), -1).astype(np.float32)


def candidate_geometry(crops_CTKCSS: np.ndarray, sizes_CTK: np.ndarray, centres_CTK2: np.ndarray,
                       size_hw: tuple[int, int]) -> np.ndarray:
    """[colours, T, K, GEOMETRY_FEATURES] float32 per crop candidate: centre x and y (frame
    fractions from the middle), log size (of the frame's shorter side), and towards the next
    frame the silhouette IoU with its best-matching candidate there and the log size ratio to it
    (zeros in the last frame, or with no candidate there)."""
    H, W = size_hw
    C, T, K = sizes_CTK.shape
    there_CTK = sizes_CTK > 0
    out = np.zeros((C, T, K, GEOMETRY_FEATURES), np.float32)
    out[..., 0] = np.where(there_CTK, centres_CTK2[..., 0] / W - 0.5, 0.0)
    out[..., 1] = np.where(there_CTK, centres_CTK2[..., 1] / H - 0.5, 0.0)
    out[..., 2] = np.where(there_CTK, np.log(np.maximum(sizes_CTK, 1) / min(H, W)), 0.0)
    sil_CTKN = _silhouettes(crops_CTKCSS)
    a_CTKN, b_CTKN = sil_CTKN[:, :-1, :, None], sil_CTKN[:, 1:, None]      # [C, T-1, K, 1|K, N]
    iou_CTKK = (a_CTKN & b_CTKN).sum(-1) / np.maximum((a_CTKN | b_CTKN).sum(-1), 1)
    iou_CTKK = np.where(there_CTK[:, 1:, None], iou_CTKK, -1.0)
    match_CTK = iou_CTKK.argmax(-1)
    ok_CTK = there_CTK[:, :-1] & (iou_CTKK.max(-1) >= 0)
    next_size_CTK = np.take_along_axis(sizes_CTK[:, 1:], match_CTK, axis=-1)
    out[:, :-1, :, 3] = np.where(ok_CTK, iou_CTKK.max(-1), 0.0)
    out[:, :-1, :, 4] = np.where(ok_CTK, np.log(np.maximum(next_size_CTK, 1) / np.maximum(sizes_CTK[:, :-1], 1)), 0.0)
    return out


def global_motion(grey_THW: np.ndarray) -> np.ndarray:
    """[(T - 1) * MOTION_FEATURES]: per consecutive pair, the global shift (phase correlation, as
    frame fractions), its peak response, and the log scale change (phase correlation in log-polar)."""
    T, H, W = grey_THW.shape
    win = cv2.createHanningWindow((W, H), cv2.CV_32F)
    centre, radius = (W / 2, H / 2), min(H, W) / 2
    polar = [cv2.warpPolar(g, (W, H), centre, radius, cv2.WARP_POLAR_LOG) for g in grey_THW]
    out = []
    for t in range(T - 1):
        (dx, dy), response = cv2.phaseCorrelate(grey_THW[t], grey_THW[t + 1], win)
        (_, dr), _ = cv2.phaseCorrelate(polar[t], polar[t + 1])
        out += [dx / W * 10, dy / H * 10, response, dr / W * math.log(radius) * 10]
    return np.array(out, np.float32)


def input_frames(frames_FHW3: np.ndarray, cfg: CaptionerConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices [n], frames [n, H, W, 3] uint8): n frames sampled evenly from a shot, resized to the model's
    input size."""
    idx = sample_indices(len(frames_FHW3), n)
    return idx, np.stack([cv2.resize(frames_FHW3[i], (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
                          for i in idx])


def sample_frames(frames_FHW3: np.ndarray, cfg: CaptionerConfig) -> np.ndarray:
    """[T, H, W, 3] uint8: the frames the model looks at, resized to its input size."""
    return input_frames(frames_FHW3, cfg, cfg.frames)[1]


def measured_features(rgb_THW3: np.ndarray, cfg: CaptionerConfig) -> tuple[np.ndarray, np.ndarray]:
    """From sampled frames (uint8): a float32 vector, every palette colour's region track
    (colour_tracks), the global motion (global_motion), then (crop_changes models) every colour's
    crop changes, then (crop_candidates > 1) every crop candidate's geometry (candidate_geometry);
    and the object crops [colours, T * K, CROP_CHANNELS, S, S] uint8 (object_crops, K candidates
    per frame; S = 0 when the model takes none)."""
    palette = [world.COLOURS[c] for c in cfg.colours]
    grey = rgb_THW3.astype(np.float32).mean(axis=-1) / 255.0
    masks_CTHW = colour_masks(rgb_THW3, palette)
    crops, sizes, centres = object_crops(rgb_THW3, masks_CTHW, cfg.crop, cfg.crop_candidates)
    parts = [colour_tracks(rgb_THW3, palette, masks_CTHW).ravel(), global_motion(grey)]
    if cfg.crop and cfg.crop_changes:
        parts.append(crop_changes(crops, sizes).ravel())
    if cfg.crop and cfg.crop_candidates > 1:
        parts.append(candidate_geometry(crops, sizes, centres, rgb_THW3.shape[1:3]).ravel())
    return np.concatenate(parts), crops.reshape(len(palette), -1, *crops.shape[3:])


MOTION_EVIDENCE = 16                 # per colour: motion_evidence's summary of its region over the shot


def motion_evidence(frames_FHW3: np.ndarray, cfg: CaptionerConfig, camera: str,
                    background: str | None = None, details_seed: int | None = None) -> np.ndarray:
    """[colours, MOTION_EVIDENCE] float32: per palette colour, its region at cfg.motion_frames frames
    sampled evenly from the whole shot (at the model's input size), summarised: the change of its
    centre x, y and log area from the first to the last frame that holds it, on screen and moved back
    through `camera` (world.camera_transform: a zoom moves a still off-centre object outwards and
    grows it, a pan slides it); in the world, the largest departure of y from the straight path
    (bounces) and the mean step of x and y; the smallest and mean silhouette IoU of its crops between
    consecutive frames (turns) and their mean absolute log size ratio; the share of frames holding it;
    and the change of the largest region's centre and log size in the world (all the colour's pixels
    also count specks of the backdrop: the sun, grass, clouds; cfg.stage_backdrop_de leaves out what every
    seed of `background` shares, and the stars or clouds of `details_seed`, shot_details_seed's answer).
    Zeros for a colour seen in fewer than two frames."""
    F = len(frames_FHW3)
    idx, rgb_THW3 = input_frames(frames_FHW3, cfg, cfg.motion_frames)
    palette = [world.COLOURS[c] for c in cfg.colours]
    masks_CTHW = _stage_masks(rgb_THW3, idx, F, cfg, camera, background, details_seed)
    track_CTF = colour_tracks(rgb_THW3, palette, masks_CTHW).reshape(len(palette), len(idx), COLOUR_FEATURES)
    crops, sizes_CTK, centres_CTK2 = object_crops(rgb_THW3, masks_CTHW, cfg.crop, 1)
    changes_CT2 = crop_changes(crops, sizes_CTK).reshape(len(palette), len(idx) - 1, CHANGE_FEATURES)
    scale_F, shift_F = world.camera_transform(camera, F)
    scale_T, shift_T = scale_F[idx], shift_F[idx]
    log_area_CT = np.log(np.maximum(track_CTF[..., 0], 1e-4))
    screen_CT3 = np.stack([track_CTF[..., 1], track_CTF[..., 2], log_area_CT], -1)
    # Screen (x - 0.5) = (world x - 0.5 - shift) * scale; y likewise without shift; area with scale squared.
    world_CT3 = np.stack([track_CTF[..., 1] / scale_T + shift_T, track_CTF[..., 2] / scale_T,
                          log_area_CT - 2 * np.log(scale_T)], -1)
    H, W = rgb_THW3.shape[1:3]
    region_CT3 = np.stack([(centres_CTK2[:, :, 0, 0] / W - 0.5) / scale_T + shift_T,
                           (centres_CTK2[:, :, 0, 1] / H - 0.5) / scale_T,
                           np.log(np.maximum(sizes_CTK[:, :, 0], 1.0) / min(H, W)) - np.log(scale_T)], -1)
    out = np.zeros((len(palette), MOTION_EVIDENCE), np.float32)
    for c in range(len(palette)):
        seen_T = track_CTF[c, :, 0] > 0
        t = np.flatnonzero(seen_T)
        if len(t) < 2:
            continue
        w_N3, s_N3 = world_CT3[c, t], screen_CT3[c, t]
        line_N = w_N3[0, 1] + (w_N3[-1, 1] - w_N3[0, 1]) * (t - t[0]) / (t[-1] - t[0])
        pairs = seen_T[:-1] & seen_T[1:]
        iou = changes_CT2[c, pairs, 0] if pairs.any() else np.ones(1)
        ratio = changes_CT2[c, pairs, 1] if pairs.any() else np.zeros(1)
        out[c] = np.concatenate([s_N3[-1] - s_N3[0], w_N3[-1] - w_N3[0], [
            np.abs(w_N3[:, 1] - line_N).max(), np.abs(np.diff(w_N3[:, 0])).mean(), np.abs(np.diff(w_N3[:, 1])).mean(),
            iou.min(), iou.mean(), np.abs(ratio).mean(), seen_T.mean()], region_CT3[c, t[-1]] - region_CT3[c, t[0]]])
    return out


def shape_crops(frames_FHW3: np.ndarray, cfg: CaptionerConfig, camera: str = "static",
                background: str | None = None, details_seed: int | None = None) -> np.ndarray:
    """[colours, cfg.shape_frames, CROP_CHANNELS, P, P] uint8 (P = cfg.shape_crop): per palette colour,
    its largest region cut out of cfg.shape_frames frames sampled evenly from the shot, at the shot's own
    resolution (scaled down to at most twice the model's input height); zeros where it is absent. The
    backdrop is left out as in motion_evidence."""
    idx = sample_indices(len(frames_FHW3), cfg.shape_frames)
    H, W = frames_FHW3.shape[1:3]
    scale = min(1.0, 2 * cfg.height / H)
    rgb_THW3 = frames_FHW3[idx] if scale == 1.0 else np.stack([
        cv2.resize(frames_FHW3[i], (max(8, round(W * scale)), max(8, round(H * scale))),
                   interpolation=cv2.INTER_AREA) for i in idx])
    masks_CTHW = _stage_masks(rgb_THW3, idx, len(frames_FHW3), cfg, camera, background, details_seed)
    return object_crops(rgb_THW3, masks_CTHW, cfg.shape_crop, 1)[0][:, :, 0]


def crops_tensor(crops_BOTCSS: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(crops_BOTCSS, np.ndarray):
        crops_BOTCSS = torch.from_numpy(crops_BOTCSS)
    return crops_BOTCSS.to(torch.float32) / 255.0


def frames_tensor(rgb_BTHW3: np.ndarray) -> torch.Tensor:
    """[B, T, 6, H, W] float32: RGB in [0, 1] and the difference to the previous sampled frame
    (zeros for the first)."""
    rgb = torch.from_numpy(rgb_BTHW3).float().div_(255.0)
    diff = torch.zeros_like(rgb)
    diff[:, 1:] = rgb[:, 1:] - rgb[:, :-1]
    return torch.cat([rgb, diff], dim=-1).permute(0, 1, 4, 2, 3).contiguous()


def model_input(clips: list[np.ndarray], cfg: CaptionerConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frames [B, T, 6, H, W], measured features [B, K], object crops [B, O, T, 2, S, S]) of clips
    [F, H, W, 3] uint8."""
    rgb = [sample_frames(c, cfg) for c in clips]
    feats, crops = zip(*(measured_features(r, cfg) for r in rgb))
    return frames_tensor(np.stack(rgb)), torch.from_numpy(np.stack(feats)), crops_tensor(np.stack(crops))


def canonical(scene: world.Scene) -> world.Scene:
    """The scene with its objects in a fixed order (by colour), the order the model names them in:
    which object a script lists first is not visible in the pixels."""
    objects = sorted(scene.objects, key=lambda o: list(world.COLOURS).index(o.colour))
    return world.Scene(objects, scene.background, scene.camera, scene.seconds)


def encode_caption(caption: str, cfg: CaptionerConfig) -> list[int]:
    index = {w: i for i, w in enumerate(cfg.vocab)}
    ids = [index[BOS]] + [index[w] for w in tokenize(caption)] + [index[EOS]]
    if len(ids) > cfg.max_len:
        raise ValueError(f"caption of {len(ids)} tokens exceeds max_len {cfg.max_len}: {caption!r}")
    return ids + [index[PAD]] * (cfg.max_len - len(ids))


def targets(scene: world.Scene, cfg: CaptionerConfig) -> dict[str, np.ndarray]:
    scene = canonical(scene)
    shape = np.full(len(cfg.colours), cfg.none_index)   # per colour: its object's shape
    motion = np.full(len(cfg.colours), -100)                         # ... and motion (ignored if none)
    for o in scene.objects:
        shape[cfg.colours.index(o.colour)] = cfg.shapes.index(o.shape)
        motion[cfg.colours.index(o.colour)] = cfg.motions.index(o.motion)
    return {"background": np.int64(cfg.backgrounds.index(scene.background)),
            "camera": np.int64(cfg.cameras.index(scene.camera)), "shape": shape, "motion": motion,
            "tokens": np.array(encode_caption(world.caption_scene(scene), cfg))}


def render_clip(scene: world.Scene, rng: np.random.Generator, cfg: CaptionerConfig, short_share: float = 0.6,
                max_frames: int = 24) -> np.ndarray:
    """A rendered shot of `scene` at a random length and a 16:9 size somewhat above the model's
    input, as the captioner meets them: `short_share` of them exactly the frames the model samples
    (cheap to render), the others up to `max_frames`."""
    frames = cfg.frames if rng.random() < short_share else int(rng.integers(cfg.frames + 1, max_frames + 1))
    height = int(round(cfg.height * float(rng.choice([1.125, 1.5, 1.875]))))
    return world.render_scene(scene, frames, (height, int(round(height * 16 / 9))), seed=int(rng.integers(1 << 30)))


@dataclass
class ClipPool:
    """Rendered training clips kept as model-sized uint8 frames with their measured features and
    targets: rendering and measuring cost more than a training step, so steps reuse them."""
    rgb_NTHW3: np.ndarray
    measured_NK: np.ndarray
    crops_NOTCSS: np.ndarray         # uint8 object crops
    targets: dict[str, np.ndarray]

    @classmethod
    def render(cls, rng: np.random.Generator, n: int, cfg: CaptionerConfig, split: str = "train") -> ClipPool:
        scenes = [world.sample_scene(rng, split) for _ in range(n)]
        rgb = np.stack([sample_frames(render_clip(s, rng, cfg), cfg) for s in scenes])
        feats, crops = zip(*(measured_features(r, cfg) for r in rgb))
        t = [targets(s, cfg) for s in scenes]
        return cls(rgb, np.stack(feats), np.stack(crops), {k: np.stack([d[k] for d in t]) for k in t[0]})

    def batch(self, idx: np.ndarray):
        return (frames_tensor(self.rgb_NTHW3[idx]), torch.from_numpy(self.measured_NK[idx]),
                crops_tensor(self.crops_NOTCSS[idx]), {k: torch.from_numpy(v[idx]) for k, v in self.targets.items()})


def make_batch(rng: np.random.Generator, n: int, cfg: CaptionerConfig, split: str = "train"):
    """(frames [n, T, 6, H, W], measured [n, K], crops [n, O, T, 2, S, S], targets dict of tensors)
    of freshly rendered clips."""
    return ClipPool.render(rng, n, cfg, split).batch(np.arange(n))


def clip_statistics(inputs_BTCHW: torch.Tensor) -> np.ndarray:
    """[B, 5] per-clip frame statistics that tell rendered-world frames from other footage: edge
    energy, share of near-flat pixels, mean and spread of brightness, mean saturation."""
    rgb = inputs_BTCHW[:, :, :3]
    grey = rgb.mean(dim=2)                                                   # [B, T, H, W]
    gx = (grey[..., :, 1:] - grey[..., :, :-1]).abs()
    gy = (grey[..., 1:, :] - grey[..., :-1, :]).abs()
    edge = gx.mean(dim=(1, 2, 3)) + gy.mean(dim=(1, 2, 3))
    flat = ((gx[..., 1:, :] < 0.01) & (gy[..., :, 1:] < 0.01)).float().mean(dim=(1, 2, 3))
    sat = (rgb.max(dim=2).values - rgb.min(dim=2).values).mean(dim=(1, 2, 3))
    return torch.stack([edge, flat, grey.mean(dim=(1, 2, 3)), grey.std(dim=(2, 3)).mean(1), sat], 1).numpy()


# ---- training ----

@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    caption_weight: float = 1.0      # decoder loss weight (the heads' losses have weight 1 each)
    eval_clips: int = 200            # held-out clips (test split) scored at the end
    seed: int = 0
    log_every: int = 25
    pool: int = 2000                 # training clips rendered once and reused (0: fresh clips every step)
    init: str | None = None          # start from this captioner checkpoint's weights (None: from scratch)


def losses(enc: CaptionerOutput, word_logits: torch.Tensor, tgt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {name: F.cross_entropy(enc.logits[name], tgt[name]) for name in ("background", "camera")}
    for name in ("shape", "motion"):
        out[name] = F.cross_entropy(enc.logits[name].flatten(0, 1), tgt[name].flatten(), ignore_index=-100)
    tokens = tgt["tokens"]
    out["caption"] = F.cross_entropy(word_logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=0)
    return out


def train_captioner(out: str | Path | None, steps: int = TrainConfig.steps, *,
                    batch_size: int = TrainConfig.batch_size, seed: int = 0, eval_clips: int = TrainConfig.eval_clips,
                    cfg: CaptionerConfig | None = None, train: TrainConfig | None = None,
                    progress=None) -> tuple[CaptionModel, dict]:
    """Train a captioner on freshly rendered world clips (train split), score it on held-out clips
    (test split: object combinations never seen in training) and, when `out` is given, save it
    there as a checkpoint with the metrics and the training frames' statistics. Returns (model, metrics)."""
    from core.checkpoint import save_checkpoint

    cfg = cfg or CaptionerConfig()
    tc = train or TrainConfig(steps=steps, batch_size=batch_size, seed=seed, eval_clips=eval_clips)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    model = CaptionModel(cfg)
    if tc.init:
        from core.checkpoint import load_checkpoint

        start_model, info = load_checkpoint(tc.init)
        if info.kind != KIND:
            raise ValueError(f"{tc.init}: a {info.kind} checkpoint, not a {KIND}")
        # Every tensor whose name and shape match is copied (a grown model keeps what it shares).
        own = model.state_dict()
        shared = {k: v for k, v in start_model.state_dict().items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(shared, strict=False)
        log.info("captioner: %d of %d tensors initialised from %s", len(shared), len(own), tc.init)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / tc.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / max(1, tc.steps)))))
    stats_rows, start, history = [], time.time(), []
    pool = ClipPool.render(rng, tc.pool, cfg) if tc.pool else None
    if pool is not None:
        log.info("captioner: %d training clips rendered in %.0f s", tc.pool, time.time() - start)
    model.train()
    for step in range(tc.steps):
        if pool is None:
            x, m, crops, tgt = make_batch(rng, tc.batch_size, cfg)
        else:
            x, m, crops, tgt = pool.batch(rng.integers(len(pool.rgb_NTHW3), size=tc.batch_size))
        if len(stats_rows) < 40:
            stats_rows.append(clip_statistics(x))
        enc, word_logits, aux = model(x, m, tgt["tokens"], crops)
        parts = losses(enc, word_logits, tgt)
        loss = sum(parts.values()) + (tc.caption_weight - 1) * parts["caption"] + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % tc.log_every == 0 or step == tc.steps - 1:
            row = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - start, 1),
                   **{k: round(v.item(), 4) for k, v in parts.items()}}
            history.append(row)
            log.info("captioner %s", row)
            if progress is not None:
                progress(row)
    model.eval()
    stats_NS = np.concatenate(stats_rows)
    captioner = Captioner(model, ood_mean=stats_NS.mean(0), ood_std=stats_NS.std(0) + 1e-6)
    metrics = evaluate_captioner(captioner, tc.eval_clips, seed=tc.seed + 1) if tc.eval_clips else {}
    metrics.update(train_seconds=round(time.time() - start, 1), steps=tc.steps, batch_size=tc.batch_size,
                   first_loss=history[0]["loss"] if history else None,
                   final_loss=history[-1]["loss"] if history else None)
    if out is not None:
        save_checkpoint(model, out, kind=KIND, config=cfg, metadata={
            "metrics": metrics, "train": asdict(tc), "history": history[-5:],
            "ood_mean": captioner.ood_mean.tolist(), "ood_std": captioner.ood_std.tolist()})
    return model, metrics


# ---- inference ----

@dataclass
class Prediction:
    caption: str                     # the caption of the heads' decisions (world.caption_scene), so
                                     # caption and attributes always agree
    attributes: dict                 # from the heads: objects [{shape, colour, motion}], background, camera
    confidence: float                # smallest top-class probability over the heads that were used
    in_distribution: bool            # frame statistics within the training frames' range, and the
                                     # frames close to the world's rendering of the predicted background
    experts: dict[str, dict[int, float]]  # MoE layer -> {expert: share of its tokens' assignments}
    decoder_caption: str = ""        # the text decoder's own greedy caption (free text, for comparison)


def _expert_shares(stats_list, names: list[str]) -> dict[str, dict[int, float]]:
    out = {}
    for name, s in zip(names, stats_list):
        load = s.expert_load.float()
        out[name] = {int(e): round(float(v / load.sum()), 3) for e, v in enumerate(load) if v > 0}
    return out


def _log(p: torch.Tensor) -> torch.Tensor:
    """Log-probabilities floored at log(1e-6): a stage's inputs stay finite where a head is sure."""
    return p.clamp_min(1e-6).log()


def _head_probs(enc: CaptionerOutput) -> dict[str, torch.Tensor]:
    return {k: v.softmax(-1) for k, v in enc.logits.items()}


def _object_shapes(shape_BOS: torch.Tensor, cfg: CaptionerConfig) -> torch.Tensor:
    """[..., S - 1]: a shape head's values over the object shapes ("none" left out)."""
    none = cfg.none_index
    return torch.cat([shape_BOS[..., :none], shape_BOS[..., none + 1:]], -1)


def _with_none(objects_BOS: torch.Tensor, none_BO1: torch.Tensor, none: int) -> torch.Tensor:
    """_object_shapes undone: "none" put back at its index."""
    return torch.cat([objects_BOS[..., :none], none_BO1, objects_BOS[..., none:]], -1)


class Captioner:
    """A trained CaptionModel with what inference needs: out-of-distribution statistics."""

    def __init__(self, model: CaptionModel, ood_mean: np.ndarray | None = None, ood_std: np.ndarray | None = None,
                 ood_z: float = 6.0, min_confidence: float = 0.6, max_background_error: float = 12.0,
                 metadata: dict | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        self.ood_mean, self.ood_std, self.ood_z = ood_mean, ood_std, ood_z
        self.min_confidence = min_confidence
        self.max_background_error = max_background_error
        self.metadata = metadata or {}

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_DIR) -> Captioner:
        from core.checkpoint import load_checkpoint

        model, info = load_checkpoint(path)
        if info.kind != KIND:
            raise ValueError(f"{path}: a {info.kind} checkpoint, not a {KIND}")
        md = info.metadata
        ood = [np.array(md[k]) if k in md else None for k in ("ood_mean", "ood_std")]
        return cls(model, *ood, metadata=md)

    @torch.no_grad()
    def predict(self, clips: list[np.ndarray]) -> list[Prediction]:
        """One Prediction per clip (frames [F, H, W, 3] uint8 RGB, F >= 1)."""
        if not clips:
            return []
        cfg = self.cfg
        rgb, x, enc = self._encode(clips)
        probs = _head_probs(enc)
        probs.update(self.stage_probs(clips, probs))
        tokens_BL, dec_stats = self._greedy(enc.memory_BMD)
        ood = self._ood_flags(x)
        names = [f"vision.{i}" for i in range(len(enc.vision_stats))]
        names += [f"decoder.{i}" for i in range(len(dec_stats))]
        preds = []
        for b in range(len(clips)):
            scene, conf = self._scene(probs, b)
            words = [cfg.vocab[i] for i in tokens_BL[b].tolist()]
            words = words[1:words.index(EOS)] if EOS in words else words[1:]
            bg_err = background_error(rgb[b], scene.background, scene.camera)
            preds.append(Prediction(
                caption=world.caption_scene(scene),
                attributes={"objects": [asdict(o) for o in scene.objects], "background": scene.background,
                            "camera": scene.camera},
                confidence=round(conf, 4),
                in_distribution=bool(not ood[b] and bg_err <= self.max_background_error),
                experts=_expert_shares(list(enc.vision_stats) + dec_stats, names),
                decoder_caption=detokenize([w for w in words if w != PAD])))
        return preds

    def with_model(self, model: CaptionModel, metadata: dict | None = None) -> Captioner:
        """This captioner's inference settings around another model (and metadata)."""
        return Captioner(model, self.ood_mean, self.ood_std, self.ood_z, self.min_confidence,
                         self.max_background_error, self.metadata if metadata is None else metadata)

    def without_stages(self) -> Captioner:
        """A view that answers with the heads alone: no motion or shape stage, the heads' modules and
        weights shared with this captioner (converting it, .half() or .to(), converts them here too)."""
        model = copy.copy(self.model)   # a shallow module copy: its submodules and tensors are this model's own,
        for name in ("_modules", "_parameters", "_buffers"):   # ... its registries its own
            setattr(model, name, dict(getattr(self.model, name)))
        model._modules.update(motion_stage=None, shape_stage=None)
        model.cfg = replace(self.cfg, motion_frames=0, shape_crop=0)
        return self.with_model(model, {k: v for k, v in self.metadata.items() if k != "stages"})

    def _encode(self, clips: list[np.ndarray]) -> tuple[list[np.ndarray], torch.Tensor, CaptionerOutput]:
        """(sampled frames per clip, the model's frame tensor, its encoding) of clips [F, H, W, 3]."""
        rgb = [sample_frames(c, self.cfg) for c in clips]
        x = frames_tensor(np.stack(rgb))
        feats, crops = zip(*(measured_features(r, self.cfg) for r in rgb))
        return rgb, x, self.model.encode(x, torch.from_numpy(np.stack(feats)), crops_tensor(np.stack(crops)))

    def stage_inputs(self, clips: list[np.ndarray], probs: dict[str, torch.Tensor],
                     cfg: CaptionerConfig | None = None) -> dict[str, tuple[torch.Tensor, ...]]:
        """The inputs of each stage `cfg` (default: this captioner's config) has, for every (clip, colour)
        slot, the heads' log-probabilities first: "motion": the heads' motion log-probabilities [B, O, M],
        the camera probabilities [B, O, C] and the motion evidence [B, O, E] measured under the most
        likely camera; "shape": the heads' log-probabilities over the object shapes [B, O, S] ("none"
        left out, the rest renormalised) and the shape crops [B, O, T, CROP_CHANNELS, P, P] uint8. Both
        measured without the most likely background where cfg.stage_backdrop_de says so, and without the stars
        or clouds of the backdrop seed the shot shows (shot_details_seed, searched once per shot)."""
        cfg = cfg or self.cfg
        B, O = probs["motion"].shape[:2]
        cameras = [cfg.cameras[int(i)] for i in probs["camera"].argmax(-1)]
        backgrounds = ([cfg.backgrounds[int(i)] for i in probs["background"].argmax(-1)] if cfg.stage_backdrop_de
                       else [None] * B)
        seeds = [shot_details_seed(c, cfg, cam, bg) for c, cam, bg in zip(clips, cameras, backgrounds)]
        out = {}
        if cfg.motion_frames:
            evidence_BOE = torch.from_numpy(np.stack([motion_evidence(c, cfg, cam, bg, seed) for c, cam, bg, seed
                                                      in zip(clips, cameras, backgrounds, seeds)]))
            out["motion"] = (_log(probs["motion"]), probs["camera"][:, None].expand(B, O, -1),
                             evidence_BOE)
        if cfg.shape_crop:
            objects_BOS = _object_shapes(probs["shape"], cfg)
            objects_BOS = objects_BOS / objects_BOS.sum(-1, keepdim=True).clamp_min(1e-9)
            out["shape"] = (_log(objects_BOS),
                            torch.from_numpy(np.stack([shape_crops(c, cfg, cam, bg, seed) for c, cam, bg, seed
                                                       in zip(clips, cameras, backgrounds, seeds)])))
        return out

    def stage_probs(self, clips: list[np.ndarray], probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The heads' "motion" and "shape" probabilities [B, O, classes] as this captioner's stages
        correct them (only those it has). The shape stage chooses the shape of the objects the heads
        see; whether a colour holds an object at all stays the heads' call."""
        out = {}
        for name, inputs in self.stage_inputs(clips, probs).items():
            stage = self.model.motion_stage if name == "motion" else self.model.shape_stage
            B, O = inputs[0].shape[:2]
            logits = stage(*(x.flatten(0, 1) for x in inputs)).view(B, O, -1)
            if name == "shape":
                # Only slots the heads give an object get the stage's shape, and with the heads' share of
                # "none": concentrating the object mass on one shape must not outvote "none" in _scene.
                none = self.cfg.none_index
                heads_BOS = probs["shape"]
                p_none_BO1 = heads_BOS[..., none:none + 1]
                staged_BOS = _with_none((1.0 - p_none_BO1) * logits.softmax(-1), p_none_BO1, none)
                is_object_BO1 = (heads_BOS.argmax(-1) != none)[..., None]
                out[name] = torch.where(is_object_BO1, staged_BOS, heads_BOS)
            else:
                out[name] = logits.softmax(-1)
        return out

    def _scene(self, probs: dict[str, torch.Tensor], b: int) -> tuple[world.Scene, float]:
        """The heads' decisions for clip b as a world Scene (objects in colour order) and its
        confidence (the smallest top-class probability over the heads used). A world scene holds
        1 to max_objects objects: the colours most likely to hold one fill it when the heads'
        own count falls outside."""
        cfg = self.cfg
        none = cfg.none_index
        shape_OS, motion_OM = probs["shape"][b], probs["motion"][b]
        p_object_O = 1.0 - shape_OS[:, none]
        # Each colour's best shape other than "none", and whether the head's top class is an object.
        shape_O = shape_OS.clone()
        shape_O[:, none] = -1.0
        best_O = shape_O.argmax(-1)
        wanted = [c for c in range(len(cfg.colours)) if int(shape_OS[c].argmax()) != none]
        if not 1 <= len(wanted) <= cfg.max_objects:
            ranked = p_object_O.argsort(descending=True).tolist()
            wanted = ranked[:min(max(len(wanted), 1), cfg.max_objects)]
        conf = [float(probs["background"][b].max()), float(probs["camera"][b].max())]
        conf += [float(shape_OS[c].max()) for c in range(len(cfg.colours)) if c not in wanted]
        objects = []
        for c in sorted(wanted):
            objects.append(world.SceneObject(cfg.shapes[int(best_O[c])], cfg.colours[c],
                                             cfg.motions[int(motion_OM[c].argmax())]))
            conf += [float(shape_OS[c, best_O[c]]), float(motion_OM[c].max())]
        scene = world.Scene(objects, cfg.backgrounds[int(probs["background"][b].argmax())],
                            cfg.cameras[int(probs["camera"][b].argmax())])
        return scene, min(conf)

    def _greedy(self, memory_BMD: torch.Tensor) -> tuple[torch.Tensor, list]:
        cfg = self.cfg
        bos, eos = cfg.vocab.index(BOS), cfg.vocab.index(EOS)
        tokens_BL = torch.full((memory_BMD.shape[0], 1), bos, dtype=torch.long)
        done = torch.zeros(memory_BMD.shape[0], dtype=torch.bool)
        stats = []
        for _ in range(cfg.max_len - 1):
            logits, _, stats = self.model.decode(memory_BMD, tokens_BL)
            nxt = logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.zeros_like(nxt), nxt)
            tokens_BL = torch.cat([tokens_BL, nxt[:, None]], 1)
            done |= nxt == eos
            if done.all():
                break
        return tokens_BL, stats

    def _ood_flags(self, x: torch.Tensor) -> np.ndarray:
        if self.ood_mean is None:
            return np.zeros(len(x), dtype=bool)
        z = np.abs((clip_statistics(x) - self.ood_mean) / self.ood_std)
        return (z > self.ood_z).any(axis=1)


def background_error(rgb_THW3: np.ndarray, background: str, camera: str) -> float:
    """Median absolute difference (grey levels) between sampled frames and the world's rendering of
    `background` under `camera`: small for the rendered world (its objects are small), large for
    footage from anywhere else, whatever the model's confidence."""
    T = len(rgb_THW3)
    views = world.background_views(background, camera, T, range(T), rgb_THW3.shape[1:3])
    return float(np.median([np.median(np.abs(f.astype(np.int16) - v.astype(np.int16))) for f, v in zip(rgb_THW3, views)]))


def load_default_captioner() -> Captioner | None:
    """The shipped captioner (assets/video_generation/captioner), or None when it is absent."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        return None
    return Captioner.load(DEFAULT_MODEL_DIR)


_SHARED: dict[str, Captioner | None] = {}


def shared_captioner() -> Captioner | None:
    """One loaded default captioner per process."""
    if "default" not in _SHARED:
        _SHARED["default"] = load_default_captioner()
    return _SHARED["default"]


# ---- evaluation on held-out world clips ----

def attribute_matches(pred: dict, scene: world.Scene) -> tuple[int, int]:
    """(correct, total) over the object count, background, camera and each true object's colour,
    shape and motion. A true object is matched to the predicted object of its colour (colours are
    distinct within a scene); with none, its colour, shape and motion all count as wrong."""
    correct = int(len(pred["objects"]) == len(scene.objects)) + int(pred["background"] == scene.background)
    correct += int(pred["camera"] == scene.camera)
    by_colour = {p["colour"]: p for p in pred["objects"]}
    for o in scene.objects:
        p = by_colour.get(o.colour)
        if p is not None:
            correct += 1 + (p["shape"] == o.shape) + (p["motion"] == o.motion)
    return correct, 3 + 3 * len(scene.objects)


def reference_captions(scene: world.Scene) -> list[str]:
    """The reference captions of a shot: caption_scene with its objects in every order (which order
    a caption names the objects in is not visible, so every order is equally right)."""
    return [world.caption_scene(world.Scene(list(p), scene.background, scene.camera, scene.seconds))
            for p in itertools.permutations(scene.objects)]


def evaluate_captioner(captioner: Captioner, clips: int = 200, seed: int = 1, batch: int = 25) -> dict:
    """Attribute accuracy, exact-caption rate and BLEU-4 on held-out clips (test split)."""
    rng = np.random.default_rng(seed)
    correct = total = exact = 0
    hyps, refs = [], []
    for start in range(0, clips, batch):
        scenes = [world.sample_scene(rng, "test") for _ in range(min(batch, clips - start))]
        preds = captioner.predict([render_clip(s, rng, captioner.cfg) for s in scenes])
        for p, s in zip(preds, scenes):
            c, t = attribute_matches(p.attributes, s)
            correct, total = correct + c, total + t
            r = reference_captions(s)
            exact += p.caption in r
            hyps.append(tokenize(p.caption))
            refs.append([tokenize(x) for x in r])
    return {"caption_attribute_accuracy": round(correct / max(total, 1), 4),
            "caption_exact_match": round(exact / max(clips, 1), 4),
            "bleu4": round(corpus_bleu(hyps, refs), 4), "eval_clips": clips}


# ---- the stages (fitted on a trained captioner) ----

@dataclass
class StageConfig:
    motion_frames: int = 7           # the motion stage's frames per shot (config motion_frames; 0: no motion stage);
                                     # 7 puts a full turn's samples 60 degrees apart
    motion_hidden: int = 64          # its MLP width
    shape_crop: int = 32             # the shape stage's crop side (config shape_crop; 0: no shape stage)
    shape_frames: int = 7
    backdrop_de: float = 8.0         # config stage_backdrop_de: the stages' masks without the known backdrop (0: off)
    clips: int = 4000                # rendered train-split clips fitted on (their true objects are the rows)
    val_clips: int = 1500            # more train-split clips (another stream) each stage's epoch is chosen on
    short_share: float = 0.3         # clips of exactly the heads' frame count (the rest 5-48 frames, as the
                                     # studio's shots are; render_clip draws 0.6 of them short)
    head_dropout: float = 0.3        # share of fitting rows whose heads' answer is replaced by a uniform one, so
                                     # a stage also learns to read its evidence alone (the heads are right on
                                     # ~95% of rows, and a stage would otherwise mostly learn to copy them)
    motion_epochs: int = 150
    shape_epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-3
    seed: int = 0


def stage_rows(captioner: Captioner, rng: np.random.Generator, clips: int, cfg: CaptionerConfig,
               short_share: float = StageConfig.short_share, batch: int = 25) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per stage of `cfg` (Captioner.stage_inputs): its inputs and the target class [N] for the true
    objects of `clips` rendered train-split clips, one row per object (at its colour's slot)."""
    rows: dict[str, list[tuple]] = {}
    object_shapes = [x for i, x in enumerate(cfg.shapes) if i != cfg.none_index]   # _object_shapes' order
    for start in range(0, clips, batch):
        scenes = [world.sample_scene(rng, "train") for _ in range(min(batch, clips - start))]
        rendered = [render_clip(s, rng, cfg, short_share, max_frames=48) for s in scenes]
        with torch.no_grad():
            probs = _head_probs(captioner._encode(rendered)[2])
        for name, inputs in captioner.stage_inputs(rendered, probs, cfg).items():
            for b, scene in enumerate(scenes):
                for o in scene.objects:
                    k = cfg.colours.index(o.colour)
                    target = cfg.motions.index(o.motion) if name == "motion" else object_shapes.index(o.shape)
                    rows.setdefault(name, []).append(tuple(x[b, k] for x in inputs) + (target,))
    out = {}
    for name, rs in rows.items():
        *inputs, target = zip(*rs)
        out[name] = tuple(torch.stack(x) for x in inputs) + (torch.tensor(target),)
    return out


def _fit_stage(stage: nn.Module, fit: tuple[torch.Tensor, ...], val: tuple[torch.Tensor, ...], epochs: int,
               sc: StageConfig) -> dict:
    """Fit `stage` (heads' log-probabilities first among its inputs, the target last) with AdamW, the heads'
    answer hidden on sc.head_dropout of the rows; keep the epoch of the lowest validation log-loss."""
    opt = torch.optim.AdamW(stage.parameters(), lr=sc.lr, weight_decay=sc.weight_decay)

    def val_logits() -> torch.Tensor:   # in batches: the shape stage's crops of every object at once are GBs
        stage.eval()
        with torch.no_grad():
            return torch.cat([stage(*(x[i:i + 1024] for x in val[:-1])) for i in range(0, len(val[-1]), 1024)])

    def val_loss() -> float:
        return F.cross_entropy(val_logits(), val[-1]).item()

    best_loss, best_epoch, best_state = val_loss(), 0, copy.deepcopy(stage.state_dict())
    for epoch in range(1, epochs + 1):
        stage.train()
        for idx in torch.randperm(len(fit[-1])).split(sc.batch_size):
            heads_NK = fit[0][idx]
            hidden_N1 = torch.rand(len(idx), 1) < sc.head_dropout
            heads_NK = torch.where(hidden_N1, torch.full_like(heads_NK, -math.log(heads_NK.shape[1])), heads_NK)
            loss = F.cross_entropy(stage(heads_NK, *(x[idx] for x in fit[1:-1])), fit[-1][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        current = val_loss()
        if current < best_loss:
            best_loss, best_epoch, best_state = current, epoch, copy.deepcopy(stage.state_dict())
    stage.load_state_dict(best_state)
    accuracy = (val_logits().argmax(-1) == val[-1]).float().mean().item()
    return {"accuracy_heads": round((val[0].argmax(-1) == val[-1]).float().mean().item(), 4),
            "accuracy_stage": round(accuracy, 4), "val_log_loss_heads": round(F.nll_loss(val[0], val[-1]).item(), 4),
            "val_log_loss": round(best_loss, 4), "best_epoch": best_epoch, "fit_objects": len(fit[-1]),
            "val_objects": len(val[-1])}


def fit_stages(captioner: Captioner, sc: StageConfig | None = None, log=None) -> tuple[Captioner, dict]:
    """A copy of `captioner` with its motion and shape stages (those sc asks for) fitted on its heads'
    answers for rendered train-split clips (the captioner itself unchanged), each stage's epoch chosen by
    the log-loss on other train-split clips. Returns (the new captioner, metrics per stage: accuracy of the
    heads alone and with the stage on those validation objects, best epoch, rows; seconds). Seeds torch's
    global generator with sc.seed (the stages' initial weights and batches)."""
    sc = sc or StageConfig()
    log = log or (lambda msg: None)
    start = time.time()
    cfg = replace(captioner.cfg, motion_frames=sc.motion_frames, motion_hidden=sc.motion_hidden,
                  shape_crop=sc.shape_crop, shape_frames=sc.shape_frames, stage_backdrop_de=sc.backdrop_de)
    torch.manual_seed(sc.seed)
    fit = stage_rows(captioner, np.random.default_rng([sc.seed, 1]), sc.clips, cfg, sc.short_share)
    val = stage_rows(captioner, np.random.default_rng([sc.seed, 2]), sc.val_clips, cfg, sc.short_share)
    log(f"stages: rows of {sc.clips} + {sc.val_clips} clips in {time.time() - start:.0f} s")
    model = copy.deepcopy(captioner.model)
    model.set_stages(cfg)
    metrics: dict = {}
    if model.motion_stage is not None:
        x_NI = torch.cat(fit["motion"][:3], -1)
        model.motion_stage.mean_I.copy_(x_NI.mean(0))
        model.motion_stage.std_I.copy_(x_NI.std(0).clamp_min(1e-3))
        metrics["motion"] = _fit_stage(model.motion_stage, fit["motion"], val["motion"], sc.motion_epochs, sc)
        log(f"motion stage: {metrics['motion']}")
    if model.shape_stage is not None:
        metrics["shape"] = _fit_stage(model.shape_stage, fit["shape"], val["shape"], sc.shape_epochs, sc)
        log(f"shape stage: {metrics['shape']}")
    metrics.update(seconds=round(time.time() - start, 1), config=asdict(sc))
    return captioner.with_model(model, {**captioner.metadata, "stages": copy.deepcopy(metrics)}), metrics


def save_captioner(captioner: Captioner, out: str | Path) -> Path:
    """Write `captioner` as a checkpoint: weights in float16 (loaded as float32, so a float32 captioner's
    weights are rounded), int8 modules stay int8."""
    from core.checkpoint import save_checkpoint

    md = {**captioner.metadata, **{k: v.tolist() for k, v in (("ood_mean", captioner.ood_mean),
                                                              ("ood_std", captioner.ood_std)) if v is not None}}
    return save_checkpoint(copy.deepcopy(captioner.model).half(), out, kind=KIND, config=captioner.cfg, metadata=md)


# ---- captioning footage ----

@dataclass
class ShotCaption:
    index: int
    start_frame: int
    end_frame: int                   # exclusive
    start_s: float
    end_s: float
    caption: str
    source: str                      # "world model" (synthetic-world captioner) or "measured" (pixels only)
    confidence: float                # the world model's confidence (0 when there is no model)
    attributes: dict                 # world attributes when source is "world model"; "measured" always
    experts: dict = field(default_factory=dict)  # MoE layer -> {expert: share}
    transition: str = "start"        # how the shot begins: start / cut / gradual

    def to_dict(self) -> dict:
        return asdict(self)


MAX_CAPTION_FRAMES = 4500            # frames read from a file (3 min at 25 fps); longer clips are cut short
ANALYSIS_SIDE = 160                  # frames are read with their longer side at most this


@dataclass
class FileCaptions:
    """A file's captions and what its reader should know (`video caption` and the page's Caption tab)."""
    path: Path
    shots: list[ShotCaption]
    frames_FHW3: np.ndarray          # the frames analysed (longer side ANALYSIS_SIDE), e.g. for thumbnails
    fps: float
    frames_read: int                 # frames captioned
    frames_total: int                # frames the file holds (the header's count when not read to the end)
    seconds_read: float              # where the captioned span ends
    seconds_total: float             # the clip's length by its header
    warnings: list[str] = field(default_factory=list)   # cut short at the frame cap, truncated file, HDR

    def to_dict(self) -> dict:
        return {"file": str(self.path), "shots": [s.to_dict() for s in self.shots], "warnings": self.warnings,
                "frames_captioned": self.frames_read, "frames_total": self.frames_total,
                "seconds_captioned": round(self.seconds_read, 3), "seconds_total": round(self.seconds_total, 3)}


def span_warning(seconds_read: float, seconds_total: float, frames_read: int, frames_total: int) -> str:
    return (f"captioned the first {seconds_read:.1f} s of {seconds_total:.1f} s "
            f"({frames_read} of {frames_total} frames)")


def caption_file(path: str | Path, *, captioner: Captioner | None = None, max_frames: int | None = None,
                 use_model: bool = True, fps: float | None = None) -> FileCaptions:
    """Caption a video file shot by shot on the file's own clock (each frame's presentation time, so a
    variable-frame-rate clip keeps its cut times), read downscaled (longer side ANALYSIS_SIDE) and at most
    `max_frames` frames (default MAX_CAPTION_FRAMES), which bounds memory. A longer clip is captioned over
    its first part only, and the warnings name that span against the clip's length; a truncated file and
    HDR colours converted to SDR are warned about too. `fps` overrides the file's clock."""
    from data_connectors.video import decode_shortfall, hdr_warning, probe_video, read_video_timed

    path = Path(path)
    max_frames = MAX_CAPTION_FRAMES if max_frames is None else max_frames
    info = probe_video(path)
    frames_FHW3, file_fps, times_F = read_video_timed(path, max_frames=max_frames, max_side=ANALYSIS_SIDE)
    shots = _caption_frames(frames_FHW3, fps or file_fps, None if fps else times_F, captioner, use_model)
    n = len(frames_FHW3)
    seconds_read = shots[-1].end_s if shots else 0.0
    seconds_total = max(info.seconds, seconds_read)
    cut_short = n >= max_frames and (info.frames > max_frames or seconds_read < info.seconds - 1.0 / info.fps)
    short = None if cut_short else decode_shortfall(info, n, float(times_F[-1]))   # cut short on purpose: no damage
    # The header's frame count is an estimate for some containers (WebM: duration x nominal rate), which a
    # variable-frame-rate clip can miss either way; a clip read to its end holds the frames decoded.
    frames_total = max(info.frames, n) if cut_short or short else n
    warnings = [span_warning(seconds_read, seconds_total, n, frames_total)] if cut_short else [short] if short else []
    if hdr := hdr_warning(path):
        warnings.append(hdr)
    for w in warnings:
        log.warning("%s: %s", path, w)
    return FileCaptions(path, shots, frames_FHW3, fps or file_fps, n, frames_total, seconds_read, seconds_total,
                        warnings)


def caption_video(path_or_frames, fps: float | None = None, *, captioner: Captioner | None = None,
                  max_frames: int | None = None, use_model: bool = True) -> list[ShotCaption]:
    """Shots of a clip (a video file, or frames [F, H, W, 3] uint8 RGB with their fps), each with
    its time stamps and caption. A file is read as caption_file reads it (which also returns the
    warnings: a clip longer than `max_frames` is captioned over its first part only)."""
    max_frames = MAX_CAPTION_FRAMES if max_frames is None else max_frames
    if not isinstance(path_or_frames, np.ndarray):
        return caption_file(path_or_frames, captioner=captioner, max_frames=max_frames, use_model=use_model,
                            fps=fps).shots
    frames_FHW3 = path_or_frames
    if fps is None:
        raise ValueError("fps is required when frames are given instead of a file")
    if frames_FHW3.ndim != 4 or frames_FHW3.shape[-1] != 3 or frames_FHW3.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [frames, height, width, 3], got {frames_FHW3.dtype} "
                         f"{frames_FHW3.shape}")
    if len(frames_FHW3) > max_frames:
        raise ValueError(f"{len(frames_FHW3)} frames exceed max_frames={max_frames}")
    return _caption_frames(frames_FHW3, fps, None, captioner, use_model)


def _caption_frames(frames_FHW3: np.ndarray, fps: float, times_F: np.ndarray | None,
                    captioner: Captioner | None, use_model: bool) -> list[ShotCaption]:
    """Shots of frames [F, H, W, 3], timed by times_F (a file's clock) or frame / fps."""
    if not fps or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    shots = detect_shots(frames_FHW3, fps, ShotConfig())
    if times_F is not None:
        shots = [_on_clock(shot, times_F, fps) for shot in shots]
    if use_model and captioner is None:
        captioner = shared_captioner()
    clips = [frames_FHW3[s.start_frame:s.end_frame] for s in shots]
    if use_model and captioner is not None:
        from .generator import one_torch_thread

        with one_torch_thread():  # small forwards: one thread (see one_torch_thread)
            preds = captioner.predict(clips)
    else:
        preds = [None] * len(shots)
    out = []
    for i, (shot, clip, pred) in enumerate(zip(shots, clips, preds)):
        measured = describe_shot(clip, fps)
        trusted = pred is not None and pred.in_distribution and pred.confidence >= captioner.min_confidence
        attributes = {"measured": measured.to_dict()}
        if trusted:
            attributes.update(pred.attributes)
        out.append(ShotCaption(
            index=i, start_frame=shot.start_frame, end_frame=shot.end_frame, start_s=round(shot.start_s, 3),
            end_s=round(shot.end_s, 3), caption=pred.caption if trusted else measured_caption(measured),
            source="world model" if trusted else "measured", confidence=pred.confidence if pred else 0.0,
            attributes=attributes, experts=pred.experts if pred else {}, transition=shot.transition))
    return out


def _on_clock(shot: Shot, times_F: np.ndarray, fps: float) -> Shot:
    """The shot with start_s / end_s from the file's frame times: a variable-frame-rate clip (a phone's) has
    frames unevenly spaced, and frame / fps would put its cuts at the wrong time. The last frame lasts
    as long as the one before it (1 / fps for a single frame)."""
    n = len(times_F)
    last = float(times_F[-1] + (times_F[-1] - times_F[-2] if n > 1 else 1.0 / fps))
    end_s = float(times_F[shot.end_frame]) if shot.end_frame < n else last
    return replace(shot, start_s=float(times_F[shot.start_frame]), end_s=end_s)


def measured_caption(d: ShotDescriptors) -> str:
    return d.phrase() + "."


def bench_caption_fps(seconds: float = 4.0, fps: int = 24, resolution: str = "360p", repeats: int = 1) -> dict:
    """Frames per second of caption_video on a rendered world clip at `resolution` (two shots),
    counting shot detection, descriptors and the model (frames handed over in memory; decoding a
    file is the reader's cost and not counted)."""
    heights = {"360p": 360, "720p": 720, "1080p": 1080}
    if resolution not in heights:
        raise ValueError(f"resolution must be one of {', '.join(heights)}, got {resolution!r}")
    h = heights[resolution]
    size_hw = (h, h * 16 // 9)
    rng = np.random.default_rng(0)
    script = world.Script([world.sample_scene(rng), world.sample_scene(rng)])
    for scene in script.scenes:
        scene.seconds = seconds / 2
    frames_FHW3, _ = world.render_script(script, fps, size_hw)
    captioner = shared_captioner()
    caption_video(frames_FHW3[:8], fps, captioner=captioner)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        shots = caption_video(frames_FHW3, fps, captioner=captioner)
        times.append(time.perf_counter() - t)
    best = min(times)
    return {"caption_fps": round(len(frames_FHW3) / best, 1), "caption_seconds": round(best, 3),
            "frames": len(frames_FHW3), "resolution": resolution, "shots": len(shots),
            "model": "shipped" if captioner is not None else "none (measured captions only)",
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    """python -m apps.video_generation.captioner --out DIR --steps N [--json]: train and save a captioner."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--eval-clips", type=int, default=TrainConfig.eval_clips)
    p.add_argument("--pool", type=int, default=TrainConfig.pool, help="training clips rendered once and reused")
    p.add_argument("--init", default=None, help="captioner checkpoint to continue training from")
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: one by default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, eval_clips=args.eval_clips,
                        pool=args.pool, init=args.init, lr=args.lr)
    _, metrics = train_captioner(args.out, train=train)
    print(json.dumps(metrics) if args.json else metrics)


if __name__ == "__main__":
    main()
