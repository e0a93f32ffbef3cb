"""Suite-wide pytest hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGE_TIMES = REPO / "build" / "stage-times.txt"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat the set-up stage times of `make test` so the whole run's cost reads in one place."""
    if not STAGE_TIMES.exists():
        return
    terminalreporter.section("stage times (make test)")
    for line in STAGE_TIMES.read_text().splitlines():
        name, _, seconds = line.partition(" ")
        terminalreporter.write_line(f"{name:<10} {seconds:>8} s")
