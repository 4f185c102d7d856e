"""The vision stream: MONAI's Swin Transformer, with MoE feed-forward blocks in its deeper stages.

2D for video frames and images ([B, C, H, W]), 3D for CT volumes ([B, C, D, H, W]). The last
stage's tokens are projected into the token space shared with the text and audio streams.

Shape legend: B batch, C channels of a stage, S spatial positions of a stage (H*W or D*H*W),
T output tokens, D shared width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from monai.networks.nets.swin_unetr import SwinTransformer

from core.moe import MoEConfig, MoELayer, MoEStats
from core.tasks import NUM_TASKS, task_ids

# MONAI's SwinTransformer.forward always runs four stages, each ending in a 2x patch merging.
NUM_STAGES = 4


@dataclass
class VisionStreamConfig:
    spatial_dims: int = 3            # 3: CT volumes [B, C, D, H, W]; 2: frames and images [B, C, H, W]
    in_channels: int = 1             # 1 for CT, 3 for RGB frames
    patch_size: int = 2              # patch-embedding stride along every axis
    window_size: int = 4             # attention window along every axis; 4 tiles the stages of
                                     # inputs sized in multiples of `stride`, Swin's 7 would pad them
    embed_dim: int = 24              # stage-0 width; stage i has embed_dim * 2**i channels
    depths: tuple[int, ...] = (2, 2, 2, 2)       # Swin blocks per stage
    num_heads: tuple[int, ...] = (3, 6, 12, 24)  # attention heads per stage
    mlp_ratio: float = 4.0           # hidden width / stage width of the dense MLP blocks
    drop_path: float = 0.0           # stochastic-depth rate, ramped linearly over the blocks
    out_dim: int = 384               # shared token width D (the text stream's)
    # MoE blocks go in the deep stages: fewest tokens and widest channels, so capacity is cheapest there.
    moe_stages: tuple[int, ...] = (3,)  # stages (0-based) whose MLP blocks become MoE layers; () = dense
    num_experts: int = 4             # routed experts E per MoE layer
    top_k: int = 2                   # routed experts per token K
    num_shared_experts: int = 1      # always-on experts
    expert_ratio: float = 1.0        # expert hidden width / stage width: at 1.0, K + 1 shared SwiGLU
                                     # experts cost about what the dense 4x GELU MLP does
    capacity_factor: float = 1.25    # 0 = dropless
    balance_coef: float = 0.01       # weight of the KL balance loss in aux_loss
    num_tasks: int = NUM_TASKS       # task-aware gating over core.tasks.TASKS (0 = off)

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if len(self.depths) != NUM_STAGES or len(self.num_heads) != NUM_STAGES:
            raise ValueError(f"depths and num_heads need one entry per stage ({NUM_STAGES}), "
                             f"got {self.depths} and {self.num_heads}")
        for i, heads in enumerate(self.num_heads):
            if self.stage_dim(i) % heads:
                raise ValueError(f"stage {i} width {self.stage_dim(i)} must divide into {heads} heads")
        for i in self.moe_stages:
            if not 0 <= i < NUM_STAGES or self.depths[i] == 0:
                raise ValueError(f"moe_stages {self.moe_stages}: stage {i} does not exist or has no blocks")
            self.moe(self.stage_dim(i))  # MoEConfig's own checks, at construction

    def stage_dim(self, stage: int) -> int:
        return self.embed_dim * 2 ** stage

    @property
    def feature_dim(self) -> int:
        """Channels of the last stage's output (after its patch merging)."""
        return self.embed_dim * 2 ** NUM_STAGES

    @property
    def stride(self) -> int:
        """Input pixels (voxels) per output token along each axis."""
        return self.patch_size * 2 ** NUM_STAGES

    def moe(self, dim: int) -> MoEConfig:
        """The MoEConfig of an MoE layer in a stage of width `dim`."""
        return MoEConfig(dim=dim, hidden_dim=max(1, round(self.expert_ratio * dim)),
                         num_experts=self.num_experts, top_k=self.top_k,
                         num_shared_experts=self.num_shared_experts,
                         capacity_factor=self.capacity_factor, balance_coef=self.balance_coef,
                         num_tasks=self.num_tasks)


