"""Handlers of the `moe-suite chat ...` commands and of `moe-suite bench upcycle` and `bench chat`
(torch loads here)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data_connectors.text_files import LabelledTexts


def _stream_config(overrides: str | None):
    """The intent stream's default config with --stream's JSON overrides, e.g. '{"num_layers": 2}'."""
    from core.text.classifier import default_stream

    if overrides is None:
        return default_stream()
    try:
        fields = json.loads(overrides)
    except json.JSONDecodeError as err:
        raise ValueError(f"--stream: not JSON ({err})") from None
    if not isinstance(fields, dict):
        raise ValueError("--stream: expected a JSON object of TextStreamConfig fields")
    if isinstance(fields.get("moe_layers"), list):
        fields["moe_layers"] = tuple(fields["moe_layers"])
    try:
        return dataclasses.replace(default_stream(), **fields)
    except TypeError as err:
        raise ValueError(f"--stream: {err}") from None


def train_intents(args: argparse.Namespace) -> None:
    from core.checkpoint import CheckpointError, check_replaceable
    from core.text.classifier import TrainConfig
    from core.text.tokenizer import vocabulary_warning

    from .intents import IntentModel, IntentTrainConfig, file_sha256, read_intent_file

    try:
        check_replaceable(args.out)   # before minutes of training, not after
    except CheckpointError as err:
        raise ValueError(f"--out {err}; choose another path (a new or empty folder, or a saved model)") from None
    data = read_intent_file(args.data, args.text_column, args.label_column, args.split)
    texts, labels = data.texts, data.labels
    if unknown := vocabulary_warning(texts):   # said before minutes of training
        print(f"warning: {unknown}", file=sys.stderr)
    cfg = IntentTrainConfig(
        train=TrainConfig(epochs=args.epochs, max_steps=args.max_steps, min_steps=args.min_steps,
                          batch_size=args.batch_size,
                          lr=args.lr, train_top_layers=args.train_top_layers, bf16=args.bf16, seed=args.seed),
        stream=_stream_config(args.stream), upcycle=not args.from_scratch,
        val_fraction=args.val_fraction, in_scope_recall=args.in_scope_recall,
        recall_confidence=args.recall_confidence)
    model, result = IntentModel.train(texts, labels, cfg)
    model.save(args.out, {"data": Path(args.data).name, "data_sha256": file_sha256(args.data),
                          "train": dataclasses.asdict(cfg.train), "upcycle": cfg.upcycle,
                          "val_accuracy": result.val_accuracy},
               delta=cfg.upcycle and not args.full)
    summary = {"out": str(args.out), "rows": len(texts), "labels": len(model.labels), **_columns(data),
               "steps": result.steps,
               "seconds": round(result.seconds, 1), "train_loss": round(result.train_loss, 4),
               "val_accuracy": result.val_accuracy, "oos_threshold": model.oos_threshold,
               "oos_calibration": model.oos_calibration, "history": result.history}
    summary["warnings"] += [unknown] if unknown else []
    if warning := model.calibration_warning:
        print(f"warning: {warning}", file=sys.stderr)
        summary["warnings"].append(warning)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained {summary['labels']} labels on {summary['rows']} rows: {result.steps} steps in "
              f"{summary['seconds']} s, validation accuracy {result.val_accuracy}, "
              f"oos threshold {model.oos_threshold}; saved to {args.out}")


def eval_intents(args: argparse.Namespace) -> None:
    from .intents import OOS, IntentModel, read_intent_file

    data = read_intent_file(args.data, args.text_column, args.label_column, args.split)
    model = IntentModel.load(args.model)
    metrics = model.evaluate(data.texts, data.labels)
    unknown = set(data.labels) - set(model.labels) - {OOS}
    unknown_rows = sum(label in unknown for label in data.labels)
    metrics.update(_columns(data), unknown_labels=sorted(unknown)[:20], unknown_label_rows=unknown_rows,
                   unknown_labels_scored_as="errors in accuracy, in_scope_accuracy and closed_set_accuracy "
                                            "(the model cannot predict a label it never saw)")
    if unknown:
        warning = (f"{len(unknown)} label(s) in {args.data} the model was never trained on ({unknown_rows} rows, "
                   f"all counted as errors): {', '.join(sorted(unknown)[:20])}; is this the right model or file?")
        print(f"warning: {warning}", file=sys.stderr)
        metrics["warnings"].append(warning)
    if OOS in data.labels and model.oos_threshold is None and OOS not in model.labels:
        warning = ("the model has no out-of-scope rule (no oos class, no calibrated threshold), so oos_recall is 0 "
                   "by construction; in the assistant the dialogue's low_confidence cut-off (0.5) decides what is "
                   "not understood")
        print(f"warning: {warning}", file=sys.stderr)
        metrics["warnings"].append(warning)
    if args.json:
        print(json.dumps(metrics))
    else:
        print("\n".join(f"{name:<20}{value}" for name, value in metrics.items()))


def _columns(data: LabelledTexts) -> dict:
    """How an intents file was read, for the commands' summaries; its warnings (a guessed header) also on
    stderr, where a person running the command sees them."""
    for warning in data.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return {"text_column": data.text_column, "label_column": data.label_column, "header": data.header,
            "delimiter": data.delimiter, "encoding": data.encoding, "warnings": list(data.warnings)}


def bench_upcycle(args: argparse.Namespace) -> None:
    from core.bench.upcycle import UpcycleBenchConfig, run

    given = {k: getattr(args, k) for k in ("data", "steps", "batch_size", "seed") if getattr(args, k) is not None}
    result = run(UpcycleBenchConfig(**given))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['steps']} steps, batch {result['batch_size']}, on {result['data']}:")
        for init in ("upcycled", "scratch"):
            print(f"  {init:<9} test accuracy {result[f'{init}_accuracy']:.4f}  "
                  f"({result[f'{init}_seconds']:.0f} s)")


def bench_chat(args: argparse.Namespace) -> None:
    from .bench import ChatBenchConfig, run

    names = ("passages", "turns", "clients", "seconds", "index_cache", "intent_model")
    result = run(ChatBenchConfig(**{k: getattr(args, k) for k in names if getattr(args, k) is not None}))
    if args.json:
        print(json.dumps(result))
        return
    built = ("from the cache" if result["index_build_seconds"] is None
             else f"built in {result['index_build_seconds']} s")
    print(f"{result['passages']} passages (index {built}); {result['machine']}")
    print(f"turn   median {result['turn_median_ms']} ms, p95 {result['turn_p95_ms']} ms over {result['turns']} "
          f"turns (intent {result['intent_median_ms']} ms, search {result['search_median_ms']} ms)")
    print(f"HTTP   {result['http_turns_per_second']} turns/s with {result['http_clients']} clients: "
          f"{result['http_turns']} turns in {result['http_seconds']} s, {result['http_errors']} errors; "
          f"p50 {result['http_p50_ms']} ms, p95 {result['http_p95_ms']} ms, p99 {result['http_p99_ms']} ms")


def index(args: argparse.Namespace) -> None:
    from core.text.tokenizer import vocabulary_warning
    from data_connectors.knowledge import collected_warnings, knowledge_files, load_knowledge

    from .retrieval import IndexConfig, KnowledgeIndex, saved_indexes

    start = time.perf_counter()
    kb, out = Path(args.kb).resolve(), Path(args.out).resolve()
    if kb.is_relative_to(out):   # writing the index there would replace the knowledge with it
        raise ValueError(f"--out {args.out} holds the knowledge folder {args.kb}; choose another path for the index")
    # an index inside the knowledge folder (this run's --out, or any other) is not knowledge
    files, skipped = knowledge_files(args.kb, exclude=[args.out, *saved_indexes(args.kb)])
    unreadable: list[tuple[Path, str]] = []
    # a bad file fails here, before the index folder is touched (unless --skip-unreadable lists it)
    with collected_warnings() as warnings:   # the readers' guesses, for the summary and stderr
        docs = load_knowledge(args.kb, files, unreadable if args.skip_unreadable else None)
    if unknown := vocabulary_warning([f"{d.title}\n{d.text}" for d in docs]):
        warnings.append(unknown)
    for warning in warnings:   # collected, they no longer reach stderr by themselves
        print(f"warning: {warning}", file=sys.stderr)
    for file, why in unreadable:
        print(f"warning: skipped {why}", file=sys.stderr)
    manifest = KnowledgeIndex.build(docs, args.out, IndexConfig(hybrid=args.hybrid),
                                    progress=_progress_printer("embedded", "chunks")).manifest
    summary = {"out": str(args.out), "files": len(files) - len(unreadable),
               "skipped_files": [str(p) for p in skipped[:20]],
               "unreadable_files": [{"file": str(f), "why": why} for f, why in unreadable[:50]],
               "documents": manifest["documents"], "chunks": manifest["count"],
               "dims": manifest["dims"], "index": manifest["index"], "hybrid": args.hybrid,
               "model": manifest["model"], "warnings": warnings[:50],
               "seconds": round(time.perf_counter() - start, 2)}
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(f"{name:<11}{value}" for name, value in summary.items()))


def _progress_printer(verb: str, unit: str, every_s: float = 10.0):
    """A progress(done, total) callback writing a line to stderr at most every `every_s` seconds."""
    start = last = time.perf_counter()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= every_s or (done == total and now - start >= every_s):  # the end of a long job
            print(f"{verb} {done}/{total} {unit}", file=sys.stderr, flush=True)
            last = now

    return report


def eval_retrieval(args: argparse.Namespace) -> None:
    from data_connectors.knowledge import load_queries

    from .retrieval import KnowledgeIndex, evaluate

    metrics = evaluate(KnowledgeIndex.load(args.index), load_queries(args.queries))
    if args.json:
        print(json.dumps(metrics))
    else:
        print("\n".join(f"{name:<12}{value:.4g}" for name, value in metrics.items()))


def ask(args: argparse.Namespace) -> None:
    from .assistant import Assistant

    assistant = Assistant.default(intent_model=args.intent_model, index=args.index,  # None: the bank's
                                  dialogue=args.dialogue)
    for warning in assistant.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    reply = assistant.reply(args.session, args.message)
    if args.json:
        print(json.dumps({**dataclasses.asdict(reply), "warnings": assistant.warnings}, ensure_ascii=False))
        return
    print(reply.text)
    sources = ", ".join(f"{s.title} [{s.id}]" for s in reply.sources)
    print(f"\n[intent {reply.intent or 'not understood'}, confidence {reply.confidence:.2f}"
          f"{', sources: ' + sources if sources else ''}{', handed to a human agent' if reply.handoff else ''}"
          f", {reply.latency_ms:.0f} ms]")


def prune_sessions(args: argparse.Namespace) -> None:
    from .store import configured_idle_hours
    from .store import PruneResult, SessionStore, StoreLimits, default_store_path

    idle_hours = args.idle_hours if args.idle_hours is not None else configured_idle_hours(strict=True)
    if not idle_hours > 0:
        raise ValueError(f"--idle-hours must be positive, got {idle_hours}")
    path = args.store or default_store_path()
    if args.store is not None and not path.is_file():
        raise ValueError(f"--store {path}: no such session store")
    if not path.is_file():  # no chat session was ever stored here: nothing to prune (and nothing created)
        result = PruneResult(0, 0)
    else:
        store = SessionStore(path, StoreLimits(idle_hours=idle_hours))
        try:
            result = store.prune()
        finally:
            store.close()
    summary = {"store": str(path), "idle_hours": idle_hours, **dataclasses.asdict(result)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"removed {result.sessions_removed} session(s) idle over {idle_hours} h; "
              f"{result.sessions_left} left in {path}")
