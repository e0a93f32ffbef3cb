"""`make bench`: blue-green deploy and rollback against the naive in-place restart.

Both ways run in the same session on the same real test host, behind the same nginx, under
the same load (new and keep-alive connections), so the ratios compare like with like:

* blue-green: playbooks/deploy.yml and playbooks/rollback.yml (gate, switch, watch, drain);
* naive: bench/naive_restart.yml swaps the release under the live slot and restarts it.

Figures printed: failed requests, keep-alive retries, wall time of each operation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import testhosts  # noqa: E402
from tests.tools import deploykit  # noqa: E402
from tests.tools.loadgen import Load  # noqa: E402

RATE = 200.0
INVENTORY_FILE = REPO / "build" / "bench-inventory.yml"
# Fast enough to bench, with the same shape as production: a real watch and drain.
TIMINGS = ["-e", "beamops_watch_seconds=3", "-e", "beamops_drain_seconds=2"]


def write_inventory(address: str, key: Path) -> List[str]:
    INVENTORY_FILE.parent.mkdir(parents=True, exist_ok=True)
    INVENTORY_FILE.write_text(
        "beamops_app:\n  hosts:\n    bo1:\n"
        f"      ansible_host: {address}\n      beamops_proxy: nginx\n"
        f"  vars:\n    ansible_user: root\n    ansible_ssh_private_key_file: {key}\n"
    )
    group_vars = REPO / "inventories" / "demo" / "group_vars"
    link = INVENTORY_FILE.parent / "group_vars"
    if not link.exists():
        link.symlink_to(group_vars)
    return [str(INVENTORY_FILE)]


def under_load(address: str, action: Callable[[], deploykit.PlaybookRun]) -> Dict[str, Any]:
    with Load(f"http://{address}/", rate=RATE, workers=8) as load:
        time.sleep(1.0)
        run = action()
        time.sleep(1.0)
        result = load.stop()
    if run.rc != 0:
        raise SystemExit(f"benchmark step failed:\n{run.tail()}")
    return {
        "seconds": run.seconds,
        "requests": result["requests"],
        "failed": result["failed"],
        "retries": result["retries"],
    }


def live_slot(inventory: List[str]) -> str:
    run = deploykit.run_playbook(inventory, "status")
    return "green" if "active_slot: green" in run.output else "blue"


def ratio(naive: float, ours: float) -> str:
    return "n/a" if ours == 0 else f"{naive / ours:.1f}x"


def main() -> int:
    hosts = testhosts.up(1)
    address = hosts[0].address
    inventory = write_inventory(address, hosts[0].key_path)
    for version in ("0.1.0", "0.2.0"):
        if not (deploykit.RELEASES / f"sample_app-{version}.tar.gz.sha256").exists():
            subprocess.run(
                [str(REPO / "examples/sample_app/build.sh"), version, str(deploykit.RELEASES)],
                check=True,
                stderr=subprocess.DEVNULL,
            )
    first = deploykit.run_playbook(inventory, "deploy", *deploykit.release_args("0.1.0"), *TIMINGS)
    if first.rc != 0:
        raise SystemExit(first.tail())
    figures: Dict[str, Dict[str, Any]] = {}
    figures["blue-green deploy"] = under_load(
        address,
        lambda: deploykit.run_playbook(
            inventory, "deploy", *deploykit.release_args("0.2.0"), *TIMINGS
        ),
    )
    figures["blue-green rollback"] = under_load(
        address, lambda: deploykit.run_playbook(inventory, "rollback", *TIMINGS)
    )
    # The naive way restarts the live slot in place with releases already on the host.
    slot = live_slot(inventory)
    naive = str(REPO / "bench" / "naive_restart.yml")
    figures["naive restart deploy"] = under_load(
        address,
        lambda: deploykit.run_playbook(
            inventory, naive, "-e", "naive_version=0.2.0", "-e", f"naive_slot={slot}"
        ),
    )
    figures["naive restart rollback"] = under_load(
        address,
        lambda: deploykit.run_playbook(
            inventory, naive, "-e", "naive_version=0.1.0", "-e", f"naive_slot={slot}"
        ),
    )
    print(
        f"\nbeamops.release bench: 1 host, nginx, {RATE:.0f} req/s (new + keep-alive connections)"
    )
    print(f"{'operation':<24}{'seconds':>9}{'requests':>10}{'failed':>8}{'retries':>9}")
    for name, f in figures.items():
        print(f"{name:<24}{f['seconds']:>9}{f['requests']:>10}{f['failed']:>8}{f['retries']:>9}")
    ours, naive_d = figures["blue-green deploy"], figures["naive restart deploy"]
    fewer = (
        f"{ratio(naive_d['failed'], ours['failed'])} as many with the naive way"
        if ours["failed"]
        else "none with blue-green"
    )
    print(
        f"failed requests per deploy: naive {naive_d['failed']}, blue-green {ours['failed']}"
        f" ({fewer})"
    )
    print(
        f"deploy wall time: blue-green {ours['seconds']}s vs naive {naive_d['seconds']}s "
        f"(blue-green takes {ratio(ours['seconds'], naive_d['seconds'])} as long: gate, watch "
        "and drain are the price of zero failures)"
    )
    print(json.dumps(figures))
    print(
        "The bench host is still up (its release state no longer matches the naive restarts):"
        " `make down` stops it."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
