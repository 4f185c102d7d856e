"""Configuration of the text stream: a MiniLM-shaped encoder whose FFN blocks are MoE layers."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from core.moe import MoEConfig
from core.tasks import NUM_TASKS

UPCYCLE_MODES = ("copy", "fine_grained")


@dataclass
class TextStreamConfig:
    """Encoder shape, MoE settings and upcycling mode.

    "fine_grained" cuts each FFN into `granularity` slices: the shared experts take one each and the
    other G slices are routed, so num_experts and top_k must be multiples of G (top-k then picks whole
    copies of the FFN, which keeps the upcycled model equal to the dense one at init).
    """

    # Encoder: defaults are all-MiniLM-L6-v2's (BERT, post-LN).
    vocab_size: int = 30522          # WordPiece vocabulary
    dim: int = 384                   # model width D
    num_layers: int = 6
    num_heads: int = 12
    ffn_dim: int = 1536              # hidden width of the dense FFN that experts are cut from
    max_positions: int = 512         # learned absolute positions
    type_vocab_size: int = 2         # token-type (segment) rows; the stream uses type 0
    norm_eps: float = 1e-12
    dropout: float = 0.1             # hidden and attention-probability dropout
    # Mixture of experts in the FFN blocks.
    moe_layers: tuple[int, ...] | None = None  # layers with MoE FFNs (None = all, () = dense)
    num_experts: int = 8             # routed experts E per MoE layer
    top_k: int = 2                   # routed experts per token K
    num_shared_experts: int = 0      # always-on experts ("fine_grained" only: each takes one FFN slice)
    capacity_factor: float = 0.0     # 0 = dropless; dropping tokens would break the upcycled init
    gate: str = "softmax_topk"       # core.moe gate; chosen weights are always renormalised to sum to 1
    balance_loss: str = "kl"         # "kl" | "switch" | "sequence" | "none" (core.moe.MoEConfig)
    balance_coef: float = 0.01
    num_tasks: int = NUM_TASKS       # task-aware gating over core.tasks.TASKS (0 = off)
    init_std: float = 0.02           # from-scratch weights ~ N(0, std) (BERT's initializer_range)
    router_init_std: float = 0.02    # fresh router weights ~ N(0, std): near-uniform routing at init
    # Sparse upcycling: how each dense FFN becomes experts (see core/text/upcycle.py).
    upcycle: str = "copy"            # "copy": every expert is the whole FFN; "fine_grained": FFN slices
    granularity: int = 4             # "fine_grained": slices per FFN, each expert (routed or shared) is one

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must divide into num_heads ({self.num_heads})")
        if self.upcycle not in UPCYCLE_MODES:
            raise ValueError(f"upcycle must be one of {UPCYCLE_MODES}, got {self.upcycle!r}")
        if any(not 0 <= i < self.num_layers for i in self.moe_layer_ids):
            raise ValueError(f"moe_layers {self.moe_layers} must lie in [0, {self.num_layers})")
        if self.upcycle == "copy" and self.num_shared_experts:
            raise ValueError("copy upcycling has no shared experts: a shared copy would double the FFN")
        if self.upcycle == "fine_grained":
            if self.ffn_dim % self.granularity:
                raise ValueError(f"ffn_dim ({self.ffn_dim}) must split into {self.granularity} slices")
            if self.routed_slices < 1:
                raise ValueError(f"num_shared_experts ({self.num_shared_experts}) leaves no slice "
                                 f"of the {self.granularity} for routed experts")
        if self.num_experts % self.routed_slices or self.top_k % self.routed_slices:
            raise ValueError(f"num_experts ({self.num_experts}) and top_k ({self.top_k}) must be "
                             f"multiples of the {self.routed_slices} routed slices per FFN")
        self.moe_config()  # MoEConfig's own checks, at construction rather than at first use

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def moe_layer_ids(self) -> tuple[int, ...]:
        return tuple(range(self.num_layers)) if self.moe_layers is None else tuple(self.moe_layers)

    @property
    def slices(self) -> int:
        """Slices each FFN is cut into: 1 when experts are whole copies."""
        return self.granularity if self.upcycle == "fine_grained" else 1

    @property
    def routed_slices(self) -> int:
        """Slices left to the routed experts once the shared experts have taken theirs."""
        return self.slices - self.num_shared_experts

    def moe_config(self) -> MoEConfig:
        """The MoEConfig of every MoE layer: GELU experts with biases, one FFN slice wide."""
        return MoEConfig(
            dim=self.dim, hidden_dim=self.ffn_dim // self.slices, num_experts=self.num_experts,
            top_k=self.top_k, num_shared_experts=self.num_shared_experts, activation="gelu",
            expert_bias=True, capacity_factor=self.capacity_factor, gate=self.gate, renormalize=True,
            num_tasks=self.num_tasks, balance_loss=self.balance_loss, balance_coef=self.balance_coef)

    def to_dict(self) -> dict:
        return asdict(self)
