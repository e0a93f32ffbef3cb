# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secrets out of text that leaves the host: the release's journal lines in error messages
and in the release state's history.

A release may print its own configuration when it fails (a bad DATABASE_URL, a cookie in a
crash report). Before its lines reach the controller or the state file, every value of the
slot's secrets file is replaced by ``[redacted NAME]``, and the password of any URL with
credentials by ``***``.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional

# scheme://user:password@host -> scheme://user:***@host
URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.IGNORECASE)
# NAME="value" lines as environment_file.render writes them (\\, \" and \$ escaped).
ENV_LINE = re.compile(r'^([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"$')
UNESCAPE = re.compile(r"\\(.)")
# Shorter values would redact ordinary words; secrets are longer by the input checks.
MIN_SECRET_LENGTH = 6


def secrets_in_env_file(path: str) -> Dict[str, str]:
    """NAME -> value of an EnvironmentFile the collection wrote; {} when unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    found: Dict[str, str] = {}
    for line in lines:
        match = ENV_LINE.match(line)
        if match:
            found[match.group(1)] = UNESCAPE.sub(r"\1", match.group(2))
    return found


def redact(text: str, secrets: Dict[str, str]) -> str:
    for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
        if len(value) >= MIN_SECRET_LENGTH:
            text = text.replace(value, f"[redacted {name}]")
    return URL_CREDENTIALS.sub(r"\1***@", text)


def redact_lines(lines: Iterable[str], secrets_file: Optional[str] = None) -> List[str]:
    secrets = secrets_in_env_file(secrets_file) if secrets_file else {}
    return [redact(line, secrets) for line in lines]
