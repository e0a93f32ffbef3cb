#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: start, switch, watch and record (or switch back) on the host, in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: slot_cutover
short_description: Blue-green cutover of one host in one call, switching back at proxy speed
version_added: "0.2.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Activates an installed release in the idle slot of a host and moves the proxy to it,
    doing every step that must be fast on the host itself, in this one module call.
  - "Steps: wait for a drain of O(slot) still in progress from an earlier run; point
    C(<base_dir>/slots/<slot>) at C(releases/<version>) (atomic rename); C(systemctl start)
    (or C(restart) when the link, the configuration or the unit changed; a warm slot that
    already runs the release is only probed) through the unit's own readiness gate; route
    the proxy to O(slot) with O(from_slot) as its fallback; watch; record."
  - "The watch probes the new slot's readiness directly every O(watch_interval) seconds and
    reads what the proxy saw of real requests (nginx: its access log; HAProxy: the server's
    5xx counter and its health-check verdict). O(watch_failure_threshold) failing ticks in a
    row switch traffic back to O(from_slot) at once, stop the new slot and mark the release
    bad. The RV(switch_back_ms) return value is the time from that verdict to the proxy
    taking the old slot again."
  - "On success the release is recorded live and good in the release state file, old
    releases are pruned (a failed prune is a warning), and the old slot is disabled and
    stopped by a transient systemd timer after O(drain_seconds): the module does not wait
    for the drain. A later run that needs that slot waits for the drain to finish."
  - "The settings are saved to C(<config_dir>/cutover.json) (no secret in it), so the
    on-host rollback command C(/usr/local/bin/<app>-rollback) uses exactly what the last
    deploy used. The module also writes that command and the readiness gate (see
    O(helper_dir))."
