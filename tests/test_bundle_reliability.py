"""A killed export never leaves a bundle that loads half-written; a damaged bundle file is one clear error naming it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hirviz
from conftest import REPO_ROOT
from hirviz.bundle import BundleError

DEMO = REPO_ROOT / "assets" / "demo-clibd"

if not (DEMO / "config.json").is_file():
    pytest.skip("the embedded demo bundle is not built (python -m train demo)", allow_module_level=True)

# Re-saves the demo bundle to argv[1]; the reference write announces itself (argv[2]) and then hangs until killed.
_SAVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import hirviz
    import hirviz.bundle.save as save

    target, started = sys.argv[1], Path(sys.argv[2])
    bundle = hirviz.load_bundle(sys.argv[3])
    real = save.save_reference

    def slow_save_reference(folder, reference, **kwargs):
        manifest = real(folder, reference, **kwargs)
        started.write_text(str(folder))
        time.sleep(600)
        return manifest

    save.save_reference = slow_save_reference
    save.save_bundle(target, name="killed-export", model=bundle.model, taxonomy=bundle.taxonomy,
                     candidates=bundle.candidates, candidate_ranks=bundle.candidate_ranks,
                     text_embeddings=bundle.text_embeddings, reference=bundle.reference,
                     training_config=bundle.training, objective=bundle.objective, provenance=bundle.provenance,
                     card=bundle.card)
""")


def _kill_during_save(target: Path, tmp_path: Path) -> Path:
    """Run a save into ``target``, SIGKILL it while it writes, and return the folder it was writing into."""
    started = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(target), str(started), str(DEMO)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not started.is_file():
            if proc.poll() is not None:
                raise AssertionError(f"the save ended before it could be killed: {proc.stdout.read().decode()}")
            assert time.monotonic() < deadline, "the save never reached the reference"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return Path(started.read_text())


def test_a_killed_export_leaves_no_bundle_behind(tmp_path):
    target = tmp_path / "bundles" / "new"
    partial = _kill_during_save(target, tmp_path)
    assert partial != target and partial.parent == target.parent  # written beside the target, not into it
    assert not target.exists()
    with pytest.raises(BundleError):
        hirviz.load_bundle(target)
    with pytest.raises(BundleError, match="not a complete hirviz bundle"):
        hirviz.load_bundle(partial)


def test_a_killed_re_export_keeps_the_previous_bundle(tmp_path):
    target = tmp_path / "bundles" / "demo"
    shutil.copytree(DEMO, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    _kill_during_save(target, tmp_path)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert hirviz.load_bundle(target).name == hirviz.load_bundle(DEMO).name


def _damaged_copy(tmp_path: Path, name: str, how: str) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO, bundle)
    path = bundle / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else bytes(len(data)))
    return bundle


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
@pytest.mark.parametrize("name", ["config.json", "taxonomy.json", "text_embeddings.npy", "reference.h5"])
def test_a_damaged_file_is_refused_on_opening_naming_it(tmp_path, name, how):
    bundle = _damaged_copy(tmp_path, name, how)
    with pytest.raises(BundleError) as err:
        hirviz.load_bundle(bundle)
    message = str(err.value)
    assert name in message and "\n" not in message, message


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
def test_damaged_weights_are_refused_when_the_model_is_built(tmp_path, how):
    bundle = hirviz.load_bundle(_damaged_copy(tmp_path, "model.safetensors", how))
    with pytest.raises(BundleError) as err:
        _ = bundle.model
    message = str(err.value)
    assert "model.safetensors" in message and "\n" not in message, message
