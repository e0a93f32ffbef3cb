"""From bare hosts: Debian 12 (bo1, nginx) and Debian 13 (bo2, HAProxy) that had only
systemd, sshd and python3 before converge's first deploy. Runs in file order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import testinfra

from tests.tools.fleet import HOSTS, RUNNER, STATE_FILE, Fleet, deploykit
from tests.tools.runbooks import Runbook, extended_inventory, release_variables

APP = "sample_app"

IMAGES = Path("/var/lib/beamops-testhosts")
DEBIAN = {"bo1": ("12", "bare-bookworm"), "bo2": ("13", "bare-trixie")}
PROXY_COMMAND = {"nginx": "/usr/sbin/nginx", "haproxy": "/usr/sbin/haproxy"}


def served(fleet: Fleet, version: str, slot: str) -> None:
    assert fleet.served() == {name: f"sample_app {version} on {slot}" for name in HOSTS}


def test_the_hosts_were_bare_and_the_first_deploy_installed_their_proxy(fleet: Fleet) -> None:
    """Each host runs the Debian its image is, which had no proxy (nor curl): the deploy
    installed the proxy its inventory names, from the host's package source."""
    for name in HOSTS:
        version, image = DEBIAN[name]
        host = fleet.hosts[name]
        assert host.check_output(". /etc/os-release; echo $VERSION_ID") == version
        proxy = fleet.proxy(name)
        for command in PROXY_COMMAND.values():
            assert not (IMAGES / f"image-{image}" / command.lstrip("/")).exists(), command
        assert host.run("command -v curl").rc != 0
        assert host.package(proxy).is_installed
        installs = host.check_output("grep -h '^Install:' /var/log/apt/history.log")
        assert f"{proxy}:amd64" in installs, installs
        assert host.file(PROXY_COMMAND[proxy]).exists


def test_the_first_deploy_serves_from_sealed_units(fleet: Fleet) -> None:
    served(fleet, "0.1.0", "blue")
    for name in HOSTS:
        assert fleet.exposure(name, "sample_app@blue.service") <= 1.2
        assert fleet.exposure(name, "beamops-epmd.service") <= 1.5


def test_deploy_and_rollback_under_load_fail_no_request(fleet: Fleet) -> None:
    with fleet.under_load() as load:
        run = fleet.deploy("0.2.0")
    assert run.rc == 0, run.tail()
    served(fleet, "0.2.0", "green")
    assert load.failed() == 0 and load.requests() > 500, load.results
    with fleet.under_load() as load:
        run = fleet.playbook("rollback")
    assert run.rc == 0, run.tail()
    served(fleet, "0.1.0", "blue")
    assert load.failed() == 0 and load.requests() > 500, load.results


# ---------------------------------------------------------------------------- the runbooks
def book(name: str, **variables: str) -> Runbook:
    return Runbook(name, {"INVENTORY": fleet_inventory(), "APP": APP, **variables})


def fleet_inventory() -> str:
    return str(os.environ["MOLECULE_INVENTORY_FILE"])


def main_pid(fleet: Fleet, name: str, unit: str) -> str:
    return str(fleet.hosts[name].check_output(f"systemctl show -p MainPID --value {unit}"))


