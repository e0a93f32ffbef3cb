"""haproxy_slot against a real HAProxy: traffic through its frontend shows which slot is live.

The module runs as a real process, the way Ansible's own debugging entry point runs it
(`python haproxy_slot.py '{"ANSIBLE_MODULE_ARGS": ...}'`), with the collection on PYTHONPATH;
one test goes through the `ansible` command line. The haproxy harness (a fresh `haproxy -db`
per test with blue and green behind it) lives in test_haproxy_runtime.py and is loaded from
its file, so both test files use one copy of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[4]
MODULE_FILE = REPO / "plugins" / "modules" / "haproxy_slot.py"
COLLECTIONS = REPO / "build" / "collections"
ANSIBLE = Path(sys.executable).parent / "ansible"


from tests.unit.plugins.module_utils import test_haproxy_runtime as harness  # noqa: E402

HAProxyLab = harness.HAProxyLab
haproxy_lab = harness.haproxy_lab  # the fixture, by its name
BACKEND = harness.LAB_BACKEND


@pytest.fixture(scope="module", autouse=True)
def collection_link() -> None:
    """The module imports its module_utils as ansible_collections.beamops.release...: make
    build/collections/ansible_collections/beamops/release point at this checkout (as
    `make collection` does) when it is missing."""
    link = COLLECTIONS / "ansible_collections" / "beamops" / "release"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)


def run_module(check_mode: bool = False, **params: Any) -> Dict[str, Any]:
    """Run haproxy_slot as a real process; returns its JSON result (failed=True on fail_json)."""
    payload = {"ANSIBLE_MODULE_ARGS": {**params, "_ansible_check_mode": check_mode}}
    env = {**os.environ, "PYTHONPATH": str(COLLECTIONS)}
    process = subprocess.run(
        [sys.executable, str(MODULE_FILE), json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    try:
        result: Dict[str, Any] = json.loads(process.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"module printed no JSON:\n{process.stdout}\n{process.stderr}")
    assert (process.returncode != 0) == bool(result.get("failed")), result
    return result


def switch(
    lab: harness.HAProxyLab, live: str, others: List[str], check_mode: bool = False, **params: Any
) -> Dict[str, Any]:
    return run_module(
        check_mode, socket=lab.socket, backend=BACKEND, live=live, others=others, **params
    )


# --------------------------------------------------------------------------- switching


def test_switch_to_green_moves_all_new_traffic(haproxy_lab: harness.HAProxyLab) -> None:
    assert set(haproxy_lab.answers(3, "before")) == {"blue"}

    result = switch(haproxy_lab, "green", ["blue"])

    assert result["changed"] is True
    assert result["commands"] == [
        "set server app/green state ready",
        "set server app/green health up",
        "set server app/blue state drain",
    ]
    assert result["before"]["green"]["admin_state"] == ["FMAINT", "CMAINT"]
    assert result["before"]["green"]["op_state"] == "STOPPED"
    assert result["after"]["green"]["admin_state"] == ["CMAINT"]
    assert result["after"]["green"]["op_state"] == "RUNNING"
    assert result["after"]["blue"]["admin_state"] == ["FDRAIN"]
    assert result["after"]["blue"]["status"] == "DRAIN"
    assert (result["drained"], result["remaining_sessions"]) == (True, 0)

    assert set(haproxy_lab.answers(10, "after")) == {"green"}
    assert haproxy_lab.requests_seen("blue", "after") == 0
    assert haproxy_lab.requests_seen("green", "after") == 10


def test_switching_back_to_blue(haproxy_lab: harness.HAProxyLab) -> None:
    switch(haproxy_lab, "green", ["blue"])

    result = switch(haproxy_lab, "blue", ["green"])

    assert result["changed"] is True
    # blue was only drained, so it is up already: readying it is enough.
    assert result["commands"] == [
        "set server app/blue state ready",
        "set server app/blue health up",
        "set server app/green state drain",
    ]
    assert haproxy_lab.flags() == {"blue": [], "green": ["CMAINT", "FDRAIN"]}
    assert set(haproxy_lab.answers(6, "back")) == {"blue"}
    assert haproxy_lab.requests_seen("green", "back") == 0


def test_second_run_changes_nothing_and_sends_nothing(haproxy_lab: harness.HAProxyLab) -> None:
    switch(haproxy_lab, "green", ["blue"])
    states = haproxy_lab.states()

    again = switch(haproxy_lab, "green", ["blue"])

    assert again["changed"] is False
    assert again["commands"] == []
    assert again["before"] == again["after"]
    assert haproxy_lab.states() == states
    assert again["msg"] == (
        "app: green already takes the traffic; blue already in drain (0 sessions left)"
    )


def test_check_mode_reports_but_sends_nothing(haproxy_lab: harness.HAProxyLab) -> None:
    states = haproxy_lab.states()

    result = switch(haproxy_lab, "green", ["blue"], others_state="maint", check_mode=True)

    assert result["changed"] is True
    assert result["commands"] == [
        "set server app/green state ready",
        "set server app/green health up",
        "set server app/blue state drain",
        "set server app/blue state maint",
    ]
    assert result["after"]["green"]["op_state"] == "RUNNING"
    assert result["after"]["blue"]["admin_state"] == ["FMAINT"]
    assert haproxy_lab.states() == states
    assert set(haproxy_lab.answers(3, "checked")) == {"blue"}


def test_others_in_maint_end_stopped_after_their_drain(haproxy_lab: harness.HAProxyLab) -> None:
    result = switch(haproxy_lab, "green", ["blue"], others_state="maint", drain_timeout=1)

    assert result["commands"][-2:] == [
        "set server app/blue state drain",
        "set server app/blue state maint",
    ]
    assert result["after"]["blue"]["admin_state"] == ["FMAINT"]
    assert result["after"]["blue"]["op_state"] == "STOPPED"
    assert set(haproxy_lab.answers(4, "maint")) == {"green"}
    assert switch(haproxy_lab, "green", ["blue"], others_state="maint")["changed"] is False


def test_drain_wait_reports_remaining_then_drained(haproxy_lab: harness.HAProxyLab) -> None:
    # Only blue takes traffic at first, so the slow request holds a session on blue.
    slow = threading.Thread(target=haproxy_lab.get, args=("/slow?seconds=1.5",))
    slow.start()
    try:
        _wait_for_sessions(haproxy_lab, "blue", 1)

        short = switch(haproxy_lab, "green", ["blue"], drain_timeout=0.3)
        long = switch(haproxy_lab, "green", ["blue"], drain_timeout=5)
    finally:
        slow.join()

    assert short["changed"] is True
    assert (short["drained"], short["remaining_sessions"]) == (False, 1)
    assert short["after"]["blue"]["scur"] == 1
    assert 0.3 <= short["waited"] < 0.8
    # Nothing left to change, but the wait still runs until the session ends.
    assert long["changed"] is False
    assert (long["drained"], long["remaining_sessions"]) == (True, 0)
    assert 0.2 < long["waited"] < 1.6
    assert long["after"]["blue"]["scur"] == 0


def _wait_for_sessions(lab: harness.HAProxyLab, server: str, count: int) -> None:
    deadline = time.monotonic() + 3
    while lab.client().server_stats(BACKEND)[server].scur != count:
        assert time.monotonic() < deadline, f"{server} never had {count} sessions"
        time.sleep(0.02)


def test_live_down_without_forced_health_leaves_others_alone(
    haproxy_lab: harness.HAProxyLab,
) -> None:
    switch(haproxy_lab, "green", ["blue"])
    # Blue down by health, with checks off so that they cannot bring it back mid-test.
    for command in ("disable health app/blue", "set server app/blue health down"):
        assert haproxy_lab.send(command).strip() == ""

    refused = switch(haproxy_lab, "blue", ["green"], force_health_up=False)
    forced = switch(haproxy_lab, "blue", ["green"])

    assert refused["failed"] is True
    assert refused["msg"].startswith(
        "live server app/blue does not take traffic (op_state STOPPED, admin flags none); "
        "others left untouched"
    )
    assert refused["commands"] == ["set server app/blue state ready"]
    assert forced["commands"] == [
        "set server app/blue health up",
        "set server app/green state drain",
    ]
    assert set(haproxy_lab.answers(4, "forced")) == {"blue"}


# --------------------------------------------------------------------------- failures


def test_unknown_server_fails_naming_it_and_the_servers(haproxy_lab: harness.HAProxyLab) -> None:
    result = switch(haproxy_lab, "purple", ["blue"])

    assert result["failed"] is True
    assert result["msg"] == (
        "server 'purple' (parameter live) not found in backend 'app'; servers: blue, green"
    )
    assert result["commands"] == []


def test_unknown_backend_fails_naming_the_backends(haproxy_lab: harness.HAProxyLab) -> None:
    result = run_module(socket=haproxy_lab.socket, backend="web", live="green", others=["blue"])

    assert result["failed"] is True
    assert result["msg"] == (
        f"backend 'web' not found in HAProxy (socket {haproxy_lab.socket}); backends: app"
    )


def test_missing_socket_fails_with_path_and_expected_config(tmp_path: Path) -> None:
    path = str(tmp_path / "admin.sock")

    result = run_module(socket=path, backend="app", live="green", others=["blue"])

    assert result["failed"] is True
    assert result["msg"] == (
        f"HAProxy admin socket {path} does not exist: expected a running haproxy with "
        f"`stats socket {path} level admin` in the global section of haproxy.cfg "
        "(parameter socket)"
    )


def test_bad_names_fail_before_contacting_haproxy(tmp_path: Path) -> None:
    result = run_module(
        socket=str(tmp_path / "never-opened.sock"), backend="app", live="green;", others=["green;"]
    )

    assert result["failed"] is True
    assert "live must be an HAProxy name" in result["msg"]
    assert "also listed in others" in result["msg"]


# --------------------------------------------------------------------------- through ansible


def test_through_the_ansible_command_line(haproxy_lab: harness.HAProxyLab) -> None:
    """The installed collection path, argument spec and JSON result, as a play would see them."""
    args = json.dumps(
        {"socket": haproxy_lab.socket, "backend": BACKEND, "live": "green", "others": ["blue"]}
    )
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",  # ad hoc prints `localhost | CHANGED => {...}`
    }
    process = subprocess.run(
        [str(ANSIBLE), "localhost", "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=/usr/bin/python3",
         "-m", "beamops.release.haproxy_slot", "-a", args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip

    assert process.returncode == 0, process.stdout + process.stderr
    status, _unused, body = process.stdout.partition(" => ")
    assert status == "localhost | CHANGED", process.stdout
    result = json.loads(body)
    assert result["changed"] is True
    assert result["after"]["green"]["op_state"] == "RUNNING"
    assert set(haproxy_lab.answers(4, "ansible")) == {"green"}
