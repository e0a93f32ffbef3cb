#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: wait until HTTP endpoints answer healthy, like a Kubernetes probe."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: health_check
short_description: Wait until HTTP endpoints answer healthy, with probe-style thresholds
version_added: "0.1.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Sends C(GET) requests to one or more URLs from the managed host until they answer healthy,
    with the semantics of a Kubernetes readiness probe rather than C(ansible.builtin.uri) with
    C(until)/C(retries).
  - An attempt passes only when every URL in O(urls) passes. A URL passes when its status is
    in O(status_codes) and every entry of O(json_fields) matches its JSON body.
  - The probe ends healthy after O(success_threshold) consecutive passing attempts, ends early
    after O(failure_threshold) consecutive failing attempts, and otherwise ends at O(deadline).
    The deadline also shortens the last sleep and every request timeout, so the module never
    runs noticeably longer than O(deadline). Name resolution is the exception, since the
    system resolver bounds it, not the probe.
  - Redirects are not followed (list 3xx codes in O(status_codes) if a redirect means
    healthy) and proxy environment variables are ignored, since the probe asks the service
    itself.
  - Never reports a change. When the endpoints do not become healthy the task fails with one
    line naming the URL, the number of attempts, the time spent, why the probe stopped and the
    last status and body excerpt (or the connection error).
  - The same probe runs without Ansible as C(python3 health_probe.py --url ...) from the
    C(module_utils) directory, for example from a systemd C(ExecStartPost=).
