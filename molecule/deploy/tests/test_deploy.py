"""Every user story of the deploy pipeline, in order, on two real hosts (nginx and HAProxy).

The faults (hostile inputs and artifacts, crashes, lost hosts, full disks, killed proxies)
are the faults scenario's (molecule/faults); a release that fails its gate or fails after the
switch is a user story and stays here.

converge has deployed 0.1.0 and idempotence has re-run it with changed=0 before these run.
Each test leaves the fleet in the state the next one expects; they are meant to run in order.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

from ansible_collections.beamops.release.plugins.filter.systemd_env import systemd_env

from tests.tools.fleet import (
    COOKIE,
    HOSTS,
    SECRET_KEY_BASE,
    STATE_FILE,
    Fleet,
    LoadedFleet,
    address,
    assert_refused_at_the_gate,
    deploykit,
)


def test_the_hosts_run_the_debian_this_scenario_is_for(fleet: Fleet) -> None:
    """deploy on Debian 12, deploy-trixie (the same tests) on Debian 13."""
    expected = os.environ.get("BEAMOPS_EXPECT_DEBIAN", "12")
    for name in HOSTS:
        found = fleet.hosts[name].check_output(". /etc/os-release; echo $VERSION_ID")
        assert found == expected, (name, found)


def test_first_deploy_serves_0_1_0_through_both_proxies(fleet: Fleet) -> None:
    assert fleet.served() == {name: "sample_app 0.1.0 on blue" for name in HOSTS}
    for name in HOSTS:
        # The slot's own journal identifier: what the release said, by slot.
        said = fleet.hosts[name].check_output("journalctl -t sample_app-blue --no-pager -o cat")
        assert "sample_app started version=0.1.0 slot=blue" in said
        state = fleet.state(name)
        assert state["active"]["version"] == "0.1.0"
        assert state["releases"]["0.1.0"]["status"] == "good"
        assert state["lock"] is None


def test_release_files_are_roots_and_secrets_are_root_only(fleet: Fleet) -> None:
    for host in fleet.hosts.values():
        release = host.file("/opt/sample_app/releases/0.1.0/bin/sample_app")
        assert (release.user, release.group) == ("root", "root")
        assert host.run("runuser -u sample_app -- touch /opt/sample_app/releases/0.1.0/x").rc != 0
        secrets = host.file("/etc/sample_app/blue.secrets.env")
        assert (secrets.user, secrets.mode) == ("root", 0o600)
        assert SECRET_KEY_BASE in secrets.content_string
        plain = host.file("/etc/sample_app/blue.env")
        assert plain.mode == 0o640
        assert SECRET_KEY_BASE not in plain.content_string
        assert COOKIE not in plain.content_string
        assert host.check_output("systemctl show -p User --value sample_app@blue") == "sample_app"


def test_the_units_are_sealed_and_the_release_still_runs_with_the_jit(fleet: Fleet) -> None:
    """The slot unit rates 1.2 or better and epmd 1.5 or better, with the release serving from
    the sealed slot; MemoryDenyWriteExecute does not cost the BEAM its JIT."""
    for name in HOSTS:
        live = fleet.proxy_config_slot(name)
        assert fleet.exposure(name, f"sample_app@{live}.service") <= 1.2
        assert fleet.exposure(name, "beamops-epmd.service") <= 1.5
        metrics = fleet.hosts[name].check_output("curl -s --max-time 3 http://127.0.0.1/metrics")
        assert re.search(r'sample_app_beam_info\{[^}]*emu_flavor="jit"', metrics), metrics


def test_the_proxies_set_the_forwarded_headers_from_the_peer(fleet: Fleet) -> None:
    """A client's own X-Forwarded-For and X-Forwarded-Proto never reach the release: both
    proxies replace them with the peer's address and their own scheme."""
    spoofed = "-H 'X-Forwarded-For: 6.6.6.6' -H 'X-Forwarded-Proto: https'"
    for name, host in fleet.hosts.items():
        answer = host.check_output(f"curl -s --max-time 3 {spoofed} http://127.0.0.1/forwarded")
        assert json.loads(answer) == {
            "x_forwarded_for": ["127.0.0.1"],
            "x_forwarded_proto": ["http"],
        }, (name, answer)


