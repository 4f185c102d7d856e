"""The three training stages on shape world: their heads, batches, losses and evaluations.

pretrain  each stream alone, self-supervised. Text: masked-token prediction (BERT). Vision: masked-
          patch reconstruction (SimMIM): blank out squares of the image and regress their pixels with a
          linear head on the Swin tokens; SimMIM shows this one-layer head suffices for Swin, and a
          pixel target needs no augmentations or negatives, which a small batch could not supply.
align     L = l1 * InfoNCE(image, caption) with a learned temperature
            + l2 * captioning (a one-layer decoder reads the image tokens)
            + l3 * image-text matching (a head on the fused vector tells true pairs from mismatched
                   ones; of the three, only this term trains the cross-modal attention and fusion)
finetune  visual question answering: a head on the fused vector picks the answer.

Shape legend: B batch, T text tokens, S image tokens, N chosen tokens, V vocabulary, C channels,
H, W image size, h, w its grid of masking squares, D shared width, A answer classes, M modalities.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from core.data import ANSWERS, ShapeWorld, Tokenizer
from core.model import MultimodalCore
from core.moe import MoEStats
from core.text.tokenizer import TokenBatch

from .config import TrainConfig

# Training batches are seeded (seed, stage index, step); the held-out sets (seed, _EVAL_SEED).
_EVAL_SEED = 1_000_003


@dataclass
class Batch:
    images: torch.Tensor             # [B, C, H, W] in [0, 1]
    text: TokenBatch                 # captions (pretrain, align) or questions (finetune), [B, T]
    answers: torch.Tensor | None     # [B] answer classes (finetune), else None

    def to(self, device: torch.device) -> Batch:
        text = TokenBatch(self.text.input_ids.to(device), self.text.attention_mask.to(device))
        answers = None if self.answers is None else self.answers.to(device)
        return Batch(self.images.to(device), text, answers)


@dataclass
class StepOutput:
    loss: torch.Tensor               # scalar to minimise: the weighted terms plus every MoE aux loss
    terms: dict[str, torch.Tensor]   # detached scalars to log: "loss" (that total), each term, "aux"
    stats: dict[str, MoEStats]       # MoE layer name -> its stats this step


def make_batch(stage: str, world: ShapeWorld, tokenizer: Tokenizer, n: int,
               seed: int | Sequence[int]) -> Batch:
    """Captioned images for pretrain and align, questions about images for finetune."""
    if stage == "finetune":
        vqa = world.vqa(n, seed)
        return Batch(vqa.images, tokenizer(vqa.questions), vqa.answers)
    pairs = world.captions(n, seed)
    return Batch(pairs.images, tokenizer(pairs.captions), None)


# Heads.

class TokenHead(nn.Module):
    """Token states [B, T, D] -> vocabulary logits [B, T, V]."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x_BTD))


class PixelHead(nn.Module):
    """SimMIM's linear head: each vision token [D] -> the stride x stride pixels it covers."""

    def __init__(self, dim: int, channels: int, stride: int):
        super().__init__()
        self.channels, self.stride = channels, stride
        self.out = nn.Linear(dim, channels * stride * stride)

    def forward(self, tokens_BTD: torch.Tensor, height: int) -> torch.Tensor:
        """[B, C, H, W], tokens in row-major order over the H / stride rows of the token grid."""
        s = self.stride
        return rearrange(self.out(tokens_BTD), "b (h w) (c p q) -> b c (h p) (w q)",
                         h=height // s, c=self.channels, p=s, q=s)


class Temperature(nn.Module):
    """CLIP's learned logit scale 1 / tau, kept in log space and capped at 100."""

    def __init__(self, init: float):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / init)))

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)


