#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the check_inputs action (it runs on the controller only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: check_inputs
short_description: Check every beamops_* variable of a host on the controller, before any change
version_added: "0.2.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Runs on the controller only, inside Ansible itself (no module is sent to a host).
  - Evaluates every C(beamops_*) variable (and C(rollback_to)) of the host and applies the rules
    of C(plugins/module_utils/input_checks.py) - versions, names and accounts, control
    characters, environment names and values with a deny list, ports, numeric ranges, the
    Erlang cookie's strength and the example secrets shipped with the collection.
  - Fails with every problem at once, each naming the variable, its value (never a secret's) and
    what is expected. The README's section "What is checked before a host is touched" lists the
    same rules.
options:
  purpose:
    description: C(deploy) checks the release version and sha256; C(rollback) checks C(rollback_to).
    type: str
    choices: [deploy, rollback]
    default: deploy
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
  - beamops.release.attributes
  - beamops.release.attributes.action_plugin
"""

EXAMPLES = r"""
- name: Check every input before any host changes
  beamops.release.check_inputs:
    purpose: deploy
"""

RETURN = r"""
checked:
  description: The variables that were checked.
  returned: success
  type: list
  elements: str
rules:
  description: How many rules were applied.
  returned: success
  type: int
"""