def test_deploy_0_2_0_under_load_fails_no_request(fleet: Fleet) -> None:
    with fleet.under_load() as load:
        run = fleet.deploy("0.2.0")
    assert run.rc == 0, run.tail()
    assert load.failed() == 0, load.results
    assert load.requests() > 1000
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    fleet.wait_stopped("sample_app@blue")
    for name, host in fleet.hosts.items():
        assert host.run("systemctl is-enabled sample_app@blue").stdout.strip() == "disabled"
        assert fleet.proxy_config_slot(name) == "green"
    for result in load.results.values():
        answers = result["answers"]
        assert "sample_app 0.1.0 on blue" in answers and "sample_app 0.2.0 on green" in answers


def test_redeploying_the_same_release_changes_and_restarts_nothing(fleet: Fleet) -> None:
    pids = {
        n: h.check_output("systemctl show -p MainPID --value sample_app@green")
        for n, h in fleet.hosts.items()
    }
    run = fleet.deploy("0.2.0")
    assert run.rc == 0, run.tail()
    assert all(counts["changed"] == 0 for counts in run.recap.values()), run.changed_tasks()
    assert pids == {
        n: h.check_output("systemctl show -p MainPID --value sample_app@green")
        for n, h in fleet.hosts.items()
    }


def test_a_config_change_goes_blue_green_and_a_bad_one_leaves_the_live_slot_alone(
    fleet: Fleet,
) -> None:
    """Same release, new beamops_env: cut over to the idle slot. A configuration that fails
    the gate leaves the live slot's files untouched and the release not marked bad."""
    greeting = '{"beamops_env": {"SHUTDOWN_DRAIN_MS": "2000", "GREETING": "hello"}}'
    run = fleet.deploy("0.2.0", "-e", greeting)
    assert run.rc == 0, run.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on blue" for name in HOSTS}
    for host in fleet.hosts.values():
        assert 'GREETING="hello"' in host.file("/etc/sample_app/blue.env").content_string
    live_files = {
        n: h.check_output("sha256sum /etc/sample_app/blue.env /etc/sample_app/blue.*.env")
        for n, h in fleet.hosts.items()
    }
    bad = fleet.deploy(
        "0.2.0", "-e", '{"beamops_env": {"FAIL_HEALTH": "1"}}', "-e", "beamops_start_timeout=8"
    )
    assert bad.rc != 0
    assert fleet.served() == {name: "sample_app 0.2.0 on blue" for name in HOSTS}
    assert live_files == {
        n: h.check_output("sha256sum /etc/sample_app/blue.env /etc/sample_app/blue.*.env")
        for n, h in fleet.hosts.items()
    }, "the live slot's configuration was rewritten"
    for name in HOSTS:
        assert fleet.state(name)["releases"]["0.2.0"]["status"] == "good"
    back = fleet.deploy("0.2.0")
    assert back.rc == 0, back.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


LIMITS = {
    "beamops_memory_max": "512M",
    "beamops_memory_high": "400M",
    "beamops_tasks_max": 2048,
    # The test containers cap LimitNOFILE at 20000 (../shared notes): ask for less.
    "beamops_limit_nofile": 16384,
    "beamops_cpu_quota": "150%",
    "beamops_cpu_weight": 50,
    "beamops_beam_schedulers": "1:1",
    "beamops_beam_process_limit": 1048576,
    "beamops_beam_port_limit": 32768,
}


def beam_limit(metrics: str, kind: str) -> int:
    found = re.search(rf'sample_app_beam_limit\{{kind="{kind}"\}} (\d+)', metrics)
    assert found, metrics
    return int(found.group(1))


