"""`moe-suite chat index` and `chat eval-retrieval`: build a knowledge index, measure its retrieval.

Registered from apps.cli's COMMAND_MODULES; light to import (the handlers import torch and FAISS).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apps.cli import CommandTable


def _index(args: argparse.Namespace) -> None:
    from data_connectors.knowledge import load_knowledge

    from .retrieval import IndexConfig, KnowledgeIndex

    start = time.perf_counter()
    docs = load_knowledge(args.kb)  # a bad file fails here, before the index folder is touched
    manifest = KnowledgeIndex.build(docs, args.out, IndexConfig(hybrid=args.hybrid)).manifest
    summary = {"out": str(args.out), "documents": manifest["documents"], "chunks": manifest["count"],
               "dims": manifest["dims"], "index": manifest["index"], "hybrid": args.hybrid,
               "model": manifest["model"], "seconds": round(time.perf_counter() - start, 2)}
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(f"{name:<11}{value}" for name, value in summary.items()))


def _eval_retrieval(args: argparse.Namespace) -> None:
    from data_connectors.knowledge import load_queries

    from .retrieval import KnowledgeIndex, evaluate

    metrics = evaluate(KnowledgeIndex.load(args.index), load_queries(args.queries))
    if args.json:
        print(json.dumps(metrics))
    else:
        print("\n".join(f"{name:<12}{value:.4g}" for name, value in metrics.items()))


def register(cli: CommandTable) -> None:
    """Add `chat index` and `chat eval-retrieval` to the `moe-suite` command table (see apps.cli)."""
    chat = cli.group("chat", "customer-service assistant")
    p = chat.command("index", "build a knowledge index (FAISS + chunk metadata) from a knowledge base; "
                              "an existing index at --out is replaced only once the new one is complete",
                     _index)
    p.add_argument("--kb", required=True, help="knowledge file or folder (.md .txt .csv .jsonl)")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--hybrid", action=argparse.BooleanOptionalAction, default=True,
                   help="also rank with BM25 and fuse the rankings (default: on)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = chat.command("eval-retrieval", "recall@1, recall@5 and MRR@10 of an index on labelled queries",
                     _eval_retrieval)
    p.add_argument("--index", required=True, help="index folder written by `chat index`")
    p.add_argument("--queries", required=True, help="CSV with columns query,id (the expected document)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
