"""Monitoring with a real Prometheus (on bo2) and node_exporter on both hosts: the scrape
targets follow every switch, switch back and rollback; the deploy metrics show each result;
the failed-deploy and fleet-version alerts fire and resolve; every dashboard query returns
series. Runs in file order, after converge deployed 0.1.0 and set up the monitoring."""

from __future__ import annotations

import json
import re
import time
from typing import Any, Dict, List, Optional, Tuple

from tests.tools.fleet import HOSTS, SECRET_KEY_BASE, Fleet, address, deploykit
from tests.tools.prometheus import Prometheus, wait_for
from tests.tools.runbooks import Runbook
from tests.tools.webhook_receiver import WebhookReceiver

# beamops_prometheus_scrape_interval in group_vars. Prometheus holds a discovery change up to
# 10 s (its discovery and scrape managers each apply changes every 5 s), then scrapes a new
# target within one interval: the targets must follow within that hold and two intervals.
SCRAPE = 12.0
DISCOVERY_HOLD = 10.0
TARGETS = "/etc/prometheus/beamops/targets/beamops_sample_app_{}.json"
PROMETHEUS = Prometheus(f"http://{address('bo2')}:9090")
DASHBOARD = "roles/monitoring/files/beamops-release-dashboard.json"
BEGAN = time.time()
# Watch settings of the after-switch failure: a tick every 0.5 s, 2 failing ticks switch back.
WATCH = ["-e", "beamops_watch_seconds=8", "-e", "beamops_watch_interval=0.5"]

Live = Dict[str, Tuple[str, str, float]]  # host -> (slot, version, value)


def by_role(role: str, metric: str = "up") -> Live:
    """Each host's target of this role: its slot and version labels, and the value."""
    found: Live = {}
    for series in PROMETHEUS.query(f'{metric}{{job="beamops", app="sample_app", role="{role}"}}'):
        labels = series["metric"]
        found[labels["host"]] = (labels["slot"], labels["version"], float(series["value"][1]))
    return found


def serving(slot: str, version: str) -> Live:
    return {name: (slot, version, 1.0) for name in HOSTS}


def written_at(fleet: Fleet) -> float:
    """When the last of the hosts' target files was written on the Prometheus host (the test
    hosts share the controller's clock)."""
    stamps = [
        float(fleet.hosts["bo2"].check_output(f"stat -c %.3Y {TARGETS.format(name)}"))
        for name in HOSTS
    ]
    return max(stamps)


def live_follows(fleet: Fleet, slot: str, version: str) -> float:
    """Seconds from the targets' write until every host's live target is `slot` running
    `version`, up, and its own build info (scraped from that slot) says the same: at most
    Prometheus' discovery hold and two scrape intervals."""
    wait_live(slot, version, 6 * SCRAPE)
    seen_at = time.time()
    took = round(seen_at - written_at(fleet), 2)
    bound = DISCOVERY_HOLD + 2 * SCRAPE
    assert took <= bound, f"the live targets followed {took} s after the targets file (> {bound})"
    return took


def wait_live(slot: str, version: str, seconds: float) -> None:
    """Until every host's live target is `slot` running `version`, up, and its own build info
    (scraped from that slot) says the same."""
    seen: List[object] = []

    def settled() -> Optional[Live]:
        live = by_role("live")
        built = {
            s["metric"]["host"]: (s["metric"]["exported_slot"], s["metric"]["exported_version"])
            for s in PROMETHEUS.query('sample_app_build_info{job="beamops", role="live"}')
        }
        seen[:] = [live, built]
        wanted = {name: (slot, version) for name in HOSTS}
        return live if live == serving(slot, version) and built == wanted else None

    try:
        wait_for(f"live targets on {slot} {version}", settled, seconds)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; targets and build info seen last: {seen}") from None


def never_down_as_live(start: float) -> None:
    """Over the window, the live target of each host was up at every step: Prometheus never
    scraped a stopped (retired) slot as live."""
    for series in PROMETHEUS.query_range(
        'min by (host) (up{job="beamops", app="sample_app", role="live"})', start, time.time(), 1
    ):
        values = {float(v) for _t, v in series["values"]}
        assert values == {1.0}, (series["metric"], values)