def test_resource_limits_hold_in_systemd_and_in_the_vm(fleet: Fleet) -> None:
    """New limits are a configuration change: blue-green under load, and the new slot runs with
    them, as systemd shows its unit and as the VM reports itself (:erlang.system_info/1)."""
    with fleet.under_load() as load:
        run = fleet.deploy("0.2.0", "-e", json.dumps(LIMITS))
    assert run.rc == 0, run.tail()
    assert load.failed() == 0, load.results
    for name, host in fleet.hosts.items():
        unit = f"sample_app@{fleet.proxy_config_slot(name)}.service"
        shown = host.check_output(
            "systemctl show -p MemoryMax,MemoryHigh,CPUQuotaPerSecUSec,CPUWeight,TasksMax,"
            f"LimitNOFILE {unit}"
        )
        assert set(shown.split()) == {
            "MemoryMax=536870912", "MemoryHigh=419430400", "CPUQuotaPerSecUSec=1.500000s",
            "CPUWeight=50", "TasksMax=2048", "LimitNOFILE=16384"}  # fmt: skip
        # The running VM, not just the unit: the kernel's file limit of its process.
        pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
        limits = host.check_output(f"cat /proc/{pid}/limits")
        assert re.search(r"Max open files\s+16384\s+16384\s", limits), limits
        metrics = host.check_output("curl -s --max-time 3 http://127.0.0.1/metrics")
        assert beam_limit(metrics, "process_limit") == 1048576
        assert beam_limit(metrics, "port_limit") == 32768
        assert beam_limit(metrics, "schedulers_online") == 1
    back = fleet.deploy("0.2.0")
    assert back.rc == 0, back.tail()


def test_check_diff_shows_changes_but_no_secret(fleet: Fleet) -> None:
    before = fleet.state_bytes()
    run = fleet.deploy(
        "0.3.0",
        "--check",
        "--diff",
        "-e",
        '{"beamops_secret_env": {"SECRET_KEY_BASE": "rotated-secret-value-xyz-0123456789"}}',
    )
    assert run.rc == 0, run.tail()
    assert "rotated-secret-value-xyz" not in run.output
    assert SECRET_KEY_BASE not in run.output and COOKIE not in run.output
    assert "0.3.0" in run.output
    assert fleet.state_bytes() == before, "--check changed a host's release state"
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def test_a_release_that_never_gets_ready_is_refused_and_marked_bad(fleet: Fleet) -> None:
    with fleet.under_load() as load:
        run = fleet.deploy(
            "0.3.0", "-e", '{"beamops_env": {"FAIL_HEALTH": "1"}}', "-e", "beamops_start_timeout=10"
        )
    assert_refused_at_the_gate(
        run, r"at http://127\.0\.0\.1:4001/health/ready.*last answer 503.*failing"
    )
    for name in HOSTS:
        assert fleet.state(name)["releases"]["0.3.0"]["status"] == "bad"
    assert load.failed() == 0, load.results
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def test_a_release_that_exits_at_boot_fails_its_gate_at_once_with_its_own_words(
    fleet: Fleet,
) -> None:
    """The gate watches the VM: no probing a dead port until the deadline."""
    run = fleet.deploy("0.3.0", "-e", '{"beamops_env": {"FAIL_KIND": "bogus"}}')
    assert run.rc != 0
    for name in HOSTS:
        found = re.search(
            rf"{name}: slot blue \(release 0\.3\.0\) did not become ready.*?"
            r"in (\d+\.\d)s \(process \d+ exited\).*?the release's last lines: "
            r"FATAL: FAIL_KIND must be all, readiness or http_500",
            run.output,
            re.DOTALL,
        )
        assert found, run.tail()
        assert float(found.group(1)) <= 2.0, found.group(0)
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


