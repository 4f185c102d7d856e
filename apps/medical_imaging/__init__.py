"""CT nodule diagnosis: DICOM folders (and radiology reports) in, lung nodules found and rated out."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apps.cli import CommandTable


def register(cli: CommandTable) -> None:
    """Add the `medical` commands (see apps.cli)."""
