"""Shared test set-up: offline hubs, and the path of the real data kept beside the project."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

# Hub look-ups must fail at once instead of retrying for a minute: tests never download anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Where the real test data lives: ``$HIRVIZ_SHARED_DATA`` or ``../shared/data`` beside the repo."""
    return Path(os.environ.get("HIRVIZ_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data directory; tests that use it are skipped where it is absent (a user's clone)."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set HIRVIZ_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a currently free TCP port on 127.0.0.1 (servers and torchrun rendezvous in tests)."""

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick
