"""The built distribution holds what the code reads at runtime: the wheel of this checkout (built
offline, ``--no-build-isolation``, with the test extras' setuptools and wheel) carries every
file of the packages that is not Python (``api/demo_data``, read by ``runledger demo``), and the
code reads them when installed from it into a fresh virtualenv, as the Dockerfile installs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("domain", "projections", "infra", "api")
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc")


def data_files() -> set[str]:
    """The packages' files other than Python modules, relative to the root (posix)."""
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built from a copy of what the Dockerfile copies (so that the
    build's ``build/`` and ``*.egg-info`` stay out of the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=SKIPPED)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out.glob("runledger-*.whl")
    return found


def test_the_wheel_holds_every_file_of_the_packages_that_is_not_python(wheel: Path) -> None:
    wanted = data_files()
    assert "api/demo_data/claude-code-session-94692e6b.json" in wanted
    assert "api/demo_data/otlp-trace.json" in wanted
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert wanted <= names, sorted(wanted - names)


def test_the_demo_reads_its_data_when_installed_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # runledger from the wheel, its dependencies from this environment (a plain path line: the
    # editable install's own .pth there is not run, so the checkout stays off sys.path)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    read = subprocess.run(
        [str(python), "-c",
         "import api.demo; session_id, requests = api.demo.demo_requests(); "
         "print(api.demo.__file__); print(session_id); print(len(requests))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    module, session_id, count = read.stdout.split()
    assert Path(module).is_relative_to(venv)  # the installed copy, not the checkout
    assert session_id.startswith("94692e6b") and int(count) > 100
