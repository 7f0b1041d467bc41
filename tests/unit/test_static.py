"""Static checks in the test run, so that CI keeps them: ruff (lint and format) on everything,
mypy on every package and ``bench`` (``domain`` and ``projections`` under ``--strict``, see pyproject.toml)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy", "domain", "projections", "infra", "api", "bench"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_the_code_passes_its_static_checks(command: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_setting_is_in_the_readme_configuration_table_with_its_default() -> None:
    from infra.settings import Settings

    rows: dict[str, str] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `RUNLEDGER_") and len(cells) >= 3:
            names = re.findall(r"`(RUNLEDGER_[A-Z0-9_]+)`", cells[0])
            defaults = re.findall(r"`([^`]*)`", cells[1])
            if len(defaults) != len(names):  # one default for several names ("unset")
                defaults = [cells[1].strip("`")] * len(names)
            rows.update(zip(names, defaults, strict=True))
    for field, info in Settings.model_fields.items():
        name = f"RUNLEDGER_{field.upper()}"
        assert name in rows, f"{name} is not in the README's configuration table"
        if type(info.default) in (int, float):
            assert rows[name] == str(info.default), (name, rows[name], info.default)


def test_the_settings_module_docstring_tells_the_defaults_as_they_are() -> None:
    import infra.settings
    from infra.settings import Settings

    fields = Settings.model_fields
    nothing_set = (infra.settings.__doc__ or "").split("Nothing set:")[1].split("``RUNLEDGER_")[0]
    summary = " ".join(nothing_set.split())
    assert f"bind {fields['host'].default}:{fields['port'].default}" in summary
    assert fields["projector"].default == "process"
    assert 'projector="process"' in summary and "child process" in summary
    assert "in-process" not in summary
