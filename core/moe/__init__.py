"""DeepSeek-style Mixture-of-Experts routing layer.

    from core.moe import MoEConfig, MoELayer
    layer = MoELayer(MoEConfig(dim=64, hidden_dim=128, num_experts=8, top_k=2))
    y, stats = layer(x)                       # x: [batch, seq, dim]
    loss = task_loss + stats.aux_loss
"""
from .config import MoEConfig
from .experts import FeedForward, GroupedExperts, grouped_ffn
from .layer import (DenseFFN, MoELayer, MoEStats, ffn_on_real_tokens, moe_train_step, real_token_tasks,
                    update_expert_biases)
from .router import DynamicRouter, RouterOutput

__all__ = [
    "MoEConfig", "MoELayer", "MoEStats", "DenseFFN", "DynamicRouter", "RouterOutput",
    "GroupedExperts", "FeedForward", "grouped_ffn", "update_expert_biases", "moe_train_step",
    "ffn_on_real_tokens", "real_token_tasks",
]
