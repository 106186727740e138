"""Waiting for a condition in a test: poll until it holds, fail naming what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def wait_for(
    condition: Callable[[], Any],
    what: str = "condition",
    timeout: float = 120.0,
    died: Sequence[Callable[[], str | None]] = (),
    interval: float = 0.2,
) -> Any:
    """Poll ``condition`` until it is truthy and return it; fail naming ``what``.

    ``died``: checks that return why a process the test depends on has ended (``None`` while it
    runs), so a crash fails the wait at once with its reason instead of at the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        for check in died:
            problem = check()
            assert problem is None, f"while waiting for {what}: {problem}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(interval)
