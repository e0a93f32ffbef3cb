"""Render a mapping as a systemd EnvironmentFile, refusing names systemd would mangle."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.beamops.release.plugins.module_utils import environment_file

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


def systemd_env(mapping: Mapping[str, Any], source: str = "environment") -> str:
    try:
        return environment_file.render(mapping, source)
    except environment_file.BadEnvironment as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    """beamops.release filters."""

    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"systemd_env": systemd_env}
