#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: a slot's environment, secrets and vm.args in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: slot_config
short_description: Write a slot's environment, secrets and vm.args in one call
version_added: "0.2.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Writes C(<config_dir>/<slot>.env) (plain, root:group 0640), C(<slot>.secrets.env) (root
    only, 0600, read by systemd), C(<slot>.vm.args) and C(<slot>.remote.vm.args) (0640), the
    slot's working directory C(<state_dir>/<slot>) (owned by the app user) with its
    C(.erlang.cookie), and with O(dist.tls) the TLS files, each atomically and only when it
    differs.
  - "Values are written so that systemd's C(EnvironmentFile=) reads them back exactly; a name
    that is not an identifier, or a value with a newline or NUL byte, is refused naming the
    variable. Names the collection sets per slot (O(reserved), C(RELEASE_COOKIE)) may not be
    set by O(env) or O(secret_env), and a name may not be both plain and secret."
  - With C(--diff), the plain files' changes are shown; the secrets file's never are.
options:
  slot:
    description: The slot whose files are written.
    type: str
    required: true
    choices: [blue, green]
  config_dir:
    description: The app's configuration directory.
    type: path
    required: true
  state_dir:
    description: Parent of the slots' working directories.
    type: path
    required: true
  app_user:
    description: The unprivileged user the release runs as.
    type: str
    required: true
  app_group:
    description: Its group, which may read the plain files.
    type: str
    required: true
  env:
    description: Plain environment (C(beamops_env)).
    type: dict
    default: {}
  reserved:
    description: The collection's per-slot values (C(PORT), C(SLOT), C(RELEASE_NODE), ...).
    type: dict
    default: {}
  secret_env:
    description: Secret environment (C(beamops_secret_env)); never shown.
    type: dict
    default: {}
  cookie:
    description:
      - The Erlang cookie; never shown. Written to C(<state_dir>/<slot>/.erlang.cookie) (0400, the
        app user's, the slot's C(HOME)), where the VM reads it itself; C(RELEASE_COOKIE) is set to
        a flag without a value so that the start script's C(--cookie) puts no cookie in argv.
    type: str
  vm_args:
    description: Extra lines of the deploy-time vm.args, after the O(beam) flags.
    type: list
    elements: str
    default: []
  beam:
    description: The VM's limits, written first in the deploy-time vm.args as emulator flags.
    type: dict
    default: {}
    suboptions:
      schedulers:
        description: C(+S), e.g. C(2:2); empty for one scheduler per CPU.
        type: str
        default: ""
      process_limit:
        description: C(+P), the most processes the VM may run.
        type: int
      port_limit:
        description: C(+Q), the most ports (sockets, files) the VM may open.
        type: int
      busy_wait:
        description:
          - C(+sbwt), C(+sbwtdcpu) and C(+sbwtdio) - how long an idle scheduler spins before it
            sleeps. Spinning looks like load to the host and to C(CPUQuota=).
          - One of C(none), C(very_short), C(short), C(medium), C(long), C(very_long); omitted -
            the VM's own default.
        type: str
  dist:
    description:
      - Erlang distribution, written in the deploy-time vm.args and in C(<slot>.remote.vm.args)
        (RELEASE_REMOTE_VM_ARGS, for remote shells and rpc).
    type: dict
    default: {}
    suboptions:
      address:
        description: The one IPv4 interface to listen on (C(inet_dist_use_interface)); empty, all.
        type: str
        default: ""
      port:
        description: The slot's own port (C(inet_dist_listen_min)/C(max)); remote shells take any.
        type: int
      tls:
        description:
          - TLS distribution. Writes C(<config_dir>/dist-tls/) - the certificate, the key (0640,
            root and the app's group), the CA and C(ssl_dist.conf), which makes both ends verify
            each other's certificate.
        type: bool
        default: false
      cert:
        description: The host's certificate (PEM), with O(dist.tls).
        type: str
      key:
        description: Its private key (PEM), with O(dist.tls); never shown.
        type: str
      cacert:
        description: The CA certificate (PEM) peers are verified against, with O(dist.tls).
        type: str
  secrets_delivery:
    description:
      - How O(secret_env) reaches the release.
      - C(environment) - the secrets file, which systemd reads into the VM's environment.
      - "C(credentials) - one 0600 file per secret in C(<config_dir>/<slot>.credentials/), which
        the unit loads with C(LoadCredential=); the release reads C($CREDENTIALS_DIRECTORY/<NAME>)
        and its environment holds no secret."
      - C(encrypted_credentials) - the same files sealed by C(systemd-creds encrypt) with the
        host's key (C(LoadCredentialEncrypted=)); a value is compared by decrypting the file.
    type: str
    choices: [environment, credentials, encrypted_credentials]
    default: environment
  unit:
    description:
      - The slot's systemd unit. When given, RV(unit_active) says whether it runs, so a caller
        that compares a live slot's configuration learns in the same call whether it is up.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - beamops.release.attributes
attributes:
  diff_mode:
    support: partial
    details: The secrets file's content is never part of the diff.
"""

EXAMPLES = r"""
- name: Render slot blue's configuration
  beamops.release.slot_config:
    slot: blue
    config_dir: /etc/sample_app
    state_dir: /var/lib/sample_app
    app_user: sample_app
    app_group: sample_app
    env: {LOG_LEVEL: info}
    reserved: {PORT: 4001, SLOT: blue}
    secret_env: "{{ vault_secret_env }}"
    cookie: "{{ vault_cookie }}"
  no_log: true
"""

RETURN = r"""
changed_files:
  description: The files that were (or in check mode would be) rewritten.
  returned: always
  type: list
  elements: str
unit_active:
  description: Whether O(unit) is active (C(systemctl is-active)).
  returned: when O(unit) is given
  type: bool
"""

# Ansible reads the documentation above before any import, hence E402.
from typing import Any, Dict, List  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils.slot_config import (  # noqa: E402
    ConfigError,
    FileChange,
    Request,
    apply,
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "slot": {"type": "str", "required": True, "choices": ["blue", "green"]},
    "config_dir": {"type": "path", "required": True},
    "state_dir": {"type": "path", "required": True},
    "app_user": {"type": "str", "required": True},
    "app_group": {"type": "str", "required": True},
    "env": {"type": "dict", "default": {}},
    "reserved": {"type": "dict", "default": {}},
    "secret_env": {"type": "dict", "default": {}, "no_log": True},
    "cookie": {"type": "str", "no_log": True},
    "vm_args": {"type": "list", "elements": "str", "default": []},
    "beam": {
        "type": "dict",
        "default": {},
        "options": {
            "schedulers": {"type": "str", "default": ""},
            "process_limit": {"type": "int"},
            "port_limit": {"type": "int"},
            # Checked by module_utils (naming beamops_beam_busy_wait): choices here would also
            # refuse the None an omitted beam gives.
            "busy_wait": {"type": "str"},
        },
    },
    "dist": {
        "type": "dict",
        "default": {},
        "options": {
            "address": {"type": "str", "default": ""},
            "port": {"type": "int"},
            "tls": {"type": "bool", "default": False},
            "cert": {"type": "str"},
            "key": {"type": "str", "no_log": True},
            "cacert": {"type": "str"},
        },
    },
    "secrets_delivery": {
        "type": "str",
        "choices": ["environment", "credentials", "encrypted_credentials"],
        "default": "environment",
    },
    "unit": {"type": "str"},
}


def diff_of(changes: List[FileChange]) -> List[Dict[str, str]]:
    hidden = "(secret: content not shown)\n"
    return [
        {
            "before_header": change.path,
            "after_header": change.path,
            "before": hidden if change.secret else change.before,
            "after": hidden if change.secret else change.after,
        }
        for change in changes
    ]


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = dict(module.params)
    unit = params.pop("unit")
    request = Request(**params)
    try:
        changed, changes = apply(request, check_mode=module.check_mode)
    except (ConfigError, OSError) as exc:
        module.fail_json(msg=f"slot {request.slot}: {exc}. Nothing more was written.")
    result: Dict[str, Any] = {
        "changed": changed,
        "changed_files": [change.path for change in changes],
    }
    if module._diff:
        result["diff"] = diff_of(changes)
    if unit:
        rc, _out, _err = module.run_command(["systemctl", "is-active", "--quiet", unit])
        result["unit_active"] = rc == 0
    module.exit_json(**result)


if __name__ == "__main__":
    main()