def every_host(found: List[Dict[str, Any]]) -> Optional[List[Dict[str, Any]]]:
    return found if len(found) == len(HOSTS) else None


def node_value(expr: str) -> Dict[str, float]:
    return {
        s["metric"]["host"]: float(s["value"][1])
        for s in PROMETHEUS.query(expr)
        if s["metric"].get("job") == "beamops_node"
    }


def test_prometheus_scrapes_each_host_s_live_slot_through_its_proxy(fleet: Fleet) -> None:
    try:
        wait_live("blue", "0.1.0", 60)
    except AssertionError as exc:
        shown = fleet.hosts["bo2"].run("head -50 /etc/prometheus/beamops/targets/*.json")
        found = [t["labels"] for t in PROMETHEUS.targets()]
        raise AssertionError(
            f"{exc}; Prometheus' targets: {found}; files: {shown.stdout}"
        ) from None
    targets = [t for t in PROMETHEUS.targets() if t["labels"].get("job") == "beamops"]
    assert {t["scrapeUrl"] for t in targets} == {
        f"http://{address(name)}:9568/beamops/sample_app/blue/metrics" for name in HOSTS
    }
    assert all(t["health"] == "up" for t in targets), targets
    # node_exporter reads the deploy metrics on each host.
    info = wait_for(
        "beamops_release_info of every host from node_exporter",
        lambda: every_host(PROMETHEUS.query('beamops_release_info{app="sample_app"}')),
        30,
    )
    assert {(s["metric"]["host"], s["metric"]["version"], s["metric"]["slot"]) for s in info} == {
        (name, "0.1.0", "blue") for name in HOSTS
    }
    # The scrape listener answers the Prometheus hosts and loopback only.
    bo2 = address("bo2")
    url = f"http://{bo2}:9568/beamops/sample_app/blue/metrics"
    shown = fleet.hosts["bo1"].run(f"curl -s -o /dev/null -w '%{{http_code}}' {url}")
    assert shown.stdout == "403", shown
    assert "sample_app_build_info" in fleet.hosts["bo2"].check_output(f"curl -sf {url}")
    missing = f"http://{bo2}:9568/beamops/sample_app/red/metrics"
    shown = fleet.hosts["bo2"].run(f"curl -s -o /dev/null -w '%{{http_code}}' {missing}")
    assert shown.stdout == "404", shown


def test_the_targets_follow_a_deploy_under_load(fleet: Fleet) -> None:
    start = time.time()
    with fleet.under_load() as load:
        run = fleet.deploy("0.2.0")
    assert run.rc == 0, run.tail()
    assert load.failed() == 0 and load.requests() > 100, load.results
    after = live_follows(fleet, "green", "0.2.0")
    print(f"live targets on green 0.2.0 {after} s after the file ({load.requests()} requests)")
    never_down_as_live(start)
    # bo1 keeps its old slot warm: an idle target; bo2 retired it.
    wait_for(
        "bo1's idle target", lambda: by_role("idle") == {"bo1": ("blue", "0.1.0", 1.0)}, 3 * SCRAPE
    )
    results = node_value('beamops_deploy_last_result{app="sample_app", result="success"}')
    assert results == {name: 1.0 for name in HOSTS}


