"""The test-host harness, exercised for real: containers booted, reached over ssh, torn down.

Needs root and systemd-nspawn. The first run builds the template image (under a minute);
later runs reuse it. Tests that tear hosts down come last in the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the harness lives in the repo, not in an installed package
    sys.path.insert(0, str(ROOT))

from tests.harness import testhosts  # noqa: E402

pytestmark = pytest.mark.hosts

HARNESS = ROOT / "tests/harness/testhosts.py"
CFG = testhosts.Config.from_env()
HOG = "python3 -c 'data = b\"x\" * (300 << 20); print(len(data))'"  # touches ~300 MB


def harness(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the harness CLI as a user would."""
    result = subprocess.run(
        [sys.executable, str(HARNESS), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"testhosts.py {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result


def on(host: testhosts.Host, command: str, user: str | None = None) -> str:
    """Run COMMAND on HOST over ssh; it must succeed."""
    result = host.run(command, user=user)
    assert result.returncode == 0, (
        f"{host.name}: `{command}` exited {result.returncode}: {result.stderr.strip()}"
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[testhosts.Host]]:
    if os.geteuid() != 0:
        pytest.skip("test hosts need root (systemd-nspawn, mounts, bridge, cgroups)")
    started = time.monotonic()
    try:
        booted = testhosts.up(2)
    except BaseException:
        testhosts.down()
        raise
    print(f"\n2 hosts up in {time.monotonic() - started:.1f}s (including any template build)")
    yield booted
    testhosts.down()


# ----------------------------------------------------------------------------- the hosts
def test_systemd_is_pid1_and_the_system_is_up(hosts: list[testhosts.Host]) -> None:
    for host in hosts:
        assert on(host, "cat /proc/1/comm") == "systemd"
        assert on(host, "readlink /proc/1/exe").endswith("/systemd")
        # --wait: ssh answers before the last units have started
        state = host.run("timeout 60 systemctl is-system-running --wait").stdout.strip()
        assert state in ("running", "degraded"), f"{host.name}: system is {state!r}"
        if state == "degraded":
            failed = on(host, "systemctl --failed --no-legend --plain")
            warnings.warn(f"{host.name} is degraded; failed units:\n{failed}", stacklevel=1)


def test_each_host_has_its_own_address_and_reaches_the_other(
    hosts: list[testhosts.Host],
) -> None:
    addresses = set()
    for host in hosts:
        shown = on(host, "ip -4 -o addr show dev host0")
        assert f"inet {host.address}/24" in shown
        addresses.add(host.address)
        # nothing beyond the test bridge: no default route, no resolver
        assert on(host, "ip route show default") == ""
        assert "nameserver" not in on(host, "cat /etc/resolv.conf")
    assert len(addresses) == len(hosts)
    first, second = hosts
    for source, target in ((first, second), (second, first)):
        # by name (the /etc/hosts the harness wrote) to the other host's nginx and sshd
        status = on(source, f"curl -s -o /dev/null -w '%{{http_code}}' http://{target.name}/")
        assert status == "200"
        on(source, f"nc -z -w 2 {target.address} 22")


def test_template_has_the_packages_and_no_erlang(hosts: list[testhosts.Host]) -> None:
    host = hosts[0]
    wanted = ("nginx", "haproxy", "prometheus", "socat", "python3-apt")
    listed = on(host, "dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' " + " ".join(wanted))
    installed = {line.split()[1] for line in listed.splitlines() if line.startswith("ii")}
    assert installed == set(wanted)
    on(host, "command -v nginx haproxy prometheus")
    # the sample release must prove it runs on a host without Erlang
    found = host.run("command -v erl erlc elixir iex; ls -d /usr/lib/erlang")
    assert found.returncode != 0 and found.stdout.strip() == "", found.stdout


def test_memory_limit_of_a_unit_is_enforced(hosts: list[testhosts.Host]) -> None:
    host = hosts[0]
    limited = host.run(
        f"systemd-run --unit=memhog -p MemoryMax=64M -p MemorySwapMax=0 --wait {HOG}"
    )
    result = on(host, "systemctl show -p Result --value memhog.service")
    on(host, "systemctl reset-failed memhog.service")  # a failed unit would degrade the host
    assert limited.returncode != 0, limited.stderr
    # cgroup v1 reports the OOM kill as a plain SIGKILL
    assert result in ("signal", "oom-kill"), limited.stderr
    unlimited = host.run(f"systemd-run --unit=memhog-free --wait {HOG}")
    assert unlimited.returncode == 0, unlimited.stderr
    assert "Finished with result: success" in unlimited.stderr


def test_a_unit_starts_and_stops(hosts: list[testhosts.Host]) -> None:
    host = hosts[1]
    on(host, "systemd-run --unit=sleeper sleep 300")
    assert on(host, "systemctl is-active sleeper.service") == "active"
    assert on(host, "systemctl show -p MainPID --value sleeper.service") != "0"
    on(host, "systemctl stop sleeper.service")
    assert host.run("systemctl is-active sleeper.service").stdout.strip() == "inactive"
    assert host.run("pgrep -x sleep").returncode == 1


def test_unprivileged_user_has_passwordless_sudo(hosts: list[testhosts.Host]) -> None:
    for host in hosts:
        assert on(host, "id -un", user=testhosts.UNPRIVILEGED_USER) == "ansible"
        assert on(host, "sudo -n id -u", user=testhosts.UNPRIVILEGED_USER) == "0"


@pytest.mark.parametrize("inventory", ["inventory.ini", "inventory.json"])
def test_ansible_reaches_every_host_through_the_inventory(
    hosts: list[testhosts.Host], inventory: str
) -> None:
    ansible = Path(sys.executable).parent / "ansible"
    if not ansible.exists():
        pytest.skip(f"{ansible} not installed")
    result = subprocess.run(
        [
            str(ansible),
            *("all", "-i", str(CFG.state_dir / inventory), "-o", "-b"),
            *("-e", f"ansible_user={testhosts.UNPRIVILEGED_USER}", "-m", "command", "-a", "id -un"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    answered = set(
        re.findall(r"^(\S+) \| CHANGED \| rc=0 \| \(stdout\) root$", result.stdout, re.M)
    )
    assert answered == {h.name for h in hosts}


def test_inventory_json_lists_the_running_hosts(hosts: list[testhosts.Host]) -> None:
    inventory = json.loads((CFG.state_dir / "inventory.json").read_text())
    group = inventory["all"]["children"][testhosts.INVENTORY_GROUP]
    assert group["hosts"] == {h.name: {"ansible_host": h.address} for h in hosts}
    assert group["vars"]["ansible_ssh_private_key_file"] == str(CFG.key_path)
    assert json.loads(harness("inventory", "--format", "json").stdout) == inventory


def test_status_shows_each_host_running(hosts: list[testhosts.Host]) -> None:
    lines = harness("status").stdout.splitlines()
    assert len(lines) == len(hosts)
    for line, host in zip(lines, hosts):
        pattern = (
            rf"{host.name}\s+supervisor=\d+\s+ip={re.escape(host.address)}\s+(running|degraded)"
        )
        assert re.match(pattern, line), line


def test_exec_runs_inside_the_host_without_ssh(hosts: list[testhosts.Host]) -> None:
    assert harness("exec", hosts[1].name, "hostname").stdout.strip() == hosts[1].name


def test_up_again_keeps_the_running_hosts(hosts: list[testhosts.Host]) -> None:
    pids = {h.name: (CFG.host_dir(h.name) / "pid").read_text() for h in hosts}
    for host in hosts:
        on(host, "touch /run/still-the-same-boot")  # /run is emptied by any reboot
    result = harness("up", str(len(hosts)))
    assert "reusing template" in result.stderr
    assert f"booted 0, kept {len(hosts)}" in result.stderr
    assert re.search(r"reachable over ssh in \d+\.\d+s", result.stderr)
    for host in hosts:
        assert f"{host.name} ansible_host={host.address}" in result.stdout
        assert (CFG.host_dir(host.name) / "pid").read_text() == pids[host.name]
        on(host, "test -e /run/still-the-same-boot")


def test_second_build_reuses_the_template(hosts: list[testhosts.Host]) -> None:
    started = time.monotonic()
    result = harness("build")
    assert f"reusing template {testhosts.template_id()}" in result.stderr
    assert "building template" not in result.stderr
    assert time.monotonic() - started < 10
    assert testhosts.installed_template_id(CFG) == testhosts.template_id()


def test_guest_reboot_brings_the_host_back(hosts: list[testhosts.Host]) -> None:
    host = hosts[1]
    supervisor = (CFG.host_dir(host.name) / "pid").read_text()
    on(host, "touch /run/before-reboot")
    host.run("systemctl reboot")
    deadline = time.monotonic() + 60
    while host.run("test ! -e /run/before-reboot").returncode != 0:
        assert time.monotonic() < deadline, f"{host.name} did not come back after a reboot"
        time.sleep(0.5)
    # the same supervisor started nspawn again (exit 133) instead of giving up
    assert (CFG.host_dir(host.name) / "pid").read_text() == supervisor
    assert (
        "rebooted; starting systemd-nspawn again"
        in (CFG.host_dir(host.name) / "nspawn.log").read_text()
    )


# ----------------------------------------------------------------------------- errors
def fake_nspawn(tmp_path: Path, body: str) -> dict[str, str]:
    """An environment whose systemd-nspawn is a script: to see how the harness reports it."""
    fake = tmp_path / "bin" / "systemd-nspawn"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}


def third_host_fails(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Ask for a third host (the two of the fixture are kept) with ENV; then remove it."""
    try:
        return subprocess.run(
            [sys.executable, str(HARNESS), "up", "3"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
    finally:
        harness("stop", CFG.host_name(3))


def test_up_shows_the_log_when_nspawn_exits(hosts: list[testhosts.Host], tmp_path: Path) -> None:
    env = fake_nspawn(tmp_path, 'echo "nspawn says: cannot start $*" >&2; exit 1')
    result = third_host_fails(env)
    assert result.returncode == 1
    assert f"{CFG.host_name(3)}: systemd-nspawn exited" in result.stderr
    assert "nspawn says: cannot start --quiet" in result.stderr
    assert [h.name for h in testhosts.running_hosts()] == [h.name for h in hosts]


def test_up_gives_up_when_ssh_does_not_answer_in_time(
    hosts: list[testhosts.Host], tmp_path: Path
) -> None:
    env = {**fake_nspawn(tmp_path, "exec sleep 300"), "BEAMOPS_TH_BOOT_TIMEOUT": "2"}
    started = time.monotonic()
    result = third_host_fails(env)
    assert result.returncode == 1
    assert f"{CFG.host_name(3)}: ssh root@{CFG.host_address(3)} not reachable after 2s" in (
        result.stderr
    )
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("count", ["0", "100", "two", "-1"])
def test_up_rejects_a_bad_count(count: str) -> None:
    result = harness("up", "--", count, check=False)
    assert result.returncode != 0
    assert "expected a whole number from 1 to 99" in result.stderr


def test_refuses_to_run_without_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    result = subprocess.run(
        [
            *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
            *(sys.executable, str(HARNESS), "up", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "must run as root" in result.stderr


def test_mirror_comes_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb deb-src\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n\n"
        "# disabled paragraph\nTypes: deb\nURIs: http://off.invalid/debian\n"
        "Suites: bookworm\nEnabled: no\n\n"
        "Types: deb\nURIs: http://other.invalid/x\nSuites: nodistro\nComponents: main\n"
    )
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [signed-by=/k.gpg arch=amd64] http://sec.invalid/d bookworm-security main\n"
        "deb http://old.invalid/debian bullseye main\n"
    )
    cfg = testhosts.Config.from_env({})
    assert testhosts.apt_source_entries(cfg, tmp_path) == [
        "deb http://mirror.invalid/debian bookworm main contrib",
        "deb http://mirror.invalid/debian bookworm-updates main contrib",
        "deb http://sec.invalid/d bookworm-security main",
    ]
    override = testhosts.Config.from_env({"BEAMOPS_TH_MIRROR": "http://m.invalid/debian"})
    assert testhosts.apt_source_entries(override, tmp_path) == [
        "deb http://m.invalid/debian bookworm main"
    ]


def test_another_suite_is_read_from_the_same_mirrors(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "deb http://mirror.invalid/debian bookworm main\n"
        "deb http://sec.invalid/d bookworm-security main\n"
    )
    cfg = testhosts.Config.from_env({})
    assert testhosts.apt_source_entries(cfg, tmp_path, suite="trixie") == [
        "deb http://mirror.invalid/debian trixie main",
        "deb http://sec.invalid/d trixie-security main",
    ]
    with pytest.raises(testhosts.HarnessError, match="image 'bare-sid': expected one of"):
        testhosts.image_named("bare-sid")
    # The full template keeps its id (and its directory): existing state dirs stay valid.
    assert testhosts.template_id() == testhosts.template_id(testhosts.IMAGES["full"])
    ids = {testhosts.template_id(image) for image in testhosts.IMAGES.values()}
    assert len(ids) == len(testhosts.IMAGES)


def test_a_bare_image_s_package_source_is_a_flat_apt_repository(tmp_path: Path) -> None:
    """Two real .deb files made with dpkg-deb: the index names each with its checksum."""
    for name in ("alpha", "beta"):
        root = tmp_path / "build" / name
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(
            f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
            f"Description: {name}\n"
        )
        repo = tmp_path / "repo"
        repo.mkdir(exist_ok=True)
        subprocess.run(
            ["dpkg-deb", "--build", "--root-owner-group", str(root), str(repo / f"{name}.deb")],
            check=True,
            capture_output=True,
        )
    (repo / "partial").mkdir()
    (repo / "lock").write_text("")
    testhosts._write_apt_index(repo)
    index = (repo / "Packages").read_text()
    for name in ("alpha", "beta"):
        data = (repo / f"{name}.deb").read_bytes()
        assert f"Package: {name}\n" in index and f"Filename: ./{name}.deb\n" in index
        assert f"SHA256: {hashlib.sha256(data).hexdigest()}\n" in index
    release = (repo / "Release").read_text()
    digest = hashlib.sha256((repo / "Packages").read_bytes()).hexdigest()
    assert f" {digest} {len(index.encode())} Packages" in release and "Date: " in release
    assert not (repo / "partial").exists() and not (repo / "lock").exists()


def test_missing_apt_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(testhosts.HarnessError, match="BEAMOPS_TH_MIRROR"):
        testhosts.apt_source_entries(testhosts.Config.from_env({}), tmp_path)


# ----------------------------------------------------------------------------- teardown
def leftovers() -> list[str]:
    """Everything of this checkout's hosts still present, checked independently of the harness."""
    found = []
    processes = subprocess.run(
        ["pgrep", "-af", "--", rf"--machine={CFG.prefix}[0-9]+( |$)|testhosts\.py _supervise"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found += [f"process: {line}" for line in processes.splitlines()]
    mounts = Path("/proc/mounts").read_text().splitlines()
    found += [f"mount: {line}" for line in mounts if str(CFG.state_dir) in line]
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == CFG.bridge or re.fullmatch(rf"vb-{CFG.prefix}[0-9]+", name):
            found.append(f"link: {name}")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for root, dirs, _unused in os.walk(hierarchy):
            found += [f"cgroup: {root}/{d}" for d in dirs if d == CFG.cgroup_group]
    for path in (CFG.hosts_dir, CFG.inventory_ini_path, CFG.inventory_json_path):
        if path.exists():
            found.append(f"state: {path}")
    return found


def test_down_leaves_nothing_behind(hosts: list[testhosts.Host]) -> None:
    testhosts.up(len(hosts))  # whatever earlier tests did, start from running hosts
    assert leftovers(), "the check itself must see running hosts"
    started = time.monotonic()
    harness("down")
    elapsed = time.monotonic() - started
    assert leftovers() == []
    assert elapsed < 15, f"down took {elapsed:.1f}s"


def test_down_cleans_up_after_a_crashed_run(hosts: list[testhosts.Host]) -> None:
    testhosts.up(len(hosts))
    victim = hosts[-1].name
    supervisor = int((CFG.host_dir(victim) / "pid").read_text())
    os.kill(supervisor, 9)
    for state_file in ("pid", "cgroups"):
        (CFG.host_dir(victim) / state_file).unlink()
    CFG.inventory_ini_path.unlink()
    CFG.inventory_json_path.unlink()
    # the container outlived its supervisor: only a scan can find it now
    time.sleep(0.2)
    assert any(f"--machine={victim} " in line for line in leftovers())
    harness("down")
    assert leftovers() == []
