# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rebuild a host's release state from what really runs there (``release_state`` action
``repair``).

When the state file is lost or damaged, the host still knows what matters: the releases on
disk (each with the install record written when it was unpacked: version, tarball checksum,
install time), the slot links (``slots/<slot>`` -> ``releases/<version>``), which slot units
run, and, above all, which slot the proxy routes to. The repair reads those and writes a
state that names them, changing nothing else: no unit is started, stopped or restarted and
the proxy is only read.

What cannot be known is said, not guessed: the serving release is recorded good (it serves),
the other slot's release only installed. A rollback then goes nowhere by default and must be
named (``rollback_to``): a release that failed its last deploy may well sit in the idle slot.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from contextlib import nullcontext
from datetime import datetime
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ansible_collections.beamops.release.plugins.module_utils import input_checks, routing
from ansible_collections.beamops.release.plugins.module_utils import release_state as rs
from ansible_collections.beamops.release.plugins.module_utils.atomic_file import write_if_changed

RECORD_FILE = ".beamops-release.json"
RECORD_MODE = 0o644
DAMAGED_SUFFIX = ".damaged-"


# --------------------------------------------------------------------------- install records
def record_path(release_dir: str) -> str:
    return os.path.join(release_dir, RECORD_FILE)


def write_record(release_dir: str, version: str, sha256: str, installed_at: str) -> None:
    """What the state says about a release, kept with the release itself: a lost state can be
    rebuilt with the checksum a later deploy of the same version is compared with."""
    text = json.dumps({"version": version, "sha256": sha256, "installed_at": installed_at})
    write_if_changed(record_path(release_dir), text + "\n", RECORD_MODE)


