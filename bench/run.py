"""`make bench`: beamops.release against the naive ways, side by side, in one run.

Real test hosts (systemd, nginx, HAProxy), the real sample release, load through each host's
proxy (new and keep-alive connections). Every figure is printed beside its baseline from the
same run - the naive stop-replace-start restart, and Ansible's `uri` with until/retries - and
written to bench/results/latest.json.

    make bench                       # everything (about 15 minutes on 2 cores)
    BENCH_CYCLES=3 make bench        # fewer zero-downtime cycles, for a quick look
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "build" / "collections"))

from ansible_collections.beamops.release.plugins.module_utils import (  # noqa: E402
    health_probe,
)

from tests.harness import testhosts  # noqa: E402
from tests.tools import deploykit  # noqa: E402
from tests.tools.loadgen import Load  # noqa: E402

RATE = 200.0
CYCLES = int(os.environ.get("BENCH_CYCLES", "10"))
# Single-host timings are the median of this many runs (one run on a busy 2-core machine
# varies by a fifth); every run is kept in the results under "samples".
SAMPLES = int(os.environ.get("BENCH_SAMPLES", "3"))
RESULTS = REPO / "bench" / "results" / "latest.json"
WORK = REPO / "build" / "bench"
# The bench settings: a real watch and drain, short enough to repeat.
TIMINGS = ["-e", "beamops_watch_seconds=3", "-e", "beamops_drain_seconds=2"]
FLEET = 8
VERSIONS = ("0.1.0", "0.2.0", "0.3.0")
NAIVE = str(REPO / "bench" / "naive_restart.yml")
URI_UNTIL = str(REPO / "bench" / "uri_until.yml")


# --------------------------------------------------------------------------- plumbing


def write_inventory(name: str, hosts: Sequence[testhosts.Host], proxies: Sequence[str]) -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    lines = ["beamops_app:", "  hosts:"]
    for host, proxy in zip(hosts, proxies):
        lines += [f"    {host.name}:", f"      ansible_host: {host.address}"]
        lines += [f"      beamops_proxy: {proxy}"]
    lines += ["  vars:", "    ansible_user: root"]
    lines += [f"    ansible_ssh_private_key_file: {hosts[0].key_path}"]
    path = WORK / f"{name}.yml"
    path.write_text("\n".join(lines) + "\n")
    link = WORK / "group_vars"
    if not link.exists():
        link.symlink_to(REPO / "inventories" / "demo" / "group_vars")
    return str(path)


def build_releases() -> None:
    for version in VERSIONS:
        if not (deploykit.RELEASES / f"sample_app-{version}.tar.gz.sha256").exists():
            subprocess.run(
                [str(REPO / "examples/sample_app/build.sh"), version, str(deploykit.RELEASES)],
                check=True,
                stderr=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )


def play(inventory: str, playbook: str, *args: str, ok: bool = True) -> deploykit.PlaybookRun:
    run = deploykit.run_playbook([inventory], playbook, *args, timeout=900)
    if ok and run.rc != 0:
        raise SystemExit(f"bench step failed: {playbook} {' '.join(args)}\n{run.tail()}")
    return run


def deploy(inventory: str, version: str, *args: str, ok: bool = True) -> deploykit.PlaybookRun:
    return play(inventory, "deploy", *deploykit.release_args(version), *TIMINGS, *args, ok=ok)


def tasks(run: deploykit.PlaybookRun, host: str) -> int:
    """Tasks the host went through (the recap's ok, which counts changed ones too)."""
    return run.recap[host]["ok"]


class Loads:
    """One load generator per host address, all started and stopped together."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.loads = {a: Load(f"http://{a}/", rate=RATE, workers=8) for a in addresses}

    def __enter__(self) -> Loads:
        for load in self.loads.values():
            load.__enter__()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Dict[str, Dict[str, Any]]:
        time.sleep(1.0)
        return {a: load.stop() for a, load in self.loads.items()}


class FirstAnswer(threading.Thread):
    """Polls a proxy every 10 ms; remembers when `wanted` first shows up in an answer."""

    def __init__(self, address: str, wanted: str) -> None:
        super().__init__(daemon=True)
        self.url, self.wanted = f"http://{address}/", wanted
        self.seen_at: Optional[float] = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and self.seen_at is None:
            try:
                with urllib.request.urlopen(self.url, timeout=1) as answer:
                    if self.wanted in answer.read().decode():
                        self.seen_at = time.monotonic()
            except OSError:
                pass
            time.sleep(0.01)


def timed_to_answer(
    address: str, wanted: str, action: Callable[[], deploykit.PlaybookRun]
) -> Tuple[deploykit.PlaybookRun, float]:
    """Run `action`; also return the seconds from its start until the proxy answered `wanted`."""
    watcher = FirstAnswer(address, wanted)
    started = time.monotonic()
    watcher.start()
    run = action()
    watcher.join(timeout=5)
    watcher.stopping.set()
    if watcher.seen_at is None:
        raise SystemExit(f"{address} never answered {wanted!r}:\n{run.tail()}")
    return run, round(watcher.seen_at - started, 2)


def switch_back_ms(run: deploykit.PlaybookRun, host: str) -> Optional[int]:
    found = re.search(rf"{host}: .*? (\d+) ms after the failure was seen", run.output, re.DOTALL)
    return int(found.group(1)) if found else None


# --------------------------------------------------------------------------- measurements


def zero_downtime(pair: str, hosts: Sequence[testhosts.Host]) -> List[Dict[str, Any]]:
    """CYCLES deploy + rollback cycles per proxy, blue-green; 2 cycles of the naive restart."""
    rows = []
    addresses = [h.address for h in hosts]
    with Loads(addresses) as loads:
        for _cycle in range(CYCLES):
            deploy(pair, "0.2.0")
            play(pair, "rollback", *TIMINGS)
        results = loads.stop()
    for host, proxy in zip(hosts, ("nginx", "haproxy")):
        rows.append(row(proxy, "blue-green", CYCLES, results[host.address]))
    with Loads(addresses) as loads:
        for version, back in (("0.2.0", "0.1.0"), ("0.2.0", "0.1.0")):
            naive(pair, version)
            naive(pair, back)
        results = loads.stop()
    for host, proxy in zip(hosts, ("nginx", "haproxy")):
        rows.append(row(proxy, "naive restart", 2, results[host.address]))
    return rows


def row(proxy: str, strategy: str, cycles: int, result: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "proxy": proxy,
        "strategy": strategy,
        "cycles": cycles,
        "requests": result["requests"],
        "failed": result["failed"],
        "stale_retries": result["retries"],
        "max_gap_ms": result["max_gap_ms"],
    }


def naive(inventory: str, version: str) -> deploykit.PlaybookRun:
    """The naive restart swaps the release under the slot each host serves from."""
    return play(inventory, NAIVE, "-e", f"naive_version={version}")


def after_switch_failure(pair: str, hosts: Sequence[testhosts.Host]) -> List[Dict[str, Any]]:
    rows = []
    for kind in ("readiness", "http_500"):
        breaks = {"beamops_env": {"FAIL_AFTER_MS": "2000", "FAIL_KIND": kind}}
        with Loads([h.address for h in hosts]) as loads:
            run = deploy(pair, "0.3.0", "-e", json.dumps(breaks), ok=False)
            results = loads.stop()
        if run.rc == 0:
            raise SystemExit(f"a release failing after the switch was not refused:\n{run.tail()}")
        for host, proxy in zip(hosts, ("nginx", "haproxy")):
            result = results[host.address]
            rows.append(
                {
                    "proxy": proxy,
                    "kind": kind,
                    "requests": result["requests"],
                    "failed": result["failed"],
                    "switch_back_ms": switch_back_ms(run, host.name),
                }
            )
    return rows


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def rollbacks(single: str, host: testhosts.Host) -> Dict[str, Any]:
    """Warm (old slot kept running), cold (stopped) and the naive redeploy of the old release,
    each SAMPLES times: the medians, and every sample."""
    runs: Dict[str, List[float]] = {"warm": [], "cold": [], "naive_redeploy": []}
    answers: Dict[str, List[float]] = {"warm": [], "cold": []}
    for _sample in range(SAMPLES):
        deploy(single, "0.2.0", "-e", "beamops_keep_old_warm=true")
        run, answered = timed_to_answer(
            host.address, "sample_app 0.1.0", lambda: play(single, "rollback", *TIMINGS)
        )
        runs["warm"].append(run.seconds)
        answers["warm"].append(answered)
        deploy(single, "0.2.0")
        time.sleep(4)  # the old slot's drain (2 s) ends and the timer stops it: a cold rollback
        run, answered = timed_to_answer(
            host.address, "sample_app 0.1.0", lambda: play(single, "rollback", *TIMINGS)
        )
        runs["cold"].append(run.seconds)
        answers["cold"].append(answered)
        deploy(single, "0.2.0")
        run, _answered = timed_to_answer(
            host.address, "sample_app 0.1.0", lambda: naive(single, "0.1.0")
        )
        runs["naive_redeploy"].append(run.seconds)
        deploy(single, "0.1.0")  # the state and the slot agree again after the naive restart
    return {
        "rollback_seconds": {kind: median(values) for kind, values in runs.items()},
        "rollback_traffic_seconds": {kind: median(values) for kind, values in answers.items()},
        "samples": {f"rollback_{k}": v for k, v in runs.items()}
        | {f"rollback_traffic_{k}": v for k, v in answers.items()},
    }


class ReadyAfter(BaseHTTPRequestHandler):
    """Answers 503 until `ready_at`, then 200; remembers when it served each 200."""

    ready_at = 0.0
    served_ok: List[float] = []  # noqa: RUF012 (reset per measurement)

    def do_GET(self) -> None:
        now = time.monotonic()
        ready = now >= type(self).ready_at
        self.send_response(200 if ready else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if ready:
            type(self).served_ok.append(now)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def ready_server(delay: float) -> Iterator[str]:
    """A local endpoint that becomes ready `delay` seconds from now; yields its URL."""
    ReadyAfter.ready_at = time.monotonic() + delay
    ReadyAfter.served_ok = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ReadyAfter)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/ready"
    finally:
        httpd.shutdown()
        httpd.server_close()


def gate_latency() -> Dict[str, float]:
    """Seconds from 'really ready' to the gate passing: the unit gate's probe (interval 0.2,
    2 successes, as the units run it) against `uri` + until/retries at Ansible's default
    5 s delay (it passes on its first 200)."""
    figures: Dict[str, float] = {}
    with ready_server(2.0) as url:
        config = health_probe.ProbeConfig(
            urls=[url], interval=0.2, success_threshold=2, deadline=30
        )
        result = health_probe.run_probe(config)
        passed = time.monotonic()
        if not result.passed:
            raise SystemExit(f"the probe did not pass: {result}")
        figures["health_check"] = round(passed - ReadyAfter.ready_at, 2)
    with ready_server(2.0) as url:
        run = subprocess.run(
            [str(deploykit.BIN / "ansible-playbook"), URI_UNTIL, "-e", f"url={url}"],
            env=deploykit.ansible_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0 or not ReadyAfter.served_ok:
            raise SystemExit(f"uri until did not pass:\n{run.stdout[-2000:]}")
        figures["uri_until"] = round(ReadyAfter.served_ok[0] - ReadyAfter.ready_at, 2)
    return figures


def fleet_deploys(hosts: Sequence[testhosts.Host]) -> Dict[str, float]:
    """Deploy wall time for 1, 2, 4 and 8 hosts (serial 100%), each a real deploy."""
    inventory = write_inventory("fleet", hosts, ["nginx"] * len(hosts))
    deploy(inventory, "0.1.0")
    figures: Dict[str, float] = {}
    groups = {1: hosts[0:1], 2: hosts[1:3], 4: hosts[3:7]}
    for size, group in groups.items():
        limit = ",".join(h.name for h in group)
        figures[str(size)] = deploy(inventory, "0.2.0", "--limit", limit).seconds
    figures[str(len(hosts))] = deploy(inventory, "0.3.0").seconds
    return figures


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {os.cpu_count()} cores, {memory:.0f} GiB, {platform.platform()}"


# --------------------------------------------------------------------------- report


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "n/a"


def table(figures: Dict[str, Any]) -> str:
    lines = [
        f"beamops.release bench, {figures['date']}, {figures['machine']}",
        f"load {RATE:.0f} req/s per host (half keep-alive); watch 3 s, drain 2 s; "
        f"single-host times: median of {SAMPLES} runs",
        "",
        f"{'figure':<44}{'ours':>12}{'baseline':>12}{'ratio':>9}",
    ]

    def add(name: str, ours: object, baseline: object = "", goal_ratio: str = "") -> None:
        lines.append(f"{name:<44}{ours!s:>12}{baseline!s:>12}{goal_ratio:>9}")

    naive_deploy = figures["naive_deploy_seconds"]
    add("deploy, 1 host (s) vs naive restart", figures["deploy_seconds"], naive_deploy,
        ratio(figures["deploy_seconds"], naive_deploy))  # fmt: skip
    add("first deploy, 1 host (s)", figures["first_deploy_seconds"])
    add("idempotent re-run (s) vs deploy", figures["idempotent_rerun_seconds"],
        figures["deploy_seconds"],
        ratio(figures["idempotent_rerun_seconds"], figures["deploy_seconds"]))  # fmt: skip
    rb, traffic = figures["rollback_seconds"], figures["rollback_traffic_seconds"]
    add("rollback warm, wall (s) vs naive redeploy", rb["warm"], rb["naive_redeploy"],
        ratio(rb["warm"], rb["naive_redeploy"]))  # fmt: skip
    add("rollback cold, wall (s) vs naive redeploy", rb["cold"], rb["naive_redeploy"],
        ratio(rb["cold"], rb["naive_redeploy"]))  # fmt: skip
    add("rollback warm: old release answers after (s)", traffic["warm"])
    add("rollback cold: old release answers after (s)", traffic["cold"])
    gate = figures["gate_latency_seconds"]
    add("gate passes after ready (s) vs uri until", gate["health_check"], gate["uri_until"],
        ratio(gate["health_check"], gate["uri_until"]))  # fmt: skip
    fleet = figures["fleet_deploy_seconds"]
    add(f"fleet deploy {FLEET} hosts (s) vs 1 host", fleet[str(FLEET)], fleet["1"],
        ratio(fleet[str(FLEET)], fleet["1"]))  # fmt: skip
    for size in ("1", "2", "4", str(FLEET)):
        add(f"  fleet deploy, {size} host(s) (s)", fleet[size])
    per_host = figures["tasks_per_host"]
    add("tasks per host: first deploy / deploy / re-run",
        f"{per_host['first_deploy']}/{per_host['deploy']}/{per_host['rerun']}")  # fmt: skip
    lines += ["", f"{'zero downtime':<20}{'proxy':>9}{'cycles':>8}{'requests':>10}"
              f"{'failed':>8}{'retries':>9}{'max gap ms':>12}"]  # fmt: skip
    for r in figures["zero_downtime"]:
        lines.append(f"{r['strategy']:<20}{r['proxy']:>9}{r['cycles']:>8}{r['requests']:>10}"
                     f"{r['failed']:>8}{r['stale_retries']:>9}{r['max_gap_ms']:>12}")  # fmt: skip
    lines += ["", f"{'after-switch failure':<22}{'proxy':>9}{'requests':>10}{'failed':>8}"
              f"{'switch back ms':>16}"]  # fmt: skip
    for r in figures["after_switch_failure"]:
        lines.append(f"{r['kind']:<22}{r['proxy']:>9}{r['requests']:>10}{r['failed']:>8}"
                     f"{r['switch_back_ms']!s:>16}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    build_releases()
    started = time.monotonic()
    hosts = testhosts.up(2 + FLEET)
    single_host, pair_hosts, fleet_hosts = hosts[0], hosts[0:2], hosts[2:]
    single = write_inventory("single", [single_host], ["nginx"])
    pair = write_inventory("pair", pair_hosts, ["nginx", "haproxy"])
    figures: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
    }
    name = single_host.name

    first = deploy(single, "0.1.0")
    figures["first_deploy_seconds"] = first.seconds
    deploys: List[deploykit.PlaybookRun] = []
    reruns: List[deploykit.PlaybookRun] = []
    naives: List[float] = []
    for index in range(SAMPLES):
        version = ("0.2.0", "0.1.0")[index % 2]
        with Loads([single_host.address]):
            deploys.append(deploy(single, version))
        reruns.append(deploy(single, version))
    for _sample in range(SAMPLES):
        with Loads([single_host.address]):
            naives.append(naive(single, "0.1.0").seconds)
    deploy(single, "0.1.0")  # the state and the slot agree again after the naive restart
    figures["deploy_seconds"] = median([run.seconds for run in deploys])
    figures["idempotent_rerun_seconds"] = median([run.seconds for run in reruns])
    figures["naive_deploy_seconds"] = median(naives)
    figures["tasks_per_host"] = {
        "first_deploy": tasks(first, name),
        "deploy": tasks(deploys[0], name),
        "rerun": tasks(reruns[0], name),
    }
    samples = {
        "deploy": [run.seconds for run in deploys],
        "idempotent_rerun": [run.seconds for run in reruns],
        "naive_deploy": naives,
    }
    found = rollbacks(single, single_host)
    figures["samples"] = samples | found.pop("samples")
    figures.update(found)
    deploy(pair, "0.1.0")
    figures["zero_downtime"] = zero_downtime(pair, pair_hosts)
    figures["after_switch_failure"] = after_switch_failure(pair, pair_hosts)
    figures["gate_latency_seconds"] = gate_latency()
    figures["fleet_deploy_seconds"] = fleet_deploys(fleet_hosts)
    figures["bench_seconds"] = round(time.monotonic() - started)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print()
    print(table(figures))
    print(f"\nwritten to {RESULTS.relative_to(REPO)}; the test hosts are still up: `make down`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