# Watch settings of the after-switch tests: a tick every 0.5 s, 2 failing ticks switch back.
WATCH = ["-e", "beamops_watch_seconds=8", "-e", "beamops_watch_interval=0.5"]


def after_switch_failure(fleet: Fleet, kind: str) -> Tuple[deploykit.PlaybookRun, LoadedFleet]:
    breaks = {"beamops_env": {"FAIL_AFTER_MS": "2500", "FAIL_KIND": kind}}
    with fleet.under_load() as load:
        run = fleet.deploy("0.4.0", "-e", json.dumps(breaks), *WATCH)
    assert run.rc != 0
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    for name in HOSTS:
        back = re.search(
            rf"{name}: slot blue \(release 0\.4\.0\) failed after the switch \(watch\): "
            r".*?traffic switched back to slot green \(0\.2\.0\) (\d+) ms after",
            run.output,
            re.DOTALL,
        )
        assert back, run.tail()
        assert int(back.group(1)) <= 1000, back.group(0)
        state = fleet.state(name)
        assert state["releases"]["0.4.0"]["status"] == "bad"
        assert state["active"]["version"] == "0.2.0"
        assert fleet.proxy_config_slot(name) == "green"
    return run, load


def test_a_release_whose_readiness_fails_after_the_switch_costs_no_request(
    fleet: Fleet,
) -> None:
    """nginx keeps the old slot as `backup`, HAProxy as the backup server of the new slot's
    backend; the watch on the host switches back within a second of its verdict."""
    _unused, load = after_switch_failure(fleet, "readiness")
    assert load.failed() == 0, load.results


def test_a_release_answering_500_is_switched_back_as_fast(fleet: Fleet) -> None:
    """Real requests answered 500 (readiness still ready) are seen through the proxy: nginx's
    access log, HAProxy's counters. Clients see 500s for at most failure_threshold x
    interval (2 x 0.5 s here) plus the switch; at 100 req/s per host that bounds the count."""
    run, load = after_switch_failure(fleet, "http_500")
    assert "requests through the proxy answered 5xx" in run.output
    for result in load.results.values():
        assert result["failed"] <= 100 * (2 * 0.5 + 0.5), result


def test_rollback_goes_to_the_previous_good_release_under_load(fleet: Fleet) -> None:
    with fleet.under_load() as load:
        run = fleet.playbook("rollback")
    assert run.rc == 0, run.tail()
    assert load.failed() == 0, load.results
    assert fleet.served() == {name: "sample_app 0.1.0 on blue" for name in HOSTS}
    for name in HOSTS:
        assert fleet.state(name)["releases"]["0.2.0"]["status"] == "bad"


def test_rollback_to_picks_a_version(fleet: Fleet) -> None:
    run = fleet.playbook("rollback", "-e", "rollback_to=0.2.0")
    assert run.rc == 0, run.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}


def test_keeping_the_old_slot_warm_makes_rollback_a_switch(fleet: Fleet) -> None:
    """beamops_keep_old_warm: the old slot keeps running, so rollback restarts nothing."""
    run = fleet.deploy("0.1.0", "-e", "beamops_keep_old_warm=true")
    assert run.rc == 0, run.tail()
    warm_pids = {
        n: h.check_output("systemctl show -p MainPID --value sample_app@green")
        for n, h in fleet.hosts.items()
    }
    assert all(pid != "0" for pid in warm_pids.values()), "the old slot was stopped"
    with fleet.under_load() as load:
        back = fleet.playbook("rollback")
    assert back.rc == 0, back.tail()
    assert load.failed() == 0, load.results
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    assert warm_pids == {
        n: h.check_output("systemctl show -p MainPID --value sample_app@green")
        for n, h in fleet.hosts.items()
    }, "rollback restarted the warm slot"
    print(f"warm rollback took {back.seconds}s")


