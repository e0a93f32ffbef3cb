"""The collection on the oldest ansible-core it claims to support (requires_ansible >=2.19.4):
converge and idempotence ran with it; these runs do too."""

from __future__ import annotations

import subprocess

import yaml

from tests.tools.fleet import HOSTS, Fleet, deploykit

OLDEST = "2.19.4"


def test_the_playbooks_run_on_the_oldest_claimed_ansible_core() -> None:
    shown = subprocess.run(
        [str(deploykit.BIN / "ansible-playbook"), "--version"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"[core {OLDEST}]" in shown.stdout, shown.stdout
    runtime = yaml.safe_load((deploykit.REPO / "meta" / "runtime.yml").read_text())
    assert runtime["requires_ansible"] == f">={OLDEST}"


def test_deploy_rollback_and_status_on_the_oldest_core(fleet: Fleet) -> None:
    assert fleet.served() == {name: "sample_app 0.1.0 on blue" for name in HOSTS}
    with fleet.under_load() as load:
        run = fleet.deploy("0.2.0")
    assert run.rc == 0, run.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    assert load.failed() == 0 and load.requests() > 500, load.results
    with fleet.under_load() as load:
        back = fleet.playbook("rollback")
    assert back.rc == 0, back.tail()
    assert fleet.served() == {name: "sample_app 0.1.0 on blue" for name in HOSTS}
    assert load.failed() == 0, load.results
    status = fleet.playbook("status")
    assert status.rc == 0 and status.output.count("active_version: 0.1.0") == len(HOSTS)
