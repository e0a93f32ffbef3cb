# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for release_unpack: ask the host first, send the tarball only if it lacks it.

One task, and for a release already in place one round trip: the module answers whether the
host needs the tarball; only then is it copied to a temporary directory on the host and the
module run again to verify, unpack and register it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

MODULE = "beamops.release.release_unpack"


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = True

    def run(
        self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None
    ) -> Dict[str, Any]:
        result: Dict[str, Any] = super().run(tmp, task_vars)
        args = dict(self._task.args)
        source = args.pop("src", None)
        if not source:
            raise AnsibleActionFail("src is required: the release tarball on the controller")
        local = os.path.realpath(os.path.expanduser(str(source)))
        if not os.path.isfile(local):
            raise AnsibleActionFail(f"src {source}: no such file on the controller")

        asked = self._execute_module(MODULE, module_args=args, task_vars=task_vars)
        if asked.get("failed") or not asked.get("needs_transfer"):
            asked.pop("needs_transfer", None)
            return {**result, **asked, "transferred": False}

        remote_tmp = self._make_tmp_path()
        try:
            remote = self._connection._shell.join_path(remote_tmp, os.path.basename(local))
            self._transfer_file(local, remote)
            self._fixup_perms2((remote_tmp, remote))
            done = self._execute_module(
                MODULE, module_args={**args, "src": remote}, task_vars=task_vars
            )
        finally:
            self._remove_tmp_path(remote_tmp)
        done.pop("needs_transfer", None)
        return {**result, **done, "transferred": True}
