# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Replace a file atomically, and only when its content or mode differ.

A reader (nginx, HAProxy, systemd, the rollback command) sees the old file or the new one,
never half of either: temp file in the same directory, fsync, rename. Pure standard library.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Union


def read_text(path: str) -> Optional[str]:
    """The file's text, or None when there is none to read (the state before a first write)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def restore(previous: Dict[str, Optional[str]]) -> None:
    """Put back what `read_text` saw before a write: a file that did not exist is removed."""
    for path, text in previous.items():
        if text is None:
            if os.path.lexists(path):
                os.unlink(path)
        else:
            write_if_changed(path, text, 0o644)


def write_if_changed(path: str, data: Union[str, bytes], mode: int) -> bool:
    """True when the file was written."""
    wanted = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(path, "rb") as handle:
            same = handle.read() == wanted
        if same and (os.stat(path).st_mode & 0o7777) == mode:
            return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    temp = f"{path}.beamops-tmp"
    with open(temp, "wb") as handle:
        handle.write(wanted)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temp, mode)
    os.replace(temp, path)
    return True
