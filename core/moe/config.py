"""Configuration of one Mixture-of-Experts feed-forward layer."""
from __future__ import annotations

from dataclasses import asdict, dataclass

GATES = ("topk_softmax", "softmax_topk", "sigmoid")
ACTIVATIONS = ("swiglu", "gelu")
BALANCE_LOSSES = ("kl", "switch", "sequence", "none")


@dataclass
class MoEConfig:
    dim: int = 512                   # model width D
    hidden_dim: int = 1024           # hidden width H of each routed expert (SwiGLU)
    num_experts: int = 8             # routed experts E
    top_k: int = 2                   # experts chosen per token K
    num_shared_experts: int = 0      # experts every token passes through (DeepSeekMoE), each of width H
    activation: str = "swiglu"       # expert block: "swiglu" or "gelu" (GELU MLP, for upcycling BERT-style FFNs)
    expert_bias: bool = False        # biases in expert projections (needed to upcycle FFNs that have them)
    capacity_factor: float = 1.25    # capacity = ceil(cf * N * K / E) per expert; 0 means dropless
    drop_at_inference: bool = False  # apply the capacity in eval mode too (bounds each expert's work, but a
                                     # token's output then depends on the other tokens in its batch)
    gate: str = "topk_softmax"       # "topk_softmax" | "softmax_topk" | "sigmoid"
    renormalize: bool = True         # softmax_topk / sigmoid: rescale the K chosen weights to sum to 1
    # (with top_k=1, "topk_softmax" or a renormalised gate gives every token weight 1: the router
    # then learns only from aux_loss; Switch-style top-1 wants softmax_topk without renormalising)
    num_groups: int = 1              # expert groups for group-limited routing (1 = off)
    top_groups: int = 1              # groups a token may use; experts are chosen inside them
    num_tasks: int = 0               # task-aware gating: learned per-task gate conditioning (0 = off)
    balance_loss: str = "kl"         # "kl" | "switch" | "sequence" (DeepSeek-V3's, per sequence) | "none"
    balance_coef: float = 0.01       # weight of the balance loss in aux_loss
    z_loss_coef: float = 0.0         # weight of the router z-loss in aux_loss
    bias_update_rate: float = 0.0    # auxiliary-loss-free balancing step (0 = off)

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.balance_loss not in BALANCE_LOSSES:
            raise ValueError(f"balance_loss must be one of {BALANCE_LOSSES}, got {self.balance_loss!r}")
        for name in ("dim", "hidden_dim", "num_experts", "top_k", "num_groups", "top_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_shared_experts", "num_tasks", "capacity_factor", "balance_coef",
                     "z_loss_coef", "bias_update_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")
        if self.num_experts % self.num_groups:
            raise ValueError(f"num_experts ({self.num_experts}) must divide into num_groups ({self.num_groups})")
        if self.top_groups > self.num_groups:
            raise ValueError(f"top_groups ({self.top_groups}) exceeds num_groups ({self.num_groups})")
        if self.top_k > self.top_groups * self.experts_per_group:
            raise ValueError(
                f"top_k ({self.top_k}) exceeds the experts reachable in top_groups "
                f"({self.top_groups} x {self.experts_per_group})")

    @property
    def experts_per_group(self) -> int:
        return self.num_experts // self.num_groups

    @property
    def dropless(self) -> bool:
        return self.capacity_factor == 0

    def to_dict(self) -> dict:
        return asdict(self)