class CaptionDecoder(nn.Module):
    """A one-layer causal transformer decoder over caption tokens, cross-attending to image tokens."""

    def __init__(self, dim: int, vocab_size: int, num_heads: int, max_positions: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position_PD = nn.Parameter(torch.randn(max_positions, dim) * 0.02)
        self.layer = nn.TransformerDecoderLayer(dim, num_heads, 2 * dim, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.out = TokenHead(dim, vocab_size)

    def forward(self, ids_BT: torch.Tensor, pad_BT: torch.Tensor, image_BSD: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, T, V] of the caption prefix `ids_BT` (True in `pad_BT` = padding)."""
        T = ids_BT.shape[1]
        x_BTD = self.embed(ids_BT) + self.position_PD[:T]
        future_TT = torch.ones(T, T, dtype=torch.bool, device=ids_BT.device).triu(1)  # True = masked
        x_BTD = self.layer(x_BTD, image_BSD, tgt_mask=future_TT, tgt_is_causal=True,
                           tgt_key_padding_mask=pad_BT)
        return self.out(x_BTD)


def add_training_heads(core: MultimodalCore, vocab_size: int, cfg: TrainConfig) -> None:
    """Register every stage's heads at once, so each stage's checkpoint holds the same modules."""
    D, mc = core.cfg.dim, core.cfg
    core.add_head("mlm", TokenHead(D, vocab_size))
    core.add_head("pixels", PixelHead(D, mc.vision.in_channels, mc.vision.stride))
    core.add_head("temperature", Temperature(cfg.init_temperature))
    core.add_head("caption", CaptionDecoder(D, vocab_size, mc.cross_heads, mc.text.max_positions))
    core.add_head("match", nn.Linear(D, 1))
    core.add_head("answer", nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, len(ANSWERS))))


# Masking.

def mask_tokens(text: TokenBatch, tokenizer: Tokenizer, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids with [MASK] in place of the chosen tokens [B, T], chosen [B, T] bool).

    Real tokens other than [CLS] and [SEP] are chosen with probability `prob`, at least one per row
    (the lowest draw). Every chosen token becomes [MASK]; BERT leaves 20% of them unchanged or random
    against the mismatch with unmasked inputs later, which the align and finetune stages train on anyway.
    """
    ids_BT = text.input_ids
    maskable_BT = text.attention_mask.bool() & (ids_BT != tokenizer.cls_id) & (ids_BT != tokenizer.sep_id)
    draw_BT = torch.rand(ids_BT.shape, device=ids_BT.device).masked_fill(~maskable_BT, 2.0)
    chosen_BT = (draw_BT < prob) | (draw_BT == draw_BT.min(dim=1, keepdim=True).values)
    chosen_BT &= maskable_BT
    return ids_BT.masked_fill(chosen_BT, tokenizer.mask_id), chosen_BT


def mask_patches(images: torch.Tensor, patch: int, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(images with a random `ratio` of their patch x patch squares set to 0, masked pixels [B, 1, H, W])."""
    B, _, H, W = images.shape
    draw_Bhw = torch.rand(B, H // patch, W // patch, device=images.device)
    num_masked = round(ratio * draw_Bhw[0].numel())
    threshold_B11 = draw_Bhw.flatten(1).kthvalue(num_masked, dim=1).values[:, None, None]
    masked_Bhw = draw_Bhw <= threshold_B11
    masked_B1HW = masked_Bhw.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)
    return images.masked_fill(masked_B1HW, 0.0), masked_B1HW


# Losses.

def cosine_similarity(image_BD: torch.Tensor, text_BD: torch.Tensor) -> torch.Tensor:
    """[B, B] cosine similarity of every image with every text, in fp32 (bf16 would blur the ranking)."""
    with torch.autocast(image_BD.device.type, enabled=False):
        return F.normalize(image_BD.float(), dim=-1) @ F.normalize(text_BD.float(), dim=-1).T


def contrastive_loss(image_BD: torch.Tensor, text_BD: torch.Tensor, same_BB: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; pairs with identical captions all count as positives."""
    logits_BB = scale * cosine_similarity(image_BD, text_BD)
    target_BB = same_BB.float() / same_BB.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits_BB, target_BB) + F.cross_entropy(logits_BB.T, target_BB)) / 2


def same_text(text: TokenBatch) -> torch.Tensor:
    """[B, B] bool: rows i and j hold the same text."""
    ids_BT = text.input_ids
    return (ids_BT[:, None] == ids_BT[None]).all(dim=-1)


class Objectives:
    """Each stage's loss on one batch, and the held-out evaluations, for a core with the training heads."""

    def __init__(self, core: MultimodalCore, tokenizer: Tokenizer, cfg: TrainConfig):
        self.core, self.tokenizer, self.cfg = core, tokenizer, cfg

    def __call__(self, stage: str, batch: Batch) -> StepOutput:
        return {"pretrain": self.pretrain, "align": self.align, "finetune": self.finetune}[stage](batch)

    def pretrain(self, batch: Batch) -> StepOutput:
        core, cfg, task = self.core, self.cfg, self.cfg.pretrain_task
        masked_ids_BT, chosen_BT = mask_tokens(batch.text, self.tokenizer, cfg.mask_prob)
        text = core.encode(text=TokenBatch(masked_ids_BT, batch.text.attention_mask), task=task)
        logits_NV = core.heads["mlm"](text.tokens["text"][chosen_BT])
        mlm = F.cross_entropy(logits_NV.float(), batch.text.input_ids[chosen_BT])

        masked_images, masked_B1HW = mask_patches(batch.images, cfg.mask_patch, cfg.patch_mask_ratio)
        vision = core.encode(images=masked_images, task=task)
        recon_BCHW = core.heads["pixels"](vision.tokens["vision"], batch.images.shape[-2])
        error_BCHW = (recon_BCHW.float() - batch.images).abs() * masked_B1HW  # SimMIM: L1 on masked pixels
        pixels = error_BCHW.sum() / (masked_B1HW.sum() * batch.images.shape[1])

        aux = text.aux_loss + vision.aux_loss
        return _output(mlm + pixels, {"mlm": mlm, "pixels": pixels}, aux, {**text.stats, **vision.stats})

    def align(self, batch: Batch) -> StepOutput:
        core, cfg, task = self.core, self.cfg, self.cfg.align_task
        enc = core.encode(text=batch.text, images=batch.images, task=task)
        same_BB = same_text(batch.text)
        contrastive = contrastive_loss(enc.pooled["vision"], enc.pooled["text"], same_BB,
                                       core.heads["temperature"]())

        ids_BT, real_BT = batch.text.input_ids, batch.text.attention_mask.bool()
        logits_BTV = core.heads["caption"](ids_BT[:, :-1], ~real_BT[:, :-1], enc.tokens["vision"])
        target_BT = ids_BT[:, 1:].masked_fill(~real_BT[:, 1:], -100)  # -100: cross_entropy ignores it
        captioning = F.cross_entropy(logits_BTV.float().transpose(1, 2), target_BT)

        matching = self._matching_loss(enc.tokens, enc.masks, same_BB)
        loss = cfg.l1 * contrastive + cfg.l2 * captioning + cfg.l3 * matching
        terms = {"contrastive": contrastive, "captioning": captioning, "matching": matching}
        return _output(loss, terms, enc.aux_loss, enc.stats)

    def _matching_loss(self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                       same_BB: torch.Tensor) -> torch.Tensor:
        """BCE of the match head: each image with its caption (a match) and with the previous sample's
        caption (a match only where the two captions are the same)."""
        B = same_BB.shape[0]
        own_B = torch.arange(B, device=same_BB.device)
        previous_B = own_B - 1  # sample 0 takes the last caption
        pairs = {"text": torch.cat([tokens["text"], tokens["text"][previous_B]]),
                 "vision": torch.cat([tokens["vision"], tokens["vision"]])}
        pair_masks = {"text": torch.cat([masks["text"], masks["text"][previous_B]]),
                      "vision": torch.cat([masks["vision"], masks["vision"]])}
        fused_2BD = self.core.fuse(pairs, pair_masks, self.cfg.align_task).fused
        logits_2B = self.core.heads["match"](fused_2BD).squeeze(-1).float()
        labels_2B = torch.cat([torch.ones_like(logits_2B[:B]), same_BB[own_B, previous_B].float()])
        return F.binary_cross_entropy_with_logits(logits_2B, labels_2B)

    def finetune(self, batch: Batch) -> StepOutput:
        core, task = self.core, self.cfg.finetune_task
        out = core(text=batch.text, images=batch.images, task=task)
        answer = F.cross_entropy(core.heads["answer"](out.fused).float(), batch.answers)
        terms = {"answer": answer}
        if "logits" in out.fusion_extra:  # confidence fusion: each modality's own head learns the answer
            logits_BMA = out.fusion_extra["logits"].float()
            answers_BM = batch.answers[:, None].expand(logits_BMA.shape[:2])
            terms["confidence"] = F.cross_entropy(logits_BMA.flatten(0, 1), answers_BM.flatten())
        return _output(sum(terms.values()), terms, out.aux_loss, out.stats)

    @torch.no_grad()
    def retrieval(self, world: ShapeWorld, device: torch.device) -> dict[str, float]:
        """Recall@1 of image -> caption and caption -> image over the held-out pairs (distinct captions)."""
        pairs = world.captions(self.cfg.eval_pairs, (self.cfg.seed, _EVAL_SEED), distinct=True)
        batch = Batch(pairs.images, self.tokenizer(pairs.captions), None).to(device)
        enc = self.core.encode(text=batch.text, images=batch.images, task=self.cfg.align_task)
        sim_BB = cosine_similarity(enc.pooled["vision"], enc.pooled["text"])
        truth_B = torch.arange(sim_BB.shape[0], device=device)
        return {"image_to_text_r1": (sim_BB.argmax(1) == truth_B).float().mean().item(),
                "text_to_image_r1": (sim_BB.argmax(0) == truth_B).float().mean().item(),
                "temperature": 1 / self.core.heads["temperature"]().item()}

    @torch.no_grad()
    def vqa_accuracy(self, world: ShapeWorld, device: torch.device) -> float:
        """Share of held-out questions answered right."""
        vqa = world.vqa(self.cfg.eval_questions, (self.cfg.seed, _EVAL_SEED))
        batch = Batch(vqa.images, self.tokenizer(vqa.questions), vqa.answers).to(device)
        out = self.core(text=batch.text, images=batch.images, task=self.cfg.finetune_task)
        return (self.core.heads["answer"](out.fused).argmax(-1) == batch.answers).float().mean().item()


def _output(loss: torch.Tensor, terms: dict[str, torch.Tensor], aux: torch.Tensor,
            stats: dict[str, MoEStats]) -> StepOutput:
    total = loss + aux
    logged = {name: value.detach().float() for name, value in {"loss": total, **terms, "aux": aux}.items()}
    return StepOutput(total, logged, stats)
