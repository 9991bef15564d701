"""Shared test set-up: offline hub, a locator for the optional ../shared data folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests never reach a model hub; a pretrained tag must fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The optional shared data folder (env DDR_SHARED_DATA, else ../shared/data beside the repo)."""
    return Path(os.environ.get("DDR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; the test is skipped (with the reason) when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set DDR_SHARED_DATA to use one elsewhere)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module, restored afterwards.

    ViT-B/32 on an oversubscribed 2-core CI box is >10x slower with 2 OpenMP threads than with 1.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