def test_the_rollback_command_on_a_host_needs_no_controller(fleet: Fleet) -> None:
    """`/usr/local/bin/sample_app-rollback` on the host: same lock, state, gate and watch."""
    name = HOSTS[0]
    host = fleet.hosts[name]
    plan = host.run("/usr/local/bin/sample_app-rollback --plan 0.1.0")
    assert plan.rc == 0 and "roll back from 0.2.0 (slot green) to 0.1.0" in plan.stdout, plan
    # Run as an unprivileged user it refuses, naming what to do.
    refused = host.run("runuser -u nobody -- /usr/local/bin/sample_app-rollback")
    assert refused.rc == 2 and "run as root" in refused.stderr
    with fleet.under_load() as load:
        done = host.run("/usr/local/bin/sample_app-rollback 0.1.0")
    assert done.rc == 0, done.stdout + done.stderr
    assert "rollback of 0.1.0 to slot blue ok" in done.stdout
    assert load.failed() == 0, load.results
    assert fleet.served()[name] == "sample_app 0.1.0 on blue"
    state = fleet.state(name)
    assert state["lock"] is None and state["releases"]["0.2.0"]["status"] == "bad"
    assert "local rollback command" in state["releases"]["0.2.0"]["reason"]
    # Put the fleet back on 0.2.0 for the tests that follow.
    again = fleet.playbook("rollback", "-e", "rollback_to=0.2.0")
    assert again.rc == 0, again.tail()
    assert fleet.served() == {n: "sample_app 0.2.0 on green" for n in HOSTS}


def test_rollback_to_an_unknown_version_is_refused(fleet: Fleet) -> None:
    before = fleet.state_bytes()
    run = fleet.playbook("rollback", "-e", "rollback_to=9.9.9")
    assert run.rc != 0
    assert "rollback_to=9.9.9 is not installed" in run.output, run.tail()
    assert fleet.state_bytes() == before


