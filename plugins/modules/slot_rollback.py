#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: roll one host back in one call (plan, lock, cut over, mark, unlock)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: slot_rollback
short_description: Roll one host back to a good release, gated and watched, in one call
version_added: "0.2.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Plans a rollback from the host's release state - O(to), or the most recently activated
    good release other than the active one - and, unless O(plan_only), takes the host's deploy
    lock (unless this run holds it), activates that release in the idle slot, marks the
    release left C(bad), and gives the lock back.
  - The idle slot may still run the release (C(beamops_keep_old_warm)) - then the rollback is
    one proxy action, after a readiness probe. Otherwise the slot is started through its
    unit's gate (a slot still draining from the deploy first finishes its drain). Either way
    the slot is watched like a deploy, and traffic goes back to the release that served if
    it fails (see M(beamops.release.slot_cutover)).
  - Uses the settings the last deploy saved in C(<config_dir>/cutover.json). The command
    C(/usr/local/bin/<app>-rollback) on each host runs the same code without a controller.
options:
  config_dir:
    description: The app's configuration directory, where the deploy saved C(cutover.json).
    type: path
    required: true
  to:
    description:
      - Release to go back to; default the host's rollback candidate.
      - "When omitted and the host's deploy lock was left by a rollback whose run died
        (purpose C(rollback to <version>)), that version: a plain re-run finishes the
        interrupted rollback instead of going one release further back."
    type: str
  plan_only:
    description: Only say what would happen (also what check mode does).
    type: bool
    default: false
  run_id:
    description: This run's id, for the deploy lock and the history.
    type: str
    required: true
  holder:
    description: Who rolls back (recorded with the lock and in the reason the release is bad).
    type: str
    required: true
  force_lock:
    description: Take over a deploy lock another run holds.
    type: bool
    default: false
  pid:
    description:
      - Process id recorded with the lock (the controller's C(ansible-playbook)); default the
        module's own. A re-run on the same controller takes over a lock whose pid is gone.
    type: int
  keep_lock:
    description:
      - Keep the deploy lock after the rollback; the caller gives it back (rollback.yml does,
        in its last play). A run that dies before then leaves the lock naming its target.
    type: bool
    default: false
  host:
    description: Name used in messages (the inventory host).
    type: str
    default: ""
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - beamops.release.attributes
"""

EXAMPLES = r"""
- name: Roll back to the previous good release
  beamops.release.slot_rollback:
    config_dir: /etc/sample_app
    run_id: "{{ run_id }}"
    holder: alice@laptop
  register: rolled
"""

RETURN = r"""
plan:
  description: What the rollback does - C(version), C(slot), C(from_slot), C(from_version),
    C(warm) (the slot already runs the release), C(configured), C(noop), C(resumes) (the
    interrupted rollback whose target it keeps, or empty), and C(describe).
  returned: always
  type: dict
lock:
  description: The host's deploy lock as the plan found it (C(holder), C(pid), C(purpose),
    C(run_id), C(since)), or null when free.
  returned: when planned
  type: dict
result:
  description: C(ok), C(failed) (traffic stayed or went back where it was), C(unchanged) (the
    release asked for is already active), or C(planned).
  returned: always
  type: str
msg:
  description: One line for a human.
  returned: always
  type: str
stage:
  description: Where the cutover ended (see M(beamops.release.slot_cutover)).
  returned: unless planned
  type: str
switched_back:
  description: Whether traffic went back to the slot that served.
  returned: unless planned
  type: bool
serving:
  description:
    - What runs after the cutover, for the scrape targets (role monitoring).
    - C(live) and C(idle) (the old slot kept warm), each C(slot) and C(version) or null.
  returned: unless planned
  type: dict
  sample: {"live": {"slot": "green", "version": "0.2.0"}, "idle": null}
timings:
  description: Seconds each step took.
  returned: unless planned
  type: dict
"""

# Ansible reads the documentation above before any import, hence E402.
import dataclasses  # noqa: E402
import os  # noqa: E402
from typing import Any, Dict  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils.cutover import (  # noqa: E402
    SETTINGS_FILE_NAME,
    CutoverError,
    load_settings,
)
from ansible_collections.beamops.release.plugins.module_utils.release_state import (  # noqa: E402
    LockHeldError,
    ReleaseStateError,
)
from ansible_collections.beamops.release.plugins.module_utils.rollback import (  # noqa: E402
    plan_and_lock,
    roll_back,
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "config_dir": {"type": "path", "required": True},
    "to": {"type": "str"},
    "plan_only": {"type": "bool", "default": False},
    "run_id": {"type": "str", "required": True},
    "holder": {"type": "str", "required": True},
    "force_lock": {"type": "bool", "default": False},
    "pid": {"type": "int"},
    "keep_lock": {"type": "bool", "default": False},
    "host": {"type": "str", "default": ""},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    where = params["host"] or "host"
    try:
        settings = load_settings(os.path.join(params["config_dir"], SETTINGS_FILE_NAME))
        plan, lock = plan_and_lock(settings, params["to"])
        planned = {**dataclasses.asdict(plan), "describe": plan.describe()}
        if params["plan_only"] or module.check_mode:
            module.exit_json(
                changed=False, result="planned", msg=plan.describe(), plan=planned, lock=lock
            )
        outcome = roll_back(
            settings,
            plan,
            run_id=params["run_id"],
            holder=params["holder"],
            host=params["host"],
            force_lock=params["force_lock"],
            pid=params["pid"],
            keep_lock=params["keep_lock"],
        )
    except LockHeldError as exc:
        module.fail_json(msg=f"{where}: {exc}. Nothing was changed.", lock=exc.lock)
    except (CutoverError, ReleaseStateError) as exc:
        module.fail_json(msg=f"{where}: {exc}. Nothing was changed.")
    for warning in outcome.warnings:
        module.warn(warning)
    module.exit_json(
        changed=outcome.changed,
        plan=planned,
        result=outcome.result,
        msg=outcome.msg,
        stage=outcome.stage,
        switched_back=outcome.switched_back,
        timings=outcome.timings,
        serving=outcome.serving,
    )


if __name__ == "__main__":
    main()
