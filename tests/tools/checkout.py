"""The checkout as a fresh clone has it, for tests that must not see build output or a venv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def copy_checkout(target: Path) -> Path:
    """Copy the files git would clone (tracked ones, and new ones not ignored, so work in
    progress is tested too) to TARGET; symlinks stay symlinks. Nothing ignored comes along:
    no build/, no .venv, no tests/output."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source, copy = REPO / name, target / name
        if not os.path.lexists(source):  # deleted in the work tree, not yet committed
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), copy)
        else:
            shutil.copy2(source, copy)
    return target
