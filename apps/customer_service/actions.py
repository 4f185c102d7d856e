"""Actions the assistant runs once an intent's slots are filled and the user has confirmed.

An action is a callable `fn(slots: dict[str, str]) -> str` returning the message shown to the user.
The default bank ships SAFE MOCKS only: they change nothing anywhere and just confirm with a
deterministic reference number. A team connects its real systems by registering its own callables
under the same names (the names `dialogue.yaml` uses):

    registry = default_actions()
    registry.register("block_card", lambda slots: core_banking.block(slots["card"]))

    @registry.action("order_statement")
    def order_statement(slots): ...
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

Action = Callable[[dict[str, str]], str]


class ActionRegistry:
    """Named actions; `run(name, slots)` calls the one registered under `name`."""

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}

    def register(self, name: str, fn: Action) -> Action:
        """Add (or replace) the action `name`; returns `fn`."""
        self._actions[name] = fn
        return fn

    def action(self, name: str) -> Callable[[Action], Action]:
        """Decorator form of `register`: `@registry.action("block_card")`."""
        return lambda fn: self.register(name, fn)

    def __contains__(self, name: str) -> bool:
        return name in self._actions

    def names(self) -> list[str]:
        return sorted(self._actions)

    def run(self, name: str, slots: dict[str, str]) -> str:
        """The message of action `name` called with `slots`; KeyError if `name` is not registered."""
        if name not in self._actions:
            raise KeyError(f"no action registered as {name!r} (known: {', '.join(self.names()) or 'none'})")
        return self._actions[name](dict(slots))


def reference(name: str, slots: dict[str, str]) -> str:
    """A deterministic reference number for action `name` on `slots`, e.g. "BLO-3F2A9C"."""
    digest = hashlib.sha256(json.dumps([name, slots], sort_keys=True).encode()).hexdigest()[:6].upper()
    return f"{name[:3].upper()}-{digest}"


def _mock(name: str, template: str) -> Action:
    """A mock action: formats `template` with the slots and a reference number; changes nothing."""
    return lambda slots: template.format(**slots, ref=reference(name, slots)) + " (demo: no real change was made)"


MOCK_ACTIONS: dict[str, str] = {  # action name -> confirmation template of its mock
    "block_card": "Your {card} card is now blocked. Reference {ref}.",
    "report_lost_card": "We have recorded your {card} card as lost and blocked it; a replacement is on "
                        "its way. Reference {ref}.",
    "transfer_money": "Your transfer of {amount} pounds from your {account} account is scheduled. "
                      "Reference {ref}.",
    "order_statement": "A statement for your {account} account is on its way to your inbox. Reference {ref}.",
    "update_address": "Your address is now {address}. Reference {ref}.",
}


def default_actions() -> ActionRegistry:
    """A registry with the default bank's mock actions (see `MOCK_ACTIONS`)."""
    registry = ActionRegistry()
    for name, template in MOCK_ACTIONS.items():
        registry.register(name, _mock(name, template))
    return registry