def test_a_url_source_is_downloaded_once_verified_and_old_releases_pruned(
    fleet: Fleet, tmp_path: Path
) -> None:
    """http(s) sources: the controller downloads, checks the sha256, then installs; a wrong
    checksum refuses the download. Pruning keeps the active, previous and last good releases."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(deploykit.RELEASES),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = re.search(r"port (\d+)", server.stdout.readline())
        assert port, "http.server did not say its port"
        url = f"http://127.0.0.1:{port.group(1)}/sample_app-0.3.0.tar.gz"
        sha = (deploykit.RELEASES / "sample_app-0.3.0.tar.gz.sha256").read_text().split()[0]
        cache = f"beamops_artifact_cache_dir={tmp_path}"
        wrong = fleet.playbook(
            "deploy",
            "-e",
            "beamops_release_version=0.3.0",
            "-e",
            f"beamops_release_src={url}",
            "-e",
            "beamops_release_sha256=" + "1" * 64,
            "-e",
            cache,
        )
        assert wrong.rc != 0
        assert "beamops_release_src" in wrong.output and "No host was changed" in wrong.output
        right = fleet.playbook(
            "deploy",
            "-e",
            "beamops_release_version=0.3.0",
            "-e",
            f"beamops_release_src={url}",
            "-e",
            f"beamops_release_sha256={sha}",
            "-e",
            cache,
            "-e",
            "beamops_releases_keep=1",
        )
        assert right.rc == 0, right.tail()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert (tmp_path / "sample_app-0.3.0.tar.gz").exists()
    assert fleet.served() == {name: "sample_app 0.3.0 on blue" for name in HOSTS}
    for name, host in fleet.hosts.items():
        state = fleet.state(name)
        kept = set(host.check_output("ls /opt/sample_app/releases").split())
        assert kept == set(state["releases"]), (kept, state["releases"])
        # keep=1: the newest install (0.4.0) plus the active (0.3.0) and the previous and
        # last good (0.2.0); 0.1.0 (bad, older, protected by nothing) goes.
        assert kept == {"0.2.0", "0.3.0", "0.4.0"}, kept
    # Back to 0.2.0 for the tests that follow.
    back = fleet.playbook("rollback", "-e", "rollback_to=0.2.0")
    assert back.rc == 0, back.tail()


def test_status_reports_each_host(fleet: Fleet) -> None:
    run = fleet.playbook("status")
    assert run.rc == 0, run.tail()
    for name in HOSTS:
        assert re.search(rf"host: {name}", run.output)
    assert run.output.count("active_version: 0.2.0") == len(HOSTS)
    assert "healthy: true" in run.output


def cutovers(samples: dict[str, str], kind: str, result: str) -> int:
    return int(samples[f'beamops_{kind}s_total{{app="sample_app",result="{result}"}}'])


def test_every_cutover_left_its_metrics_and_its_event(fleet: Fleet) -> None:
    """By now each host has seen successful deploys and rollbacks, a gate that refused a
    release and releases switched back after the switch: node_exporter's textfile counts
    each, names what serves, and the events log holds one JSON line per cutover."""
    for name, host in fleet.hosts.items():
        text = host.check_output("cat /var/lib/prometheus/node-exporter/beamops_sample_app.prom")
        samples = dict(
            line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")
        )
        assert cutovers(samples, "deploy", "success") >= 3
        assert cutovers(samples, "deploy", "gate_failed") >= 2
        assert cutovers(samples, "deploy", "switched_back") >= 2
        assert cutovers(samples, "rollback", "success") >= 3
        active = fleet.state(name)["active"]
        info = f'beamops_release_info{{app="sample_app",version="{active["version"]}",'
        assert samples[info + f'slot="{active["slot"]}"}}'] == "1"
        assert samples['beamops_deploy_state_proxy_drift{app="sample_app"}'] == "0"
        events = [
            json.loads(line)
            for line in host.check_output(
                "cat /var/log/beamops/sample_app-events.jsonl"
            ).splitlines()
        ]
        counted = sum(
            int(v) for k, v in samples.items() if k.startswith("beamops_") and "_total{" in k
        )
        assert len(events) == counted, (len(events), counted)
        assert {e["result"] for e in events} >= {"success", "gate_failed", "switched_back"}
        assert all(e["host"] == name and e["app"] == "sample_app" for e in events)
        assert host.file("/var/log/beamops/sample_app-events.jsonl").mode == 0o640


def test_state_file_never_holds_a_secret(fleet: Fleet) -> None:
    for host in fleet.hosts.values():
        text = host.file(STATE_FILE).content_string
        assert SECRET_KEY_BASE not in text and COOKIE not in text


def test_systemd_reads_back_the_environment_exactly(fleet: Fleet) -> None:
    """The systemd_env filter's quoting, read back by systemd's own EnvironmentFile parser."""
    tricky = {
        "PLAIN": "value",
        "SPACES": "two words  and more",
        "QUOTES": "say \"hi\" and 'bye'",
        "BACKSLASH": "C:\\path\\to\\x",
        "DOLLAR": "$HOME and ${PATH}",
        "HASH": "# no comment",
        "EQUALS": "a=b=c",
        "UTF8": "héllo wörld",
        "NUMBER": 4001,
        "FLAG": True,
    }
    encoded = base64.b64encode(systemd_env(tricky).encode()).decode()
    host = next(iter(fleet.hosts.values()))
    host.run_test(f"echo {encoded} | base64 -d > /run/beamops-env-test.env")
    output = host.check_output(
        "systemd-run --wait --pipe --quiet"
        " -p EnvironmentFile=/run/beamops-env-test.env /usr/bin/env"
    )
    seen = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    for name, value in tricky.items():
        expected = ("true" if value else "false") if isinstance(value, bool) else str(value)
        assert seen[name] == expected, name


def test_a_failed_batch_rolls_back_the_batches_already_switched(
    fleet: Fleet, tmp_path: Path
) -> None:
    """serial=1: bo1 switches to 0.3.0, bo2 (second batch) never gets ready; bo1 goes back."""
    breaks_bo2 = tmp_path / "breaks_bo2.yml"
    breaks_bo2.write_text("all:\n  hosts:\n    bo2:\n      beamops_env: {FAIL_HEALTH: '1'}\n")
    with fleet.under_load() as load:
        run = fleet.deploy(
            "0.3.0",
            "-e",
            "beamops_serial=1",
            "-e",
            "beamops_start_timeout=8",
            inventories=[*fleet.inventories, str(breaks_bo2)],
        )
    assert run.rc != 0
    assert "bo2: slot blue (release 0.3.0) did not become ready" in run.output, run.tail()
    assert re.search(
        r"bo1: rolled back to 0\.2\.0.*rollout halted: failed on bo2", run.output, re.DOTALL
    ), run.tail()
    assert fleet.served() == {name: "sample_app 0.2.0 on green" for name in HOSTS}
    assert fleet.state("bo1")["active"]["version"] == "0.2.0"
    assert fleet.state("bo1")["releases"]["0.3.0"]["status"] == "bad"
    assert load.failed() == 0, load.results


def test_the_live_slot_comes_back_after_a_reboot(fleet: Fleet) -> None:
    """The live slot's unit is enabled (the retired one disabled): a rebooted host serves the
    same release from the same slot, with no deploy."""
    host = fleet.hosts["bo1"]
    before = fleet.served()["bo1"]
    # Reboot a second from now, from a timer: ssh gets its exit status before the host goes.
    host.run_test("systemd-run --on-active=1 systemctl reboot")
    deadline = time.monotonic() + 90
    answer = ""
    time.sleep(3)
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["curl", "-s", "--max-time", "2", f"http://{address('bo1')}/"],
            capture_output=True,
            text=True,
            check=False,
        )
        answer = probe.stdout.strip()
        if probe.returncode == 0 and answer.startswith("sample_app"):
            break
        time.sleep(1)
    assert answer == before, f"after a reboot bo1 answers {answer!r}, before it was {before!r}"
    assert host.check_output("systemctl is-enabled sample_app@green") == "enabled"
    assert host.run("systemctl is-enabled sample_app@blue").stdout.strip() == "disabled"


def test_playbooks_run_from_the_installed_collection(fleet: Fleet, tmp_path: Path) -> None:
    """ansible-playbook beamops.release.deploy / .status from a built and installed tarball.

    ANSIBLE_COLLECTIONS_PATH names only the installed copy, so the FQCNs can resolve nowhere else.
    """
    galaxy = str(deploykit.BIN / "ansible-galaxy")
    env = deploykit.ansible_env()
    subprocess.run(
        [galaxy, "collection", "build", "--output-path", str(tmp_path), "--force"],
        cwd=deploykit.REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    tarball = next(tmp_path.glob("beamops-release-*.tar.gz"))
    installed = tmp_path / "collections"
    subprocess.run(
        [
            galaxy,
            "collection",
            "install",
            "--offline",
            "--force",
            "-p",
            str(installed),
            str(tarball),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    # The same deploy from the checkout first: earlier tests left other settings (a shorter
    # start timeout is part of the unit), so only after it is the installed run a no-op.
    from_checkout = fleet.deploy("0.2.0")
    assert from_checkout.rc == 0, from_checkout.tail()
    status = deploykit.run_playbook(
        fleet.inventories, "beamops.release.status", collections_path=installed
    )
    assert status.rc == 0, status.tail()
    assert status.output.count("active_version: 0.2.0") == len(HOSTS)
    again = deploykit.run_playbook(
        fleet.inventories,
        "beamops.release.deploy",
        *deploykit.release_args("0.2.0"),
        collections_path=installed,
    )
    assert again.rc == 0, again.tail()
    assert all(counts["changed"] == 0 for counts in again.recap.values()), again.changed_tasks()