def test_a_release_failing_after_the_switch_shows_in_metrics_and_alerts(fleet: Fleet) -> None:
    start = time.time()
    breaks = {"beamops_env": {"FAIL_AFTER_MS": "2500", "FAIL_KIND": "readiness"}}
    with fleet.under_load() as load:
        run = fleet.deploy("0.4.0", "-e", json.dumps(breaks), *WATCH)
    assert run.rc != 0
    for name in HOSTS:
        assert re.search(
            rf"{name}: slot blue \(release 0\.4\.0\) failed after the switch", run.output
        )
    assert load.failed() == 0, load.results
    live_follows(fleet, "green", "0.2.0")
    never_down_as_live(start)
    # bo1's warm slot was the one that took 0.4.0 and failed: no idle slot runs anywhere now.
    wait_for("no idle target", lambda: by_role("idle") == {}, 3 * SCRAPE)
    switched_back = (
        'beamops_deploy_last_result{app="sample_app", event="deploy", result="switched_back"}'
    )
    wait_for(
        "switched_back in the deploy metrics",
        lambda: node_value(switched_back) == {name: 1.0 for name in HOSTS},
        3 * SCRAPE,
    )
    counted = node_value('beamops_deploys_total{app="sample_app", result="switched_back"}')
    assert counted == {name: 1.0 for name in HOSTS}
    firing = wait_for(
        "BeamopsDeployFailed firing on both hosts",
        lambda: sorted(a["host"] for a in PROMETHEUS.firing("BeamopsDeployFailed")) == HOSTS,
        5 * SCRAPE,
    )
    assert firing


def test_the_failed_deploy_runbook_finds_what_the_release_said(fleet: Fleet) -> None:
    """docs/runbooks/deploy-failed.md, as written, on a host whose 0.4.0 just failed."""
    host = fleet.hosts["bo2"]
    page = Runbook(
        "deploy-failed.md",
        {
            "INVENTORY": fleet.inventories[0],
            "APP": "sample_app",
            "SLOT": "blue",
            "VERSION": "0.4.0",
        },
    )
    assert "playbooks/status.yml" in page.blocks[0].script
    page.ok(0)
    outputs = [page.ok(index, host).stdout for index in (1, 2, 3)]
    for shown in outputs:
        assert shown.strip()
    events = [json.loads(line) for line in outputs[0].splitlines()]
    assert any(e["version"] == "0.4.0" and e["result"] == "switched_back" for e in events)
    # Only 0.4.0's lines, from the slot it ran in: the release said it started.
    release_said = outputs[1]
    assert "0.4.0" in release_said and "0.1.0" not in release_said, release_said
    assert "Starting sample_app@blue.service" in outputs[2]
    page.all_run()


def test_a_rollback_moves_the_targets_and_resolves_the_failed_deploy_alert(
    fleet: Fleet,
) -> None:
    start = time.time()
    with fleet.under_load() as load:
        run = fleet.playbook("rollback")
    assert run.rc == 0, run.tail()
    assert load.failed() == 0, load.results
    print(f"live targets on blue 0.1.0 {live_follows(fleet, 'blue', '0.1.0')} s after the file")
    never_down_as_live(start)
    wait_for(
        "bo1's idle target", lambda: by_role("idle") == {"bo1": ("green", "0.2.0", 1.0)}, 3 * SCRAPE
    )
    rolled_back = 'beamops_deploy_last_result{app="sample_app", event="rollback", result="success"}'
    wait_for(
        "rollback in the deploy metrics",
        lambda: node_value(rolled_back) == {name: 1.0 for name in HOSTS},
        3 * SCRAPE,
    )
    wait_for(
        "BeamopsDeployFailed resolved",
        lambda: PROMETHEUS.firing("BeamopsDeployFailed") == [],
        5 * SCRAPE,
    )


def test_a_split_fleet_fires_the_versions_alert_until_it_converges(fleet: Fleet) -> None:
    run = fleet.deploy("0.2.0", "--limit", "bo1")
    assert run.rc == 0, run.tail()
    began = time.monotonic()
    firing = wait_for(
        "BeamopsFleetVersionsDiverge firing",
        lambda: PROMETHEUS.firing("BeamopsFleetVersionsDiverge"),
        5 * SCRAPE,
    )
    print(f"fleet-version alert firing {time.monotonic() - began:.1f} s after the split ({firing})")
    assert firing == [{"alertname": "BeamopsFleetVersionsDiverge", "app": "sample_app",
                       "severity": "warning"}]  # fmt: skip
    run = fleet.deploy("0.2.0")
    assert run.rc == 0, run.tail()
    wait_for(
        "BeamopsFleetVersionsDiverge resolved",
        lambda: PROMETHEUS.firing("BeamopsFleetVersionsDiverge") == [],
        5 * SCRAPE,
    )


