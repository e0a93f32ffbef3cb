"""Every user story of the deploy pipeline, in order, on two real hosts (nginx and HAProxy).

converge has deployed 0.1.0 and idempotence has re-run it with changed=0 before these run.
Each test leaves the fleet in the state the next one expects; they are meant to run in order.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
from conftest import HOSTS, STATE_FILE, Fleet, LoadedFleet, address, deploykit, systemd_env

SECRET_KEY_BASE = "demo-only-secret-key-base-not-for-production-0123456789abcdef"
COOKIE = "demo-only-cookie-0123456789abcdef"


def assert_refused_at_the_gate(run: deploykit.PlaybookRun, detail: str) -> None:
    """Every host's new slot (blue, 0.3.0) failed its readiness gate, for the reason given."""
    assert run.rc != 0
    for name in HOSTS:
        found = re.search(
            rf"{name}: slot blue \(release 0\.3\.0\) did not become ready {detail}",
            run.output,
            re.DOTALL,
        )
        assert found, run.tail()


def test_first_deploy_serves_0_1_0_through_both_proxies(fleet: Fleet) -> None:
    assert fleet.served() == {name: "sample_app 0.1.0 on blue" for name in HOSTS}
    for name in HOSTS:
        state = fleet.state(name)
        assert state["active"]["version"] == "0.1.0"
        assert state["releases"]["0.1.0"]["status"] == "good"
        assert state["lock"] is None


def test_release_files_are_roots_and_secrets_are_root_only(fleet: Fleet) -> None:
    for host in fleet.hosts.values():
        release = host.file("/opt/sample_app/releases/0.1.0/bin/sample_app")
        assert (release.user, release.group) == ("root", "root")
        assert host.run("runuser -u sample_app -- touch /opt/sample_app/releases/0.1.0/x").rc != 0
        secrets = host.file("/etc/sample_app/blue.secrets.env")
        assert (secrets.user, secrets.mode) == ("root", 0o600)
        assert SECRET_KEY_BASE in secrets.content_string
        plain = host.file("/etc/sample_app/blue.env")
        assert plain.mode == 0o640
        assert SECRET_KEY_BASE not in plain.content_string
        assert COOKIE not in plain.content_string
        assert host.check_output("systemctl show -p User --value sample_app@blue") == "sample_app"


def test_the_proxies_set_the_forwarded_headers_from_the_peer(fleet: Fleet) -> None:
    """A client's own X-Forwarded-For and X-Forwarded-Proto never reach the release: both
    proxies replace them with the peer's address and their own scheme."""
    spoofed = "-H 'X-Forwarded-For: 6.6.6.6' -H 'X-Forwarded-Proto: https'"
    for name, host in fleet.hosts.items():
        answer = host.check_output(f"curl -s --max-time 3 {spoofed} http://127.0.0.1/forwarded")
        assert json.loads(answer) == {
            "x_forwarded_for": ["127.0.0.1"],
            "x_forwarded_proto": ["http"],
        }, (name, answer)


def test_deploy_0_2_0_under_load_fails_no_request(fleet: Fleet) -> None:
    with fleet.under_load() as load:
        run = fleet.deploy("0.2.0")
    assert run.rc == 0, run.tail()
    assert load.failed() == 0, load.results
    assert load.requests() > 1000
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    fleet.wait_stopped("sample_app@blue")
    for name, host in fleet.hosts.items():
        assert host.run("systemctl is-enabled sample_app@blue").stdout.strip() == "disabled"
        assert fleet.proxy_config_slot(name) == "green"
    for result in load.results.values():
        answers = result["answers"]
        assert "sample_app 0.1.0 on blue" in answers and "sample_app 0.2.0 on green" in answers


def test_redeploying_the_same_release_changes_and_restarts_nothing(fleet: Fleet) -> None:
    pids = {
        n: h.check_output("systemctl show -p MainPID --value sample_app@green")
        for n, h in fleet.hosts.items()
    }
    run = fleet.deploy("0.2.0")
    assert run.rc == 0, run.tail()
    assert all(counts["changed"] == 0 for counts in run.recap.values()), run.changed_tasks()
    assert pids == {
        n: h.check_output("systemctl show -p MainPID --value sample_app@green")
        for n, h in fleet.hosts.items()
    }


