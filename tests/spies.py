"""Call counters for tests that bound how much work a path does."""

from __future__ import annotations

from typing import Any

import pytest


class Calls:
    """Counts the calls of ``getattr(target, name)``, replaced with ``monkeypatch`` (undone after
    the test); the calls still reach the original. Set ``count`` to 0 between checks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
        self.count = 0
        original = getattr(target, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(target, name, counting)
