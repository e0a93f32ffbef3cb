"""The molecule scenarios' fleet as an operator sees it: the molecule inventory, its hosts,
playbook runs, state files, what each proxy routes to, and load through the proxies.

Imported by each scenario's tests/conftest.py once it has put the project on sys.path."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Dict, Iterator, List

import pytest
import testinfra
import testinfra.utils.ansible_runner

from tests.tools import deploykit
from tests.tools.loadgen import Load

__all__ = [
    "COOKIE",
    "HOSTS",
    "SECRET_KEY_BASE",
    "STATE_FILE",
    "Fleet",
    "LoadedFleet",
    "address",
    "assert_refused_at_the_gate",
    "deploykit",
    "fleet",
]

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
HOSTS: List[str] = sorted(RUNNER.get_hosts("beamops_app"))
STATE_FILE = "/opt/sample_app/release-state.json"
SETTLE_SECONDS = 1.5
# What the proxy answers on /, asked with python3: a bare host has no curl.
SERVED_COMMAND = (
    "python3 -c 'import urllib.request as u; "
    'print(u.urlopen("http://127.0.0.1/", timeout=3).read().decode(), end="")\''
)
# The demo inventory's example secrets: no output, log or state file may ever show them.
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


def address(name: str) -> str:
    return str(RUNNER.get_variables(name)["ansible_host"])


class Fleet:
    """The scenario's hosts as an operator sees them: playbooks, proxies, state files."""

    def __init__(self) -> None:
        self.inventories = [INVENTORY]
        self.hosts = {
            name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")
            for name in HOSTS
        }

    def playbook(
        self, name: str, *args: str, inventories: List[str] | None = None
    ) -> deploykit.PlaybookRun:
        run = deploykit.run_playbook(inventories or self.inventories, name, *args)
        print(f"\n--- {name} {' '.join(args)}: rc={run.rc} in {run.seconds}s, recap {run.recap}")
        return run

    def start(self, name: str, *args: str) -> deploykit.BackgroundRun:
        """A playbook run in the background, for a fault to hit it on the way."""
        return deploykit.BackgroundRun(self.inventories, name, *args)

    def proxy(self, name: str) -> str:
        return str(RUNNER.get_variables(name)["beamops_proxy"])

    def deploy(self, version: str, *args: str, **kw: List[str]) -> deploykit.PlaybookRun:
        return self.playbook("deploy", *deploykit.release_args(version), *args, **kw)

    def state(self, name: str) -> Dict[str, Any]:
        return dict(json.loads(self.hosts[name].file(STATE_FILE).content_string))

    def state_bytes(self) -> Dict[str, str]:
        return {
            name: host.check_output(f"sha256sum {STATE_FILE}") for name, host in self.hosts.items()
        }

    def served(self) -> Dict[str, str]:
        """What each host's proxy answers on / (version and slot)."""
        return {name: host.check_output(SERVED_COMMAND) for name, host in self.hosts.items()}

    def _routing(self, name: str) -> tuple[str, str]:
        """The live slot in the proxy's file, and in its running memory (HAProxy's map)."""
        host = self.hosts[name]
        upstream = host.file("/etc/nginx/conf.d/sample_app.upstream")
        if upstream.exists:
            # The first server line is the primary; a second one is the `backup` fallback.
            port = re.search(r"server 127\.0\.0\.1:(\d+)", upstream.content_string)
            slot = {"4001": "blue", "4002": "green"}[port.group(1) if port else ""]
            return slot, slot
        live = host.file("/etc/haproxy/sample_app-live.map").content_string.split()
        assert live[0] == "live", live
        runtime = host.check_output(
            "echo 'show map /etc/haproxy/sample_app-live.map' | socat - /run/haproxy/admin.sock"
        )
        return live[1].rsplit("_", 1)[1], runtime.split()[-1].rsplit("_", 1)[1]

    def proxy_config_slot(self, name: str) -> str:
        """The live slot as the proxy's own configuration records it (file and memory agree)."""
        in_file, in_memory = self._routing(name)
        assert in_file == in_memory, (name, in_file, in_memory)
        return in_file

    def settled_slot(self, name: str) -> str:
        """For polling during a switch: the live slot once file and memory agree, else "".
        HAProxy's switch sets the map in memory first, then writes the file."""
        in_file, in_memory = self._routing(name)
        return in_file if in_file == in_memory else ""

    def exposure(self, name: str, unit: str) -> float:
        """`systemd-analyze security` of a loaded unit on the host: its overall exposure."""
        shown = self.hosts[name].check_output(f"systemd-analyze security --no-pager {unit}")
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", shown)
        assert found, shown
        return float(found.group(1))

    def wait_stopped(self, unit: str, seconds: float = 30.0) -> None:
        """The old slot retires in the background (drain, then a systemd timer stops it)."""
        deadline = time.monotonic() + seconds
        for name, host in self.hosts.items():
            while host.service(unit).is_running:
                assert time.monotonic() < deadline, f"{name}: {unit} still running"
                time.sleep(0.5)

    def under_load(self) -> LoadedFleet:
        return LoadedFleet([address(name) for name in HOSTS])


class LoadedFleet:
    """Continuous requests through every host's proxy while the block runs."""

    def __init__(self, addresses: List[str]) -> None:
        self.loads = {a: Load(f"http://{a}/", rate=100, workers=8) for a in addresses}
        self.results: Dict[str, Dict[str, Any]] = {}

    def __enter__(self) -> LoadedFleet:
        for load in self.loads.values():
            load.__enter__()
        time.sleep(SETTLE_SECONDS)  # load is flowing before the operation starts
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(SETTLE_SECONDS)  # and still flowing for a moment after it ends
        self.results = {a: load.stop() for a, load in self.loads.items()}
        for a, result in self.results.items():
            print(f"load via {a}: {json.dumps(result)}")

    def failed(self) -> int:
        return sum(int(r["failed"]) for r in self.results.values())

    def requests(self) -> int:
        return sum(int(r["requests"]) for r in self.results.values())


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    yield Fleet()
