"""Settings shared by the apps, read from the environment."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where the apps keep what they build on first use (default models, indexes, chat sessions):
    $MOE_SUITE_CACHE, default ~/.cache/moe-suite."""
    return Path(os.environ.get("MOE_SUITE_CACHE", "~/.cache/moe-suite")).expanduser()
