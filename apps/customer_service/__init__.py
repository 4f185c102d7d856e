"""Customer-service assistant: intents with out-of-scope detection (`intents`), knowledge retrieval
(`retrieval`), multi-turn dialogue (`dialogue`, `store`, `actions`), joined in `assistant` and served
by `api` (HTTP), `page` (Gradio) and `lc` (LangChain).

Light to import: this module only registers the `moe-suite chat` commands, `moe-suite bench upcycle`
and `moe-suite bench chat`; their handlers (`cli`) import torch and FAISS when they run.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from apps.cli import positive_int

if TYPE_CHECKING:
    from apps.cli import CommandTable


def register(cli: CommandTable) -> None:
    """Add the `chat` commands (train-intents, eval-intents, index, eval-retrieval, ask, prune-sessions) and
    `bench upcycle`, `bench chat` (see apps.cli)."""
    from . import cli as handlers

    chat = cli.group("chat", "customer-service assistant")
    p = chat.command("train-intents", "train an intent model (with oos detection) on a table of texts and labels "
                                      "(CSV, TSV, JSON, JSONL) or a YAML file", handlers.train_intents)
    p.add_argument("--data", required=True, type=Path,
                   help="intents file: CSV/TSV (header text,label or utterance,intent, ...; or no header), "
                        "YAML (also Rasa NLU), JSON or JSONL")
    _column_flags(p, "train")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps")
    p.add_argument("--min-steps", type=int, default=150,
                   help="train at least this many steps, adding epochs on a small set (0: epochs decide)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the stream")
    p.add_argument("--train-top-layers", type=int, default=None,
                   help="train only the top N encoder layers and the head (default: all)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="held-out slice of the training rows for epoch selection and the oos threshold")
    p.add_argument("--in-scope-recall", type=float, default=0.95,
                   help="without oos rows: share of in-scope queries the oos threshold keeps...")
    p.add_argument("--recall-confidence", type=float, default=0.9,
                   help="...with this probability, judged from the held-out rows (a binomial bound: "
                        "fewer held-out rows give a lower threshold)")
    p.add_argument("--stream", default=None, help='JSON overrides of the stream config, e.g. \'{"top_k": 1}\'')
    p.add_argument("--from-scratch", action="store_true", help="random stream instead of upcycled MiniLM")
    p.add_argument("--full", action="store_true",
                   help="store every weight (default for an upcycled model: only its changes from MiniLM)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = chat.command("eval-intents", "score an intent model on a labelled table (CSV, TSV, JSON, JSONL) or "
                                     "YAML file", handlers.eval_intents)
    p.add_argument("--model", required=True, type=Path, help="checkpoint folder from train-intents")
    p.add_argument("--data", required=True, type=Path, help="labelled intents file, as for train-intents")
    _column_flags(p, "test")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


    p = chat.command("index", "build a knowledge index (FAISS + chunk metadata) from a knowledge base; "
                              "an existing index at --out is replaced only once the new one is complete",
                     handlers.index)
    p.add_argument("--kb", required=True,
                   help="knowledge file or folder (.md .html .txt .csv .tsv .json .jsonl .pdf .docx)")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="index a folder's readable files and list the others (a scanned PDF, a damaged file) "
                        "instead of stopping at the first")
    p.add_argument("--hybrid", action=argparse.BooleanOptionalAction, default=True,
                   help="also rank with BM25 and fuse the rankings (default: on)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = chat.command("eval-retrieval", "recall@1, recall@5 and MRR@10 of an index on labelled queries",
                     handlers.eval_retrieval)
    p.add_argument("--index", required=True, help="index folder written by `chat index`")
    p.add_argument("--queries", required=True, help="CSV with columns query,id (the expected document)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = chat.command(
        "ask", "send one message to the assistant (the default bank's, or your intent model and index) "
               "and print its reply", handlers.ask)
    p.add_argument("message", help="the customer's message")
    p.add_argument("--session", default="cli", help="conversation id, kept between calls (default: %(default)s)")
    p.add_argument("--intent-model", type=Path, default=None,
                   help="intent checkpoint folder from train-intents (default: the bank's)")
    p.add_argument("--index", type=Path, default=None,
                   help="knowledge index folder from `chat index` (default: the bank's)")
    p.add_argument("--dialogue", type=Path, default=None,
                   help="dialogue YAML (default: the bank's with the bank's model; with --intent-model, a "
                        "generic dialogue built from the model's intents)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = chat.command("prune-sessions", "delete chat sessions idle longer than --idle-hours, with their turns "
                                       "(open hand-offs are kept)", handlers.prune_sessions)
    p.add_argument("--idle-hours", type=float, default=None,
                   help="idle time before a session is deleted (default: the chat_session_idle_hours setting, 24)")
    p.add_argument("--store", type=Path, default=None,
                   help="session store file (default: <cache>/chat/sessions.sqlite3, the server's)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    bench = cli.group("bench", "benchmarks")
    p = bench.command(
        "upcycle", "upcycled MiniLM stream vs the same stream from scratch, same budget, on an intent task",
        handlers.bench_upcycle)
    p.add_argument("--data", type=Path, default=None,
                   help="folder with train.csv and test.csv (default: ../shared/datasets/banking77)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps of each model")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = bench.command("chat", "the assistant's turn latency (intent, state, retrieval, reply) and its "
                      "throughput over the HTTP API", handlers.bench_chat)
    p.add_argument("--passages", type=positive_int, default=None,
                   help="knowledge-base documents: the bank KB plus synthetic ones (default 10000)")
    p.add_argument("--turns", type=positive_int, default=None, help="timed in-process turns (default 200)")
    p.add_argument("--clients", type=positive_int, default=None, help="concurrent HTTP clients (default 32)")
    p.add_argument("--seconds", type=float, default=None, help="how long the HTTP clients run (default 20)")
    p.add_argument("--index-cache", type=Path, default=None,
                   help="folder keeping the benchmark's index (default: <cache>/bench/chat-index)")
    p.add_argument("--intent-model", type=Path, default=None,
                   help="intent checkpoint folder (default: the bank's, trained into the cache on first use)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _column_flags(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--split", default=split,
                   help="in a JSON file holding one list per split (CLINC150's data_full.json: train, val, test, "
                        f"oos_train, ...): the list to read, with its oos_ list (default: {split})")
    p.add_argument("--text-column", default=None,
                   help="the text column's header name, or its 1-based number in a file without a header "
                        "(default: found from the header or the values)")
    p.add_argument("--label-column", default=None, help="the label column, as --text-column")
