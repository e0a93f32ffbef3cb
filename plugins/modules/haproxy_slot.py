#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: switch an HAProxy backend between blue-green slots through the runtime API."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: haproxy_slot
short_description: Switch an HAProxy backend between blue-green servers without a reload
version_added: "0.1.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Makes one server of an HAProxy backend take the traffic (O(live)) and takes the others
    (O(others)) out of rotation, through HAProxy's runtime API on its stats socket. HAProxy is
    not reloaded, so established connections and the process's state survive the switch.
  - "The module first reads C(show servers state <backend>). When the live server is already
    ready (neither of the admin flags C(FMAINT) and C(FDRAIN)) and up, and every other server
    already is in O(others_state), it reports C(changed=false) and sends no C(set) command."
  - "Otherwise it sends, in this order: C(set server <backend>/<live> state ready) and
    C(set server <backend>/<live> health up) (see O(force_health_up)), C(state drain) for each
    other server, an optional wait for their sessions to end (O(drain_timeout)), then
    C(state maint) when O(others_state=maint). Only the commands a server needs are sent."
  - Before draining anything it reads the live server again, and fails without touching the
    others when HAProxy would not send it traffic (for example still down by its own health
    checks with O(force_health_up=false)), so the backend is never left without a server.
  - Any answer HAProxy gives to a C(set) command is an error, and the task fails with the
    command and the answer. Commands already sent are returned in RV(commands).
  - Needs a stats socket at level C(admin) on the managed host, for example
    C(stats socket /run/haproxy/admin.sock mode 660 level admin) in the C(global) section of
    C(haproxy.cfg), and a user allowed to open it (usually C(become=true)).
options:
  socket:
    description:
      - Path of HAProxy's stats socket on the managed host.
    type: path
    default: /run/haproxy/admin.sock
  backend:
    description:
      - Name of the HAProxy backend holding the slots.
    type: str
    required: true
  live:
    description:
      - Server of O(backend) that must take the traffic.
    type: str
    required: true
  others:
    description:
      - Servers of O(backend) to take out of rotation. Must not contain O(live).
      - An empty list only makes O(live) ready.
    type: list
    elements: str
    required: true
  others_state:
    description:
      - State the O(others) end in.
      - V(drain) sends them no new traffic but lets their sessions finish, and keeps their
        health checks running, so they can take traffic back at once.
      - V(maint) also stops their health checks. It is applied after the wait for
        O(drain_timeout); sessions still open then are not cut.
    type: str
    choices: [drain, maint]
    default: drain
  drain_timeout:
    description:
      - Seconds to wait, after draining, until the O(others) have no current session (C(scur)
        in C(show stat)), polling every 0.2 seconds. V(0) does not wait.
      - The module does not fail when sessions remain; it reports them in
        RV(remaining_sessions) and RV(drained).
      - The wait also happens when nothing had to change, so rerunning the task after a wait
        that ran out waits again.
    type: float
    default: 0
  force_health_up:
    description:
      - Send C(set server <backend>/<live> health up), so that HAProxy sends the live server
        traffic at once instead of waiting for its own health checks to pass.
      - Keep V(true) when the play has already checked the server's readiness (for example
        with M(beamops.release.health_check)); set V(false) to leave it to HAProxy's checks.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for each answer of the socket.
    type: float
    default: 5
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - beamops.release.attributes
attributes:
  check_mode:
    support: full
    details: Reads the states and reports what would change; sends no C(set) command.
notes:
  - "Runtime changes are lost when HAProxy restarts or reloads: the configuration decides the
    state again then. Use C(server-state-file) with C(load-server-state-from-file) in
    C(haproxy.cfg), or render the live slot into the configuration, to keep it across reloads."
  - Servers that HAProxy sends persistent traffic to (cookies, stick tables) keep receiving
    that traffic while in drain; use O(others_state=maint) to stop it.
  - Names may only contain letters, digits, C(-), C(_), C(.) and C(:), as in HAProxy.
seealso:
  - module: beamops.release.health_check
  - name: HAProxy management guide, runtime API
    description: The C(show servers state), C(show stat) and C(set server) commands.
    link: https://docs.haproxy.org/2.6/management.html
"""

EXAMPLES = r"""
- name: Send the traffic to green, drain blue and wait up to 30 s for its requests to finish
  beamops.release.haproxy_slot:
    backend: app
    live: green
    others: [blue]
    drain_timeout: 30
  become: true
  register: switch

- name: Tell when blue still had sessions after the wait
  ansible.builtin.debug:
    msg: "blue still serves {{ switch.remaining_sessions }} sessions"
  when: not switch.drained

- name: Switch back to blue and put green in maintenance, on a custom socket
  beamops.release.haproxy_slot:
    socket: /var/lib/haproxy/stats
    backend: app
    live: blue
    others: [green]
    others_state: maint
    drain_timeout: 10

- name: Let HAProxy's own health checks decide when the new slot takes traffic
  beamops.release.haproxy_slot:
    backend: app
    live: "{{ release_slot }}"
    others: "{{ ['blue', 'green'] | difference([release_slot]) }}"
    force_health_up: false