def test_the_deploy_lock_shows_while_a_run_holds_it(fleet: Fleet) -> None:
    # A real cutover (0.1.0 back to the idle slot): the lock is held for its whole watch.
    running = fleet.start("deploy", *deploykit.release_args("0.1.0"))
    try:
        # Each host's lock, as this run took it (the last run's may still be in sight).
        held = wait_for(
            "this run's lock on every host",
            lambda: every_host(
                PROMETHEUS.query(
                    'beamops_deploy_lock_since_timestamp_seconds{app="sample_app", '
                    'purpose="deploy 0.1.0"}'
                )
            ),
            3 * SCRAPE,
        )
        assert all("@" in s["metric"]["holder"] for s in held), held
    finally:
        run = running.finish()
    assert run.rc == 0, run.tail()
    wait_for(
        "beamops_deploy_lock_held 0",
        lambda: node_value('beamops_deploy_lock_held{app="sample_app"}') == {n: 0.0 for n in HOSTS},
        3 * SCRAPE,
    )


def dashboard_queries() -> List[str]:
    board = json.loads((deploykit.REPO / DASHBOARD).read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in board["annotations"]["list"]]
    replacements = {
        "${metric_prefix}": "sample_app",
        "$app": "sample_app",
        "$__rate_interval": "1m",
    }
    for old, new in replacements.items():
        exprs = [e.replace(old, new) for e in exprs]
    return exprs


def test_every_dashboard_query_returns_series() -> None:
    """Each query as Grafana would run it over the scenario's time range."""
    exprs = dashboard_queries()
    assert len(exprs) >= 9
    for expr in exprs:
        assert "$" not in expr, expr
        found = PROMETHEUS.query_range(expr, BEGAN, time.time(), 5)
        assert found, f"no series for {expr}"


def test_a_lock_by_hand_freezes_deploys_until_given_back(fleet: Fleet) -> None:
    """playbooks/lock.yml with a reason, status.yml showing it, deploys and rollbacks refused
    (naming who and why) with nothing changed, the lock in Prometheus, unlock.yml."""
    nothing = fleet.playbook("lock")
    assert nothing.rc != 0 and "beamops_lock_reason: got" in nothing.output, nothing.tail()
    # docs/runbooks/freeze-deploys.md, as written
    page = Runbook("freeze-deploys.md", {"INVENTORY": fleet.inventories[0]})
    page.ok(0)
    status = page.ok(1)
    for name in HOSTS:
        assert re.search(
            rf"{name}.*?held by \S+@\S+ since \S+: frozen for the incident",
            status.output,
            re.DOTALL,
        )
    frozen = fleet.state_bytes()
    refused = fleet.deploy("0.2.0")
    assert refused.rc != 0 and "(frozen for the incident)" in refused.output, refused.tail()
    rollback = fleet.playbook("rollback")
    assert rollback.rc != 0 and "(frozen for the incident)" in rollback.output, rollback.tail()
    assert fleet.state_bytes() == frozen
    wait_for(
        "the hand lock in Prometheus",
        lambda: every_host(
            PROMETHEUS.query(
                'beamops_deploy_lock_since_timestamp_seconds{purpose="frozen for the incident"}'
            )
        ),
        3 * SCRAPE,
    )
    given_back = page.ok(2)
    assert given_back.output.count("gave back the lock of") == len(HOSTS), given_back.output
    assert "deploy_lock: free" in fleet.playbook("status").output
    page.all_run()
    assert fleet.deploy("0.2.0").rc == 0


MIGRATE = ["-e", "beamops_migration_eval=SampleApp.Release.migrate()"]
MIGRATIONS_LOG = "/var/lib/sample_app/{}/migrations.log"


def migrations(fleet: Fleet, version: str) -> Dict[str, List[str]]:
    """The migration's lines for `version` on each host (both slots' state directories)."""
    found: Dict[str, List[str]] = {}
    for name, host in fleet.hosts.items():
        lines = host.run(f"cat {MIGRATIONS_LOG.format('blue')} {MIGRATIONS_LOG.format('green')}")
        found[name] = [line for line in lines.stdout.splitlines() if f"version={version} " in line]
    return found


