"""Lines a test prints for people (a seed, a matrix, a summary), shown even when it passes.

pytest captures file descriptor 1 while a test runs, so a plain ``print`` only shows up in
the report of a failing test. ``terminal(request)`` writes around the capture::

    say = terminal(request)
    say(f"KILL_SEED={seed}")
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


def terminal(request: pytest.FixtureRequest) -> Callable[[str], None]:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        print(line)  # also in the captured output of a failing test
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    return say
