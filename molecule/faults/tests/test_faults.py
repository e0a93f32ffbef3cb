"""The fault suite: each fault under load, on two real hosts (bo1 nginx, bo2 HAProxy).

Each test starts from, and leaves, 0.2.0 serving on green (the first test puts it there).
Each asserts a clear error naming the cause, the state file consistent with what serves, no
failed request unless the fault itself takes a host's proxy down, and a plain re-run that
converges. docs/faults.md maps item 6 of the fault list to these tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from tests.tools.fleet import (
    COOKIE,
    HOSTS,
    SECRET_KEY_BASE,
    STATE_FILE,
    Fleet,
    LoadedFleet,
    assert_refused_at_the_gate,
    deploykit,
)

HARNESS = deploykit.REPO / "tests" / "harness" / "testhosts.py"


def on_host(name: str, command: str) -> str:
    """Run a command inside a test host without SSH (the harness enters its namespaces)."""
    done = subprocess.run(
        [sys.executable, str(HARNESS), "exec", name, "--", "sh", "-c", command],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip()


def test_the_fleet_serves_0_2_0_before_the_faults(fleet: Fleet) -> None:
    run = fleet.deploy("0.2.0")
    assert run.rc == 0, run.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def test_the_release_s_words_reach_the_controller_without_its_secrets(fleet: Fleet) -> None:
    """The release prints a secret in its FATAL line: the error and the state file carry the
    line with the secret redacted."""
    leaked = "leaked-secret-value-0123456789"
    secrets = {"SECRET_KEY_BASE": SECRET_KEY_BASE, "FAIL_KIND": leaked}
    run = fleet.deploy("0.3.0", "-e", json.dumps({"beamops_secret_env": secrets}))
    assert run.rc != 0
    assert (
        'FAIL_KIND must be all, readiness or http_500, got "[redacted FAIL_KIND]"' in run.output
    ), run.tail()
    assert leaked not in run.output
    for name, host in fleet.hosts.items():
        assert leaked not in host.file(STATE_FILE).content_string, name
        assert host.file(STATE_FILE).mode == 0o600, name
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def assert_the_live_release_served_on(fleet: Fleet, load: LoadedFleet) -> None:
    """A failed deploy left 0.2.0 serving on green with no failed request, the state on green
    and no lock behind."""
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    assert load.failed() == 0, load.results
    for name in HOSTS:
        state = fleet.state(name)
        assert (state["active"]["slot"], state["lock"]) == ("green", None)


def converge_then_back_to_0_2_0(fleet: Fleet, version: str, *args: str) -> None:
    """The fault is gone: a plain re-run converges; then back to 0.2.0 for the next tests."""
    again = fleet.deploy(version, *args)
    assert again.rc == 0, again.tail()
    assert fleet.served() == {name: f"sample_app {version} on blue" for name in HOSTS}
    for name in HOSTS:
        state = fleet.state(name)
        assert (state["active"]["version"], state["lock"]) == (version, None)
        assert fleet.proxy_config_slot(name) == "blue"
    back = fleet.playbook("rollback", "-e", "rollback_to=0.2.0")
    assert back.rc == 0, back.tail()


def test_an_idle_slot_s_port_taken_by_another_process_fails_safely_then_converges(
    fleet: Fleet,
) -> None:
    """Another process listens on the idle slot's port (blue, 4001): the release cannot bind
    it and says so; the live release serves on, the state is untouched; a plain re-run after
    the port is free converges."""
    squat = "systemd-run --unit=squatter python3 -m http.server --bind 127.0.0.1 4001"
    for host in fleet.hosts.values():
        host.check_output(squat)
    try:
        with fleet.under_load() as load:
            run = fleet.deploy("0.3.0")
        assert_refused_at_the_gate(run, r".*?FATAL: cannot listen.*?PORT=4001")
        assert_the_live_release_served_on(fleet, load)
    finally:
        for host in fleet.hosts.values():
            host.run("systemctl stop squatter")
    converge_then_back_to_0_2_0(fleet, "0.3.0")
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


BROKEN_BY_SOMEONE_ELSE = {
    "bo1": "/etc/nginx/conf.d/zz-broken.conf",  # nginx loads conf.d/*.conf
    "bo2": "/etc/haproxy/beamops.d/zz-broken.cfg",  # and HAProxy beamops.d/
}


def test_a_proxy_configuration_broken_by_someone_else_stops_the_deploy_not_traffic(
    fleet: Fleet,
) -> None:
    """Another file the proxy loads has a syntax error. nginx -t (before the switch) and
    haproxy -c (before the new frontend is written) refuse, naming that file; traffic stays on
    the live release; once the file is fixed a plain re-run converges."""
    for name, path in BROKEN_BY_SOMEONE_ELSE.items():
        fleet.hosts[name].check_output(f"echo 'this is not a proxy directive;' > {path}")
    try:
        with fleet.under_load() as load:
            # A changed frontend (maxconn) makes HAProxy's configuration be checked again.
            run = fleet.deploy("0.3.0", "-e", "beamops_proxy_maxconn=4000")
        assert run.rc != 0
        assert re.search(r"bo1: .*nginx.*zz-broken\.conf", run.output, re.DOTALL), run.tail()
        assert re.search(r"haproxy -c rejected.*zz-broken\.cfg", run.output, re.DOTALL), run.tail()
        assert_the_live_release_served_on(fleet, load)
    finally:
        for name, path in BROKEN_BY_SOMEONE_ELSE.items():
            fleet.hosts[name].run(f"rm -f {path}")
    converge_then_back_to_0_2_0(fleet, "0.3.0", "-e", "beamops_proxy_maxconn=4000")
    restored = fleet.deploy("0.2.0")  # the frontend back to the default maxconn
    assert restored.rc == 0, restored.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def test_an_unprivileged_user_cannot_hold_the_deploy_lock(fleet: Fleet) -> None:
    """The lock file is root's alone: a local user cannot flock it and block every deploy."""
    for name, host in fleet.hosts.items():
        lock_file = host.file(f"{STATE_FILE}.lock")
        assert (lock_file.user, lock_file.mode) == ("root", 0o600), name
        held = host.run(f"runuser -u nobody -- flock -n {STATE_FILE}.lock sleep 30")
        assert held.rc != 0 and "Permission denied" in held.stderr, (name, held.stderr)


