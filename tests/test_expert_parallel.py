"""Expert parallelism over 2 CPU processes (gloo on 127.0.0.1) against one process on the same batch.

The checks run in spawned worker processes, set up the way torchrun sets up its workers; a
worker's exception, or workers still running after TIMEOUT_S, fails the test.

Shape legend: R ranks, B sequences per rank, T tokens per sequence, D model width.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.testing import assert_close

from core import checkpoint
from core.distributed import (
    ExpertParallelMoE, Runtime, average_gradients, broadcast_replicated_state, clip_grad_norm_,
    distributed, full_state_dict, save_full_checkpoint,
)
from core.distributed import demo
from core.moe import MoEConfig, MoELayer

WORLD_SIZE = 2
TIMEOUT_S = 60
TOL = dict(rtol=1e-5, atol=1e-5)
DEMO_ARGV = ["--steps", "3", "--layers", "1", "--experts", "4"]
TINY = dict(dim=16, hidden_dim=24, num_experts=4, top_k=2, capacity_factor=0, balance_loss="none",
            bias_update_rate=0.1)

# (name, config, skew): skew sends every token to rank 0's experts, so rank 1 receives no rows.
CASES = [
    ("plain", MoEConfig(**TINY), False),
    ("shared-tasks-sigmoid-groups",
     MoEConfig(**TINY, num_shared_experts=1, num_tasks=3, gate="sigmoid", num_groups=2, top_groups=1), False),
    ("gelu-bias", MoEConfig(**TINY, activation="gelu", expert_bias=True), False),
    ("one-rank-idle", MoEConfig(**TINY, num_shared_experts=1), True),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, *args) -> None:
    """Run worker(rank, port, *args) in WORLD_SIZE processes; fail on error or after TIMEOUT_S."""
    context = mp.start_processes(worker, args=(_free_port(), *args), nprocs=WORLD_SIZE,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):  # raises, and stops the others, when a worker fails
            if time.monotonic() > deadline:
                pytest.fail(f"workers still running after {TIMEOUT_S}s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _torchrun_env(rank: int, port: int) -> None:
    """What torchrun gives each worker, on the loopback interface only."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)


def _check_case(rt: Runtime, cfg: MoEConfig, skew: bool) -> None:
    """Output, input / router / expert gradients, gradient norm, bias step and gathered state."""
    R, B, T, D, L = rt.world_size, 3, 5, cfg.dim, cfg.num_experts // rt.world_size
    torch.manual_seed(0)  # every rank draws the same layer and the same total batch
    ref = MoELayer(cfg)
    if skew:
        ref.router.expert_bias_E[:L] = 100.0
    ep = ExpertParallelMoE.from_layer(ref)
    x_RBTD = torch.randn(R * B, T, D)
    probe_RBTD = torch.randn(R * B, T, D)
    task_RB = torch.randint(cfg.num_tasks, (R * B,)) if cfg.num_tasks else None
    rows = slice(rt.rank * B, (rt.rank + 1) * B)

    x_ref = x_RBTD.clone().requires_grad_()
    y_ref, _ = ref(x_ref, task_RB)
    (y_ref * probe_RBTD).sum(-1).mean().backward()

    x_ep = x_RBTD[rows].clone().requires_grad_()
    y_ep, _ = ep(x_ep, None if task_RB is None else task_RB[rows])
    (y_ep * probe_RBTD[rows]).sum(-1).mean().backward()
    average_gradients(ep)

    assert_close(y_ep, y_ref[rows], **TOL)
    # Each rank's loss is a mean over 1/R of the tokens: its input gradients are R times larger.
    assert_close(x_ep.grad, x_ref.grad[rows] * R, **TOL)
    expert_names = {f"experts.{name}" for name, _ in ep.experts.named_parameters()}
    for name, p_ep in ep.named_parameters():
        grad_ref = ref.get_parameter(name).grad
        if name in expert_names:
            grad_ref = grad_ref[ep.experts.expert_slice]
        assert_close(p_ep.grad, grad_ref, **TOL, msg=lambda m: f"{name}: {m}")
    ref_norm = torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()])
    assert_close(clip_grad_norm_(ep, max_norm=1e9), ref_norm, **TOL)

    ep.update_bias()
    ref.update_bias()
    assert_close(full_state_dict(ep), ref.state_dict(), rtol=0, atol=0)


