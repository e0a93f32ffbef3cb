"""Render a mapping as a systemd EnvironmentFile, refusing names systemd would mangle."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Mapping

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: systemd_env
short_description: Render a mapping as systemd EnvironmentFile lines
version_added: 0.1.0
author: beamops.release maintainers
description:
  - Turns a mapping of environment variable names to values into C(NAME="value") lines that
    systemd's C(EnvironmentFile=) reads back exactly, whatever the value holds.
  - Names must be valid shell identifiers; anything else fails and names the variable.
positional: _input
options:
  _input:
    description: Mapping of variable names to values (strings, numbers or booleans).
    type: dict
    required: true
  source:
    description: Name of the inventory variable the mapping came from, used in error messages.
    type: str
    default: environment
"""

EXAMPLES = r"""
- name: Render the slot's environment
  ansible.builtin.copy:
    content: "{{ {'PORT': 4001, 'GREETING': 'say \"hi\"'} | beamops.release.systemd_env }}"
    dest: /etc/app/blue.env
    mode: "0640"
"""

RETURN = r"""
_value:
  description: One C(NAME="value") line per variable, sorted by name, ending with a newline.
  type: str
"""

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
            raise AnsibleFilterError(
                f"{source}: the value of {name} contains a newline or NUL byte, which an "
                "EnvironmentFile cannot hold; pass multi-line data as a file instead"
            )
        return text
    raise AnsibleFilterError(
        f"{source}: the value of {name} must be a string, number or boolean, "
        f"got {type(value).__name__}"
    )


def systemd_env(mapping: Mapping[str, Any], source: str = "environment") -> str:
    if not isinstance(mapping, Mapping):
        raise AnsibleFilterError(f"{source} must be a mapping of NAME: value, got {mapping!r}")
    lines = []
    for name in sorted(mapping):
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise AnsibleFilterError(
                f"{source}: {name!r} is not a valid environment variable name "
                "(letters, digits and underscore, not starting with a digit)"
            )
        lines.append(f"{name}={quote_value(render_value(name, mapping[name], source))}")
    return "".join(line + "\n" for line in lines)


class FilterModule:
    """beamops.release filters."""

    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"systemd_env": systemd_env}
