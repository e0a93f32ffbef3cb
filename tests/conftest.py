"""Suite-wide pytest hooks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGE_TIMES = REPO / "build" / "stage-times.txt"
COLLECTIONS = REPO / "build" / "collections"


def _make_collection_importable() -> None:
    """Tests import plugins as ansible_collections.beamops.release.*, as Ansible does."""
    link = COLLECTIONS / "ansible_collections" / "beamops" / "release"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))


_make_collection_importable()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat the set-up stage times of `make test` so the whole run's cost reads in one place."""
    if not STAGE_TIMES.exists():
        return
    terminalreporter.section("stage times (make test)")
    for line in STAGE_TIMES.read_text().splitlines():
        name, _unused, seconds = line.partition(" ")
        terminalreporter.write_line(f"{name:<10} {seconds:>8} s")