def test_a_failing_migration_stops_the_deploy_before_any_switch(fleet: Fleet) -> None:
    serving = fleet.served()
    breaks = {"beamops_env": {"SHUTDOWN_DRAIN_MS": "2000", "MIGRATION_FAIL": "1"}}
    with fleet.under_load() as load:
        run = fleet.deploy("0.3.0", *MIGRATE, "-e", json.dumps(breaks))
    assert run.rc != 0
    assert load.failed() == 0, load.results
    assert fleet.served() == serving
    assert "migration of 0.3.0 failed: relation" in run.output, run.tail()
    said = " ".join(run.output.split())  # the callback folds long lines
    for name in HOSTS:
        assert (
            f"{name}: failed - not deployed, still serving its release: the migration failed on bo1"
            in said
        )
        assert "0.3.0" not in {fleet.state(name)["active"]["version"]}
    assert SECRET_KEY_BASE not in run.output
    assert migrations(fleet, "0.3.0") == {name: [] for name in HOSTS}


def test_a_migration_runs_once_with_the_new_release_before_any_switch(fleet: Fleet) -> None:
    with fleet.under_load() as load:
        run = fleet.deploy("0.3.0", *MIGRATE)
    assert run.rc == 0, run.tail()
    assert load.failed() == 0, load.results
    assert "migrated to 0.3.0 (secret_key_base set: true)" in run.output, run.tail()
    ran = {name: lines for name, lines in migrations(fleet, "0.3.0").items() if lines}
    assert len(ran) == 1 and len(next(iter(ran.values()))) == 1, ran
    migrated_at = int(next(iter(ran.values()))[0].split("at=")[1].split()[0])
    for name, host in fleet.hosts.items():
        events = host.check_output("tail -n 1 /var/log/beamops/sample_app-events.jsonl")
        cutover = json.loads(events)
        assert cutover["version"] == "0.3.0" and cutover["result"] == "success", cutover
        began = cutover["at"] - cutover["seconds"]
        assert migrated_at <= began, (name, migrated_at, began)
    assert fleet.served() == {
        name: f"sample_app 0.3.0 on {fleet.state(name)['active']['slot']}" for name in HOSTS
    }


HOOK_LOG = "/var/log/beamops-hooks.log"
POINTS = ["before_start", "after_gate", "after_switch", "after_retire", "on_failure"]


def hook_file(name: str) -> str:
    return str(deploykit.REPO / "molecule" / "operations" / "hooks" / f"{name}.yml")


def hooks(**points: str) -> List[str]:
    chosen = {
        point: [hook_file(name) for name in names.split(",")] for point, names in points.items()
    }
    return ["-e", json.dumps({"beamops_hooks": chosen})]


def hook_lines(fleet: Fleet) -> Dict[str, List[List[str]]]:
    """Each host's hook log, emptied for the next test."""
    found = {}
    for name, host in fleet.hosts.items():
        shown = host.run(f"cat {HOOK_LOG} 2>/dev/null; rm -f {HOOK_LOG}")
        found[name] = [line.split() for line in shown.stdout.splitlines()]
    return found


def test_each_hook_point_runs_in_order_with_the_versions_and_slots(fleet: Fleet) -> None:
    hook_lines(fleet)
    before = {name: fleet.state(name)["active"] for name in HOSTS}
    every = {point: "record" for point in POINTS}
    with fleet.under_load() as load:
        run = fleet.deploy("0.5.0", *hooks(**every))
    assert run.rc == 0, run.tail()
    assert load.failed() == 0, load.results
    for name, lines in hook_lines(fleet).items():
        old = before[name]
        new_slot = fleet.state(name)["active"]["slot"]
        # bo1 keeps its old slot warm: it is never retired, so no after_retire there.
        points = ["before_start", "after_gate", "after_switch"] + (
            ["after_retire"] if name == "bo2" else []
        )
        assert [line[0] for line in lines] == points, (name, lines)
        for line in lines:
            assert line[1:5] == ["0.5.0", new_slot, old["version"], old["slot"]], (name, line)
        served = {line[0]: line[5] for line in lines}
        # Before the switch the old release serves; after it, the new one.
        assert served["after_gate"] == f"served=sample_app_{old['version']}_on_{old['slot']}"
        assert served["after_switch"] == f"served=sample_app_0.5.0_on_{new_slot}"


