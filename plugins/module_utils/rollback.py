# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Roll one host back: plan, lock, cut over into the idle slot, mark the release left bad.

A warm idle slot that already runs the release (``beamops_keep_old_warm``) is only probed
and switched to: one proxy action. A stopped one (or one still draining from the deploy,
once its drain ends) is started through its gate. Either way the new slot is watched like a
deploy and traffic goes back if it fails. Shared by the ``slot_rollback`` module
(rollback.yml) and the ``<app>-rollback`` command on each host, which needs no controller:
both use the settings the last deploy saved (``<config_dir>/cutover.json``), the host's
release state and its deploy lock.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.beamops.release.plugins.module_utils import (
    cutover,
    health_probe,
    release_state,
)


@dataclasses.dataclass
class Plan:
    version: str
    slot: str
    from_slot: str
    from_version: str
    warm: bool  # the idle slot already runs `version`: a rollback is a switch
    configured: bool  # the idle slot has its environment files (needed to start it)
    noop: bool = False  # the release asked for is already active: nothing to do
    resumes: str = ""  # the interrupted rollback run whose target this plan keeps

    def describe(self) -> str:
        resumed = f"finishing {self.resumes}: " if self.resumes else ""
        if self.noop:
            return (
                f"{resumed}{self.version} is already active on slot {self.from_slot}: nothing to do"
            )
        how = "switch to the warm slot" if self.warm else "start it through its gate, then switch"
        return (
            f"{resumed}roll back from {self.from_version} (slot {self.from_slot}) to "
            f"{self.version} (slot {self.slot}): {how}"
        )


ROLLBACK_PURPOSE = "rollback to "


def interrupted_target(state: release_state.State) -> Tuple[Optional[str], str]:
    """A rollback whose run died (killed controller, lost host) leaves its lock, naming its
    target: a plain re-run goes to that release, not one further back. (target, which run)"""
    lock = state["lock"]
    if lock is None or not lock["purpose"].startswith(ROLLBACK_PURPOSE):
        return None, ""
    target = lock["purpose"][len(ROLLBACK_PURPOSE) :].strip()
    return target or None, f"the interrupted rollback of {lock['holder']} (run {lock['run_id']})"


def make_plan(
    settings: cutover.Settings, to: Optional[str], run: cutover.Run = cutover.run_command
) -> Plan:
    """What a rollback would do, or a CutoverError saying why there is none."""
    return plan_and_lock(settings, to, run)[0]


def plan_and_lock(
    settings: cutover.Settings, to: Optional[str], run: cutover.Run = cutover.run_command
) -> Tuple[Plan, Optional[release_state.DeployLock]]:
    """make_plan, and the deploy lock the plan read from the same state (None when free)."""
    state, _unused = release_state.read_state(settings.state_path)
    lock = state["lock"]
    resumes = ""
    if to is None:
        to, resumes = interrupted_target(state)
    # As the lock will: when a run was killed between its switch and its state write, the
    # slot the proxy routes to is the active one, whatever the file says.
    release_state.follow_the_proxy(state, settings.routing(), "", None)
    view = release_state.derive_view(state)
    active_slot, active_version = view["active_slot"], view["active_version"]
    if not active_slot:
        raise cutover.CutoverError(
            f"no release is active ({settings.state_path}): nothing to leave"
        )
    version = to or view["rollback_candidate"]
    installed = [release["version"] for release in view["releases"]]
    if not version:
        raise cutover.CutoverError(
            f"nothing to roll back to: no good release other than the active one "
            f"({active_version}); name one (installed: {', '.join(installed)})"
        )
    if version not in installed:
        raise cutover.CutoverError(
            f"rollback_to={version} is not installed here (installed: {', '.join(installed)})"
        )
    if version == active_version:
        # Asked for by name across a fleet, some hosts may already run it: not an error.
        return Plan(
            version, active_slot, active_slot, active_version, True, True, True, resumes
        ), lock
    slot = view["idle_slot"]
    link = os.path.join(settings.base_dir, "slots", slot)
    release_dir = os.path.join(settings.base_dir, "releases", version)
    linked = os.path.islink(link) and os.readlink(link) == release_dir
    running = run(["systemctl", "is-active", "--quiet", settings.unit(slot)], 10).returncode == 0
    # A slot still draining from the deploy is about to stop: the cutover waits, then starts it.
    running = running and not cutover.retirement_active(settings, slot, run)
    configured = os.path.exists(os.path.join(settings.config_dir, f"{slot}.env"))
    return Plan(
        version, slot, active_slot, active_version, linked and running, configured, False, resumes
    ), lock