def test_a_config_change_goes_blue_green_and_a_bad_one_leaves_the_live_slot_alone(
    fleet: Fleet,
) -> None:
    """Same release, new beamops_env: cut over to the idle slot. A configuration that fails
    the gate leaves the live slot's files untouched and the release not marked bad."""
    greeting = '{"beamops_env": {"SHUTDOWN_DRAIN_MS": "2000", "GREETING": "hello"}}'
    run = fleet.deploy("0.2.0", "-e", greeting)
    assert run.rc == 0, run.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on blue" for name in HOSTS}
    for host in fleet.hosts.values():
        assert 'GREETING="hello"' in host.file("/etc/sample_app/blue.env").content_string
    live_files = {
        n: h.check_output("sha256sum /etc/sample_app/blue.env /etc/sample_app/blue.*.env")
        for n, h in fleet.hosts.items()
    }
    bad = fleet.deploy(
        "0.2.0", "-e", '{"beamops_env": {"FAIL_HEALTH": "1"}}', "-e", "beamops_start_timeout=8"
    )
    assert bad.rc != 0
    assert fleet.served() == {name: "sample_app 0.2.0 on blue" for name in HOSTS}
    assert live_files == {
        n: h.check_output("sha256sum /etc/sample_app/blue.env /etc/sample_app/blue.*.env")
        for n, h in fleet.hosts.items()
    }, "the live slot's configuration was rewritten"
    for name in HOSTS:
        assert fleet.state(name)["releases"]["0.2.0"]["status"] == "good"
    back = fleet.deploy("0.2.0")
    assert back.rc == 0, back.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def test_check_diff_shows_changes_but_no_secret(fleet: Fleet) -> None:
    before = fleet.state_bytes()
    run = fleet.deploy(
        "0.3.0",
        "--check",
        "--diff",
        "-e",
        '{"beamops_secret_env": {"SECRET_KEY_BASE": "rotated-secret-value-xyz-0123456789"}}',
    )
    assert run.rc == 0, run.tail()
    assert "rotated-secret-value-xyz" not in run.output
    assert SECRET_KEY_BASE not in run.output and COOKIE not in run.output
    assert "0.3.0" in run.output
    assert fleet.state_bytes() == before, "--check changed a host's release state"
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def test_a_release_that_never_gets_ready_is_refused_and_marked_bad(fleet: Fleet) -> None:
    with fleet.under_load() as load:
        run = fleet.deploy(
            "0.3.0", "-e", '{"beamops_env": {"FAIL_HEALTH": "1"}}', "-e", "beamops_start_timeout=10"
        )
    assert_refused_at_the_gate(
        run, r"at http://127\.0\.0\.1:4001/health/ready.*last answer 503.*failing"
    )
    for name in HOSTS:
        assert fleet.state(name)["releases"]["0.3.0"]["status"] == "bad"
    assert load.failed() == 0, load.results
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def test_a_release_that_exits_at_boot_fails_its_gate_at_once_with_its_own_words(
    fleet: Fleet,
) -> None:
    """The gate watches the VM: no probing a dead port until the deadline."""
    run = fleet.deploy("0.3.0", "-e", '{"beamops_env": {"FAIL_KIND": "bogus"}}')
    assert run.rc != 0
    for name in HOSTS:
        found = re.search(
            rf"{name}: slot blue \(release 0\.3\.0\) did not become ready.*?"
            r"in (\d+\.\d)s \(process \d+ exited\).*?the release's last lines: "
            r"FATAL: FAIL_KIND must be all, readiness or http_500",
            run.output,
            re.DOTALL,
        )
        assert found, run.tail()
        assert float(found.group(1)) <= 2.0, found.group(0)
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


def converge_to_0_3_0_then_roll_back(fleet: Fleet, *args: str) -> None:
    """The fault is gone: a plain re-run converges; then back to 0.2.0 for the next tests."""
    again = fleet.deploy("0.3.0", *args)
    assert again.rc == 0, again.tail()
    assert fleet.served() == {name: "sample_app 0.3.0 on blue" for name in HOSTS}
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
    converge_to_0_3_0_then_roll_back(fleet)
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
    converge_to_0_3_0_then_roll_back(fleet, "-e", "beamops_proxy_maxconn=4000")
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


# Watch settings of the after-switch tests: a tick every 0.5 s, 2 failing ticks switch back.
WATCH = ["-e", "beamops_watch_seconds=8", "-e", "beamops_watch_interval=0.5"]


