"""Known answers for progressive training (core/training/loop.py): the LR schedule's values, what one
optimizer step does (clipping, LR, parameter groups, one aux-free bias update after it), fresh
optimizer state per stage, evaluation in eval mode, and a resume that logs and ends like an
uninterrupted run."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.training import TrainConfig, Trainer, lr_at, shape_world_core
from core.training import loop, stages
from test_training import crash_at_step_3_then_resume


def tiny_config(tmp_path, steps: int = 2, **overrides) -> TrainConfig:
    cfg = TrainConfig(model=shape_world_core(dim=32), out_dir=str(tmp_path), pretrain_steps=steps,
                      align_steps=steps, finetune_steps=steps, batch_size=4, bf16=False, log_every=1,
                      progress=False, warmup_steps=1, eval_pairs=8, eval_questions=8)
    return replace(cfg, **overrides)


def test_lr_schedule_known_values():
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_at(s, 12, cfg) for s in (1, 2, 4)] == pytest.approx([2.5e-4, 5e-4, 1e-3])
    assert lr_at(8, 12, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way down the cosine
    assert lr_at(12, 12, cfg) == pytest.approx(1e-4)
    after_warmup = [lr_at(s, 12, cfg) for s in range(4, 13)]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:]))
    assert lr_at(1, 12, replace(cfg, warmup_steps=0)) == pytest.approx(
        1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 12))))


def test_each_step_clips_sets_the_lr_and_updates_biases_once_after_it(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, grad_clip=1e-3)  # far below the raw norm: every step clips
    events, optimizers = [], []

    def make_optimizer(model, cfg):
        optimizer = real_make_optimizer(model, cfg)
        optimizers.append((optimizer, model))

        def before_step(opt, args, kwargs):
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            events.append(("step", len(optimizers), len(opt.state),
                           torch.nn.utils.get_total_norm(grads).item(), opt.param_groups[0]["lr"]))
        optimizer.register_step_pre_hook(before_step)
        return optimizer

    real_make_optimizer = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", make_optimizer)
    monkeypatch.setattr(loop, "update_expert_biases", lambda model: events.append(("bias",)))
    modes = []
    real_retrieval = stages.Objectives.retrieval

    def retrieval(self, world, device):
        modes.append(self.core.training)
        return real_retrieval(self, world, device)

    monkeypatch.setattr(stages.Objectives, "retrieval", retrieval)
    trainer = Trainer(cfg)
    answer_before = {k: v.clone() for k, v in trainer.model.heads["answer"].state_dict().items()}
    trainer.run(("pretrain", "align"))

    # One optimizer step then one bias update, per training step.
    assert [e[0] for e in events] == ["step", "bias"] * 4
    steps = [e for e in events if e[0] == "step"]
    # Each stage starts a fresh optimizer: no Adam state at its first step.
    assert [(e[1], e[2] == 0) for e in steps] == [(1, True), (1, False), (2, True), (2, False)]
    for _, _, _, norm, _ in steps:
        assert norm == pytest.approx(cfg.grad_clip, rel=1e-3)
    assert [e[4] for e in steps] == pytest.approx([lr_at(s, 2, cfg) for s in (1, 2)] * 2)
    records = loop.MetricsLog(tmp_path / "metrics.jsonl").records()
    assert [r["lr"] for r in records] == pytest.approx([e[4] for e in steps])

    for optimizer, model in optimizers:  # the groups hold every trainable parameter once
        decay, other = optimizer.param_groups
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert {id(p) for p in decay["params"] + other["params"]} == trainable
        assert len(decay["params"]) + len(other["params"]) == len(trainable)
        assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == cfg.weight_decay
        assert all(p.ndim < 2 for p in other["params"]) and other["weight_decay"] == 0
    # A head no stage loss reached (the answer head, before finetune) is neither stepped nor decayed.
    pretrain_optimizer, pretrain_model = optimizers[0]
    assert all(pretrain_optimizer.state.get(p) is None for p in pretrain_model.heads["answer"].parameters())
    for name, t in trainer.model.heads["answer"].state_dict().items():
        assert torch.equal(t, answer_before[name]), name
    # Evaluation ran in eval mode, and training mode came back.
    assert modes == [False, False] and trainer.model.training


def test_resume_between_records_logs_and_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    """Checkpoints every 2 steps, records every 3: a run that crashed at step 3 and resumed from
    step 2 logs the same records and ends with the same weights, bit for bit."""
    cfg = tiny_config(tmp_path / "whole", steps=4, ckpt_every=2, log_every=3)
    Trainer(cfg).run(("pretrain",))
    crash_at_step_3_then_resume(cfg, tmp_path / "crashed", monkeypatch)

    def log(run: str) -> list[tuple]:
        records = loop.MetricsLog(tmp_path / run / "metrics.jsonl").records("pretrain")
        return [(r["step"], r["lr"], r["losses"]) for r in records]

    assert [step for step, _, _ in log("whole")] == [2, 3, 4]  # checkpoint steps are logged too
    assert log("crashed") == log("whole")
    whole, _ = load_checkpoint(tmp_path / "whole" / "pretrain" / "checkpoint")
    resumed, _ = load_checkpoint(tmp_path / "crashed" / "pretrain" / "checkpoint")
    torch.testing.assert_close(resumed.state_dict(), whole.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("min_lr_ratio", 1.5), ("warmup_steps", -1),
                                          ("grad_clip", -1.0), ("weight_decay", -0.1)])
def test_bad_schedule_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
