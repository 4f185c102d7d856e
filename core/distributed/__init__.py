"""Expert parallelism (all_to_all token exchange) with data parallelism, under torchrun.

    from core.distributed import distributed, expert_parallelize, average_gradients
    with distributed() as rt:
        model = expert_parallelize(model).to(rt.device)   # MoELayer -> ExpertParallelMoE
        ...
        loss.backward(); average_gradients(model); optimizer.step()
"""
from .expert_parallel import (
    ExpertParallelMoE,
    ShardedExperts,
    all_to_all,
    average_gradients,
    broadcast_replicated_state,
    clip_grad_norm_,
    expert_parallelize,
    full_state_dict,
    load_full_state_dict,
    save_full_checkpoint,
)
from .runtime import Runtime, distributed, init_distributed, shutdown

__all__ = [
    "ExpertParallelMoE", "ShardedExperts", "all_to_all", "average_gradients",
    "broadcast_replicated_state", "clip_grad_norm_", "expert_parallelize", "full_state_dict",
    "load_full_state_dict", "save_full_checkpoint", "Runtime", "distributed", "init_distributed", "shutdown",
]