def test_checksum_mismatch_is_refused_before_any_host_changes(fleet: Fleet) -> None:
    before = fleet.state_bytes()
    args = [
        "beamops_release_sha256=" + "0" * 64 if a.startswith("beamops_release_sha256=") else a
        for a in deploykit.release_args("0.3.0")
    ]
    run = fleet.playbook("deploy", *args)
    assert run.rc != 0
    assert "Checksum mismatch" in run.output and "beamops_release_sha256" in run.output, run.tail()
    assert fleet.state_bytes() == before
    for host in fleet.hosts.values():
        assert not host.file("/opt/sample_app/releases/.0.3.0.partial").exists


# What a host looks like to the app: its files (path, mode, size, mtime of regular files), its
# accounts, the proxy configuration, the units. A refused run must leave all of it identical.
SNAPSHOT = (
    "find /opt /etc/sample_app /var/lib/sample_app /usr/local/lib/beamops /usr/local/bin "
    "/etc/systemd/system /etc/nginx /etc/haproxy -xdev \\( -type f -printf '%p %m %s %T@\\n' \\) "
    "-o \\( ! -type f -printf '%p %m %y\\n' \\) 2>/dev/null | sort; "
    "sha256sum /etc/passwd /etc/group /etc/shadow"
)


def host_snapshots(fleet: Fleet) -> Dict[str, str]:
    return {name: host.check_output(SNAPSHOT) for name, host in fleet.hosts.items()}


