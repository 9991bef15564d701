"""Shared test set-up: offline hub, a locator for the optional ../shared data folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