options:
  urls:
    description:
      - URLs to probe, C(http://) or C(https://). Each attempt requests all of them in order.
    type: list
    elements: str
    required: true
    aliases: [url]
  status_codes:
    description:
      - HTTP status codes that count as healthy.
    type: list
    elements: int
    default: [200]
  json_fields:
    description:
      - Expected values in the JSON body, keyed by dotted path (V(checks.db) means
        C(body["checks"]["db"]); a numeric segment indexes a list).
      - Values compare as JSON values, and booleans only match booleans (V(true) does not
        match C(1)).
      - When this is not empty, a body that is not JSON fails the URL, with the reason given.
    type: dict
    default: {}
  timeout:
    description:
      - Seconds each request may take (connect, send, response and body together).
      - Shortened to what is left of O(deadline).
    type: float
    default: 2
  interval:
    description:
      - Seconds to wait between the end of one attempt and the start of the next.
    type: float
    default: 1
  jitter:
    description:
      - Fraction of O(interval) added to or removed from each wait, drawn uniformly, so that
        many hosts do not probe in lockstep. Between V(0) and V(1).
    type: float
    default: 0.1
  initial_delay:
    description:
      - Seconds to wait before the first attempt. Must be less than O(deadline).
    type: float
    default: 0
  success_threshold:
    description:
      - Consecutive passing attempts needed to call the endpoints healthy. A failing attempt
        in between starts the count again. At least V(1).
    type: int
    default: 1
  failure_threshold:
    description:
      - Consecutive failing attempts after which the probe gives up before O(deadline).
      - V(0) disables this, so only O(deadline) ends an unhealthy probe.
    type: int
    default: 0
  deadline:
    description:
      - Seconds the whole probe may take, including O(initial_delay). Greater than V(0).
    type: float
    default: 60
  headers:
    description:
      - Request headers, for example C(Authorization) or C(Host).
      - Values are sent as strings. Set C(no_log) on the task when a header carries a secret.
    type: dict
    default: {}
  validate_certs:
    description:
      - Verify the certificate of C(https://) URLs. Set to V(false) for self-signed endpoints.
    type: bool
    default: true
  body_excerpt_bytes:
    description:
      - How many bytes of each response body to keep in RV(answers) and in the failure message.
    type: int
    default: 512
  probe_in_check_mode:
    description:
      - In check mode the module contacts nothing and returns RV(probed=false) unless this
        is V(true).
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - beamops.release.attributes
attributes:
  check_mode:
    support: full
    details: Sends no request in check mode unless O(probe_in_check_mode=true).
notes:
  - Uses a monotonic clock, so a wall clock step during the probe does not change its length.
seealso:
  - module: ansible.builtin.uri
  - module: ansible.builtin.wait_for
"""

EXAMPLES = r"""
- name: Wait for the new release to be ready before switching traffic
  beamops.release.health_check:
    url: http://127.0.0.1:4002/health/ready
    json_fields:
      status: ready
      checks.db: true
    success_threshold: 3
    interval: 1
    deadline: 60

- name: Give up early when both ports keep failing
  beamops.release.health_check:
    urls:
      - http://127.0.0.1:4002/health/live
      - http://127.0.0.1:4002/health/ready
    status_codes: [200, 204]
    failure_threshold: 5
    timeout: 1
    deadline: 30

- name: Probe a self-signed TLS endpoint with a token, also in check mode
  beamops.release.health_check:
    url: https://app.internal:8443/health
    headers:
      Authorization: "Bearer {{ health_token }}"
    validate_certs: false
    probe_in_check_mode: true
  no_log: true

- name: Record the answer without failing the play
  beamops.release.health_check:
    url: http://127.0.0.1:4000/health/ready
    deadline: 10
  register: health
  ignore_errors: true
"""

RETURN = r"""
msg:
  description: One line saying whether the endpoints are healthy, or why not.
  returned: always
  type: str
  sample: >-
    http://127.0.0.1:4002/health/ready not healthy after 12 attempts in 30.1s (deadline):
    last answer 503 {"status":"starting"}
probed:
  description: Whether any request was sent (false in check mode without O(probe_in_check_mode)).
  returned: always
  type: bool
  sample: true
passed:
  description: Whether the endpoints were healthy for O(success_threshold) consecutive attempts.
  returned: when probed
  type: bool
  sample: true
attempts:
  description: Number of attempts made, each requesting every URL.
  returned: when probed
  type: int
  sample: 3
consecutive_successes:
  description: Passing attempts in a row at the end of the probe.
  returned: when probed
  type: int
  sample: 3
elapsed:
  description: Seconds the probe took, initial delay included.
  returned: when probed
  type: float
  sample: 2.153
reason:
  description:
    - Why the probe stopped. V(healthy) when O(success_threshold) was reached,
      V(failure_threshold) when it gave up early, V(deadline) when time ran out.
  returned: when probed
  type: str
  choices: [healthy, failure_threshold, deadline]
  sample: healthy
answers:
  description: The last answer of each URL, in the order of O(urls).
  returned: when probed
  type: list
  elements: dict
  contains:
    url:
      description: The URL requested.
      type: str
      returned: always
      sample: http://127.0.0.1:4002/health/ready
    status:
      description: HTTP status of the last answer, or V(null) when the request failed.
      type: int
      returned: always
      sample: 503
    body:
      description: First O(body_excerpt_bytes) bytes of the body, decoded as UTF-8.
      type: str
      returned: always
      sample: '{"status":"starting"}'
    error:
      description: Why the last request got no HTTP answer (refused, timed out, TLS), else V(null).
      type: str
      returned: always
      sample: connection refused
    passed:
      description: Whether the last answer was healthy.
      type: bool
      returned: always
      sample: false
    failure:
      description: Why the last answer was not healthy (status, JSON field, error), else V(null).
      type: str
      returned: always
      sample: status 503 not in [200]
"""

# Ansible reads the documentation above before any import, hence E402.
from typing import Any, Dict  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils.health_probe import (  # noqa: E402
    ProbeConfig,
    failure_message,
    run_probe,
    success_message,
    validate_config,
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "urls": {"type": "list", "elements": "str", "required": True, "aliases": ["url"]},
    "status_codes": {"type": "list", "elements": "int", "default": [200]},
    "json_fields": {"type": "dict", "default": {}},
    "timeout": {"type": "float", "default": 2.0},
    "interval": {"type": "float", "default": 1.0},
    "jitter": {"type": "float", "default": 0.1},
    "initial_delay": {"type": "float", "default": 0.0},
    "success_threshold": {"type": "int", "default": 1},
    "failure_threshold": {"type": "int", "default": 0},
    "deadline": {"type": "float", "default": 60.0},
    "headers": {"type": "dict", "default": {}},
    "validate_certs": {"type": "bool", "default": True},
    "body_excerpt_bytes": {"type": "int", "default": 512},
    "probe_in_check_mode": {"type": "bool", "default": False},
}


def config_from_params(params: Dict[str, Any]) -> ProbeConfig:
    # `option: null` in a task arrives as None rather than the default; treat it as empty
    # and let validate_config name the option when empty is not allowed.
    headers = params["headers"] or {}
    return ProbeConfig(
        urls=list(params["urls"] or []),
        status_codes=list(params["status_codes"] or []),
        json_fields=dict(params["json_fields"] or {}),
        timeout=params["timeout"],
        interval=params["interval"],
        jitter=params["jitter"],
        initial_delay=params["initial_delay"],
        success_threshold=params["success_threshold"],
        failure_threshold=params["failure_threshold"],
        deadline=params["deadline"],
        # YAML turns `X-Retry: 1` into an int; a header value is text on the wire.
        headers={str(name): str(value) for name, value in headers.items()},
        # Only an explicit false turns verification off, never a missing value.
        validate_certs=params["validate_certs"] is not False,
        body_excerpt_bytes=params["body_excerpt_bytes"],
    )


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    config = config_from_params(module.params)
    errors = validate_config(config)
    if errors:
        module.fail_json(msg="; ".join(errors), probed=False)

    if module.check_mode and not module.params["probe_in_check_mode"]:
        module.exit_json(
            changed=False,
            probed=False,
            msg=f"check mode: did not probe {', '.join(config.urls)} "
            "(set probe_in_check_mode=true to probe in check mode)",
        )

    result = run_probe(config)
    fields = result.to_dict()
    fields.pop("exited")  # the module watches no process (only the unit's gate does)
    if not result.passed:
        module.fail_json(msg=failure_message(result, config), changed=False, probed=True, **fields)
    module.exit_json(msg=success_message(result), changed=False, probed=True, **fields)


if __name__ == "__main__":
    main()
