#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible entry point for the release state file; the logic lives in module_utils."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_state
short_description: Own a host's blue-green release state file (active slot, releases, deploy lock)
version_added: 0.1.0
description:
  - Reads and updates the per-host release state file of a blue-green deployment, so that
    playbooks and roles never parse JSON in Jinja. Every action returns the same derived view
    (active and idle slot, previous release, last good release, rollback candidate, ordered
    releases, deploy lock) computed from the state after the action.
  - The file (default C(<base_dir>/release-state.json)) is JSON with a C(schema) number. It is
    replaced atomically (temporary file in the same directory, fsync, rename, fsync of the
    directory) with mode C(0644), and every read-modify-write runs under an exclusive C(flock)
    on the sibling C(<path>.lock) file, so two ansible runs against one host cannot interleave.
  - Releases are ordered by the install sequence recorded in the state, never by file times.
  - The deploy lock (I(action=lock)/I(action=unlock)) is a record in the state naming which run
    deploys what since when. While another run holds it, I(action=register), I(action=mark),
    I(action=activate) and I(action=prune) fail unless they pass that run's I(run_id) or
    I(force=true). I(action=record_event) and I(action=read) are always allowed.
  - The state holds no secrets. Do not put any in I(msg), I(reason), I(holder) or I(purpose).