def after_switch_failure(fleet: Fleet, kind: str) -> Tuple[deploykit.PlaybookRun, LoadedFleet]:
    breaks = {"beamops_env": {"FAIL_AFTER_MS": "2500", "FAIL_KIND": kind}}
    with fleet.under_load() as load:
        run = fleet.deploy("0.4.0", "-e", json.dumps(breaks), *WATCH)
    assert run.rc != 0
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    for name in HOSTS:
        back = re.search(
            rf"{name}: slot blue \(release 0\.4\.0\) failed after the switch \(watch\): "
            r".*?traffic switched back to slot green \(0\.2\.0\) (\d+) ms after",
            run.output,
            re.DOTALL,
        )
        assert back, run.tail()
        assert int(back.group(1)) <= 1000, back.group(0)
        state = fleet.state(name)
        assert state["releases"]["0.4.0"]["status"] == "bad"
        assert state["active"]["version"] == "0.2.0"
        assert fleet.proxy_config_slot(name) == "green"
    return run, load


def test_a_release_whose_readiness_fails_after_the_switch_costs_no_request(
    fleet: Fleet,
) -> None:
    """nginx keeps the old slot as `backup`, HAProxy as the backup server of the new slot's
    backend; the watch on the host switches back within a second of its verdict."""
    _, load = after_switch_failure(fleet, "readiness")
    assert load.failed() == 0, load.results


def test_a_release_answering_500_is_switched_back_as_fast(fleet: Fleet) -> None:
    """Real requests answered 500 (readiness still ready) are seen through the proxy: nginx's
    access log, HAProxy's counters. Clients see 500s for at most failure_threshold x
    interval (2 x 0.5 s here) plus the switch; at 100 req/s per host that bounds the count."""
    run, load = after_switch_failure(fleet, "http_500")
    assert "requests through the proxy answered 5xx" in run.output
    for result in load.results.values():
        assert result["failed"] <= 100 * (2 * 0.5 + 0.5), result


def test_rollback_goes_to_the_previous_good_release_under_load(fleet: Fleet) -> None:
    with fleet.under_load() as load:
        run = fleet.playbook("rollback")
    assert run.rc == 0, run.tail()
    assert load.failed() == 0, load.results
    assert fleet.served() == {name: "sample_app 0.1.0 on blue" for name in HOSTS}
    for name in HOSTS:
        assert fleet.state(name)["releases"]["0.2.0"]["status"] == "bad"


def test_rollback_to_picks_a_version(fleet: Fleet) -> None:
    run = fleet.playbook("rollback", "-e", "rollback_to=0.2.0")
    assert run.rc == 0, run.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def test_keeping_the_old_slot_warm_makes_rollback_a_switch(fleet: Fleet) -> None:
    """beamops_keep_old_warm: the old slot keeps running, so rollback restarts nothing."""
    run = fleet.deploy("0.1.0", "-e", "beamops_keep_old_warm=true")
    assert run.rc == 0, run.tail()
    warm_pids = {
        n: h.check_output("systemctl show -p MainPID --value sample_app@green")
        for n, h in fleet.hosts.items()
    }
    assert all(pid != "0" for pid in warm_pids.values()), "the old slot was stopped"
    with fleet.under_load() as load:
        back = fleet.playbook("rollback")
    assert back.rc == 0, back.tail()
    assert load.failed() == 0, load.results
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    assert warm_pids == {
        n: h.check_output("systemctl show -p MainPID --value sample_app@green")
        for n, h in fleet.hosts.items()
    }, "rollback restarted the warm slot"
    print(f"warm rollback took {back.seconds}s")


def test_the_rollback_command_on_a_host_needs_no_controller(fleet: Fleet) -> None:
    """`/usr/local/bin/sample_app-rollback` on the host: same lock, state, gate and watch."""
    name = HOSTS[0]
    host = fleet.hosts[name]
    plan = host.run("/usr/local/bin/sample_app-rollback --plan 0.1.0")
    assert plan.rc == 0 and "roll back from 0.2.0 (slot green) to 0.1.0" in plan.stdout, plan
    # Run as an unprivileged user it refuses, naming what to do.
    refused = host.run("runuser -u nobody -- /usr/local/bin/sample_app-rollback")
    assert refused.rc == 2 and "run as root" in refused.stderr
    with fleet.under_load() as load:
        done = host.run("/usr/local/bin/sample_app-rollback 0.1.0")
    assert done.rc == 0, done.stdout + done.stderr
    assert "rollback of 0.1.0 to slot blue ok" in done.stdout
    assert load.failed() == 0, load.results
    assert fleet.served()[name] == "sample_app 0.1.0 on blue"
    state = fleet.state(name)
    assert state["lock"] is None and state["releases"]["0.2.0"]["status"] == "bad"
    assert "local rollback command" in state["releases"]["0.2.0"]["reason"]
    # Put the fleet back on 0.2.0 for the tests that follow.
    again = fleet.playbook("rollback", "-e", "rollback_to=0.2.0")
    assert again.rc == 0, again.tail()
    assert fleet.served() == {n: "sample_app 0.2.0 on green" for n in HOSTS}


