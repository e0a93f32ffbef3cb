"""input_checks: each rule refuses what it must, names the variable and never shows a secret;
the shipped inventories pass, and every example secret they hold is known."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml
from ansible_collections.beamops.release.plugins.module_utils import input_checks as ic

REPO = Path(__file__).resolve().parents[4]
BIN = Path(sys.executable).parent
GOOD: Dict[str, Any] = {
    "beamops_app_name": "shop",
    "beamops_release_version": "1.10.0-rc.1+build.5",
    "beamops_release_sha256": "A" * 64,
    "beamops_release_cookie": "7Hq2-kd9XpLw4Zr8Vn3Bt6Yc",
    "beamops_env": {"LOG_LEVEL": "info", "POOL": 10, "FEATURE": True},
    "beamops_secret_env": {"SECRET_KEY_BASE": "sk-R4nd0m-V4lu3-7Hq2kd9XpLw4Zr8"},
    "beamops_slot_ports": {"blue": 4001, "green": 4002},
    "beamops_proxy_port": 80,
    "beamops_vm_args": ["+sbwt none"],
    "beamops_watch_interval": 0.5,
    "beamops_releases_keep": 1,
    "beamops_drain_seconds": 0,
    "beamops_proxy_trusted_proxies": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"],
    "beamops_ready_path": "/health/ready?full=1",
    "beamops_proxy_bind": "127.0.0.1",
}
SECRET_VALUES = (GOOD["beamops_release_cookie"], GOOD["beamops_secret_env"]["SECRET_KEY_BASE"])


def test_good_inputs_pass() -> None:
    assert ic.problems(GOOD) == []
    assert ic.problems({**GOOD, "rollback_to": "0.9.0"}, "rollback") == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"beamops_release_version": "../../../escaped"}, "beamops_release_version: got '../"),
        ({"beamops_release_version": "1.0\n"}, "no '/' or '..'"),
        ({"beamops_release_version": "1..0"}, "no '/' or '..'"),
        ({"beamops_release_version": 1.1}, 'quote it, e.g. beamops_release_version: "1.1"'),
        ({"beamops_release_version": 2}, "a number"),
        ({"beamops_release_sha256": "abc"}, "beamops_release_sha256: got 'abc'; expected 64 hex"),
        ({"beamops_app_name": "Shop"}, "beamops_app_name: got 'Shop'"),
        ({"beamops_app_name": "shop\n"}, "beamops_app_name: got 'shop\\n'"),
        ({"beamops_app_user": "root"}, "beamops_app_user: 'root' belongs to the OS"),
        ({"beamops_app_user": "postgres"}, "or set beamops_app_user_adopt: true"),
        ({"beamops_app_group": "sudo"}, "beamops_app_group: 'sudo' belongs to the OS"),
        ({"beamops_app_user": "a b"}, "expected a system account name"),
        ({"beamops_ready_path": "/ready\nExecStartPre=/x"}, "beamops_ready_path: got '/ready\\n"),
        ({"beamops_memory_max": "1G\r"}, "beamops_memory_max: got '1G\\r'"),
        ({"beamops_vm_args": ["+P 100", "-eval\tx"]}, "beamops_vm_args[1]: got"),
        (
            {"beamops_memory_max": "lots"},
            "beamops_memory_max: got 'lots'; expected empty or a size",
        ),
        ({"beamops_memory_high": "1G KillMode=none"}, "beamops_memory_high: got"),
        ({"beamops_cpu_quota": "2"}, "beamops_cpu_quota: got '2'; expected empty or a percentage"),
        ({"beamops_cpu_weight": 0}, "beamops_cpu_weight: got 0; expected at least 1"),
        ({"beamops_cpu_weight": 20000}, "beamops_cpu_weight: got 20000; expected at most 10000"),
        ({"beamops_beam_schedulers": "2:2 -eval x"}, "beamops_beam_schedulers: got"),
        ({"beamops_beam_process_limit": 10}, "beamops_beam_process_limit: got 10; expected at"),
        (
            {"beamops_beam_port_limit": 2**30},
            "beamops_beam_port_limit: got 1073741824; expected at",
        ),
        ({"beamops_ready_json_fields": {"st\natus": "ok"}}, "beamops_ready_json_fields (key)"),
        ({"beamops_env": {"LD_PRELOAD": "/x.so"}}, "beamops_env: LD_PRELOAD changes how"),
        ({"beamops_env": {"PATH": "/tmp"}}, "beamops_env: PATH changes"),
        ({"beamops_env": {"ERL_AFLAGS": "-x"}}, "beamops_env: ERL_AFLAGS changes"),
        ({"beamops_env": {"RELEASE_COOKIE": "x"}}, "beamops_env: RELEASE_COOKIE changes"),
        ({"beamops_env": {"1X": "y"}}, "'1X' is not a POSIX"),
        ({"beamops_env": {"X": "a\nb"}}, "beamops_env.X: 'a\\nb' has a NUL, CR or LF"),
        ({"beamops_env": {"X": ["a"]}}, "beamops_env.X: expected a string, number or boolean"),
        (
            {"beamops_env": {"LOG_LEVEL": "x"}, "beamops_secret_env": {"LOG_LEVEL": "y"}},
            "a name is plain or secret",
        ),
        ({"beamops_slot_ports": {"blue": 4001}}, "expected exactly the keys blue and green"),
        ({"beamops_slot_ports": {"blue": 4001, "green": 4001}}, "ports must be distinct"),
        ({"beamops_proxy_port": 4002}, "ports must be distinct"),
        ({"beamops_proxy_port": 70000}, "beamops_proxy_port: got 70000; expected a TCP port"),
        ({"beamops_releases_keep": 0}, "beamops_releases_keep: got 0; expected at least 1"),
        ({"beamops_proxy_trusted_proxies": ["10.0.0.0/8", "lb.example"]}, "'lb.example' is not"),
        ({"beamops_proxy_trusted_proxies": "10.0.0.0/8"}, "expected a list of networks"),
        ({"beamops_ready_path": "/health ready"}, "beamops_ready_path: got '/health ready'"),
        ({"beamops_live_path": "health"}, "expected an absolute URL path"),
        ({"beamops_proxy_bind": "lb.example"}, "beamops_proxy_bind: got 'lb.example'"),
        ({"beamops_proxy_bind": "::"}, "expected an IPv4 address"),
        ({"beamops_drain_seconds": -1}, "beamops_drain_seconds: got -1; expected at least 0"),
        ({"beamops_watch_interval": 0}, "beamops_watch_interval: got 0; expected more than 0"),
        ({"beamops_watch_max_5xx_ratio": 1.5}, "expected at most 1"),
        ({"beamops_max_fail_percentage": "lots"}, "expected a number"),
        ({"beamops_release_cookie": "short"}, "at least 20 characters"),
        ({"beamops_release_cookie": "a" * 30}, "too weak"),
        ({"beamops_release_cookie": "has a space in it 0123456789"}, "printable ASCII"),
        ({"beamops_release_cookie": "demo-only-cookie-0123456789abcdef"}, "example secret"),
        ({"beamops_env": {"CLUSTER_NODES": "a@b"}}, "beamops_env: CLUSTER_NODES changes"),
        ({"beamops_dist_ports": {"blue": 9101}}, "beamops_dist_ports: got {'blue': 9101}"),
        ({"beamops_dist_ports": {"blue": 4001, "green": 9102}}, "ports must be distinct"),
        ({"beamops_dist_ports": {"blue": 4369, "green": 9102}}, "epmd's port; expected another"),
        ({"beamops_dist_address": "bo1.example"}, "beamops_dist_address: got 'bo1.example'"),
        ({"beamops_ip_allow": ["10.0.0.0/8", "db.example"]}, "beamops_ip_allow: 'db.example'"),
    ],
)
def test_each_hostile_input_is_refused_naming_the_variable(
    change: Dict[str, Any], expected: str
) -> None:
    found = ic.problems({**GOOD, **change})
    assert any(expected in problem for problem in found), found


def test_resource_limits_in_systemd_s_and_the_vm_s_own_words_pass() -> None:
    limits = {
        "beamops_memory_max": "512M",
        "beamops_memory_high": "80%",
        "beamops_cpu_quota": "150%",
        "beamops_cpu_weight": 50,
        "beamops_beam_schedulers": "2:2",
        "beamops_beam_process_limit": 1048576,
        "beamops_beam_port_limit": 65536,
    }
    assert ic.problems({**GOOD, **limits}) == []


def test_rollback_checks_rollback_to_not_the_deploy_version() -> None:
    assert ic.problems({**GOOD, "beamops_release_version": None}, "rollback") == []
    found = ic.problems({**GOOD, "rollback_to": "../x"}, "rollback")
    assert found and found[0].startswith("rollback_to: got '../x'")
    # An AWX survey question left blank passes an empty string: the host's candidate.
    assert ic.problems({**GOOD, "rollback_to": ""}, "rollback") == []


def test_no_cookie_is_needed_without_distribution() -> None:
    assert (
        ic.problems({**GOOD, "beamops_release_distribution": "none", "beamops_release_cookie": ""})
        == []
    )


CLUSTER: Dict[str, Any] = {
    **GOOD,
    "beamops_release_distribution": "name",
    "beamops_dist_address": "10.0.0.7",
    "beamops_cluster_group": "shop_nodes",
    "__inventory_groups": ["all", "shop_nodes"],
    "beamops_dist_tls": True,
    "beamops_dist_tls_cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "beamops_dist_tls_key": "-----BEGIN PRIVATE KEY-----\nsecret-key-body\n-----END ...\n",
    "beamops_dist_tls_cacert": "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
}


def test_a_tls_cluster_across_hosts_passes_pem_text_and_all() -> None:
    assert ic.problems(CLUSTER) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"beamops_cluster_group": "nodes"}, "beamops_cluster_group: 'nodes' is not a group"),
        ({"beamops_release_distribution": "sname"}, "needs beamops_release_distribution name"),
        ({"beamops_dist_address": "127.0.0.1"}, "a loopback address; expected one that the other"),
        ({"beamops_dist_tls_cacert": ""}, "beamops_dist_tls_cacert: got ''; expected PEM text"),
        ({"beamops_dist_tls_key": "not a key"}, "beamops_dist_tls_key: got (secret); expected PEM"),
    ],
)
def test_a_cluster_that_cannot_form_is_refused_before_any_host(
    change: Dict[str, Any], expected: str
) -> None:
    found = ic.problems({**CLUSTER, **change})
    assert any(expected in problem for problem in found), found
    assert not any("secret-key-body" in problem or "not a key" in problem for problem in found)


def test_secret_values_never_appear_in_a_problem() -> None:
    cookie = "bad\ncookie-value-7Hq2kd9XpLw4"
    secret = "line1\nline2-very-secret"
    found = ic.problems(
        {**GOOD, "beamops_release_cookie": cookie, "beamops_secret_env": {"KEY": secret}}
    )
    assert len(found) >= 2
    text = "\n".join(found)
    assert "cookie-value" not in text and "very-secret" not in text, text
    assert "beamops_release_cookie: got (secret)" in text
    assert "beamops_secret_env.KEY: its value has a NUL" in text


def test_example_secrets_are_accepted_only_where_allowed() -> None:
    demo = {
        **GOOD,
        "beamops_secret_env": {
            "SECRET_KEY_BASE": "demo-only-secret-key-base-not-for-production-0123456789abcdef"
        },
    }
    assert any("beamops_secret_env.SECRET_KEY_BASE is an example" in p for p in ic.problems(demo))
    assert ic.problems({**demo, "beamops_allow_example_secrets": True}) == []


def vault_values(path: Path) -> Dict[str, Any]:
    shown = subprocess.run(
        [str(BIN / "ansible-vault"), "view", str(path)],
        env={"ANSIBLE_VAULT_PASSWORD_FILE": str(REPO / "tests/fixtures/example-vault-pass")},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(yaml.safe_load(shown.stdout))


def test_every_secret_shipped_in_the_inventories_is_a_known_example() -> None:
    secrets = []
    demo = yaml.safe_load((REPO / "inventories/demo/group_vars/beamops_app/main.yml").read_text())
    secrets += [demo["beamops_release_cookie"], *demo["beamops_secret_env"].values()]
    for vault in sorted(REPO.glob("inventories/*/group_vars/*/vault.yml")):
        secrets += [str(v) for v in vault_values(vault).values()]
    assert len(secrets) >= 6
    unknown = [s[:12] for s in secrets if ic.fingerprint(s) not in ic.EXAMPLE_SECRETS]
    assert unknown == [], "add their fingerprints to input_checks.EXAMPLE_SECRETS"


def test_the_demo_inventory_passes_and_only_it_allows_examples() -> None:
    for main in sorted(REPO.glob("inventories/*/group_vars/beamops_app/main.yml")):
        values = yaml.safe_load(main.read_text())
        allowed = values.get("beamops_allow_example_secrets", False)
        assert allowed == (main.parts[-4] == "demo"), main
    demo = yaml.safe_load((REPO / "inventories/demo/group_vars/beamops_app/main.yml").read_text())
    assert (
        ic.problems(
            {**demo, "beamops_release_version": "0.1.0", "beamops_release_sha256": "0" * 64}
        )
        == []
    )


MONITORED: Dict[str, Any] = {
    **GOOD,
    "__inventory_groups": ["all", "beamops_app", "monitoring"],
    "beamops_prometheus_group": "monitoring",
    "beamops_scrape_port": 9568,
    "beamops_scrape_address": "10.0.0.11",
    "beamops_scrape_allow": ["10.1.0.0/16"],
    "__beamops_scrape_allow": ["127.0.0.1", "10.0.0.13", "10.1.0.0/16"],
    "beamops_metrics_path": "/metrics",
}


def test_a_monitored_host_passes() -> None:
    assert ic.problems(MONITORED) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"beamops_prometheus_group": "prom"}, "beamops_prometheus_group: 'prom' is not a group"),
        ({"beamops_scrape_address": "app1.example"}, "beamops_scrape_address: got 'app1.example'"),
        (
            {"__beamops_scrape_allow": ["127.0.0.1", "prom1.example"]},
            "scrape allow list: got 'prom1.example'; expected IPv4 addresses or networks",
        ),
        ({"beamops_scrape_port": 4001}, "ports must be distinct"),
        ({"beamops_scrape_port": 70000}, "beamops_scrape_port: got 70000; expected a TCP port"),
        ({"beamops_metrics_path": "metrics"}, "beamops_metrics_path: got 'metrics'"),
    ],
)
def test_monitoring_that_cannot_work_is_refused_before_any_host(
    change: Dict[str, Any], expected: str
) -> None:
    found = ic.problems({**MONITORED, **change})
    assert any(expected in problem for problem in found), found


def test_without_a_scrape_listener_its_address_is_not_checked() -> None:
    quiet = {**MONITORED, "beamops_scrape_port": 0, "beamops_scrape_address": "app1.example"}
    assert ic.problems(quiet) == []


def test_webhooks_are_checked_without_showing_their_urls() -> None:
    good = [{"url": "https://hooks.example/services/T0K3N", "timeout": 2, "retries": 0}]
    assert ic.problems({**GOOD, "beamops_webhooks": good}) == []
    bad = [
        {"url": "hooks.example/services/T0K3N"},
        {"url": "https://hooks.example/services/T0K3N", "timeout": 0, "retries": -1},
    ]
    found = ic.problems({**GOOD, "beamops_webhooks": bad})
    assert "beamops_webhooks[0].url: expected an http:// or https:// URL" in found
    assert "beamops_webhooks[1].timeout: got 0; expected seconds above 0" in found
    assert "beamops_webhooks[1].retries: got -1; expected 0 or more" in found
    assert not any("T0K3N" in problem for problem in found)


def test_hooks_name_known_points_and_task_files_that_exist(tmp_path: Path) -> None:
    hook = tmp_path / "smoke.yml"
    hook.write_text("---\n- name: Smoke\n  ansible.builtin.debug:\n")
    good = {"after_gate": [str(hook)], "on_failure": [str(hook)]}
    assert ic.problems({**GOOD, "beamops_hooks": good}) == []
    found = ic.problems(
        {**GOOD, "beamops_hooks": {"after_lunch": [str(hook)], "before_start": ["hooks/smoke.yml"]}}
    )
    assert any(p.startswith("beamops_hooks.after_lunch: not a hook point") for p in found), found
    assert any(
        p.startswith("beamops_hooks.before_start: got 'hooks/smoke.yml'; expected the absolute")
        for p in found
    ), found
    missing = ic.problems({**GOOD, "beamops_hooks": {"after_switch": [str(tmp_path / "no.yml")]}})
    assert len(missing) == 1 and "expected the absolute path of a task file" in missing[0]
