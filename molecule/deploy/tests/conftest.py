"""Fixtures for the deploy scenario: the molecule inventory, the hosts, load through proxies."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import testinfra
import testinfra.utils.ansible_runner

REPO = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "build" / "collections"))

from ansible_collections.beamops.release.plugins.filter.systemd_env import (  # noqa: E402
    systemd_env,
)

from tests.tools import deploykit  # noqa: E402

__all__ = ["HOSTS", "STATE_FILE", "Fleet", "LoadedFleet", "address", "deploykit", "systemd_env"]
from tests.tools.loadgen import Load  # noqa: E402

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
HOSTS: List[str] = sorted(RUNNER.get_hosts("beamops_app"))
STATE_FILE = "/opt/sample_app/release-state.json"
SETTLE_SECONDS = 1.5


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
        return {
            name: host.check_output("curl -s --max-time 3 http://127.0.0.1/")
            for name, host in self.hosts.items()
        }

    def proxy_config_slot(self, name: str) -> str:
        """The live slot as the proxy's own configuration records it."""
        host = self.hosts[name]
        upstream = host.file("/etc/nginx/conf.d/sample_app.upstream")
        if upstream.exists:
            # The first server line is the primary; a second one is the `backup` fallback.
            port = re.search(r"server 127\.0\.0\.1:(\d+)", upstream.content_string)
            return {"4001": "blue", "4002": "green"}[port.group(1) if port else ""]
        live = host.file("/etc/haproxy/sample_app-live.map").content_string.split()
        assert live[0] == "live", live
        runtime = host.check_output(
            "echo 'show map /etc/haproxy/sample_app-live.map' | socat - /run/haproxy/admin.sock"
        )
        assert runtime.split()[-1] == live[1], (runtime, live)
        return str(live[1].rsplit("_", 1)[1])

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
