#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module (with an action plugin): install a release tarball in one task."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_unpack
short_description: Install a mix release tarball into releases/<version>, in one task
version_added: "0.2.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Makes C(<base_dir>/releases/<version>) hold exactly the release whose sha256 is
    O(sha256), registered in the host's release state, in one task.
  - Creates the system account the release runs as when missing (O(user)), and refuses an
    existing account it did not create, or root.
  - When the host already has that release (same version, same sha256), nothing is sent.
    Otherwise the action plugin copies O(src) from the controller, and the module verifies its
    sha256 on the host, unpacks it into C(releases/.<version>.partial) as root-owned files
    without set-uid/set-gid bits or group/other write bits, checks for an executable
    C(bin/<app>), renames it into place, registers it, and installs epmd outside the releases
    (first copy only).
  - "A tarball is refused with nothing left behind when a member would land outside the
    release (an absolute path, C(..), a link pointing out) or is a device, FIFO or other
    special file. A version already installed with other content is refused: a version must
    never change content."
options:
  app:
    description: The release's name (C(bin/<app>) in the tarball).
    type: str
    required: true
  version:
    description: The release's version; names its directory.
    type: str
    required: true
  sha256:
    description: Expected sha256 of the tarball (64 hex digits).
    type: str
    required: true
  src:
    description:
      - The tarball on the controller; required (the action plugin sends it to the host when
        needed and hands the module the copy's path).
    type: path
  base_dir:
    description: Holds C(releases/) and C(slots/).
    type: path
    required: true
  state_path:
    description: The host's release state file.
    type: path
    required: true
  helper_dir:
    description: Where epmd is installed, outside the releases.
    type: path
    default: /usr/local/lib/beamops
  run_id:
    description: The run holding the host's deploy lock; registering is refused otherwise.
    type: str
  user:
    description:
      - The system account the release runs as. Created when missing (system account, no
        home created, C(/usr/sbin/nologin), locked password, comment C(beamops.release <app>)).
      - An existing account is used only if this collection created it, or with
        O(adopt_account); it is never modified. uid 0 and gid 0 are always refused.
      - Omit to leave accounts alone.
    type: str
  group:
    description: Primary group of O(user); created when missing. Defaults to O(user).
    type: str
  home:
    description:
      - Home directory recorded for a new O(user) (not created). Defaults to C(/var/lib/<app>).
    type: path
  adopt_account:
    description: Use an existing O(user) that this collection did not create, as it is.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
  - beamops.release.attributes
  - beamops.release.attributes.action_plugin
attributes:
  action:
    support: full
    details: The action plugin asks the host first and sends the tarball only when needed.
"""

EXAMPLES = r"""
- name: Install release 0.2.0
  beamops.release.release_unpack:
    app: sample_app
    version: 0.2.0
    sha256: "{{ lookup('file', 'dist/sample_app-0.2.0.tar.gz.sha256').split()[0] }}"
    src: dist/sample_app-0.2.0.tar.gz
    base_dir: /opt/sample_app
    state_path: /opt/sample_app/release-state.json
"""

RETURN = r"""
installed:
  description: Whether this task unpacked the release (false when it was already there).
  returned: always
  type: bool
transferred:
  description: Whether the tarball was sent to the host.
  returned: always
  type: bool
msg:
  description: One line for a human.
  returned: always
  type: str
epmd:
  description: Path of the shared epmd, when installed.
  returned: always
  type: str
account_created:
  description: Whether this task created the account (or would, in check mode).
  returned: always
  type: bool
"""

# Ansible reads the documentation above before any import, hence E402.
import dataclasses  # noqa: E402
from typing import Any, Dict  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils.app_account import (  # noqa: E402
    AccountError,
)
from ansible_collections.beamops.release.plugins.module_utils.release_state import (  # noqa: E402
    ReleaseStateError,
)
from ansible_collections.beamops.release.plugins.module_utils.release_unpack import (  # noqa: E402
    Request,
    UnpackError,
    install,
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "app": {"type": "str", "required": True},
    "version": {"type": "str", "required": True},
    "sha256": {"type": "str", "required": True},
    # The action plugin replaces the controller path by the copy on the host, or omits it
    # when it only asks whether the host needs the tarball.
    "src": {"type": "path"},
    "base_dir": {"type": "path", "required": True},
    "state_path": {"type": "path", "required": True},
    "helper_dir": {"type": "path", "default": "/usr/local/lib/beamops"},
    "run_id": {"type": "str"},
    "user": {"type": "str"},
    "group": {"type": "str"},
    "home": {"type": "path"},
    "adopt_account": {"type": "bool", "default": False},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    request = Request(**module.params)
    try:
        result = install(request, check_mode=module.check_mode)
    except (UnpackError, ReleaseStateError, AccountError) as exc:
        module.fail_json(msg=f"{exc}. Nothing was installed.")
    module.exit_json(**dataclasses.asdict(result))


if __name__ == "__main__":
    main()
