"""Foundation checks on real hosts: systemd as PID 1, units, and an enforced memory limit."""

from __future__ import annotations

import os

import testinfra.utils.ansible_runner
from testinfra.host import Host

HOSTS = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("testhosts")
# testinfra runs every test once per host named here, as the `host` fixture.
testinfra_hosts = [f"ansible://{name}" for name in HOSTS]


def test_systemd_is_pid_1_and_the_system_is_up(host: Host) -> None:
    name = host.backend.get_hostname()
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert state == "running", f"{name}: {state}; failed units: {failed}"


def test_a_unit_starts_and_stops(host: Host) -> None:
    host.run_test("systemctl start beamops-sleeper.service")
    assert host.service("beamops-sleeper").is_running
    host.run_test("systemctl stop beamops-sleeper.service")
    assert not host.service("beamops-sleeper").is_running


def test_memory_max_kills_a_memory_hog(host: Host) -> None:
    limited = host.run("systemctl start beamops-memhog.service")
    result = host.run("systemctl show -p Result --value beamops-memhog.service").stdout.strip()
    assert limited.rc != 0, "256 MiB allocated under MemoryMax=64M: the limit is not enforced"
    # cgroup v1 reports the OOM kill as a signal; cgroup v2 as oom-kill.
    assert result in {"oom-kill", "signal"}, result
    # The same allocation without the limit succeeds, so the failure above is the limit's.
    unlimited = host.run(
        "systemd-run --wait --quiet -p MemoryMax=infinity /usr/bin/python3 -c "
        "\"b = bytearray(256 * 1024 * 1024); print('allocated', len(b))\""
    )
    assert unlimited.rc == 0, unlimited.stderr


def test_hosts_reach_each_other_and_have_no_erlang(host: Host) -> None:
    for other in HOSTS:
        host.run_test(f"timeout 3 bash -c 'echo > /dev/tcp/{other}/22'")
    assert host.run("command -v erl").rc != 0, "test hosts must not have Erlang installed"
    assert host.package("nginx").is_installed
    assert host.package("haproxy").is_installed