def test_a_hook_refusing_before_the_switch_stops_the_host_with_traffic_unmoved(
    fleet: Fleet,
) -> None:
    serving = fleet.served()
    with fleet.under_load() as load:
        run = fleet.deploy("0.4.0", *hooks(after_gate="refuse", on_failure="record"))
    assert run.rc != 0
    assert load.failed() == 0, load.results
    assert fleet.served() == serving
    for name, lines in hook_lines(fleet).items():
        assert (
            f"{name}: failed - an after_gate hook failed: hook refused 0.4.0 at after_gate"
            in run.output
        )
        assert [line[0] for line in lines] == ["on_failure"], (name, lines)
        assert lines[0][6].startswith("msg=an_after_gate_hook_failed"), lines
        idle = "blue" if fleet.state(name)["active"]["slot"] == "green" else "green"
        assert not fleet.hosts[name].service(f"sample_app@{idle}").is_running


def test_a_hook_failing_after_the_switch_follows_the_documented_rule(fleet: Fleet) -> None:
    """The release stays live on the failed host, the rollout halts, and the fleet rollback
    takes every host switched in this run back (the failed one too)."""
    serving = fleet.served()
    with fleet.under_load() as load:
        run = fleet.deploy("0.4.0", *hooks(after_switch="refuse"))
    assert run.rc != 0
    assert load.failed() == 0, load.results
    said = " ".join(run.output.split())  # the callback folds long lines
    for name in HOSTS:
        assert (
            f"{name}: rolled_back - a hook after the switch failed: hook refused 0.4.0 at "
            "after_switch; release 0.4.0 stays live"
        ) in said, run.tail()
        assert "; then rolled back to 0.5.0: rollback of 0.5.0 to slot" in said
    # Rolled back with the fleet: 0.5.0 again, in the slot it served from before.
    assert fleet.served() == serving
    for name in HOSTS:
        assert fleet.state(name)["active"]["version"] == "0.5.0"


class Receiver(WebhookReceiver):
    """On the controller's side of the test bridge; hang=True: never answers either host."""

    def __init__(self, hang: bool = False) -> None:
        super().__init__([None] * len(HOSTS) if hang else [], bind="0.0.0.0")
        bridge = address("bo1").rsplit(".", 1)[0] + ".1"
        self.base = f"http://{bridge}:{self.port}"


def test_webhooks_tell_of_each_cutover_and_a_hanging_one_costs_its_timeout_only(
    fleet: Fleet,
) -> None:
    good, hanging = Receiver(), Receiver(hang=True)
    token = "T0K3N-in-the-path-only"
    webhooks = [
        {"url": f"{good.base}/services/{token}", "timeout": 5, "retries": 1},
        {"url": f"{hanging.base}/hang/{token}", "timeout": 2, "retries": 0},
    ]
    try:
        run = fleet.deploy("0.4.0", "-e", json.dumps({"beamops_webhooks": webhooks}))
    finally:
        good.close()
        hanging.close()
    assert run.rc == 0, run.tail()
    said = " ".join(run.output.split())
    # Its thread may or may not have seen its socket time out by the deadline: either wording.
    wording = r"(?:did not answer|failed after 1 attempt\(s\)) within 2 s"
    for name in HOSTS:
        assert re.search(rf"{name}: webhook {re.escape(hanging.base)} {wording}", said), run.tail()
    assert token not in run.output
    assert sorted(b["host"] for b in good.bodies) == HOSTS
    for body in good.bodies:
        assert (body["event"], body["result"], body["version"]) == ("deploy", "success", "0.4.0")
        assert body["from_version"] == "0.5.0" and body["tags"][0] == "beamops"
        assert body["text"].startswith(f"sample_app on {body['host']}: deploy of 0.4.0")
    assert len(hanging.bodies) == len(HOSTS)  # each host tried once, and did not wait longer
