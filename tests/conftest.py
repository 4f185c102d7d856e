"""Test-wide settings: tiny tensors run faster on one thread than on two, and never fetch anything."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

from apps.settings import shared_datasets_dir  # noqa: E402


@pytest.fixture
def shared_dataset():
    """`shared_dataset("lidc-nodule-crops")` -> its folder, or the test skips saying what is missing."""
    def find(name: str):
        folder = shared_datasets_dir() / name
        if not folder.is_dir():
            pytest.skip(f"needs the shared dataset {name!r} at {folder} (absent on this machine)")
        return folder
    return find