def _lock(
    settings: cutover.Settings,
    run_id: str,
    holder: str,
    *,
    purpose: str,
    force: bool,
    pid: Optional[int],
) -> Tuple[bool, List[str]]:
    """Take the host's deploy lock for this run: (False when this run already held it, the
    warnings, e.g. that a dead run's lock was taken over)."""
    result = release_state.execute(
        release_state.Request(
            action="lock",
            path=settings.state_path,
            run_id=run_id,
            holder=holder,
            purpose=purpose,
            force=force,
            pid=os.getpid() if pid is None else pid,
            routing=dataclasses.asdict(settings.routing()),
        )
    )
    took = "already held by this run" not in str(result.get("msg", ""))
    return took, [str(w) for w in result.get("warnings", [])]


def roll_back(
    settings: cutover.Settings,
    plan: Plan,
    *,
    run_id: str,
    holder: str,
    host: str = "",
    force_lock: bool = False,
    pid: Optional[int] = None,
    keep_lock: bool = False,
    run: cutover.Run = cutover.run_command,
) -> cutover.Outcome:
    """Under the host's deploy lock: cut over to `plan`, then mark the release left bad.

    The lock names the target ("rollback to X") and `pid` (default this process): a caller that
    keeps it (`keep_lock`, rollback.yml gives it back in its last play) leaves it behind when it
    dies, for its re-run to take over and finish the same rollback (see make_plan)."""
    if not (plan.noop or plan.warm or plan.configured):
        raise cutover.CutoverError(
            f"slot {plan.slot} has no configuration on this host; roll back with rollback.yml, "
            "which renders it"
        )
    # Taken even with nothing to do: a lock a dead run left is taken over, so a re-run ends it.
    took, warnings = _lock(
        settings, run_id, holder, purpose=f"rollback to {plan.version}", force=force_lock, pid=pid
    )
    try:
        if plan.noop:
            outcome = cutover.Outcome(result="unchanged", stage="done", msg=plan.describe())
        else:
            outcome = _cut_over_and_mark(settings, plan, run_id, holder, host=host, run=run)
        outcome.warnings[:0] = warnings
        return outcome
    finally:
        if took and not keep_lock:
            release_state.execute(
                release_state.Request(action="unlock", path=settings.state_path, run_id=run_id)
            )


def _cut_over_and_mark(
    settings: cutover.Settings, plan: Plan, run_id: str, holder: str, *, host: str, run: cutover.Run
) -> cutover.Outcome:
    request = cutover.Request(
        slot=plan.slot,
        version=plan.version,
        from_slot=plan.from_slot,
        from_version=plan.from_version,
        event="rollback",
        run_id=run_id,
        host=host,
    )
    outcome = cutover.Cutover(settings, request, run=run).execute()
    if outcome.result == "ok":
        release_state.execute(
            release_state.Request(
                action="mark",
                path=settings.state_path,
                run_id=run_id,
                version=plan.from_version,
                status="bad",
                reason=f"rolled back by {holder}",
            )
        )
    return outcome


# --------------------------------------------------------------------------- the command


def local_holder() -> str:
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()} (local rollback command)"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Roll this host back to the previous good release (or VERSION), through "
        "the same lock, gate and watch as playbooks/rollback.yml. Exit 0 when the old release "
        "serves, 1 when the rollback failed (traffic stays where it was), 2 when refused.",
    )
    parser.add_argument("version", nargs="?", help="release to go back to")
    # Set by the installed command itself: the operator never types it.
    parser.add_argument("--config-dir", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--plan", action="store_true", help="say what would happen, do nothing")
    parser.add_argument(
        "--force-lock", action="store_true", help="take over a deploy lock another run holds"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = "rollback") -> int:
    args = build_parser(prog).parse_args(argv)
    if os.geteuid() != 0:
        health_probe.say(sys.stderr, f"{prog}: run as root (sudo {prog})")
        return 2
    try:
        settings = cutover.load_settings(os.path.join(args.config_dir, cutover.SETTINGS_FILE_NAME))
        plan = make_plan(settings, args.version)
        health_probe.say(sys.stdout, f"{prog}: {plan.describe()}")
        if args.plan:
            return 0
        run_id = f"local-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        outcome = roll_back(
            settings,
            plan,
            run_id=run_id,
            holder=local_holder(),
            host=socket.gethostname(),
            force_lock=args.force_lock,
        )
    except (cutover.CutoverError, release_state.ReleaseStateError) as exc:
        health_probe.say(sys.stderr, f"{prog}: refused: {exc}. Nothing was changed.")
        return 2
    for warning in outcome.warnings:
        health_probe.say(sys.stderr, f"{prog}: warning: {warning}")
    health_probe.say(sys.stdout, f"{prog}: {outcome.msg} ({_timings(outcome.timings)})")
    return 1 if outcome.result == "failed" else 0


def _timings(timings: Dict[str, Any]) -> str:
    parts: List[str] = [f"{name} {seconds:.1f}s" for name, seconds in timings.items()]
    return ", ".join(parts)