def hostile_tarball(tmp_path: Path) -> List[str]:
    """The real 0.3.0 release plus one member that would land outside the release."""
    source = deploykit.RELEASES / "sample_app-0.3.0.tar.gz"
    hostile = tmp_path / "sample_app-0.3.0.tar.gz"
    with tarfile.open(source) as good, tarfile.open(hostile, "w:gz") as bad:
        for member in good.getmembers():
            bad.addfile(member, good.extractfile(member) if member.isfile() else None)
        escape = tarfile.TarInfo("../../../etc/cron.d/owned")
        payload = b"* * * * * root touch /tmp/owned\n"
        escape.size = len(payload)
        bad.addfile(escape, io.BytesIO(payload))
    digest = hashlib.sha256(hostile.read_bytes()).hexdigest()
    return [
        *("-e", "beamops_release_version=0.3.0", "-e", f"beamops_release_src={hostile}"),
        *("-e", f"beamops_release_sha256={digest}"),
    ]


HOSTILE_INPUTS = {
    "version-path": ({"beamops_release_version": "../../../escaped"}, "beamops_release_version"),
    "version-number": ({"beamops_release_version": 1.1}, "quote it"),
    "app-root": ({"beamops_app_name": "root"}, "beamops_app_user: 'root' belongs to the OS"),
    "user-postgres": ({"beamops_app_user": "postgres"}, "beamops_app_user_adopt"),
    "unit-newline": (
        {"beamops_ready_path": "/health/ready\nExecStartPre=/bin/true"},
        "beamops_ready_path",
    ),
    "env-loader": ({"beamops_env": {"LD_PRELOAD": "/tmp/x.so"}}, "LD_PRELOAD changes"),
    "env-newline": ({"beamops_env": {"A": "1\nB=2"}}, "beamops_env.A"),
    "ports-clash": ({"beamops_slot_ports": {"blue": 80, "green": 4002}}, "ports must be distinct"),
    "keep-zero": ({"beamops_releases_keep": 0}, "beamops_releases_keep: got 0"),
    "weak-cookie": ({"beamops_release_cookie": "a" * 32}, "too weak"),
    "example-secret": ({"beamops_allow_example_secrets": False}, "example secret"),
}


def truncated_tarball(tmp_path: Path) -> List[str]:
    """The real 0.3.0 release cut in half, with the sha256 of what is left."""
    data = (deploykit.RELEASES / "sample_app-0.3.0.tar.gz").read_bytes()
    truncated = tmp_path / "sample_app-0.3.0.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    digest = hashlib.sha256(truncated.read_bytes()).hexdigest()
    return [
        *("-e", "beamops_release_version=0.3.0", "-e", f"beamops_release_src={truncated}"),
        *("-e", f"beamops_release_sha256={digest}"),
    ]


@pytest.mark.parametrize("kind", [*HOSTILE_INPUTS, "hostile-tarball", "truncated-tarball"])
def test_hostile_inputs_are_refused_before_any_host_changes(
    fleet: Fleet, tmp_path: Path, kind: str
) -> None:
    before = host_snapshots(fleet)
    if kind == "hostile-tarball":
        args, expected = hostile_tarball(tmp_path), "'../../../etc/cron.d/owned' would land outside"
    elif kind == "truncated-tarball":
        args, expected = truncated_tarball(tmp_path), "is not a readable tarball"
    else:
        change, expected = HOSTILE_INPUTS[kind]
        args = [*deploykit.release_args("0.3.0"), "-e", json.dumps(change)]
    run = fleet.playbook("deploy", *args)
    assert run.rc != 0
    assert expected in run.output and "no host was changed" in run.output.lower(), run.tail()
    assert COOKIE not in run.output and SECRET_KEY_BASE not in run.output
    assert host_snapshots(fleet) == before


