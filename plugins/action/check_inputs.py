# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin check_inputs: every beamops_* variable of a host, checked on the controller.

Runs inside Ansible (no module is sent to the host), after the argument specs checked types,
so a deploy or rollback with a bad input stops in its first play with every host unchanged.
The rules are plugins/module_utils/input_checks.py.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.beamops.release.plugins.module_utils import input_checks

EXTRA_NAMES = ("rollback_to", "__beamops_scrape_allow")


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("purpose",))

    def run(
        self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None
    ) -> Dict[str, Any]:
        result: Dict[str, Any] = super().run(tmp, task_vars)
        purpose = str(self._task.args.get("purpose", "deploy"))
        if purpose not in ("deploy", "rollback"):
            raise AnsibleActionFail(f"purpose must be deploy or rollback, got {purpose!r}")
        values, unreadable = self._values(task_vars or {})
        found = unreadable + input_checks.problems(values, purpose)
        if found:
            listed = "".join(f"\n  - {problem}" for problem in found)
            raise AnsibleActionFail(f"{len(found)} input problem(s). No host was changed:{listed}")
        result.update(changed=False, checked=sorted(values), rules=len(input_checks.RULES))
        return result

    def _values(self, task_vars: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
        values: Dict[str, Any] = {}
        unreadable: List[str] = []
        for name in sorted(task_vars):
            if not (name.startswith("beamops_") or name in EXTRA_NAMES):
                continue
            try:
                values[name] = self._templar.template(task_vars[name])
            except Exception as exc:  # an undefined or broken template: name it, stop
                unreadable.append(f"{name}: cannot be evaluated: {type(exc).__name__}")
        # The inventory's group names (not their hosts): beamops_cluster_group must be one.
        values["__inventory_groups"] = sorted(task_vars.get("groups", {}))
        return values, unreadable