def _check_broadcast(rt: Runtime) -> None:
    """A fresh layer per rank: the broadcast makes the replicated weights equal, keeps the shards."""
    torch.manual_seed(rt.rank)
    ep = ExpertParallelMoE(MoEConfig(**TINY))
    shard_before = ep.experts.w_in_EFD.detach().clone()
    broadcast_replicated_state(ep)
    router_R = [torch.empty_like(ep.router.weight_ED) for _ in range(rt.world_size)]
    dist.all_gather(router_R, ep.router.weight_ED.detach())
    for router in router_R[1:]:
        assert_close(router, router_R[0], rtol=0, atol=0)
    assert_close(ep.experts.w_in_EFD.detach(), shard_before, rtol=0, atol=0)


def _check_demo(rt: Runtime, single_process_loss: float) -> None:
    """Dropless EP + DP training follows the single-process run step for step."""
    loss = demo.train(demo.parse_args(DEMO_ARGV), rt)
    assert loss == pytest.approx(single_process_loss, rel=1e-4)


def _check_save(rt: Runtime, folder: str) -> None:
    """Only rank 0 writes; every rank then reads the full single-process layer back."""
    writes = []
    real_save = checkpoint.save_checkpoint

    def counting_save(*args, **kwargs):
        writes.append(1)
        return real_save(*args, **kwargs)

    checkpoint.save_checkpoint = counting_save
    try:
        cfg = MoEConfig(**TINY, num_shared_experts=1)
        torch.manual_seed(0)
        ref = MoELayer(cfg)
        path = save_full_checkpoint(ExpertParallelMoE.from_layer(ref), f"{folder}/ep", kind="moe_layer",
                                    config=cfg, metadata={"step": 3})
    finally:
        checkpoint.save_checkpoint = real_save
    writes_R = [torch.zeros((), dtype=torch.long) for _ in range(rt.world_size)]
    dist.all_gather(writes_R, torch.tensor(len(writes)))
    assert [int(w) for w in writes_R] == [1] + [0] * (rt.world_size - 1)
    loaded, info = checkpoint.load_checkpoint(path)
    assert type(loaded) is MoELayer and info.metadata == {"step": 3}
    assert_close(loaded.state_dict(), ref.state_dict(), rtol=0, atol=0)


def _worker(rank: int, port: int, single_process_demo_loss: float, folder: str) -> None:
    _torchrun_env(rank, port)
    with distributed(timeout=timedelta(seconds=TIMEOUT_S)) as rt:
        for name, cfg, skew in CASES:
            try:
                _check_case(rt, cfg, skew)
            except AssertionError as e:
                raise AssertionError(f"case {name!r}, rank {rt.rank}: {e}") from e
        _check_broadcast(rt)
        _check_demo(rt, single_process_demo_loss)
        _check_save(rt, folder)
    # Every check passed and the group is gone. Skip the interpreter's teardown: now and then a
    # gloo thread still being destroyed there aborts the process (std::terminate), which would
    # fail a run whose every check passed.
    sys.stdout.flush()
    os._exit(0)


def test_two_ranks_match_one_process(tmp_path):
    """On 2 ranks: every CASE against one process on both ranks' tokens, the state broadcast,
    the demo's training loss against the same run in one process, and a checkpoint written by
    rank 0 alone (one spawn: a rank's start-up costs more than all its checks)."""
    _spawn(_worker, demo.main(DEMO_ARGV), str(tmp_path))


def _failing_worker(rank: int, port: int) -> None:
    """Rank 1 raises inside `distributed()` while rank 0 waits for it in a collective."""
    _torchrun_env(rank, port)
    with distributed(timeout=timedelta(seconds=TIMEOUT_S)):
        if rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        dist.all_reduce(torch.ones(1))  # never completes: rank 1 is gone


def test_a_failing_rank_exits_at_once():
    """The failing rank must leave without waiting for its peers (torchrun then stops them);
    a barrier on the way out would block it, and so the whole job, until the group's timeout."""
    context = mp.start_processes(_failing_worker, args=(_free_port(),), nprocs=WORLD_SIZE,
                                 join=False, start_method="spawn")
    failing = context.processes[1]
    try:
        failing.join(timeout=TIMEOUT_S / 3)
        assert failing.exitcode is not None, f"the failing rank still runs after {TIMEOUT_S / 3:.0f}s"
        assert failing.exitcode != 0
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