def test_an_existing_account_the_collection_did_not_create_is_refused_on_the_host(
    fleet: Fleet,
) -> None:
    """alice is a person on the hosts, not a name the controller can know: the host refuses
    to hand her account to the release, and changes neither it nor what serves."""
    for host in fleet.hosts.values():
        host.check_output("id alice || useradd --create-home --shell /bin/bash alice")
    accounts = {
        n: h.check_output("getent passwd alice; sha256sum /etc/passwd /etc/group")
        for n, h in fleet.hosts.items()
    }
    served = fleet.served()
    run = fleet.deploy("0.3.0", "-e", "beamops_app_user=alice")
    assert run.rc != 0
    assert "beamops_app_user 'alice' is an existing account" in run.output, run.tail()
    assert "beamops_app_user_adopt: true" in run.output
    assert {
        n: h.check_output("getent passwd alice; sha256sum /etc/passwd /etc/group")
        for n, h in fleet.hosts.items()
    } == accounts
    assert fleet.served() == served


def test_missing_required_variable_is_named_before_any_host_changes(fleet: Fleet) -> None:
    before = fleet.state_bytes()
    run = fleet.playbook(
        "deploy",
        "-e",
        "beamops_release_version=0.3.0",
        "-e",
        f"beamops_release_src={Path('build/releases/x.tar.gz')}",
    )
    assert run.rc != 0
    assert "beamops_release_sha256" in run.output, run.tail()
    assert fleet.state_bytes() == before


def test_a_second_concurrent_deploy_fails_fast_naming_the_holder(fleet: Fleet) -> None:
    lock = fleet.playbook(str(Path(__file__).with_name("take_lock.yml")), "-e", "lock_action=lock")
    assert lock.rc == 0, lock.tail()
    try:
        before = fleet.state_bytes()
        run = fleet.deploy("0.3.0")
        assert run.rc != 0
        assert "held by alice@elsewhere (deploy 9.0.0)" in run.output, run.tail()
        assert run.seconds < 30
        assert fleet.state_bytes() == before
    finally:
        unlock = fleet.playbook(
            str(Path(__file__).with_name("take_lock.yml")), "-e", "lock_action=unlock"
        )
        assert unlock.rc == 0, unlock.tail()


# --------------------------------------------------------------------------- a full disk

FILLER = "/opt/sample_app/filler"


def fill_base_dir(leave_mib: int) -> None:
    """Fill bo2's base directory (its own 100 MiB tmpfs) to `leave_mib` MiB free."""
    on_host(
        "bo2",
        f"rm -f {FILLER}; free=$(df --output=avail -B1 /opt/sample_app | tail -1); "
        f"fallocate -l $((free - {leave_mib} * 1048576)) {FILLER}",
    )


def test_a_full_disk_on_the_target_stops_the_deploy_not_traffic(fleet: Fleet) -> None:
    """bo2's base directory is nearly full: the release that cannot fit is refused before
    anything is unpacked, naming the space; bo1, switched meanwhile, goes back with the fleet.
    Full: the lock itself cannot be written, so nothing starts. Freed: a plain re-run
    converges."""
    installed = on_host("bo2", "ls -A /opt/sample_app/releases").split()
    version = next(v for v in ("0.4.0", "0.5.0") if v not in installed)
    try:
        fill_base_dir(leave_mib=4)
        with fleet.under_load() as load:
            run = fleet.deploy(version)
        assert run.rc != 0
        assert re.search(
            rf"bo2: .*no room for release {re.escape(version)} in /opt/sample_app/releases: "
            r"needs about "
            r"1\d\.\d MiB unpacked, [34]\.\d MiB is free",
            run.output,
            re.DOTALL,
        ), run.tail()
        assert re.search(r"bo1: rolled back to 0\.2\.0.*rollout halted: failed on bo2",
                         run.output, re.DOTALL), run.tail()  # fmt: skip
        assert_the_live_release_served_on(fleet, load)
        assert version not in on_host("bo2", "ls -A /opt/sample_app/releases")

        fill_base_dir(leave_mib=0)
        state_before = on_host("bo2", f"sha256sum {STATE_FILE}")
        run = fleet.deploy(version)
        assert run.rc != 0
        assert re.search(
            r"bo2: cannot write release state file /opt/sample_app/release-state\.json: "
            r".*No space left on device.*previous content is intact",
            run.output,
            re.DOTALL,
        ), run.tail()
        assert "Nothing was changed on any host" in run.output, run.tail()
        assert on_host("bo2", f"sha256sum {STATE_FILE}") == state_before
        assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    finally:
        on_host("bo2", f"rm -f {FILLER}")
    converge_then_back_to_0_2_0(fleet, version)


