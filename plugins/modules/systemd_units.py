#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: unit files, daemon-reload and the units that must run, in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: systemd_units
short_description: Install systemd unit files and keep some units running, in one call
version_added: "0.2.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Writes each unit file of O(units) (root, 0644, atomically) when its content differs, runs
    C(systemctl daemon-reload) once if any changed, then makes each unit of O(running) enabled
    and active, restarting it when its own file changed.
  - One round trip instead of one task per file, reload and service.
  - For a template unit (C(name@.service)), RV(outdated_instances) lists its active instances
    that started before the file last changed, so a caller learns that a running slot still
    runs an older unit even when this call changed nothing (a run that installed the unit and
    then failed).
options:
  units:
    description: Unit files to install.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Unit file name, e.g. C(app@.service).
        type: str
        required: true
      content:
        description: The unit file's text.
        type: str
        required: true
  directory:
    description: Where unit files go.
    type: path
    default: /etc/systemd/system
  running:
    description: Units (names from O(units)) that must be enabled and active.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - beamops.release.attributes
attributes:
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Install the units
  beamops.release.systemd_units:
    units:
      - name: beamops-epmd.service
        content: "{{ lookup('ansible.builtin.template', 'beamops-epmd.service.j2') }}"
      - name: sample_app@.service
        content: "{{ lookup('ansible.builtin.template', 'app@.service.j2') }}"
    running: [beamops-epmd.service]
"""

RETURN = r"""
changed_units:
  description: Unit files that were (or would be) rewritten.
  returned: always
  type: list
  elements: str
started:
  description: Units of O(running) that were started or restarted.
  returned: always
  type: list
  elements: str
outdated_instances:
  description: Active instances of template units that started before their file last changed.
  returned: always
  type: list
  elements: str
  sample: [sample_app@green.service]
"""

# Ansible reads the documentation above before any import, hence E402.
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any, Dict, List  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils.atomic_file import (  # noqa: E402
    read_text,
    write_if_changed,
)

UNIT_NAME = re.compile(r"[A-Za-z0-9@._-]+\.(service|socket|timer|target|path)")

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "units": {
        "type": "list",
        "elements": "dict",
        "required": True,
        "options": {
            "name": {"type": "str", "required": True},
            "content": {"type": "str", "required": True},
        },
    },
    "directory": {"type": "path", "default": "/etc/systemd/system"},
    "running": {"type": "list", "elements": "str", "default": []},
}


def systemctl(module: AnsibleModule, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0 and args[0] not in ("is-active", "is-enabled"):
        module.fail_json(msg=f"systemctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def outdated_instances(module: AnsibleModule, template: str, path: str) -> List[str]:
    """Active instances of `template` that started before `path` last changed."""
    if module.check_mode or not os.path.exists(path):
        return []
    pattern = template.replace("@.", "@*.", 1)
    listed = systemctl(module, "list-units", "--plain", "--no-legend", "--state=active", pattern)
    instances = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    changed_at = os.stat(path).st_mtime
    outdated = []
    for name in instances:
        shown = systemctl(
            module, "show", "--value", "-p", "ExecMainStartTimestampMonotonic", name
        ).stdout.strip()
        # Microseconds on CLOCK_MONOTONIC, as time.monotonic(): precise where the wall-clock
        # timestamp is whole seconds. 0 when the unit never ran a main process.
        if shown.isdigit() and int(shown) > 0:
            started_at = time.time() - (time.monotonic() - int(shown) / 1e6)
            if started_at < changed_at:
                outdated.append(name)
    return outdated


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    names = [unit["name"] for unit in module.params["units"]]
    bad = [name for name in names if not UNIT_NAME.fullmatch(name)]
    unknown = [name for name in module.params["running"] if name not in names]
    if bad or unknown:
        module.fail_json(msg=f"bad unit names {bad}, or running names not in units {unknown}")
    changed: List[str] = []
    diffs = []
    for unit in module.params["units"]:
        path = os.path.join(module.params["directory"], unit["name"])
        before = read_text(path)
        if before == unit["content"]:
            continue
        changed.append(unit["name"])
        diffs.append({"before_header": path, "after_header": path,
                      "before": before or "", "after": unit["content"]})  # fmt: skip
        if not module.check_mode:
            write_if_changed(path, unit["content"], 0o644)
    started: List[str] = []
    if not module.check_mode:
        if changed:
            systemctl(module, "daemon-reload")
        for name in module.params["running"]:
            active = systemctl(module, "is-active", "--quiet", name).returncode == 0
            enabled = systemctl(module, "is-enabled", "--quiet", name).returncode == 0
            if not enabled:
                systemctl(module, "enable", "--quiet", name)
            if name in changed or not active:
                systemctl(module, "restart" if active else "start", name)
                started.append(name)
    outdated: List[str] = []
    for unit in module.params["units"]:
        if "@." in unit["name"]:
            path = os.path.join(module.params["directory"], unit["name"])
            outdated += outdated_instances(module, unit["name"], path)
    result: Dict[str, Any] = {
        "changed": bool(changed or started),
        "changed_units": changed,
        "started": started,
        "outdated_instances": outdated,
    }
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
