"""The oldest-core scenario's fixtures: the shared fleet (tests/tools/fleet.py) on its hosts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
sys.path[:0] = [str(REPO), str(REPO / "build" / "collections")]

from tests.tools.fleet import fleet  # noqa: E402

__all__ = ["fleet"]  # the session fixture
