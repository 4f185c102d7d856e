"""`moe-suite chat ask`: one turn with the default bank's assistant from the shell.

Sessions persist in the cache, so consecutive calls with the same `--session` continue a conversation:

    moe-suite chat ask "block my card" --session me
    moe-suite chat ask "the debit one" --session me --json
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apps.cli import CommandTable


def _ask(args: argparse.Namespace) -> None:
    from .assistant import Assistant

    reply = Assistant.default().reply(args.session, args.message)
    if args.json:
        print(json.dumps(asdict(reply), ensure_ascii=False))
        return
    print(reply.text)
    sources = ", ".join(f"{s.title} [{s.id}]" for s in reply.sources)
    print(f"\n[intent {reply.intent or 'not understood'}, confidence {reply.confidence:.2f}"
          f"{', sources: ' + sources if sources else ''}{', handed to a human agent' if reply.handoff else ''}"
          f", {reply.latency_ms:.0f} ms]")


def register(cli: CommandTable) -> None:
    """Add `chat ask` to the `moe-suite` command table (see apps.cli)."""
    p = cli.group("chat", "customer-service assistant").command(
        "ask", "send one message to the default bank's assistant and print its reply", _ask)
    p.add_argument("message", help="the customer's message")
    p.add_argument("--session", default="cli", help="conversation id, kept between calls (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