# --------------------------------------------------------------------------- a proxy killed

# The proxy is down from its kill until systemd has started it again: requests sent to it
# meanwhile fail (the fault takes it down). At 100 requests/s per host, this bounds that window
# to 1.5 s per host.
PROXY_DOWN_REQUESTS = 150


def proxy_pid(fleet: Fleet, name: str) -> str:
    unit = f"{fleet.proxy(name)}.service"
    return str(fleet.hosts[name].check_output(f"systemctl show -p MainPID --value {unit}"))


def test_a_proxy_killed_during_the_watch_comes_back_and_the_deploy_goes_on(
    fleet: Fleet,
) -> None:
    """kill -9 of nginx's and HAProxy's main process while the watch runs: systemd starts
    each again (nginx through the collection's drop-in), its files already route to the new
    slot, the watch waits for it and starts over, and the release that did nothing wrong is
    kept, with a warning naming the proxy. A plain re-run changes nothing."""
    watch = ["-e", "beamops_watch_seconds=6"]
    before = {name: proxy_pid(fleet, name) for name in HOSTS}
    with fleet.under_load() as load:
        run = fleet.start("deploy", *deploykit.release_args("0.3.0"), *watch)
        wait_until(lambda: all(fleet.settled_slot(n) == "blue" for n in HOSTS), 120,
                   "both proxies to switch")  # fmt: skip
        for name in HOSTS:
            fleet.hosts[name].check_output(f"kill -9 {before[name]}")
        done = run.finish()
    assert done.rc == 0, done.tail()
    for name in HOSTS:
        warned = re.search(
            rf"{fleet.proxy(name)} stopped during the watch \(main PID {before[name]}\) and "
            r"was back [\d.]+s later",
            done.output,
        )
        assert warned, done.tail()
        assert proxy_pid(fleet, name) not in ("0", before[name])
        state = fleet.state(name)
        assert (state["active"]["version"], state["active"]["slot"]) == ("0.3.0", "blue")
        assert fleet.proxy_config_slot(name) == "blue"
    assert fleet.served() == {name: "sample_app 0.3.0 on blue" for name in HOSTS}
    for result in load.results.values():
        assert int(result["failed"]) <= PROXY_DOWN_REQUESTS, load.results
    again = fleet.deploy("0.3.0", *watch)
    assert again.rc == 0, again.tail()
    assert all(counts["changed"] == 0 for counts in again.recap.values()), again.changed_tasks()
    back = fleet.playbook("rollback", "-e", "rollback_to=0.2.0")
    assert back.rc == 0, back.tail()


# --------------------------------------------------------------------------- a host lost


def test_a_host_lost_mid_rollout_halts_it_and_a_plain_rerun_converges(fleet: Fleet) -> None:
    """serial=1: bo1's batch switches to 0.3.0; meanwhile bo2 drops off the controller's
    network (sshd stopped, its sessions cut; it still serves). bo2 counts as failed: the
    rollout halts and bo1 goes back to 0.2.0, so the fleet runs one version. bo2 keeps the dead
    run's lock; back on the network, a plain re-run takes it over and converges."""
    with fleet.under_load() as load:
        run = fleet.start("deploy", *deploykit.release_args("0.3.0"), "-e", "beamops_serial=1")
        try:
            wait_until(lambda: fleet.settled_slot("bo1") == "blue", 120, "bo1 to switch")
            on_host("bo2", "systemctl stop ssh.service; pkill -KILL -x sshd || true")
            done = run.finish()
        finally:
            on_host("bo2", "systemctl start ssh.service")
    assert done.rc != 0
    assert re.search(r"fatal: \[bo2\]: UNREACHABLE!", done.output), done.tail()
    assert "bo2: did not finish: it stopped answering (unreachable)" in done.output, done.tail()
    assert re.search(r"bo1: rolled back to 0\.2\.0.*rollout halted: failed on bo2",
                     done.output, re.DOTALL), done.tail()  # fmt: skip
    assert load.failed() == 0, load.results
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    assert fleet.state("bo1")["lock"] is None
    left = fleet.state("bo2")
    assert left["active"]["version"] == "0.2.0" and left["lock"]["purpose"] == "deploy 0.3.0"
    with fleet.under_load() as load:
        again = fleet.deploy("0.3.0")
    assert again.rc == 0, again.tail()
    assert "took over the forced deploy lock" in again.output, again.tail()
    assert load.failed() == 0, load.results
    assert fleet.served() == {name: "sample_app 0.3.0 on blue" for name in HOSTS}
    back = fleet.playbook("rollback", "-e", "rollback_to=0.2.0")
    assert back.rc == 0, back.tail()


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def cutovers_done(fleet: Fleet) -> bool:
    """No cutover module runs on any host (its flock on <state>.cutover is free)."""
    mark = f"{STATE_FILE}.cutover"
    return all(host.run(f"flock -n {mark} true").rc == 0 for host in fleet.hosts.values())