def test_rollback_to_an_unknown_version_is_refused(fleet: Fleet) -> None:
    before = fleet.state_bytes()
    run = fleet.playbook("rollback", "-e", "rollback_to=9.9.9")
    assert run.rc != 0
    assert "rollback_to=9.9.9 is not installed" in run.output, run.tail()
    assert fleet.state_bytes() == before


def test_a_url_source_is_downloaded_once_verified_and_old_releases_pruned(
    fleet: Fleet, tmp_path: Path
) -> None:
    """http(s) sources: the controller downloads, checks the sha256, then installs; a wrong
    checksum refuses the download. Pruning keeps the active, previous and last good releases."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(deploykit.RELEASES),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = re.search(r"port (\d+)", server.stdout.readline())
        assert port, "http.server did not say its port"
        url = f"http://127.0.0.1:{port.group(1)}/sample_app-0.3.0.tar.gz"
        sha = (deploykit.RELEASES / "sample_app-0.3.0.tar.gz.sha256").read_text().split()[0]
        cache = f"beamops_artifact_cache_dir={tmp_path}"
        wrong = fleet.playbook(
            "deploy",
            "-e",
            "beamops_release_version=0.3.0",
            "-e",
            f"beamops_release_src={url}",
            "-e",
            "beamops_release_sha256=" + "1" * 64,
            "-e",
            cache,
        )
        assert wrong.rc != 0
        assert "beamops_release_src" in wrong.output and "No host was changed" in wrong.output
        right = fleet.playbook(
            "deploy",
            "-e",
            "beamops_release_version=0.3.0",
            "-e",
            f"beamops_release_src={url}",
            "-e",
            f"beamops_release_sha256={sha}",
            "-e",
            cache,
            "-e",
            "beamops_releases_keep=1",
        )
        assert right.rc == 0, right.tail()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert (tmp_path / "sample_app-0.3.0.tar.gz").exists()
    assert fleet.served() == {name: "sample_app 0.3.0 on blue" for name in HOSTS}
    for name, host in fleet.hosts.items():
        state = fleet.state(name)
        kept = set(host.check_output("ls /opt/sample_app/releases").split())
        assert kept == set(state["releases"]), (kept, state["releases"])
        # keep=1: the newest install (0.4.0) plus the active (0.3.0) and the previous and
        # last good (0.2.0); 0.1.0 (bad, older, protected by nothing) goes.
        assert kept == {"0.2.0", "0.3.0", "0.4.0"}, kept
    # Back to 0.2.0 for the tests that follow.
    back = fleet.playbook("rollback", "-e", "rollback_to=0.2.0")
    assert back.rc == 0, back.tail()


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


def test_status_reports_each_host(fleet: Fleet) -> None:
    run = fleet.playbook("status")
    assert run.rc == 0, run.tail()
    for name in HOSTS:
        assert re.search(rf"host: {name}", run.output)
    assert run.output.count("active_version: 0.2.0") == len(HOSTS)
    assert "healthy: true" in run.output


def test_state_file_never_holds_a_secret(fleet: Fleet) -> None:
    for host in fleet.hosts.values():
        text = host.file(STATE_FILE).content_string
        assert SECRET_KEY_BASE not in text and COOKIE not in text


def test_systemd_reads_back_the_environment_exactly(fleet: Fleet) -> None:
    """The systemd_env filter's quoting, read back by systemd's own EnvironmentFile parser."""
    tricky = {
        "PLAIN": "value",
        "SPACES": "two words  and more",
        "QUOTES": "say \"hi\" and 'bye'",
        "BACKSLASH": "C:\\path\\to\\x",
        "DOLLAR": "$HOME and ${PATH}",
        "HASH": "# no comment",
        "EQUALS": "a=b=c",
        "UTF8": "héllo wörld",
        "NUMBER": 4001,
        "FLAG": True,
    }
    encoded = base64.b64encode(systemd_env(tricky).encode()).decode()
    host = next(iter(fleet.hosts.values()))
    host.run_test(f"echo {encoded} | base64 -d > /run/beamops-env-test.env")
    output = host.check_output(
        "systemd-run --wait --pipe --quiet"
        " -p EnvironmentFile=/run/beamops-env-test.env /usr/bin/env"
    )
    seen = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    for name, value in tricky.items():
        expected = ("true" if value else "false") if isinstance(value, bool) else str(value)
        assert seen[name] == expected, name


def test_a_failed_batch_rolls_back_the_batches_already_switched(
    fleet: Fleet, tmp_path: Path
) -> None:
    """serial=1: bo1 switches to 0.3.0, bo2 (second batch) never gets ready; bo1 goes back."""
    breaks_bo2 = tmp_path / "breaks_bo2.yml"
    breaks_bo2.write_text("all:\n  hosts:\n    bo2:\n      beamops_env: {FAIL_HEALTH: '1'}\n")
    with fleet.under_load() as load:
        run = fleet.deploy(
            "0.3.0",
            "-e",
            "beamops_serial=1",
            "-e",
            "beamops_start_timeout=8",
            inventories=[*fleet.inventories, str(breaks_bo2)],
        )
    assert run.rc != 0
    assert "bo2: slot blue (release 0.3.0) did not become ready" in run.output, run.tail()
    assert re.search(
        r"bo1: rolled back to 0\.2\.0.*rollout halted: failed on bo2", run.output, re.DOTALL
    ), run.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    assert fleet.state("bo1")["active"]["version"] == "0.2.0"
    assert fleet.state("bo1")["releases"]["0.3.0"]["status"] == "bad"
    assert load.failed() == 0, load.results


def test_the_live_slot_comes_back_after_a_reboot(fleet: Fleet) -> None:
    """The live slot's unit is enabled (the retired one disabled): a rebooted host serves the
    same release from the same slot, with no deploy."""
    host = fleet.hosts["bo1"]
    before = fleet.served()["bo1"]
    # Reboot a second from now, from a timer: ssh gets its exit status before the host goes.
    host.run_test("systemd-run --on-active=1 systemctl reboot")
    deadline = time.monotonic() + 90
    answer = ""
    time.sleep(3)
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["curl", "-s", "--max-time", "2", f"http://{address('bo1')}/"],
            capture_output=True,
            text=True,
            check=False,
        )
        answer = probe.stdout.strip()
        if probe.returncode == 0 and answer.startswith("sample_app"):
            break
        time.sleep(1)
    assert answer == before, f"after a reboot bo1 answers {answer!r}, before it was {before!r}"
    assert host.check_output("systemctl is-enabled sample_app@green") == "enabled"
    assert host.run("systemctl is-enabled sample_app@blue").stdout.strip() == "disabled"


def test_playbooks_run_from_the_installed_collection(fleet: Fleet, tmp_path: Path) -> None:
    """ansible-playbook beamops.release.deploy / .status from a built and installed tarball.

    ANSIBLE_COLLECTIONS_PATH names only the installed copy, so the FQCNs can resolve nowhere else.
    """
    galaxy = str(deploykit.BIN / "ansible-galaxy")
    env = deploykit.ansible_env()
    subprocess.run(
        [galaxy, "collection", "build", "--output-path", str(tmp_path), "--force"],
        cwd=deploykit.REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    tarball = next(tmp_path.glob("beamops-release-*.tar.gz"))
    installed = tmp_path / "collections"
    subprocess.run(
        [
            galaxy,
            "collection",
            "install",
            "--offline",
            "--force",
            "-p",
            str(installed),
            str(tarball),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    # The same deploy from the checkout first: earlier tests left other settings (a shorter
    # start timeout is part of the unit), so only after it is the installed run a no-op.
    from_checkout = fleet.deploy("0.2.0")
    assert from_checkout.rc == 0, from_checkout.tail()
    status = deploykit.run_playbook(
        fleet.inventories, "beamops.release.status", collections_path=installed
    )
    assert status.rc == 0, status.tail()
    assert status.output.count("active_version: 0.2.0") == len(HOSTS)
    again = deploykit.run_playbook(
        fleet.inventories,
        "beamops.release.deploy",
        *deploykit.release_args("0.2.0"),
        collections_path=installed,
    )
    assert again.rc == 0, again.tail()
    assert all(counts["changed"] == 0 for counts in again.recap.values()), again.changed_tasks()


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
    return bool(fleet.proxy_config_slot("bo1") != before["bo1"])


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
    cmd = [str(deploykit.BIN / "ansible-playbook"), str(deploykit.REPO / "playbooks/deploy.yml")]
    cmd += [arg for inventory in fleet.inventories for arg in ("-i", inventory)]
    cmd += [*deploykit.release_args(version), "-e", "beamops_watch_seconds=12"]
    with fleet.under_load() as load:
        controller = subprocess.Popen(
            cmd, cwd=deploykit.REPO, env=deploykit.ansible_env(), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until(lambda: reached(fleet, before), 120, point)
        finally:
            os.killpg(controller.pid, signal.SIGKILL)
            controller.wait()
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