@dataclass
class VisionOutput:
    tokens: torch.Tensor             # [B, T, D] last-stage tokens in the shared space
    pooled: torch.Tensor             # [B, D] mean over tokens
    aux_loss: torch.Tensor           # differentiable scalar: the MoE layers' aux losses, summed
    stats: list[MoEStats]            # one per MoE layer, in forward order


class SwinMoEMLP(nn.Module):
    """Drop-in for MONAI's MLPBlock in a SwinTransformerBlock: [B, *spatial, C] -> same shape.

    MONAI calls `mlp(x)` with no task id, so the stream sets `task_id` before its forward, and
    takes each layer's stats after it with `pop_stats()`.
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.moe = MoELayer(cfg)
        self.task_id: int | torch.Tensor | None = None
        self.stats: MoEStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_BSC = x.reshape(x.shape[0], -1, x.shape[-1])
        y_BSC, self.stats = self.moe(x_BSC, self.task_id)
        return y_BSC.reshape(x.shape)

    def pop_stats(self) -> MoEStats:
        stats, self.stats = self.stats, None
        if stats is None:
            raise RuntimeError("SwinMoEMLP has no stats: it did not run since the last pop_stats()")
        return stats


class VisionStream(nn.Module):
    """forward(images [B, C_in, *spatial], task_id=None) -> VisionOutput.

    Every spatial size must be a multiple of `cfg.stride` (patch_size * 2**4); each output token
    covers a stride**spatial_dims block: 8 tokens for a 64^3 volume, 49 for a 224x224 frame.
    """

    def __init__(self, cfg: VisionStreamConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.spatial_dims
        self.swin = SwinTransformer(
            in_chans=cfg.in_channels, embed_dim=cfg.embed_dim, window_size=(cfg.window_size,) * n,
            patch_size=(cfg.patch_size,) * n, depths=cfg.depths, num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio, drop_path_rate=cfg.drop_path, spatial_dims=n)
        stages = (self.swin.layers1, self.swin.layers2, self.swin.layers3, self.swin.layers4)
        for i in cfg.moe_stages:
            for block in stages[i][0].blocks:
                block.mlp = SwinMoEMLP(cfg.moe(block.dim))
        self.proj = nn.Linear(cfg.feature_dim, cfg.out_dim)

    def moe_mlps(self) -> list[SwinMoEMLP]:
        return [m for m in self.modules() if isinstance(m, SwinMoEMLP)]

    def forward(self, images: torch.Tensor, task_id: int | torch.Tensor | None = None) -> VisionOutput:
        self._check_input(images)
        if task_id is not None and self.cfg.num_tasks:
            task_ids(task_id, self.cfg.num_tasks)
        moe_mlps = self.moe_mlps()
        for mlp in moe_mlps:
            mlp.task_id = task_id
        # normalize=True: MONAI layer-norms each stage output (no affine); only the last is used.
        feature_BCS = self.swin(images, normalize=True)[-1].flatten(2)
        tokens_BTD = self.proj(feature_BCS.transpose(1, 2))
        stats = [mlp.pop_stats() for mlp in moe_mlps]
        aux_loss = sum((s.aux_loss for s in stats), tokens_BTD.new_zeros((), dtype=torch.float32))
        return VisionOutput(tokens_BTD, tokens_BTD.mean(dim=1), aux_loss, stats)

    def _check_input(self, images: torch.Tensor) -> None:
        cfg = self.cfg
        if images.ndim != cfg.spatial_dims + 2 or images.shape[1] != cfg.in_channels:
            raise ValueError(f"expected [B, {cfg.in_channels}, {cfg.spatial_dims} spatial dims], "
                             f"got {tuple(images.shape)}")
        spatial = tuple(images.shape[2:])
        if any(s % cfg.stride for s in spatial):
            raise ValueError(f"spatial size {spatial} must be a multiple of patch_size * 2**{NUM_STAGES} "
                             f"= {cfg.stride} along every axis (MONAI's Swin merges patches "
                             f"{NUM_STAGES} times); pad or resize the input")
