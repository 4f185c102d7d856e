"""Shape world data (core/data) and progressive training (core/training): every stage runs and logs,
runs repeat exactly, a crashed stage resumes where it stopped, and alignment makes retrieval work."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from apps import cli
from core import registry
from core.checkpoint import load_checkpoint
from core.data import ANSWERS, COLOURS, POSITIONS, SHAPES, SIZES, ShapeWorld, ShapeWorldConfig, WordTokenizer
from core.model import MultimodalCore
from core.training import STAGES, TrainConfig, Trainer, lr_at, mask_patches, mask_tokens, shape_world_core
from core.training import loop

WORLD = ShapeWorld(ShapeWorldConfig(image_size=32))
TOKENIZER = WordTokenizer.shape_world()


def tiny_config(tmp_path, steps: int = 1, **overrides) -> TrainConfig:
    """Width 32, batches of 8, fp32 (faster than bf16 on most CPUs), every step logged."""
    cfg = TrainConfig(model=shape_world_core(dim=32), out_dir=str(tmp_path), pretrain_steps=steps,
                      align_steps=steps, finetune_steps=steps, batch_size=8, bf16=False, log_every=1,
                      progress=False, warmup_steps=1, eval_questions=32)
    return replace(cfg, **overrides)


def logged_losses(out_dir, stage: str) -> list[float]:
    return [r["losses"]["loss"] for r in loop.MetricsLog(out_dir / "metrics.jsonl").records(stage)]


# Data.

def test_shape_world_is_seeded():
    a, b, c = WORLD.captions(4, seed=(0, 1)), WORLD.captions(4, seed=(0, 1)), WORLD.captions(4, seed=(0, 2))
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (4, 3, 32, 32) and 0 <= a.images.min() and a.images.max() <= 1


def test_captions_and_questions_use_only_the_vocabulary():
    pairs, vqa = WORLD.captions(64, seed=0, distinct=True), WORLD.vqa(64, seed=0)
    assert len(set(pairs.captions)) == 64
    for texts in (pairs.captions, vqa.questions):
        assert TOKENIZER.unk_id not in TOKENIZER(texts).input_ids
    assert TOKENIZER.decode(TOKENIZER(pairs.captions[:1]).input_ids[0].tolist()) == pairs.captions[0]
    groups = {"colour": COLOURS, "shape is": SHAPES, "where": POSITIONS, "size": SIZES}
    for text, answer in zip(vqa.questions, vqa.answers.tolist()):
        assert ANSWERS[answer] in next(words for key, words in groups.items() if key in text)


def test_masking():
    torch.manual_seed(0)
    text = TOKENIZER(WORLD.captions(16, seed=0).captions)
    masked_ids, chosen = mask_tokens(text, TOKENIZER, prob=0.15)
    assert chosen.any(dim=1).all()                                   # at least one token per row
    special = (text.input_ids == TOKENIZER.cls_id) | (text.input_ids == TOKENIZER.sep_id)
    assert not (chosen & (special | ~text.attention_mask.bool())).any()
    assert (masked_ids[chosen] == TOKENIZER.mask_id).all()
    assert torch.equal(masked_ids[~chosen], text.input_ids[~chosen])

    images = torch.rand(2, 3, 32, 32) + 0.1
    blanked, masked = mask_patches(images, patch=8, ratio=0.5)
    assert masked.shape == (2, 1, 32, 32) and (masked.float().mean(dim=(1, 2, 3)) == 0.5).all()
    masked = masked.expand_as(images)
    assert (blanked[masked] == 0).all() and torch.equal(blanked[~masked], images[~masked])


# Training.

def test_lr_schedule(tmp_path):
    cfg = tiny_config(tmp_path, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(5, 100, cfg) == pytest.approx(5e-4) and lr_at(10, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(100, 100, cfg) == pytest.approx(1e-4)


def test_one_step_of_every_stage(tmp_path):
    summary = Trainer(tiny_config(tmp_path, bf16=True)).run(STAGES)  # the default autocast path

    records = loop.MetricsLog(tmp_path / "metrics.jsonl").records()
    assert [(r["stage"], r["step"]) for r in records] == [(s, 1) for s in STAGES]
    terms = {"pretrain": {"mlm", "pixels"}, "align": {"contrastive", "captioning", "matching"},
             "finetune": {"answer"}}
    for record in records:
        stage = record["stage"]
        assert set(record["losses"]) == {"loss", "aux", *terms[stage]}
        assert all(math.isfinite(v) for v in record["losses"].values())
        assert record["lr"] > 0 and 0 < record["balance"] <= 1
        (task, load), = record["expert_load"].items()
        assert task == getattr(TrainConfig, f"{stage}_task")
        assert len(load) == 3 and all(sum(experts) > 0 for experts in load.values())  # 2 text, 1 vision
        assert (tmp_path / stage / "losses.png").stat().st_size > 0
        assert (tmp_path / stage / "expert_load.png").stat().st_size > 0
    assert [summary[s]["init"] for s in STAGES] == ["current weights", "pretrain step 1", "align step 1"]
    assert 0 <= summary["finetune"]["vqa_accuracy"] <= 1
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

    model, info = load_checkpoint(tmp_path / "finetune" / "checkpoint")
    assert isinstance(model, MultimodalCore) and info.kind == loop.KIND and info.metadata["step"] == 1
    assert {"mlm", "pixels", "caption", "match", "answer"} <= set(model.heads)


def crash_at_step_3_then_resume(cfg: TrainConfig, out_dir, monkeypatch) -> dict:
    """Pretrain `cfg` into out_dir, killed at step 3, then resumed as a new process would: its summary."""
    make_batch = loop.make_batch

    def crash_at_step_3(stage, world, tokenizer, n, seed):
        if seed[2] == 3:
            raise KeyboardInterrupt
        return make_batch(stage, world, tokenizer, n, seed)

    crashed = replace(cfg, out_dir=str(out_dir))
    monkeypatch.setattr(loop, "make_batch", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed).run(("pretrain",))
    monkeypatch.setattr(loop, "make_batch", make_batch)
    return Trainer(crashed).run(("pretrain",), resume=True)


def test_same_seed_same_losses_and_resume_after_a_crash(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "whole", steps=4, ckpt_every=2)
    Trainer(cfg).run(("pretrain",))
    whole = logged_losses(tmp_path / "whole", "pretrain")
    summary = crash_at_step_3_then_resume(cfg, tmp_path / "crashed", monkeypatch)

    assert summary["pretrain"]["init"] == "pretrain step 2"
    assert logged_losses(tmp_path / "crashed", "pretrain") == whole      # bit for bit, steps 1-4
    other_seed = replace(cfg, out_dir=str(tmp_path / "other"), seed=1, pretrain_steps=1)
    Trainer(other_seed).run(("pretrain",))
    assert logged_losses(tmp_path / "other", "pretrain")[0] != whole[0]


def test_alignment_makes_retrieval_work(tmp_path):
    """60 align steps from scratch: recall@1 over 32 held-out pairs (chance 1/32) reaches 3x chance."""
    cfg = tiny_config(tmp_path, steps=60, batch_size=32, lr=2e-3, warmup_steps=5, log_every=10)
    trainer = Trainer(cfg)
    before = trainer.evaluate("align")
    after = trainer.run(("align",))["align"]

    chance = 1 / cfg.eval_pairs
    assert before["image_to_text_r1"] < 3 * chance
    assert after["image_to_text_r1"] >= 3 * chance and after["text_to_image_r1"] >= 3 * chance
    losses = logged_losses(tmp_path, "align")
    assert losses[-1] < losses[0]
    # The registry's task evaluation (used by `moe-suite compress`) sees the same trained model.
    metrics = registry.task_metrics(loop.KIND, trainer.model, cfg)
    assert metrics["image_to_text_r1"] == pytest.approx(after["image_to_text_r1"])
    assert 0 <= metrics["vqa_accuracy"] <= 1


# Config and command line.

def test_config_overlays_partial_dicts():
    cfg = TrainConfig.from_dict({"model": {"fusion": {"strategy": "concat"}}, "align_steps": 5})
    assert cfg.model.fusion.strategy == "concat" and cfg.align_steps == 5
    assert replace(cfg.model, fusion=TrainConfig().model.fusion) == TrainConfig().model
    minilm = TrainConfig.from_dict({"tokenizer": "minilm", "model": {"fusion": {"strategy": "concat"}}})
    assert minilm.model.text_init == "minilm" and minilm.model.dim == 384
    assert minilm.model.fusion.strategy == "concat"
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"steps": 5})
    with pytest.raises(ValueError, match="unknown task"):
        TrainConfig(align_task="juggling")


def test_cli_train_json(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("batch_size: 4\nbf16: false\nprogress: false\neval_pairs: 8\n"
                      "model: {dim: 32, text: {dim: 32}, vision: {out_dim: 32}, fusion: {dim: 32}}\n")
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--steps", "2", "--config", str(config), "--json"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(result) == list(STAGES) and result["align"]["steps"] == 2
    assert all(math.isfinite(result[stage]["loss"]) for stage in STAGES)
    assert (out / "finetune" / "checkpoint" / "model.safetensors").is_file()

    assert cli.main([*args, "--resume"]) == 0  # every stage is done: nothing trains, nothing is lost
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [again[stage]["init"] for stage in STAGES] == [f"{stage} step 2" for stage in STAGES]
    assert all(again[stage]["loss"] == result[stage]["loss"] for stage in STAGES)
    assert len(loop.MetricsLog(out / "metrics.jsonl").records()) == 3

    config.write_text("batch_size: 1\n")
    assert cli.main(["train", "--out", str(out), "--config", str(config)]) == 2
    assert "batch_size" in capsys.readouterr().err