options:
  app:
    description: The release's name; units are C(<app>@blue) and C(<app>@green).
    type: str
    required: true
  slot:
    description: The slot to activate (the idle one).
    type: str
    required: true
    choices: [blue, green]
  version:
    description: The installed release to activate.
    type: str
    required: true
  from_slot:
    description: The slot serving now, empty on a host's first deploy. It stays the proxy's
      fallback during the watch and is where traffic goes back on failure.
    type: str
    default: ""
  from_version:
    description: The release serving now, for messages and to keep a same-version release good.
    type: str
    default: ""
  event:
    description: What this activation is in the host's history.
    type: str
    choices: [deploy, rollback]
    default: deploy
  restart:
    description: Restart O(slot) when it already runs (its configuration or unit changed).
    type: bool
    default: false
  run_id:
    description: The run holding the host's deploy lock; state changes are refused otherwise.
    type: str
  host:
    description: Name used in messages (the inventory host).
    type: str
    default: ""
  hold:
    description:
      - Stop once the slot is ready (gate passed, the proxy admits it), before the switch -
        RV(stage) C(gate). The bluegreen role runs the C(after_gate) hooks then, and calls
        again - the slot runs this release, so that call only probes it, switches and watches.
    type: bool
    default: false
  base_dir:
    description: Holds C(releases/) and C(slots/).
    type: path
    required: true
  state_path:
    description: The host's release state file.
    type: path
    required: true
  config_dir:
    description: Where C(cutover.json) is saved.
    type: path
    required: true
  slot_ports:
    description: Loopback port of each slot, keys C(blue) and C(green).
    type: dict
    required: true
  proxy:
    description: The per-host proxy.
    type: str
    choices: [nginx, haproxy]
    required: true
  proxy_port:
    description: The proxy's port on the host (the watch's through-the-proxy probe).
    type: int
    required: true
  ready_path:
    description: Readiness path of the release.
    type: str
    default: /health/ready
  json_fields:
    description: What a ready answer must hold besides HTTP 200 (dotted paths into its JSON).
    type: dict
    default: {}
  slot_field:
    description: JSON field of the readiness answer carrying the slot; when set, the watch also
      proves that the proxy reaches O(slot).
    type: str
    default: ""
  nginx_upstream_file:
    description: The upstream file this module rewrites (O(proxy=nginx)).
    type: path
  nginx_access_log:
    description: Access log in the C(beamops) format the watch reads (O(proxy=nginx)).
    type: path
  haproxy_socket:
    description: HAProxy's runtime API socket, level admin (O(proxy=haproxy)).
    type: path
    default: /run/haproxy/admin.sock
  haproxy_map_file:
    description: The map file naming the live backend (O(proxy=haproxy)).
    type: path
  watch_seconds:
    description: How long the new slot is watched after the switch.
    type: float
    default: 10
  watch_interval:
    description: Seconds between watch ticks.
    type: float
    default: 1
  watch_failure_threshold:
    description: Failing ticks in a row that switch traffic back.
    type: int
    default: 2
  watch_max_5xx_ratio:
    description: Share of real requests answered 5xx by the new slot, within one tick, that
      makes the tick fail.
    type: float
    default: 0.2
  probe_timeout:
    description: Per-request timeout of the watch's probes, seconds.
    type: float
    default: 2
  drain_seconds:
    description: The old slot keeps serving this long after the switch before it is stopped.
    type: float
    default: 5
  stop_timeout:
    description: Seconds a slot may take to stop (the unit's TimeoutStopSec).
    type: float
    default: 30
  start_timeout:
    description: Seconds a start may take, gate included (the unit's TimeoutStartSec).
    type: float
    default: 60
  keep_old_warm:
    description: Leave the old slot running (and enabled) as the proxy's fallback.
    type: bool
    default: false
  releases_keep:
    description: Releases kept on the host after a success (see the release_state module).
    type: int
    default: 5
  helper_dir:
    description:
      - Where the module writes the collection's code the host runs by itself - the units'
        readiness gate (C(health_probe.py)) and the package behind
        C(/usr/local/bin/<app>-rollback), the on-host rollback command. Written from the
        module's own payload, only when different.
    type: path
    default: /usr/local/lib/beamops
  metrics_dir:
    description:
      - Where each cutover writes C(beamops_<app>.prom) in node_exporter's textfile format - the
        release served, the last cutover's start, end, result, gate and watch times, counters of
        deploys and rollbacks by result, and whether state and proxy disagree. Empty - none.
    type: str
    default: ""
  events_log:
    description:
      - A file to which each cutover appends one JSON line (who, what version, from which, the
        result, the time of each step). Empty - none.
    type: str
    default: ""
  webhooks:
    description:
      - After each cutover, one JSON POST per entry (the event's fields, plus C(text), C(time) in
        milliseconds and C(tags), so Slack's incoming webhooks and Grafana's annotation API take
        it as it is). Sent from the host, all at once.
      - A webhook that fails or hangs never fails the cutover and delays it by its C(timeout) at
        most; a warning names its scheme and host (never its path, which may hold a token).
      - Kept for the on-host rollback command in C(<config_dir>/webhooks.json) (root, 0600).
    type: list
    elements: dict
    default: []
    suboptions:
      url:
        description: Where to POST (C(http://) or C(https://)).
        type: str
        required: true
      timeout:
        description: Seconds for all attempts together.
        type: float
        default: 5
      retries:
        description: Attempts after the first, 0.5 s apart, within the timeout.
        type: int
        default: 2
      headers:
        description: Extra request headers, e.g. C(Authorization) for Grafana.
        type: dict
        default: {}
notes:
  - Runs as root on the managed host; needs systemd, and nginx or HAProxy configured by the
    C(beamops.release.traffic_switch) role.
  - Check mode reports what would happen and changes nothing.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - beamops.release.attributes
"""

EXAMPLES = r"""
- name: Activate 0.2.0 in slot green, blue serving now
  beamops.release.slot_cutover:
    app: sample_app
    slot: green
    version: 0.2.0
    from_slot: blue
    from_version: 0.1.0
    base_dir: /opt/sample_app
    state_path: /opt/sample_app/release-state.json
    config_dir: /etc/sample_app
    slot_ports: {blue: 4001, green: 4002}
    proxy: nginx
    proxy_port: 80
    nginx_upstream_file: /etc/nginx/conf.d/sample_app.upstream
    nginx_access_log: /var/log/nginx/sample_app.upstream.log
    watch_seconds: 10
  register: cutover
"""

RETURN = r"""
result:
  description: C(ok) or C(failed). A failure does not fail the task; the caller decides.
  returned: always
  type: str
  sample: failed
stage:
  description: Where the cutover ended - C(start), C(switch), C(watch), C(record) or C(done).
  returned: always
  type: str
  sample: watch
msg:
  description: One line for a human; on failure it names the host, slot, release, the reason
    and where traffic is.
  returned: always
  type: str
started:
  description: C(started), C(restarted) or C(already running).
  returned: always
  type: str
switched_back:
  description: Whether traffic was moved back to O(from_slot).
  returned: always
  type: bool
detect_seconds:
  description: Seconds from the switch to the watch's failing verdict.
  returned: when the watch failed
  type: float
switch_back_ms:
  description: Milliseconds from the failing verdict to the proxy routing to the old slot.
  returned: when traffic was switched back
  type: int
serving:
  description:
    - What runs after the cutover, for the scrape targets (role monitoring).
    - C(live) and C(idle) (the old slot kept warm), each C(slot) and C(version) or null.
  returned: always
  type: dict
  sample: {"live": {"slot": "green", "version": "0.2.0"}, "idle": null}
timings:
  description: Seconds each step took (drain_wait, start, admission, switch, watch, record, retire).
  returned: always
  type: dict
tools_changed:
  description: Files of the on-host tools (gate, rollback command) that were written.
  returned: always
  type: list
  elements: str
release_log:
  description: The release's own last journal lines, when its start failed.
  returned: always
  type: list
  elements: str
slot:
  description: The slot activated (or tried).
  returned: always
  type: str
from_slot:
  description: The slot that served before.
  returned: always
  type: str
from_version:
  description: The release that served before.
  returned: always
  type: str
"""

# Ansible reads the documentation above before any import, hence E402.
from typing import Any, Dict, List  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils import deploy_metrics  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils.cutover import (  # noqa: E402
    Cutover,
    CutoverError,
    Request,
    save_settings,
    settings_from_dict,
)
from ansible_collections.beamops.release.plugins.module_utils.host_tools import (  # noqa: E402
    install,
)
from ansible_collections.beamops.release.plugins.module_utils.release_state import (  # noqa: E402
    ReleaseStateError,
)

REQUEST_OPTIONS = (
    "slot",
    "version",
    "from_slot",
    "from_version",
    "event",
    "restart",
    "run_id",
    "host",
    "hold",
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "app": {"type": "str", "required": True},
    "slot": {"type": "str", "required": True, "choices": ["blue", "green"]},
    "version": {"type": "str", "required": True},
    "from_slot": {"type": "str", "default": ""},
    "from_version": {"type": "str", "default": ""},
    "event": {"type": "str", "choices": ["deploy", "rollback"], "default": "deploy"},
    "restart": {"type": "bool", "default": False},
    "run_id": {"type": "str"},
    "host": {"type": "str", "default": ""},
    "hold": {"type": "bool", "default": False},
    "base_dir": {"type": "path", "required": True},
    "state_path": {"type": "path", "required": True},
    "config_dir": {"type": "path", "required": True},
    "slot_ports": {"type": "dict", "required": True},
    "proxy": {"type": "str", "choices": ["nginx", "haproxy"], "required": True},
    "proxy_port": {"type": "int", "required": True},
    "ready_path": {"type": "str", "default": "/health/ready"},
    "json_fields": {"type": "dict", "default": {}},
    "slot_field": {"type": "str", "default": ""},
    "nginx_upstream_file": {"type": "path"},
    "nginx_access_log": {"type": "path"},
    "haproxy_socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
    "haproxy_map_file": {"type": "path"},
    "watch_seconds": {"type": "float", "default": 10.0},
    "watch_interval": {"type": "float", "default": 1.0},
    "watch_failure_threshold": {"type": "int", "default": 2},
    "watch_max_5xx_ratio": {"type": "float", "default": 0.2},
    "probe_timeout": {"type": "float", "default": 2.0},
    "drain_seconds": {"type": "float", "default": 5.0},
    "stop_timeout": {"type": "float", "default": 30.0},
    "start_timeout": {"type": "float", "default": 60.0},
    "keep_old_warm": {"type": "bool", "default": False},
    "releases_keep": {"type": "int", "default": 5},
    "helper_dir": {"type": "path", "default": "/usr/local/lib/beamops"},
    "metrics_dir": {"type": "str", "default": ""},
    "events_log": {"type": "str", "default": ""},
    "webhooks": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "no_log": True,
        "options": {
            "url": {"type": "str", "required": True, "no_log": True},
            "timeout": {"type": "float", "default": 5.0},
            "retries": {"type": "int", "default": 2},
            "headers": {"type": "dict", "default": {}, "no_log": True},
        },
    },
}


def split_params(params: Dict[str, Any]) -> tuple[Dict[str, Any], Request]:
    """The module's flat parameters as cutover settings and the request."""
    settings = {k: v for k, v in params.items() if k not in (*REQUEST_OPTIONS, "webhooks")}
    for key in ("nginx_upstream_file", "nginx_access_log", "haproxy_map_file"):
        settings[key] = settings[key] or ""
    request = Request(**{k: params[k] for k in REQUEST_OPTIONS})
    return settings, request


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    raw, request = split_params(module.params)
    tools: List[str] = []
    try:
        settings = settings_from_dict(raw)
        hooks = deploy_metrics.webhooks_from(module.params["webhooks"])
        if not module.check_mode:
            # The gate must be in place before the slot starts.
            tools = install(settings.helper_dir, settings.app, settings.config_dir)
            deploy_metrics.save_webhooks(settings.config_dir, hooks)
        cutover = Cutover(settings, request)
        outcome = cutover.execute(check_mode=module.check_mode)
        if not module.check_mode:
            save_settings(settings)
    except (CutoverError, ReleaseStateError, OSError, ValueError) as exc:
        module.fail_json(msg=f"{request.host or 'host'}: {exc}. Traffic was not moved.")
    result = outcome.to_dict()
    result["tools_changed"] = tools
    result["changed"] = result["changed"] or bool(tools)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(
        slot=request.slot, from_slot=request.from_slot, from_version=request.from_version, **result
    )


if __name__ == "__main__":
    main()
