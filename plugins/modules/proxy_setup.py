#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the per-host proxy's configuration for one app, in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: proxy_setup
short_description: Configure the per-host proxy (nginx or HAProxy) for one app, in one call
version_added: "0.2.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - "nginx: writes the site O(nginx_site_file) when it differs, and the upstream file
    O(nginx_upstream_file) only when it is missing (from then on M(beamops.release.slot_cutover)
    rewrites it at each switch), and a systemd drop-in that makes C(nginx.service) restart
    when it is killed or crashes (C(Restart=on-failure); Debian's HAProxy unit already restarts
    always): a cutover whose proxy stops during its watch waits for it to be back. HAProxy:
    writes the live map O(haproxy_map_file) only when it is
    missing, and the app's own file O(haproxy_app_file) when it differs. That file is loaded
    beside the host's C(haproxy.cfg) (a systemd drop-in for C(haproxy.service) adds
    C(-f /etc/haproxy/beamops.d); the unit restarts once when the drop-in is new), so the
    host's global settings, chroot and other applications stay. A C(haproxy.cfg) an earlier
    version of this collection wrote is put back to Debian's defaults; a host configuration
    without an admin runtime socket at O(haproxy_socket) gets one in its own file. The whole set
    is checked with C(haproxy -c) before anything is replaced."
  - "When a file changed, the other proxy gives up the port (Debian's default nginx site, this
    app's nginx site, a HAProxy this collection configured), nginx's configuration is tested
    with C(nginx -t) (a rejected site is put back), and the proxy reloads. The proxy ends
    enabled and running. It moves no traffic: the files written name the slot serving now."
options:
  proxy:
    description: The per-host proxy.
    type: str
    required: true
    choices: [nginx, haproxy]
  nginx_site_file:
    description: The app's nginx site.
    type: path
    required: true
  nginx_upstream_file:
    description: The app's nginx upstream file.
    type: path
    required: true
  haproxy_map_file:
    description: The app's HAProxy live map.
    type: path
    required: true
  site:
    description: The nginx site's text (O(proxy=nginx)).
    type: str
    default: ""
  upstream:
    description: The nginx upstream's first text (O(proxy=nginx)).
    type: str
    default: ""
  haproxy_cfg:
    description: The text of the app's HAProxy file - its frontend and backends (O(proxy=haproxy)).
    type: str
    default: ""
  haproxy_app_file:
    description:
      - Where the app's HAProxy file goes, in C(/etc/haproxy/beamops.d/). Defaults to
        C(/etc/haproxy/beamops.d/<name>.cfg), the name taken from O(haproxy_map_file).
    type: path
    default: ""
  live_map:
    description: The live map's first text (O(proxy=haproxy)).
    type: str
    default: ""
  disable_default_site:
    description: Remove Debian's default nginx site, which also listens on port 80.
    type: bool
    default: true
  haproxy_socket:
    description:
      - HAProxy's runtime API socket. After a reload the module waits until HAProxy knows
        O(haproxy_map_file) there, so a configuration that failed to load is an error, not a
        silent no-op.
    type: path
    default: /run/haproxy/admin.sock
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - beamops.release.attributes
"""

EXAMPLES = r"""
- name: Configure nginx for sample_app
  beamops.release.proxy_setup:
    proxy: nginx
    nginx_site_file: /etc/nginx/conf.d/sample_app.conf
    nginx_upstream_file: /etc/nginx/conf.d/sample_app.upstream
    haproxy_map_file: /etc/haproxy/sample_app-live.map
    site: "{{ lookup('ansible.builtin.template', 'nginx-site.conf.j2') }}"
    upstream: "{{ lookup('ansible.builtin.template', 'nginx-upstream.conf.j2') }}"
"""

RETURN = r"""
written:
  description: Files that were (or would be) written.
  returned: always
  type: list
  elements: str
actions:
  description: What else was done (port freed, proxy started).
  returned: always
  type: list
  elements: str
"""

# Ansible reads the documentation above before any import, hence E402.
import dataclasses  # noqa: E402
from typing import Any, Dict  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils.proxy_setup import (  # noqa: E402
    ProxySetup,
    ProxySetupError,
    Request,
    proxy_missing,
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "proxy": {"type": "str", "required": True, "choices": ["nginx", "haproxy"]},
    "nginx_site_file": {"type": "path", "required": True},
    "nginx_upstream_file": {"type": "path", "required": True},
    "haproxy_map_file": {"type": "path", "required": True},
    "site": {"type": "str", "default": ""},
    "upstream": {"type": "str", "default": ""},
    "haproxy_cfg": {"type": "str", "default": ""},
    "haproxy_app_file": {"type": "path", "default": ""},
    "live_map": {"type": "str", "default": ""},
    "disable_default_site": {"type": "bool", "default": True},
    "haproxy_socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    missing = None if module.check_mode else proxy_missing(module.params["proxy"])
    if missing:
        module.fail_json(msg=missing)
    try:
        result = ProxySetup(Request(**module.params)).apply(check_mode=module.check_mode)
    except (ProxySetupError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**dataclasses.asdict(result))


if __name__ == "__main__":
    main()