def active_version(fleet: Fleet, name: str) -> str:
    active = fleet.state(name)["active"]
    return str(active["version"]) if active else ""


def lock_taken(fleet: Fleet, before: Dict[str, str]) -> bool:
    return fleet.state("bo1")["lock"] is not None


def proxy_switched(fleet: Fleet, before: Dict[str, str]) -> bool:
    return bool(fleet.settled_slot("bo1") not in ("", before["bo1"]))


def recorded(fleet: Fleet, before: Dict[str, str]) -> bool:
    return active_version(fleet, "bo1") == "0.5.0"


# Where the controller is killed (kill -9 of ansible-playbook, its whole process group), as
# bo1 shows it: the lock taken (nothing started yet), the proxy switched (the watch runs), the
# new release recorded (the old slot drains, its retire timer running on the host).
KILL_POINTS: Dict[str, Tuple[str, Callable[[Fleet, Dict[str, str]], bool]]] = {
    "before-the-start": ("0.5.0", lock_taken),
    "during-the-watch": ("0.4.0", proxy_switched),
    "during-the-drain": ("0.5.0", recorded),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_controller_leaves_hosts_that_a_plain_rerun_converges(
    fleet: Fleet, point: str
) -> None:
    """The cutover module on each host finishes by itself; a plain re-run from the same
    controller takes over the dead run's lock, but never while a cutover still runs there
    (during the watch that is tested), and converges. No request fails."""
    version, reached = KILL_POINTS[point]
    before = {name: fleet.proxy_config_slot(name) for name in HOSTS}
    with fleet.under_load() as load:
        run = fleet.start(
            "deploy", *deploykit.release_args(version), "-e", "beamops_watch_seconds=12"
        )
        try:
            wait_until(lambda: reached(fleet, before), 120, point)
        finally:
            run.kill()
        left_behind = any(fleet.state(name)["lock"] for name in HOSTS)
        if point == "during-the-watch":
            early = fleet.deploy(version)
            assert early.rc != 0, early.tail()
            assert "its cutover is still running on this host" in early.output, early.tail()
        wait_until(lambda: cutovers_done(fleet), 60, "the orphaned cutovers to finish")
        again = fleet.deploy(version)
    assert again.rc == 0, again.tail()
    # The dead run's lock (if it still held one) was taken over without -e beamops_lock_force.
    assert ("took over the forced deploy lock" in again.output) == left_behind, again.tail()
    for name in HOSTS:
        state = fleet.state(name)
        assert state["lock"] is None
        assert (state["active"]["version"], state["active"]["slot"]) == (
            version, fleet.proxy_config_slot(name))  # fmt: skip
    assert fleet.served() == {
        name: f"sample_app {version} on {fleet.proxy_config_slot(name)}" for name in HOSTS
    }
    assert load.failed() == 0, load.results


def rollback_target(fleet: Fleet) -> Tuple[str, str]:
    """Where a plain rollback goes now, as the on-host command plans it: (version, slot)."""
    plan = fleet.hosts["bo1"].check_output("/usr/local/bin/sample_app-rollback --plan")
    found = re.search(r"to (\S+) \(slot (\w+)\)", plan)
    assert found, plan
    return found.group(1), found.group(2)


def rollback_locked(fleet: Fleet, target: str) -> bool:
    lock = fleet.state("bo1")["lock"]
    return bool(lock and lock["purpose"] == f"rollback to {target}")


@pytest.mark.parametrize("point", ["after-the-lock", "during-the-watch"])
def test_a_killed_rollback_is_finished_by_a_plain_rerun(fleet: Fleet, point: str) -> None:
    """Killed once it holds the locks (naming its target), or during its watch (its module
    finishes on each host by itself): the plain re-run takes over the dead run's lock and goes
    to the release the killed run was going to, not one further back. No request fails."""
    deployed = fleet.deploy("0.3.0", "-e", "beamops_watch_seconds=10")
    assert deployed.rc == 0, deployed.tail()
    target, slot = rollback_target(fleet)
    with fleet.under_load() as load:
        run = fleet.start("rollback")
        try:
            if point == "after-the-lock":
                wait_until(lambda: rollback_locked(fleet, target), 120, point)
            else:
                wait_until(lambda: fleet.settled_slot("bo1") == slot, 120, point)
        finally:
            run.kill()
        wait_until(lambda: cutovers_done(fleet), 60, "the orphaned rollbacks to finish")
        again = fleet.playbook("rollback")
    assert again.rc == 0, again.tail()
    assert "finishing the interrupted rollback of" in again.output, again.tail()
    assert "took over the forced deploy lock" in again.output, again.tail()
    assert load.failed() == 0, load.results
    assert fleet.served() == {name: f"sample_app {target} on {slot}" for name in HOSTS}
    for name in HOSTS:
        state = fleet.state(name)
        assert (state["active"]["version"], state["lock"]) == (target, None)
        assert state["releases"]["0.3.0"]["status"] == "bad"


def serving_pid(fleet: Fleet, name: str) -> str:
    unit = f"sample_app@{fleet.proxy_config_slot(name)}.service"
    return str(fleet.hosts[name].check_output(f"systemctl show -p MainPID --value {unit}"))


# What a run killed between its switch and its state write leaves behind: the proxy on the new
# slot, the state file still naming the old one as active.
FORGET_THE_SWITCH = (
    "python3 -c 'import json; p=\"" + STATE_FILE + '"; s=json.load(open(p)); '
    's["active"]=s["previous"]; json.dump(s, open(p, "w"))\''
)


def test_a_run_killed_between_switch_and_record_is_repaired_from_the_proxy(fleet: Fleet) -> None:
    """The re-run follows what the proxy routes to: the serving slot is never restarted, no
    request fails, the state names the slot that serves; status.yml shows the drift first."""
    first = fleet.deploy("0.4.0", "-e", "beamops_keep_old_warm=true")
    assert first.rc == 0, first.tail()
    for host in fleet.hosts.values():
        host.check_output(FORGET_THE_SWITCH)
    status = fleet.playbook("status")
    assert status.rc == 0, status.tail()
    assert status.output.count("but the proxy routes") == len(HOSTS), status.tail()
    pids = {name: serving_pid(fleet, name) for name in HOSTS}
    with fleet.under_load() as load:
        again = fleet.deploy("0.4.0")
    assert again.rc == 0, again.tail()
    # One warning line per distinct text: Ansible prints identical warnings once.
    assert "the state now follows the proxy (0.4.0 on" in again.output, again.tail()
    assert {name: serving_pid(fleet, name) for name in HOSTS} == pids
    for name in HOSTS:
        active = fleet.state(name)["active"]
        assert (active["slot"], active["version"]) == (fleet.proxy_config_slot(name), "0.4.0")
    assert load.failed() == 0, load.results
    after = fleet.playbook("status")
    assert after.output.count("state_and_proxy: agree") == len(HOSTS), after.tail()
