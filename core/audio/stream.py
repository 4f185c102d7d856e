"""The audio stream: strided 1D convolutions over waveforms or spectrogram frames, then one
transformer block with an MoE feed-forward, into the token space shared with text and vision.

Clips of different lengths come padded to one length L with their valid lengths (`lengths`, or an
`AudioBatch`). The conv stack has no padding, so token t of a clip is real when its receptive field
lies inside the clip (`AudioStreamConfig.num_tokens`); the block masks the rest out of its positional
conv, its attention keys and its MoE feed-forward, so a clip gets the same tokens, pooled vector and
expert loads in any batch as alone (in eval, or with a dropless MoE: in training a capacity limit is shared by
the batch's tokens).

Shape legend: B batch, C channels, L samples or frames at a conv layer's input or output,
T tokens, D shared width, N real tokens of the batch (flattened).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.fusion.dynamic import masked_mean
from core.moe import MoEConfig, MoELayer, MoEStats, ffn_on_real_tokens, real_token_tasks
from core.tasks import NUM_TASKS, task_ids


@dataclass
class AudioStreamConfig:
    in_channels: int = 1             # 1: waveforms [B, samples]; n_mels: spectrograms [B, n_mels, frames]
    conv_dim: int = 256              # channels of every conv layer
    kernel_sizes: tuple[int, ...] = (10, 8, 4)  # one conv layer per entry
    strides: tuple[int, ...] = (5, 4, 4)        # total stride 80: 200 tokens per second of 16 kHz audio
    dim: int = 384                   # shared token width D (the text stream's)
    # The transformer block over the conv tokens.
    use_block: bool = True           # False: conv features projected straight to tokens
    num_heads: int = 6
    pos_kernel: int = 15             # depthwise conv giving attention relative position (odd)
    num_experts: int = 4             # routed experts E in the block's MoE feed-forward
    top_k: int = 2                   # routed experts per token K
    num_shared_experts: int = 1      # always-on experts
    expert_hidden_dim: int = 384     # hidden width of each expert (SwiGLU)
    capacity_factor: float = 1.25    # 0 = dropless
    balance_coef: float = 0.01       # weight of the KL balance loss in aux_loss
    num_tasks: int = NUM_TASKS       # task-aware gating over core.tasks.TASKS (0 = off)

    def __post_init__(self) -> None:
        if not self.kernel_sizes or len(self.kernel_sizes) != len(self.strides):
            raise ValueError(f"kernel_sizes {self.kernel_sizes} and strides {self.strides} need "
                             "one entry per conv layer")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must divide into num_heads ({self.num_heads})")
        if self.pos_kernel % 2 == 0:
            raise ValueError(f"pos_kernel must be odd to keep the token count, got {self.pos_kernel}")
        self.moe()  # MoEConfig's own checks, at construction

    def moe(self) -> MoEConfig:
        return MoEConfig(dim=self.dim, hidden_dim=self.expert_hidden_dim, num_experts=self.num_experts,
                         top_k=self.top_k, num_shared_experts=self.num_shared_experts,
                         capacity_factor=self.capacity_factor, balance_coef=self.balance_coef,
                         num_tasks=self.num_tasks)

    def num_tokens(self, length: int) -> int:
        """Tokens the stream makes from `length` samples (or frames): build padding masks with it."""
        for k, s in zip(self.kernel_sizes, self.strides):
            length = (length - k) // s + 1
        return max(length, 0)

    def min_length(self, tokens: int = 1) -> int:
        """The shortest input (samples or frames) that makes `tokens` tokens: num_tokens walked backwards."""
        length = tokens
        for k, s in zip(reversed(self.kernel_sizes), reversed(self.strides)):
            length = (length - 1) * s + k
        return length


@dataclass
class AudioBatch:
    """Clips padded to one length, with their valid lengths: the audio counterpart of TokenBatch."""
    audio: torch.Tensor              # [B, samples] waveforms or [B, n_mels, frames] spectrograms
    lengths: torch.Tensor            # [B] long, valid samples (or frames) of each clip; the rest is padding

    @classmethod
    def from_clips(cls, clips: Sequence[torch.Tensor]) -> AudioBatch:
        """Clips [samples] (or [n_mels, frames]) of any lengths -> one batch, zero-padded at the end."""
        clips = list(clips)
        if not clips:
            raise ValueError("AudioBatch.from_clips needs at least one clip, got none")
        for i, clip in enumerate(clips):
            if not isinstance(clip, torch.Tensor) or clip.ndim not in (1, 2):
                got = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
                raise ValueError(f"clip {i} must be a tensor [samples] or [n_mels, frames], got {got}")
            if clip.shape[:-1] != clips[0].shape[:-1]:
                raise ValueError(f"clip {i} has shape {tuple(clip.shape)}, clip 0 {tuple(clips[0].shape)}: "
                                 "clips may differ only in their last (time) axis")
        lead = tuple(clips[0].shape[:-1])
        lengths_B = torch.tensor([clip.shape[-1] for clip in clips], dtype=torch.long)
        audio = clips[0].new_zeros(len(clips), *lead, int(lengths_B.max()))
        for i, clip in enumerate(clips):
            audio[i, ..., :clip.shape[-1]] = clip
        return cls(audio, lengths_B.to(audio.device))


@dataclass
class AudioOutput:
    tokens: torch.Tensor             # [B, T, D] in the shared space; zeros at padded tokens
    pooled: torch.Tensor             # [B, D] mean over each clip's real tokens
    aux_loss: torch.Tensor           # differentiable scalar: the MoE aux loss (0 without the block)
    stats: list[MoEStats]            # one per MoE layer (none without the block), over real tokens only
    mask: torch.Tensor               # [B, T] bool, True = real token (all True without lengths)


class ConvLayer(nn.Module):
    """Strided Conv1d, LayerNorm over channels, GELU: [B, C_in, L] -> [B, C_out, L']."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        x_BLC = self.norm(self.conv(x_BCL).transpose(1, 2))
        return F.gelu(x_BLC).transpose(1, 2)


class AudioBlock(nn.Module):
    """Pre-norm transformer block with an MoE feed-forward: [B, T, D] -> ([B, T, D], MoEStats).

    With mask_BT [B, T] (True = real token), padded tokens are zeroed before the positional conv,
    are never attention keys, and skip the MoE (no expert slots, no part of its stats or aux loss);
    the output is zero there. mask_BT=None: no padding, the block as it ran before masks.
    """

    def __init__(self, cfg: AudioStreamConfig):
        super().__init__()
        D = cfg.dim
        self.pos = nn.Conv1d(D, D, cfg.pos_kernel, padding=cfg.pos_kernel // 2, groups=D)
        self.norm1 = nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, cfg.num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(D)
        self.moe = MoELayer(cfg.moe())

    def forward(self, x_BTD: torch.Tensor, task_id: int | torch.Tensor | None = None,
                mask_BT: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEStats]:
        if mask_BT is not None:  # zeros past a clip's end, as the conv's own padding gives it alone
            x_BTD = x_BTD.masked_fill(~mask_BT.unsqueeze(-1), 0.0)
        x_BTD = x_BTD + F.gelu(self.pos(x_BTD.transpose(1, 2))).transpose(1, 2)
        h_BTD = self.norm1(x_BTD)
        key_pad_BT = None if mask_BT is None else ~mask_BT
        x_BTD = x_BTD + self.attn(h_BTD, h_BTD, h_BTD, key_padding_mask=key_pad_BT, need_weights=False)[0]
        if mask_BT is None:
            y_BTD, stats = self.moe(self.norm2(x_BTD), task_id)
            return x_BTD + y_BTD, stats

        # The MoE runs on real tokens only (as in the text stream): padding neither takes expert slots nor
        # enters the balance stats and aux loss.
        B, T, _ = x_BTD.shape
        real_N = mask_BT.flatten().nonzero().squeeze(1)
        task_N = real_token_tasks(task_id, B, T, real_N, self.moe.cfg.num_tasks)
        y_BTD, stats = ffn_on_real_tokens(self.moe, self.norm2(x_BTD), real_N, task_N)
        return (x_BTD + y_BTD).masked_fill(~mask_BT.unsqueeze(-1), 0.0), stats


class AudioStream(nn.Module):
    """forward(audio [B, samples] or [B, n_mels, frames], task_id=None, lengths=None) -> AudioOutput.

    `lengths` [B] (long): valid samples (frames) of each clip, the rest padding; None = all valid.
    Tokens of padding are zero in `tokens`, False in `mask` and left out of `pooled` and the MoE.
    """

    def __init__(self, cfg: AudioStreamConfig):
        super().__init__()
        self.cfg = cfg
        widths = (cfg.in_channels,) + (cfg.conv_dim,) * len(cfg.kernel_sizes)
        self.convs = nn.Sequential(*(ConvLayer(c_in, c_out, k, s) for c_in, c_out, k, s
                                     in zip(widths, widths[1:], cfg.kernel_sizes, cfg.strides)))
        self.proj = nn.Linear(cfg.conv_dim, cfg.dim)
        self.block = AudioBlock(cfg) if cfg.use_block else None
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, audio: torch.Tensor, task_id: int | torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> AudioOutput:
        x_BCL = self._as_channels(audio)
        if task_id is not None and self.cfg.num_tasks:
            task_ids(task_id, self.cfg.num_tasks)
        mask_BT = self.token_mask(x_BCL.shape[0], x_BCL.shape[-1], lengths, x_BCL.device)
        # Without padding the unmasked path runs: the same numerics as a batch that has no lengths.
        padded_BT = None if lengths is None or bool(mask_BT.all()) else mask_BT
        x_BTD = self.proj(self.convs(x_BCL).transpose(1, 2))
        stats = []
        if self.block is not None:
            x_BTD, block_stats = self.block(x_BTD, task_id, padded_BT)
            stats.append(block_stats)
        tokens_BTD = self.norm(x_BTD)
        if padded_BT is None:
            pooled_BD = tokens_BTD.mean(dim=1)
        else:
            tokens_BTD = tokens_BTD.masked_fill(~padded_BT.unsqueeze(-1), 0.0)
            pooled_BD = masked_mean(tokens_BTD, padded_BT)
        aux_loss = sum((s.aux_loss for s in stats), tokens_BTD.new_zeros((), dtype=torch.float32))
        return AudioOutput(tokens_BTD, pooled_BD, aux_loss, stats, mask_BT)

    def token_mask(self, batch: int, length: int, lengths: torch.Tensor | None,
                   device: torch.device | None = None) -> torch.Tensor:
        """[B, T] bool, True where a token's receptive field lies inside its clip's first lengths[b]
        samples (frames) of `length`; all True when lengths is None. Checks lengths: ValueError."""
        cfg = self.cfg
        T = cfg.num_tokens(length)
        if lengths is None:
            return torch.ones(batch, T, dtype=torch.bool, device=device)
        lengths_B = torch.as_tensor(lengths)
        if lengths_B.dtype == torch.bool or lengths_B.is_floating_point() or lengths_B.is_complex():
            raise ValueError(f"audio lengths must be integers (valid samples or frames per clip), "
                             f"got {lengths_B.dtype}")
        if tuple(lengths_B.shape) != (batch,):
            raise ValueError(f"audio lengths must be [batch] = [{batch}], one per clip, "
                             f"got shape {list(lengths_B.shape)}")
        tokens_B = []
        for i, n in enumerate(lengths_B.tolist()):
            if not 1 <= n <= length:
                raise ValueError(f"audio lengths[{i}] = {n} is outside 1..{length} (the padded length)")
            tokens_B.append(cfg.num_tokens(n))
            if tokens_B[-1] < 1:
                raise ValueError(f"audio lengths[{i}] = {n} makes no token: a clip needs at least "
                                 f"AudioStreamConfig.min_length() = {cfg.min_length()} samples or frames")
        return torch.arange(T, device=device) < torch.tensor(tokens_B, device=device).unsqueeze(1)

    def _as_channels(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, samples] -> [B, 1, samples]; spectrograms [B, n_mels, frames] as they are."""
        cfg = self.cfg
        x_BCL = audio.unsqueeze(1) if audio.ndim == 2 else audio
        if x_BCL.ndim != 3 or x_BCL.shape[1] != cfg.in_channels:
            expected = "[B, samples]" if cfg.in_channels == 1 else f"[B, {cfg.in_channels}, frames]"
            raise ValueError(f"expected audio {expected}, got {tuple(audio.shape)}")
        if cfg.num_tokens(x_BCL.shape[-1]) < 1:
            raise ValueError(f"audio of length {x_BCL.shape[-1]} is shorter than the conv stack's "
                             f"receptive field ({cfg.min_length()} samples or frames); pad it")
        return x_BCL