author:
  - beamops.release maintainers (@beamops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - beamops.release.attributes
attributes:
  check_mode:
    support: full
    details: Computes the new state and reports C(changed) honestly; writes nothing, not even the
      lock file, and I(action=prune) deletes nothing.
  diff_mode:
    support: full
    details: Shows the state file text before and after.
options:
  action:
    description:
      - C(read) returns the view and never changes anything. A missing file is an empty state;
        a corrupt file is an error naming the path.
      - C(lock) acquires the per-host deploy lock for I(run_id). Held by another run, it fails
        naming the holder, purpose, start time and run, unless I(force=true) or the lock is older
        than I(stale_after). Already held by the same I(run_id) it is C(ok).
      - C(unlock) releases the lock held by I(run_id); a free lock is C(ok); a lock held by
        another run fails unless I(force=true).
      - C(register) records an installed release I(version) with its I(sha256) (status
        C(installed)). The same version with a different checksum fails.
      - C(mark) sets a registered release's I(status) (C(good) or C(bad)) and I(reason).
      - C(activate) records that I(version) now serves from I(slot); the active release becomes
        C(previous). It marks nothing good or bad by itself. Idempotent.
      - C(record_event) appends an I(event)/I(result)/I(msg) entry to the history.
      - C(prune) deletes old release directories in I(releases_dir) (see I(keep)) and drops them
        from the state. It never removes the active, previous, last good or rollback candidate
        release, nor anything in I(protect); directories the state does not know are reported in
        C(unknown) and left alone.
      - C(repair) makes the state agree with what runs on the host (needs I(routing)). A missing
        or damaged file is rebuilt from the release directories (each with the install record
        written when it was unpacked), the slot links, the slot units that run and the slot the
        proxy routes to - that slot's release is active and recorded good, the other slot's is
        previous but only installed (a rollback must name it). A damaged file is kept as
        C(<path>.damaged-<time>); a file of a newer schema is refused. An intact state follows
        the proxy, learns recorded releases it lacks and forgets releases whose directory is
        gone. Nothing is started, stopped or reloaded. Refused while a cutover runs on the host,
        and while another run holds the deploy lock unless I(force=true).
    type: str
    required: true
    choices: [read, lock, unlock, register, mark, activate, record_event, prune, repair]
  base_dir:
    description:
      - Application base directory. The state file defaults to C(<base_dir>/release-state.json)
        and I(releases_dir) to C(<base_dir>/releases).
      - One of I(base_dir) or I(path) is required.
    type: path
  path:
    description:
      - Absolute path of the state file. Overrides the default derived from I(base_dir).
      - Its directory must exist (except for I(action=read) and check mode).
    type: path
  run_id:
    description:
      - Identifies one playbook run (for example a timestamp plus controller PID, or a CI job
        id). Required for I(action=lock); needed by I(action=unlock) unless I(force=true).
      - Pass the same value to every action of the run; it is recorded in each history entry.
    type: str
  holder:
    description:
      - Who takes the deploy lock, shown to anyone who finds it held, for example
        C(alice@controller). Required for I(action=lock).
    type: str
  purpose:
    description: What the lock is for, shown to anyone who finds it held (C(deploy 0.2.0)).
    type: str
    default: deploy
  pid:
    description: Process id of the controlling run, recorded in the lock for information only.
    type: int
  force:
    description:
      - With I(action=lock), take the lock from another run; with I(action=unlock), release
        another run's lock. The result's C(stolen_from) names the previous holder.
      - With I(action=register), I(action=mark), I(action=activate) or I(action=prune), proceed
        although another run holds the deploy lock.
    type: bool
    default: false
  stale_after:
    description:
      - With I(action=lock), a lock held by another run for more than this many seconds counts
        as abandoned and is taken over (reported in C(stolen_from) and as a warning).
    type: int
  version:
    description:
      - Release version; it names the directory C(<releases_dir>/<version>). Letters, digits and
        C(. _ + -), starting with a letter or digit.
      - Required for I(action=register), I(action=mark) and I(action=activate); optional for
        I(action=record_event).
    type: str
  sha256:
    description: SHA-256 of the release tarball, 64 hex digits. Required for I(action=register).
    type: str
  status:
    description: New status for I(action=mark).
    type: str
    choices: [good, bad]
  reason:
    description: Why a release was marked (I(action=mark)), for example the failing check.
    type: str
  slot:
    description:
      - Blue-green slot. Required for I(action=activate); optional for I(action=record_event).
    type: str
    choices: [blue, green]
  event:
    description:
      - For I(action=activate), what caused the switch (C(deploy), C(rollback), C(switch_back));
        default C(deploy). Required for I(action=record_event).
      - A lowercase word (letters, digits, C(_ . -)).
    type: str
  result:
    description: Outcome recorded by I(action=record_event), a lowercase word such as C(failed).
    type: str
  msg:
    description: Free text for the history entry of I(action=activate) or I(action=record_event).
    type: str
  releases_dir:
    description:
      - Directory holding one sub-directory per release, for I(action=prune). Defaults to
        C(<base_dir>/releases).
    type: path
  keep:
    description:
      - For I(action=prune), how many of the most recently installed releases (by install
        sequence) to keep, at least 1. Protected releases are kept on top of these.
    type: int
  protect:
    description: For I(action=prune), versions never to remove, whatever their age.
    type: list
    elements: str
    default: []
  metrics_dir:
    description:
      - For I(action=lock) and I(action=unlock), node_exporter's textfile directory -
        C(beamops_<app>_lock.prom) there says whether the lock is held, since when, by whom and
        why (C(beamops_deploy_lock_held), C(beamops_deploy_lock_since_timestamp_seconds)).
      - Empty (or no I(app)) - not written. A failed write is a warning.
    type: path
    default: ""
  app:
    description: The application the lock metrics are labelled with (with I(metrics_dir)).
    type: str
    default: ""
  routing:
    description:
      - For I(action=read), I(action=lock) and I(action=repair) (required), where the host's
        proxy says which slot it routes to - keys C(proxy) (C(nginx) or C(haproxy)), C(app),
        C(nginx_upstream_file), C(haproxy_map_file) and C(slots_dir) (the slot links).
      - I(action=read) then reports RV(routed_slot) and RV(drift). I(action=lock) also makes the
        state follow the proxy when they disagree (a run killed between its switch and its state
        write); the routed slot and the release its link points to become the active ones, with
        a C(repair) history entry and a warning. The proxy is never changed.
    type: dict
notes:
  - Timestamps are UTC, ISO-8601 with a C(Z) suffix. The history keeps the last 200 entries.
  - The module runs on the managed host and needs only the Python standard library (3.8+).
seealso:
  - name: Blue-green deployment
    description: The deployment pattern this state file records.
    link: https://martinfowler.com/bliki/BlueGreenDeployment.html
"""

EXAMPLES = r"""
- name: Take the deploy lock for this run
  beamops.release.release_state:
    base_dir: /opt/app
    action: lock
    run_id: "{{ deploy_run_id }}"
    holder: "{{ lookup('env', 'USER') }}@{{ lookup('pipe', 'hostname') }}"
    purpose: "deploy {{ app_version }}"
    stale_after: 7200

- name: Record the unpacked release
  beamops.release.release_state:
    base_dir: /opt/app
    action: register
    run_id: "{{ deploy_run_id }}"
    version: "{{ app_version }}"
    sha256: "{{ tarball_sha256 }}"
  register: release

- name: Start the new release in the idle slot
  ansible.builtin.debug:
    msg: "deploying {{ app_version }} to {{ release.idle_slot }}"

- name: Switch traffic and record it
  beamops.release.release_state:
    base_dir: /opt/app
    action: activate
    run_id: "{{ deploy_run_id }}"
    slot: "{{ release.idle_slot }}"
    version: "{{ app_version }}"
    event: deploy

- name: The readiness gate passed
  beamops.release.release_state:
    base_dir: /opt/app
    action: mark
    run_id: "{{ deploy_run_id }}"
    version: "{{ app_version }}"
    status: good
    reason: readiness gate passed

# After a switch, the idle slot still holds the previous release: switching back is instant
# when the rollback candidate is that release (otherwise the role re-points the idle slot first).
- name: Roll back to the default candidate
  beamops.release.release_state:
    base_dir: /opt/app
    action: activate
    run_id: "{{ deploy_run_id }}"
    slot: "{{ release.idle_slot }}"
    version: "{{ release.rollback_candidate }}"
    event: rollback
    msg: readiness gate failed on {{ release.idle_slot }}
  when: release.rollback_candidate is not none

- name: Record a failed deploy
  beamops.release.release_state:
    base_dir: /opt/app
    action: record_event
    run_id: "{{ deploy_run_id }}"
    event: deploy
    result: failed
    version: "{{ app_version }}"
    slot: green
    msg: "deploy failed: readiness gate on green"

- name: Keep the three newest releases (and whatever rollback needs)
  beamops.release.release_state:
    base_dir: /opt/app
    action: prune
    run_id: "{{ deploy_run_id }}"
    keep: 3

- name: Release the deploy lock
  beamops.release.release_state:
    base_dir: /opt/app
    action: unlock
    run_id: "{{ deploy_run_id }}"

- name: Where do things stand?
  beamops.release.release_state:
    base_dir: /opt/app
    action: read
  register: current
"""

RETURN = r"""
msg:
  description: One line saying what happened.
  returned: always
  type: str
  sample: release 0.2.0 active on green (deploy)
state_file:
  description: The state file.
  returned: always
  type: str
  sample: /opt/app/release-state.json
state:
  description:
    - The whole state after the action (in check mode, the state the action would write).
    - C(schema) is 1. C(counters) holds the last install and activation sequence numbers
      issued. C(active)/C(previous) are C(null) or C({slot, version, since, event}).
      C(releases) maps each version to C({seq, status, sha256, installed_at, updated_at,
      reason, activated_seq, activated_at}). C(history) is the last 200 entries
      C({at, event, version, slot, result, msg, run_id}). C(lock) is C(null) or
      C({run_id, holder, purpose, since, pid}).
  returned: always
  type: dict
  sample:
    schema: 1
    counters: {install: 2, activation: 2}
    active: {slot: green, version: 0.2.0, since: "2026-01-31T12:00:00Z", event: deploy}
    previous: {slot: blue, version: 0.1.0, since: "2026-01-30T09:00:00Z", event: deploy}
    releases:
      0.1.0:
        seq: 1
        status: good
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        installed_at: "2026-01-30T08:59:00Z"
        updated_at: "2026-01-30T09:01:00Z"
        reason: readiness gate passed
        activated_seq: 1
        activated_at: "2026-01-30T09:00:00Z"
    history:
      - at: "2026-01-31T12:00:00Z"
        event: deploy
        version: 0.2.0
        slot: green
        result: activated
        msg: null
        run_id: "20260131T115800-4242"
    lock: null
active_slot:
  description: Slot of the active release, C(null) when nothing is active.
  returned: always
  type: str
  sample: green
active_version:
  description: Version of the active release, C(null) when nothing is active.
  returned: always
  type: str
  sample: 0.2.0
idle_slot:
  description: The slot not serving traffic, where the next release goes; C(blue) when nothing
    is active.
  returned: always
  type: str
  sample: blue
previous:
  description: The release that was active before the current one, C(null) if none.
  returned: always
  type: dict
  contains:
    slot:
      description: Slot it ran in.
      type: str
    version:
      description: Its version.
      type: str
    since:
      description: When it had become active.
      type: str
    event:
      description: What had activated it (deploy, rollback, ...).
      type: str
  sample: {slot: blue, version: 0.1.0, since: "2026-01-30T09:00:00Z", event: deploy}
last_good_version:
  description:
    - The most recently activated release whose status is C(good); it may be the active one.
      Releases never activated do not count. C(null) if none.
  returned: always
  type: str
  sample: 0.2.0
rollback_candidate:
  description:
    - Where a rollback goes by default, the most recently activated release whose status is
      C(good) and that is not the active release. C(null) if there is none.
  returned: always
  type: str
  sample: 0.1.0
releases:
  description: Known releases, oldest install first (install sequence, not file times).
  returned: always
  type: list
  elements: dict
  contains:
    version:
      description: Release version.
      type: str
    seq:
      description: Install sequence number, increasing with every new registration.
      type: int
    status:
      description: C(installed), C(good) or C(bad).
      type: str
    sha256:
      description: Checksum recorded at registration.
      type: str
    installed_at:
      description: When it was registered.
      type: str
    updated_at:
      description: When its record last changed.
      type: str
    reason:
      description: Reason given with the last I(action=mark).
      type: str
    activated_seq:
      description: Activation sequence number of its latest activation, C(null) if never.
      type: int
    activated_at:
      description: When it was last activated, C(null) if never.
      type: str
    active:
      description: Whether it is the active release.
      type: bool
    previous:
      description: Whether it is the previous release.
      type: bool
lock:
  description: The deploy lock, C(null) when free.
  returned: always
  type: dict
  contains:
    run_id:
      description: Run holding it.
      type: str
    holder:
      description: Who took it.
      type: str
    purpose:
      description: What for.
      type: str
    since:
      description: When it was taken.
      type: str
    pid:
      description: Controller process id given when it was taken, or C(null).
      type: int
  sample: {run_id: "20260131T115800-4242", holder: alice@ctl, purpose: deploy 0.2.0,
           since: "2026-01-31T11:58:00Z", pid: 4242}
routed_slot:
  description: The slot the proxy routes to (C(null) when its routing file names none).
  returned: when I(routing) is given
  type: str
drift:
  description: Why the state and the proxy disagree, or an empty string when they agree.
  returned: when I(routing) is given
  type: str
drift_repaired:
  description: True when I(action=lock) made the state follow the proxy.
  returned: when the state was repaired
  type: bool
stolen_from:
  description: The lock that I(force) or I(stale_after) took over or released, else C(null).
  returned: when I(action) is C(lock) or C(unlock)
  type: dict
removed:
  description: Versions pruned (in check mode, that would be pruned), oldest first.
  returned: when I(action=prune)
  type: list
  elements: str
  sample: [0.1.0]
kept:
  description: Known versions kept, oldest first.
  returned: when I(action=prune)
  type: list
  elements: str
  sample: [0.2.0, 0.3.0]
kept_reasons:
  description: For each kept version, why (C(recent), C(active), C(previous), C(last_good),
    C(rollback_candidate), C(protect)).
  returned: when I(action=prune)
  type: dict
  sample: {0.2.0: [previous, last_good], 0.3.0: [recent, active]}
unknown:
  description: Entries of I(releases_dir) the state does not know (left alone).
  returned: when I(action=prune)
  type: list
  elements: str
  sample: [0.4.0-unpacking]
skipped:
  description: Versions due for removal but left alone, with the reason (symlink, not a
    directory, outside I(releases_dir)).
  returned: when I(action=prune)
  type: dict
missing:
  description: Kept versions whose directory does not exist (also reported as warnings).
  returned: when I(action=prune)
  type: list
  elements: str
repair:
  description:
    - What the host showed and what the repair did - C(routed_slot), C(slots) (each slot's
      C(version) by its link and whether its unit C(running)), C(recorded) and C(unrecorded)
      release directories, C(rebuilt) (a missing or damaged file) or reconciled, C(damage)
      (why the file was damaged), C(damaged_file_kept_as), and C(notes) (also warnings).
  returned: when I(action=repair)
  type: dict
  sample:
    routed_slot: green
    slots: {blue: {version: 0.1.0, running: true}, green: {version: 0.2.0, running: true}}
    recorded: [0.1.0, 0.2.0]
    unrecorded: []
    rebuilt: true
    damage: null
    damaged_file_kept_as: null
    notes: ["0.2.0 serves on slot green (recorded good)"]
"""

from typing import Any, Dict, List, Optional  # noqa: E402 - after the documentation blocks, as ansible expects

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.beamops.release.plugins.module_utils import (  # noqa: E402
    deploy_metrics,
    state_repair,
)
from ansible_collections.beamops.release.plugins.module_utils.release_state import (  # noqa: E402
    ACTIONS,
    MARKABLE_STATUSES,
    SLOTS,
    LockHeldError,
    ReleaseStateError,
    execute,
    request_from_params,
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "action": {"type": "str", "required": True, "choices": list(ACTIONS)},
    "base_dir": {"type": "path"},
    "path": {"type": "path"},
    "run_id": {"type": "str"},
    "holder": {"type": "str"},
    "purpose": {"type": "str", "default": "deploy"},
    "pid": {"type": "int"},
    "force": {"type": "bool", "default": False},
    "stale_after": {"type": "int"},
    "version": {"type": "str"},
    "sha256": {"type": "str"},
    "status": {"type": "str", "choices": list(MARKABLE_STATUSES)},
    "reason": {"type": "str"},
    "slot": {"type": "str", "choices": list(SLOTS)},
    "event": {"type": "str"},
    "result": {"type": "str"},
    "msg": {"type": "str"},
    "releases_dir": {"type": "path"},
    "keep": {"type": "int"},
    "protect": {"type": "list", "elements": "str", "default": []},
    "routing": {"type": "dict"},
    "metrics_dir": {"type": "path", "default": ""},
    "app": {"type": "str", "default": ""},
}

REQUIRED_IF = [
    ("action", "lock", ["run_id", "holder"]),
    ("action", "register", ["version", "sha256"]),
    ("action", "mark", ["version", "status"]),
    ("action", "activate", ["slot", "version"]),
    ("action", "record_event", ["event"]),
    ("action", "prune", ["keep"]),
    ("action", "repair", ["routing"]),
]


def running_slots(module: AnsibleModule, app: str) -> List[str]:
    """The slots whose unit systemd reports active."""
    running = []
    for slot in SLOTS:
        rc, _out, _err = module.run_command(
            ["systemctl", "is-active", "--quiet", f"{app}@{slot}.service"]
        )
        if rc == 0:
            running.append(slot)
    return running


def publish_lock_metrics(module: AnsibleModule, lock: Optional[Dict[str, Any]]) -> None:
    """The lock for monitoring ("held too long"); never a reason to fail the lock itself."""
    metrics_dir, app = module.params["metrics_dir"], module.params["app"]
    if not (metrics_dir and app):
        return
    try:
        deploy_metrics.publish_lock(metrics_dir, app, lock)
    except OSError as exc:
        module.warn(f"the deploy lock's metrics were not written in {metrics_dir}: {exc}")


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[["base_dir", "path"]],
        required_if=REQUIRED_IF,
        supports_check_mode=True,
    )
    try:
        request = request_from_params(module.params)
        if request.action == "repair":
            running = running_slots(module, state_repair.repair_target(request).where.app)
            result = state_repair.repair(request, running, check_mode=module.check_mode)
        else:
            result = execute(request, check_mode=module.check_mode)
    except LockHeldError as exc:
        module.fail_json(msg=str(exc), lock=exc.lock)
    except ReleaseStateError as exc:
        module.fail_json(msg=str(exc))
    diff = result.pop("diff")
    for warning in result.pop("warnings"):
        module.warn(warning)
    if request.action in ("lock", "unlock") and not module.check_mode:
        publish_lock_metrics(module, result.get("lock"))
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
