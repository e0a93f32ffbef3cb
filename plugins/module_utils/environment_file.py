# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd EnvironmentFile lines that systemd reads back exactly, whatever a value holds.

Shared by the ``systemd_env`` filter and the ``slot_config`` module. Pure standard library.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class BadEnvironment(ValueError):
    """A name or value an EnvironmentFile cannot hold; the message names the variable."""


def quote_value(value: str) -> str:
    """Double-quote for EnvironmentFile=: backslash, quote and dollar are escaped.

    systemd does not expand variables in EnvironmentFile values, but the release's shell
    scripts may re-export them, so a literal dollar stays literal either way.
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def render_value(name: str, value: object, source: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        text = str(value)
        if "\n" in text or "\r" in text or "\0" in text:
            raise BadEnvironment(
                f"{source}: the value of {name} contains a newline or NUL byte, which an "
                "EnvironmentFile cannot hold; pass multi-line data as a file instead"
            )
        return text
    raise BadEnvironment(
        f"{source}: the value of {name} must be a string, number or boolean, "
        f"got {type(value).__name__}"
    )


def render(mapping: Mapping[str, Any], source: str = "environment") -> str:
    """One NAME="value" line per variable, sorted by name, each ending with a newline."""
    if not isinstance(mapping, Mapping):
        raise BadEnvironment(f"{source} must be a mapping of NAME: value, got {mapping!r}")
    lines = []
    for name in sorted(mapping):
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise BadEnvironment(
                f"{source}: {name!r} is not a valid environment variable name "
                "(letters, digits and underscore, not starting with a digit)"
            )
        lines.append(f"{name}={quote_value(render_value(name, mapping[name], source))}")
    return "".join(line + "\n" for line in lines)
