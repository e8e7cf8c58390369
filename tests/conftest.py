"""Shared test set-up: offline hubs, the path of the real data kept beside the project, and small training inputs
(a synthetic set and a trained run) made once per session for the tests that need them."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Hub look-ups must fail at once instead of retrying for a minute: tests never download anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: one thread per process is faster than two on a 2-core machine (measured 0.12 s vs 0.74 s
# per CI-model step while other jobs shared the cores), and subprocesses (CLI runs, torchrun ranks) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_repo_module(name: str, relative: str) -> Any:
    """Import a script of the repository that is not in a package (``app.py``, a bench) as module ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# ----------------------------------------------------------------------------------------------------------------
# Shared, session-wide training inputs: generated or trained once, read by every test that needs them.

CI_CONFIG = REPO_ROOT / "train" / "configs" / "ci.yaml"


def stand_in_layout(embeddings: np.ndarray, seed: int = 0, **kwargs: Any) -> np.ndarray:
    """A cheap stand-in for UMAP with its contract ([N, 2] float32, NaN for all-zero rows).

    The real fit pays tens of seconds of numba compilation per process; hirviz.geometry's tests cover it, and the
    tests using this one check what is done with a layout.
    """
    out = np.asarray(embeddings, dtype=np.float32)[:, :2].copy()
    out[np.linalg.norm(embeddings, axis=1) == 0] = np.nan
    return out


@pytest.fixture
def no_umap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Export and the reference map use :func:`stand_in_layout` instead of fitting UMAP."""
    import hirviz.geometry

    monkeypatch.setattr(hirviz.geometry, "fit_layout", stand_in_layout)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic benchmark of 150 specimens with 32-px images (metadata.tsv + images.hdf5); do not modify."""
    from train.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("tiny-synth")
    generate(out, SynthConfig(specimens=150, seed=3, image_height=32, workers=1))
    return out


def tiny_overrides(synth: Path, out_dir: Path, *extra: str) -> list[str]:
    """``ci.yaml`` overrides that train on ``synth`` into ``out_dir``: batches of 10, 3 epochs, a checkpoint every
    3 steps (and at each epoch end)."""
    return [f"data.metadata={synth / 'metadata.tsv'}", f"data.images={synth / 'images.hdf5'}",
            f"run.out_dir={out_dir}", "data.batch_size=10", "optim.epochs=3", "run.checkpoint_every=3", *extra]


@pytest.fixture(scope="session")
def tiny_run(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-epoch CLIBD-HiR-Fuse run of the CI model on :func:`tiny_synth` (logging every step); read only."""
    from train.config import load_config
    from train.loop import fit

    return fit(load_config(CI_CONFIG, tiny_overrides(tiny_synth, tmp_path_factory.mktemp("tiny-run") / "run")))
