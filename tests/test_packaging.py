"""What gets installed: only ``hirviz`` (the trainer runs from a checkout), the app needs nothing from ``train``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from setuptools import find_packages

from conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")


def _pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def test_the_wheel_ships_hirviz_and_not_train() -> None:
    # The same discovery setuptools runs when building the wheel, on the same settings.
    find = _pyproject()["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(REPO_ROOT), include=find["include"], exclude=find.get("exclude", ()))
    assert "hirviz" in packages
    assert not [p for p in packages if p == "train" or p.startswith("train.")], packages


def test_space_requirements_are_the_apps_runtime_dependencies() -> None:
    # Hugging Face Spaces installs requirements.txt before the repository is there, so it must list the
    # dependencies itself; they must be exactly the package's, the torch pins included.
    lines = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    required = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert required == _pyproject()["project"]["dependencies"]
    assert "torch>=2.3,<2.14" in required and "torchvision>=0.18,<0.29" in required


def test_every_extra_that_installs_torch_pins_it_with_torchvision() -> None:
    project = _pyproject()["project"]
    for name, deps in {"dependencies": project["dependencies"], **project["optional-dependencies"]}.items():
        names = {d.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower() for d in deps}
        assert ("torch" in names) == ("torchvision" in names), name


def test_the_ui_and_the_app_import_nothing_from_train() -> None:
    code = textwrap.dedent(f"""
        import importlib.util, sys
        import hirviz.ui
        spec = importlib.util.spec_from_file_location("app", {str(REPO_ROOT / "app.py")!r})
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
        app.bundle_sources()
        print(sorted(m for m in sys.modules if m == "train" or m.startswith("train.")))
    """)
    # Run from the repository root, where `train` *could* be imported: the check is that nothing does.
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