"""

RETURN = r"""
msg:
  description: One line saying what was switched, or why not.
  returned: always
  type: str
  sample: "app: green takes the traffic; blue in drain (0 sessions left)"
commands:
  description:
    - The C(set server) commands sent, in order. In check mode, those that would be sent.
    - On failure, the commands sent before the failing one.
    - The read-only C(show) commands are not listed.
  returned: always
  type: list
  elements: str
  sample:
    - set server app/green health up
    - set server app/blue state drain
before:
  description: State of every server of the backend before the module sent anything.
  returned: when the backend was read
  type: dict
  sample:
    blue:
      admin_state: []
      admin_state_mask: 0
      op_state: RUNNING
      op_state_code: 2
      scur: 1
      status: UP
    green:
      admin_state: [FDRAIN]
      admin_state_mask: 8
      op_state: RUNNING
      op_state_code: 2
      scur: 0
      status: DRAIN
  contains:
    admin_state:
      description:
        - Names of the administrative flags set, from C(srv_admin_state) of
          C(show servers state). An empty list means ready.
        - C(FMAINT) forced maintenance, C(IMAINT) inherited maintenance, C(CMAINT)
          C(disabled) in the configuration, C(FDRAIN) forced drain, C(IDRAIN) inherited
          drain, C(RMAINT) address resolution failed, C(HMAINT) FQDN set at runtime.
      type: list
      elements: str
      returned: always
    admin_state_mask:
      description: The raw C(srv_admin_state) bit mask.
      type: int
      returned: always
    op_state:
      description: Operational state, C(STOPPED), C(STARTING), C(RUNNING) or C(STOPPING).
      type: str
      returned: always
    op_state_code:
      description: The raw C(srv_op_state) (0 to 3).
      type: int
      returned: always
    scur:
      description: Current sessions on the server (C(scur) of C(show stat)).
      type: int
      returned: always
    status:
      description: The C(status) column of C(show stat), for example C(UP), C(DRAIN), C(MAINT).
      type: str
      returned: always
after:
  description:
    - State of every server of the backend at the end, in the same form as RV(before).
    - In check mode, the states the commands would give, with the current session counts.
  returned: when the backend was read
  type: dict
drained:
  description: Whether the O(others) had no current session at the end.
  returned: when the backend was read
  type: bool
  sample: true
remaining_sessions:
  description: Current sessions left on the O(others) at the end, after any wait.
  returned: when the backend was read
  type: int
  sample: 0
waited:
  description: Seconds spent waiting for the O(others) to drain.
  returned: when the backend was read
  type: float
  sample: 1.204
"""

# Ansible reads the documentation above before any import, hence E402.
from typing import Any, Dict, List  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils.haproxy_runtime import (  # noqa: E402
    DEFAULT_SOCKET,
    OTHERS_STATES,
    RuntimeApiError,
    RuntimeClient,
    SlotSwitch,
    SwitchOutcome,
    SwitchRequest,
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "socket": {"type": "path", "default": DEFAULT_SOCKET},
    "backend": {"type": "str", "required": True},
    "live": {"type": "str", "required": True},
    "others": {"type": "list", "elements": "str", "required": True},
    "others_state": {"type": "str", "choices": list(OTHERS_STATES), "default": "drain"},
    "drain_timeout": {"type": "float", "default": 0.0},
    "force_health_up": {"type": "bool", "default": True},
    "timeout": {"type": "float", "default": 5.0},
}


def request_from_params(params: Dict[str, Any]) -> SwitchRequest:
    # A server listed twice would be drained twice; keep the first mention's order.
    others: List[str] = list(dict.fromkeys(params["others"]))
    return SwitchRequest(
        backend=params["backend"],
        live=params["live"],
        others=others,
        others_state=params["others_state"],
        drain_timeout=params["drain_timeout"],
        force_health_up=params["force_health_up"],
    )


def summary(request: SwitchRequest, outcome: SwitchOutcome, check_mode: bool) -> str:
    others = ", ".join(request.others) or "no other server"
    if not outcome.changed:
        state = (
            f"{request.live} already takes the traffic; {others} already in {request.others_state}"
        )
    elif check_mode:
        state = (
            f"would make {request.live} take the traffic and put {others} in {request.others_state}"
        )
    else:
        state = f"{request.live} takes the traffic; {others} in {request.others_state}"
    return f"{request.backend}: {state} ({outcome.remaining_sessions} sessions left)"


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if module.params["timeout"] <= 0:
        module.fail_json(msg=f"timeout must be more than 0 seconds, got {module.params['timeout']}")
    request = request_from_params(module.params)
    client = RuntimeClient(module.params["socket"], module.params["timeout"])
    switch = SlotSwitch(client, request)
    try:
        outcome = switch.run(check_mode=module.check_mode)
    except RuntimeApiError as exc:
        partial = switch.outcome
        module.fail_json(
            msg=str(exc),
            changed=bool(partial.commands),
            commands=partial.commands,
            before=partial.before,
        )
    module.exit_json(msg=summary(request, outcome, module.check_mode), **outcome.to_dict())


if __name__ == "__main__":
    main()
