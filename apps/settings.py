"""Settings shared by the apps, read from the environment."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where the apps keep what they build on first use (default models, indexes, chat sessions):
    $MOE_SUITE_CACHE, default ~/.cache/moe-suite."""
    return Path(os.environ.get("MOE_SUITE_CACHE", "~/.cache/moe-suite")).expanduser()


def shared_datasets_dir() -> Path:
    """The third-party datasets beside the project (read-only, never copied into it):
    $MOE_SUITE_DATASETS, default <project>/../shared/datasets."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    return Path(os.environ.get("MOE_SUITE_DATASETS", default)).expanduser()