def wait_inactive(host: Any, unit: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while host.service(unit).is_running:
        assert time.monotonic() < deadline, f"{unit} still running"
        time.sleep(0.5)


def test_the_roll_back_now_runbook(fleet: Fleet) -> None:
    """docs/runbooks/rollback-now.md under load: back to the candidate, forward to a named
    release, and the on-host command: no request fails."""
    assert fleet.deploy("0.3.0").rc == 0
    page = book("rollback-now.md", **release_variables("0.3.0"))
    with fleet.under_load() as load:
        status = page.ok(0).output
        assert status.count("active_version: 0.3.0") == 2, status
        assert status.count("rollback_candidate: 0.1.0") == 2, status
        page.ok(1)
        served(fleet, "0.1.0", "blue")
        page.ok(2)
        served(fleet, "0.3.0", "green")
        # The run went back to 0.1.0 and forward again, marking each bad as it left it: on
        # the host, the operator names the release.
        plan = page.ok(3, fleet.hosts["bo2"], VERSION="0.1.0").output
        assert "0.1.0" in plan and fleet.served()["bo2"] == "sample_app 0.3.0 on green", plan
        page.ok(4, fleet.hosts["bo2"], VERSION="0.1.0")
        assert fleet.served() == {
            "bo1": "sample_app 0.3.0 on green",
            "bo2": "sample_app 0.1.0 on blue",
        }
        assert page.ok(5).output.count("active_version:") == 2
    page.all_run()
    assert load.failed() == 0 and load.requests() > 1000, load.results


def test_the_slot_unhealthy_runbook_replaces_a_stuck_live_slot(fleet: Fleet) -> None:
    """bo1's live node stops answering (SIGSTOP): the page's commands find it, and deploying
    the serving release again starts a fresh slot beside it and retires the stuck one."""
    bo1 = fleet.hosts["bo1"]
    stuck = main_pid(fleet, "bo1", f"{APP}@green")
    bo1.check_output(f"kill -STOP {stuck}")
    page = book("slot-unhealthy.md", HOST="bo1", SLOT="green", PORT="4002",
                **release_variables("0.3.0"))  # fmt: skip
    status = page.ok(0).output
    assert "active_slot: green" in status and "healthy: false" in status.lower(), status
    asked = page.ok(1, bo1).output
    assert "not ready" in asked and "ActiveState=active" in asked, asked
    page.ok(2, bo1)
    page.ok(3)
    assert fleet.served()["bo1"] == "sample_app 0.3.0 on blue"
    wait_inactive(bo1, f"{APP}@green")
    assert main_pid(fleet, "bo1", f"{APP}@blue") not in ("0", stuck)
    page.all_run()


def test_the_lost_state_runbook_rebuilds_it_without_touching_what_serves(fleet: Fleet) -> None:
    """bo1's state deleted, bo2's damaged: deploys refuse, status says so, repair.yml
    rebuilds both from the hosts; every serving process keeps its pid."""
    units = [f"{APP}@blue", "nginx", "haproxy"]
    before = {name: [main_pid(fleet, name, unit) for unit in units] for name in HOSTS}
    fleet.hosts["bo1"].check_output(f"rm {STATE_FILE}")
    fleet.hosts["bo2"].check_output(f"echo '{{broken' > {STATE_FILE}")
    refused = fleet.deploy("0.3.0", "--limit", "bo1")
    assert refused.rc != 0 and "the state was lost; run playbooks/repair.yml" in refused.output
    page = book("recover-lost-state.md")
    lost = page.ok(0, HOST="bo1").output
    assert "proxy_routes_to: blue" in lost and "the state was lost" in lost, lost
    damaged = page.run(0, HOST="bo2")
    assert damaged.rc != 0 and "is corrupt" in damaged.output and "repair.yml" in damaged.output
    repaired = page.ok(1, HOST="bo1").output + page.ok(1, HOST="bo2").output
    assert "rebuilt from the host: 0.3.0 active on blue" in repaired, repaired
    assert "rebuilt from the host: 0.1.0 active on blue" in repaired, repaired
    assert "rollback_to=" in repaired
    kept = fleet.hosts["bo2"].check_output(f"cat {STATE_FILE}.damaged-*")
    assert kept == "{broken"
    for name in HOSTS:
        assert fleet.state(name)["active"]["slot"] == "blue"
        assert page.ok(2, HOST=name).output.count("state_and_proxy: agree") == 1
    assert {name: [main_pid(fleet, name, u) for u in units] for name in HOSTS} == before
    page.all_run()
    with fleet.under_load() as load:
        assert fleet.deploy("0.2.0").rc == 0
    served(fleet, "0.2.0", "green")
    assert load.failed() == 0, load.results


def test_the_add_and_remove_a_host_runbook(fleet: Fleet, tmp_path: Path) -> None:
    """A third bare host joins with the release that serves (its proxy installed by that
    first deploy), then leaves: frozen, its slots stopped, out of the inventory."""
    harness = [sys.executable, str(deploykit.REPO / "tests/harness/testhosts.py")]
    images = "bare-bookworm,bare-trixie,bare-bookworm"
    subprocess.run([*harness, "up", "3", "--images", images], check=True, capture_output=True)
    try:
        with_bo3 = inventory_with_bo3(tmp_path)
        page = book("add-remove-host.md", INVENTORY=with_bo3, HOST="bo3",
                    **release_variables("0.2.0"))  # fmt: skip
        page.ok(0)
        bo3 = testinfra.get_host(f"ansible://bo3?ansible_inventory={with_bo3}")
        assert bo3.package("nginx").is_installed
        fleet_run = page.ok(1).output
        for name in HOSTS:
            assert re.search(rf"{name}\s+: ok=\d+\s+changed=0 ", fleet_run), fleet_run
        assert "active_version: 0.2.0" in page.ok(2).output
        page.ok(3)
        page.ok(4, bo3)
        for slot in ("blue", "green"):
            assert not bo3.service(f"{APP}@{slot}").is_running
            assert not bo3.service(f"{APP}@{slot}").is_enabled
        refused = fleet.deploy("0.2.0", "--limit", "bo3", inventories=[with_bo3])
        assert refused.rc != 0 and "(leaving the fleet)" in refused.output, refused.tail()
        page.ok(1, INVENTORY=fleet_inventory())
        page.all_run()
    finally:
        subprocess.run([*harness, "stop", "bo3"], check=True, capture_output=True)


def inventory_with_bo3(directory: Path) -> str:
    """The scenario's inventory beside one more file adding bo3 to beamops_app."""
    bo1 = RUNNER.get_variables("bo1")
    connection = (
        "ansible_user",
        "ansible_port",
        "ansible_private_key_file",
        "ansible_ssh_common_args",
    )
    bo3 = {key: bo1[key] for key in connection if key in bo1}
    bo3["ansible_host"] = str(bo1["ansible_host"]).rsplit(".", 1)[0] + ".13"
    bo3["beamops_proxy"] = "nginx"
    extra = {"all": {"children": {"beamops_app": {"hosts": {"bo3": bo3}}}}}
    return extended_inventory(directory, fleet_inventory(), {"zz-bo3.yml": json.dumps(extra)})


def test_without_package_installs_a_missing_proxy_stops_the_deploy_naming_it(
    fleet: Fleet,
) -> None:
    """bo1 asked to switch to HAProxy, which it does not have, with installs turned off: the
    deploy stops before touching the proxy and nginx goes on serving 0.2.0."""
    run = fleet.deploy(
        "0.2.0",
        "--limit",
        "bo1",
        "-e",
        "beamops_proxy=haproxy",
        "-e",
        "beamops_install_packages=false",
    )
    assert run.rc != 0
    assert "haproxy (beamops_proxy) is not installed on this host" in run.output, run.tail()
    assert "beamops_install_packages" in run.output
    assert not fleet.hosts["bo1"].package("haproxy").is_installed
    assert fleet.served()["bo1"] == "sample_app 0.2.0 on green"
    assert fleet.state("bo1")["active"]["version"] == "0.2.0"


def test_a_package_unknown_to_stale_lists_is_installed_after_refreshing_them(
    fleet: Fleet,
) -> None:
    """With its package lists gone (as on a host whose image shipped none), bo1's switch to
    HAProxy finds no haproxy package, refreshes the lists and installs it."""
    bo1 = fleet.hosts["bo1"]
    bo1.check_output("rm -rf /var/lib/apt/lists/* && apt-cache policy haproxy | wc -l")
    assert "Candidate" not in bo1.check_output("apt-cache policy haproxy")
    run = fleet.deploy("0.3.0", "--limit", "bo1", "-e", "beamops_proxy=haproxy")
    assert run.rc == 0, run.tail()
    refreshed = r"Install the proxy from refreshed package lists\] \*+\nchanged: \[bo1\]"
    assert re.search(refreshed, run.output), run.tail()
    assert bo1.package("haproxy").is_installed
    # HAProxy took port 80 (it would not start otherwise); nginx lost this app's site.
    assert bo1.service("haproxy").is_running
    assert not bo1.file("/etc/nginx/conf.d/sample_app.upstream").exists
    assert fleet.served()["bo1"] == "sample_app 0.3.0 on blue"
