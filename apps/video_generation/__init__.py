"""Video studio: text-to-video with time-axis experts, captioning per shot, style experts."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apps.cli import CommandTable


def register(cli: CommandTable) -> None:
    """Add the `video` commands (see apps.cli)."""
