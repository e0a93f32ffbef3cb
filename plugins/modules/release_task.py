#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: run a release task (a migration) with a slot's configuration and secrets."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_task
short_description: Run a release task, such as a database migration, in a slot's environment
version_added: "0.1.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Evaluates an Elixir expression with C(bin/<app> eval) of an installed release (not
    necessarily the one a slot runs), in a transient systemd unit that reads the slot's
    environment files and credentials as its unit does, through the host's node command
    (C(/usr/local/bin/<app>-node --slot SLOT --release VERSION eval EXPR)). A release's
    migrations (C(MyApp.Release.migrate())) run this way before traffic moves.
  - Fails when the task exits non-zero or outlives O(timeout), with its last output lines in
    the message. Every value of O(secrets) is replaced by C([redacted NAME]) in what it
    returns, as is the password of any URL with credentials.
  - Always reports a change when it ran; in check mode it does not run.
options:
  node_command:
    description: The host's node command, as the systemd_service role installs it.
    type: path
    required: true
  slot:
    description: The slot whose configuration and secrets the task gets.
    type: str
    required: true
    choices: [blue, green]
  version:
    description: The installed release whose code runs the task.
    type: str
    required: true
  expression:
    description: The Elixir expression C(bin/<app> eval) evaluates.
    type: str
    required: true
  timeout:
    description: Seconds the task may take; it is stopped after that.
    type: float
    default: 300
  secrets:
    description: Values that must never leave the host in the output (name to value).
    type: dict
    default: {}
  output_lines:
    description: How many of the task's last output lines to return.
    type: int
    default: 40
notes:
  - Runs as root on the managed host (the node command reads the slot's secrets).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - beamops.release.attributes
"""

EXAMPLES = r"""
- name: Migrate the database with the new release, before any slot switches
  beamops.release.release_task:
    node_command: /usr/local/bin/shop-node
    slot: green
    version: 1.4.0
    expression: Shop.Release.migrate()
    secrets: "{{ beamops_secret_env }}"
  no_log: false
"""

RETURN = r"""
rc:
  description: The task's exit status.
  returned: when it ran
  type: int
  sample: 0
output:
  description: Its last output lines (stdout and stderr together), secrets redacted.
  returned: when it ran
  type: list
  elements: str
  sample: ["migrated to 1.4.0"]
seconds:
  description: How long it took.
  returned: when it ran
  type: float
  sample: 2.4
"""

# Ansible reads the documentation above before any import, hence E402.
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any, Dict, List, Tuple  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils import redact  # noqa: E402

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "node_command": {"type": "path", "required": True},
    "slot": {"type": "str", "required": True, "choices": ["blue", "green"]},
    "version": {"type": "str", "required": True},
    "expression": {"type": "str", "required": True},
    "timeout": {"type": "float", "default": 300.0},
    "secrets": {"type": "dict", "default": {}, "no_log": True},
    "output_lines": {"type": "int", "default": 40},
}


def task_argv(params: Dict[str, Any]) -> List[str]:
    return [
        params["node_command"],
        "--slot",
        params["slot"],
        "--release",
        params["version"],
        "eval",
        params["expression"],
    ]


def run_task(argv: List[str], timeout: float) -> Tuple[int, str, float]:
    """Exit status (124 when it ran out of time, as timeout(1) says), output, seconds."""
    began = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        return 124, output + f"\n(stopped after {timeout:g} s)", time.monotonic() - began
    return done.returncode, done.stdout, time.monotonic() - began


def visible_lines(output: str, secrets: Dict[str, Any], keep: int) -> List[str]:
    """The last `keep` non-empty lines, with no secret value left in them."""
    values = {str(k): str(v) for k, v in secrets.items() if v is not None}
    lines = [redact.redact(line, values) for line in output.splitlines() if line.strip()]
    return lines[-keep:] if keep > 0 else []


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    if module.check_mode:
        module.exit_json(changed=True, msg=f"would evaluate {params['expression']}")
    rc, output, seconds = run_task(task_argv(params), params["timeout"])
    lines = visible_lines(output, params["secrets"], params["output_lines"])
    result = {"rc": rc, "output": lines, "seconds": round(seconds, 3), "changed": True}
    if rc != 0:
        last = " / ".join(lines[-8:]) or "no output"
        module.fail_json(
            msg=f"{params['expression']} with release {params['version']} exited {rc}: {last}",
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
