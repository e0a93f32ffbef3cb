"""`make demo`: boot two test hosts, build two sample releases, deploy them blue-green.

The second deploy runs while a load generator sends continuous requests through each host's
proxy (bo1: nginx, bo2: HAProxy), over new and over keep-alive connections; the demo prints
what serves where and how many requests failed (the answer is zero).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import testhosts  # noqa: E402
from tests.tools import deploykit  # noqa: E402
from tests.tools.loadgen import Load  # noqa: E402

INVENTORY = [str(REPO / "inventories" / "demo")]
VERSIONS = ("0.1.0", "0.2.0")


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def build_releases() -> None:
    for version in VERSIONS:
        subprocess.run(
            [str(REPO / "examples" / "sample_app" / "build.sh"), version, str(deploykit.RELEASES)],
            check=True,
            stderr=subprocess.DEVNULL,
        )


def deploy(version: str) -> deploykit.PlaybookRun:
    run = deploykit.run_playbook(INVENTORY, "deploy", *deploykit.release_args(version))
    print(run.tail(8))
    if run.rc != 0:
        print(run.output)
        raise SystemExit(f"deploy of {version} failed (rc={run.rc})")
    return run


def main() -> int:
    say("Booting two test hosts (systemd as PID 1, sshd, nginx and HAProxy)")
    hosts = testhosts.up(2)
    addresses = {host.name: host.address for host in hosts}
    say(f"Building sample_app {' and '.join(VERSIONS)} with mix release")
    build_releases()
    say(f"Deploying {VERSIONS[0]}")
    first = deploy(VERSIONS[0])
    say(f"Deploying {VERSIONS[1]} under load through each host's proxy")
    loads = {
        name: Load(f"http://{address}/", rate=100, workers=8) for name, address in addresses.items()
    }
    for load in loads.values():
        load.__enter__()
    time.sleep(2)
    second = deploy(VERSIONS[1])
    time.sleep(2)
    results = {name: load.stop() for name, load in loads.items()}
    say("Result")
    proxies = {"bo1": "nginx", "bo2": "haproxy"}
    for name, address in addresses.items():
        serving = subprocess.run(
            ["curl", "-s", "--max-time", "3", f"http://{address}/version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        r = results[name]
        print(f"{name} ({address}, {proxies.get(name, '?')}): serves {serving}")
        print(
            f"    {r['requests']} requests during the deploy: {r['failed']} failed, "
            f"{r['retries']} keep-alive retries, answers {r['answers']}"
        )
    failed = sum(int(r["failed"]) for r in results.values())
    total = sum(int(r["requests"]) for r in results.values())
    print(
        f"\ndeploy {VERSIONS[0]}: {first.seconds}s, deploy {VERSIONS[1]}: {second.seconds}s; "
        f"{total} requests, {failed} failed"
    )
    print("Test hosts are still up: `make down` stops them.")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