def read_record(release_dir: str, version: str) -> Optional[Dict[str, str]]:
    """The install record of the release in RELEASE_DIR if it is whole and names VERSION."""
    try:
        with open(record_path(release_dir), encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("version") != version:
        return None
    sha256, installed_at = raw.get("sha256"), raw.get("installed_at")
    if not rs.is_sha256(sha256) or not isinstance(installed_at, str):
        return None
    if rs.parse_timestamp(installed_at) is None:
        return None
    return {"sha256": str(sha256), "installed_at": installed_at}


# --------------------------------------------------------------------------- what runs
@dataclasses.dataclass
class Survey:
    """What the host shows, independent of any state file."""

    recorded: Dict[str, Dict[str, str]]  # version -> install record
    unrecorded: List[str]  # release directories without a usable record
    links: Dict[str, Optional[str]]  # slot -> the version its link points to
    running: List[str]  # slots whose unit is active
    routed: Optional[str]  # the slot the proxy routes to

    def serving_slot(self) -> Optional[str]:
        """The proxy's slot; without a proxy file, the only running slot with a release."""
        if self.routed is not None:
            return self.routed
        candidates = [slot for slot in self.running if self.links.get(slot)]
        return candidates[0] if len(candidates) == 1 else None

    def describe(self) -> Dict[str, Any]:
        return {
            "routed_slot": self.routed,
            "slots": {
                slot: {"version": self.links.get(slot), "running": slot in self.running}
                for slot in rs.SLOTS
            },
            "recorded": sorted(self.recorded),
            "unrecorded": self.unrecorded,
        }


def survey(releases_dir: str, where: routing.Routing, running: List[str]) -> Survey:
    recorded: Dict[str, Dict[str, str]] = {}
    unrecorded: List[str] = []
    try:
        names = sorted(os.listdir(releases_dir))
    except FileNotFoundError:
        names = []
    for name in names:
        release_dir = os.path.join(releases_dir, name)
        # Hidden names are unpacks in progress; anything else not a version is not ours.
        if not rs.is_version(name) or not os.path.isdir(release_dir):
            continue
        record = read_record(release_dir, name)
        if record is None:
            unrecorded.append(name)
        else:
            recorded[name] = record
    links = {slot: routing.slot_version(where, slot) for slot in rs.SLOTS}
    return Survey(recorded, unrecorded, links, sorted(running), routing.routed_slot(where))


# --------------------------------------------------------------------------- rebuilding
def _by_install(found: Survey) -> List[Tuple[str, Dict[str, str]]]:
    """The recorded releases in the order they were installed (then by version, for ties)."""
    return sorted(found.recorded.items(), key=lambda item: (item[1]["installed_at"], item[0]))


def rebuild(found: Survey, timestamp: str, run_id: Optional[str]) -> Tuple[rs.State, List[str]]:
    """A state naming what FOUND shows; returns it with what the operator must know."""
    state = rs.empty_state()
    for version, record in _by_install(found):
        rs.add_installed_release(
            state, version, record["sha256"], record["installed_at"], timestamp
        )
    notes = _place_slots(state, found, timestamp)
    notes += _unrecorded_notes(found)
    rs.append_history(
        state, timestamp, run_id, "repair", result="rebuilt",
        msg="state rebuilt from the host: " + "; ".join(notes),
    )  # fmt: skip
    return state, notes


def _place_slots(state: rs.State, found: Survey, timestamp: str) -> List[str]:
    """Active: the serving slot's release, recorded good. Previous: the other slot's, only
    installed (its verdict is unknown). Activation order: previous, then active."""
    serving = found.serving_slot()
    if serving is None:
        return [
            "no slot serves (the proxy routes to none and not exactly one slot runs): no "
            "release is active; the next deploy starts in slot blue"
        ]
    other = rs.SLOTS[1] if serving == rs.SLOTS[0] else rs.SLOTS[0]
    notes: List[str] = []
    previous = found.links.get(other)
    if previous in state["releases"]:
        _activate(state, str(previous), timestamp)
        state["previous"] = {"slot": other, "version": str(previous), "since": timestamp,
                             "event": "repair"}  # fmt: skip
        notes.append(
            f"slot {other} holds {previous}, recorded as installed only (whether it was good "
            f"is not known): a rollback must name it (rollback_to={previous})"
        )
    version = found.links.get(serving)
    if version not in state["releases"]:
        notes.append(
            f"slot {serving} serves but runs no recorded release ({version or 'no link'}): no "
            "release is active; the next deploy leaves that slot alone"
        )
        return notes
    _activate(state, str(version), timestamp)
    release = state["releases"][str(version)]
    release["status"] = "good"
    release["reason"] = "serving when the state was rebuilt"
    state["active"] = {"slot": serving, "version": str(version), "since": timestamp,
                       "event": "repair"}  # fmt: skip
    notes.insert(0, f"{version} serves on slot {serving} (recorded good)")
    return notes


def _activate(state: rs.State, version: str, timestamp: str) -> None:
    state["counters"]["activation"] += 1
    release = state["releases"][version]
    release["activated_seq"] = state["counters"]["activation"]
    release["activated_at"] = timestamp


def _unrecorded_notes(found: Survey) -> List[str]:
    if not found.unrecorded:
        return []
    return [
        f"releases without an install record left out: {', '.join(found.unrecorded)} (remove "
        "them, or deploy under a new version)"
    ]


def reconcile(
    state: rs.State, found: Survey, where: routing.Routing, timestamp: str, run_id: Optional[str]
) -> List[str]:
    """An intact state made to agree with the host: it learns recorded releases it lacks,
    follows the proxy and forgets releases whose directory is gone. Returns what changed."""
    notes: List[str] = []
    for version, record in _by_install(found):
        if version not in state["releases"]:
            rs.add_installed_release(
                state, version, record["sha256"], record["installed_at"], timestamp
            )
            notes.append(f"learned {version} (on disk, not in the state)")
    # After learning: the proxy may route to a release the state did not know.
    view, followed = rs.follow_the_proxy(state, where, timestamp, run_id)
    # A proxy routing to a release nobody knows is left for the operator: saying so again on
    # each repair must not count as a change (the repair stays idempotent).
    unresolved: List[str] = []
    if followed:
        (notes if view.get("drift_repaired") else unresolved).append(followed)
    kept = {ref["version"] for ref in (state["active"], state["previous"]) if ref}
    on_disk = set(found.recorded) | set(found.unrecorded)
    for version in sorted(set(state["releases"]) - on_disk - kept):
        del state["releases"][version]
        notes.append(f"forgot {version} (its directory is gone)")
    if notes:
        rs.append_history(
            state, timestamp, run_id, "repair", result="reconciled", msg="; ".join(notes)
        )
    return notes + unresolved + _unrecorded_notes(found)


# --------------------------------------------------------------------------- the action
class RepairTarget(NamedTuple):
    where: routing.Routing
    releases_dir: str


def repair_target(request: rs.Request) -> RepairTarget:
    """The validated request's routing (which proxy, which app's units) and releases directory:
    checked before any systemctl call or file read uses them."""
    rs.validate_request(request)
    try:
        where = routing.routing_from(request.routing)
    except ValueError as exc:
        raise rs.ValidationError(str(exc)) from exc
    if where is None:
        raise rs.ValidationError("routing is required when action=repair")
    if not input_checks.APP_NAME.fullmatch(where.app):
        raise rs.ValidationError(
            f"routing.app must be the app's name (it names its systemd units), got {where.app!r}"
        )
    return RepairTarget(where, str(request.releases_dir))


def repair(
    request: rs.Request,
    running: List[str],
    check_mode: bool = False,
    now: Optional[datetime] = None,
) -> Dict[str, Any]:
    """Rebuild a missing or damaged state file, or reconcile an intact one, from the host.
    A damaged file is kept as ``<path>.damaged-<time>``. Refused while a cutover runs, and
    (intact state) while another run holds the deploy lock, unless force."""
    where, releases_dir = repair_target(request)
    busy = rs.cutover_running(request.path)
    if busy:
        raise rs.ReleaseStateError(
            f"a cutover is running on this host (pid {busy}): repair once it has ended"
        )
    moment = now if now is not None else rs.utc_now()
    timestamp = rs.format_timestamp(moment)
    found = survey(releases_dir, where, running)
    with rs.exclusive_file_lock(request.path) if not check_mode else nullcontext():
        before, before_text, damage = _read_for_repair(request.path)
        if damage is None and before_text is not None:
            _refuse_if_locked(before, request, moment)
            after = copy.deepcopy(before)
            notes = reconcile(after, found, where, timestamp, request.run_id)
            rebuilt = False
        else:
            after, notes = rebuild(found, timestamp, request.run_id)
            rebuilt = True
        changed = after != before or damage is not None
        after_text = rs.serialize_state(after) if changed else (before_text or "")
        kept_as = None
        if damage is not None:
            kept_as = request.path + DAMAGED_SUFFIX + moment.strftime("%Y%m%dT%H%M%SZ")
        if changed and not check_mode:
            if kept_as:
                os.replace(request.path, kept_as)
            rs.write_state_file(request.path, after_text)
    result = _result(
        request, after, changed=changed, before_text=before_text, after_text=after_text,
        rebuilt=rebuilt,
    )  # fmt: skip
    result["repair"] = dict(found.describe(), rebuilt=rebuilt, damage=damage,
                            damaged_file_kept_as=kept_as, notes=notes)  # fmt: skip
    # What was done, and what stays for the operator to do (releases it could not vouch for).
    result["warnings"] = [f"state repair: {note}" for note in notes]
    return result


def _read_for_repair(path: str) -> Tuple[rs.State, Optional[str], Optional[str]]:
    """(state, text, damage): a damaged file reads as the empty state with why it is damaged;
    a newer schema or an unreadable file stays an error (nothing to rebuild over)."""
    try:
        state, text = rs.read_state(path)
    except rs.DamagedStateError as exc:
        return rs.empty_state(), None, exc.reason
    return state, text, None


def _refuse_if_locked(state: rs.State, request: rs.Request, now: datetime) -> None:
    lock = state["lock"]
    if lock is not None and lock["run_id"] != request.run_id and not request.force:
        raise rs.LockHeldError(
            f"cannot repair: {rs.describe_lock(request.path, lock, now)}; run with force to "
            "repair anyway",
            lock,
        )


def _result(
    request: rs.Request,
    state: rs.State,
    *,
    changed: bool,
    before_text: Optional[str],
    after_text: str,
    rebuilt: bool,
) -> Dict[str, Any]:
    if not changed:
        msg = "the release state already agrees with the host"
    elif rebuilt:
        active = state["active"]
        msg = "release state rebuilt from the host: " + (
            f"{active['version']} active on {active['slot']}" if active else "no release active"
        )
    else:
        msg = "release state reconciled with the host"
    result: Dict[str, Any] = {"changed": changed, "msg": msg, "state_file": request.path}
    result.update(rs.derive_view(state))
    result["diff"] = {
        "before": before_text or "",
        "after": after_text,
        "before_header": request.path,
        "after_header": request.path,
    }
    return result
