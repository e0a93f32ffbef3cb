"""proxy_setup against real files in a temporary tree; nginx, haproxy and systemctl recorded.
The real proxies are proven on the test hosts by the deploy scenario (both proxies)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar, List, Sequence

import pytest
from ansible_collections.beamops.release.plugins.module_utils import cutover as co
from ansible_collections.beamops.release.plugins.module_utils import haproxy_runtime
from ansible_collections.beamops.release.plugins.module_utils import proxy_setup as ps

from tests.unit.plugins.module_utils.test_cutover import Commands


class RuntimeApi:
    """Stands in for HAProxy's runtime API: `show map` lists the maps it loaded."""

    loaded: ClassVar[List[str]] = []

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path

    def send(self, command: str) -> str:
        assert command == "show map"
        return "".join(f"-1 ({name}) entries\n" for name in self.loaded)


@pytest.fixture
def runtime_api(monkeypatch: pytest.MonkeyPatch) -> type[RuntimeApi]:
    monkeypatch.setattr(haproxy_runtime, "RuntimeClient", RuntimeApi)
    RuntimeApi.loaded = []
    return RuntimeApi


def nginx(tmp_path: Path, **changes: Any) -> ps.Request:
    made = ps.Request(
        proxy="nginx",
        nginx_site_file=str(tmp_path / "app.conf"),
        nginx_upstream_file=str(tmp_path / "app.upstream"),
        haproxy_map_file=str(tmp_path / "app-live.map"),
        site="server {}\n",
        upstream="upstream app_live {}\n",
        haproxy_cfg="frontend app_public\n",
        live_map="live app_blue\n",
        haproxy_cfg_path=str(tmp_path / "haproxy.cfg"),
        haproxy_app_file=str(tmp_path / "beamops.d" / "app.cfg"),
        haproxy_dropin=str(tmp_path / "haproxy.service.d" / "beamops.conf"),
        nginx_dropin=str(tmp_path / "nginx.service.d" / "beamops.conf"),
    )
    for key, value in changes.items():
        setattr(made, key, value)
    return made


def test_nginx_first_setup_writes_tests_reloads_and_a_rerun_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ps, "NGINX_DEFAULT_SITE", str(tmp_path / "default"))
    (tmp_path / "default").write_text("default site\n")
    (tmp_path / "haproxy.cfg").write_text("# Per-host proxy for app\n")
    commands = Commands()
    result = ps.ProxySetup(nginx(tmp_path), commands).apply()
    assert result.changed and len(result.written) == 3
    assert not (tmp_path / "default").exists()
    # nginx killed or crashed comes back by itself (a cutover's watch waits for it).
    assert "Restart=on-failure" in (tmp_path / "nginx.service.d" / "beamops.conf").read_text()
    assert commands.ran("systemctl", "daemon-reload")
    assert commands.ran("nginx", "-t", "-q")
    assert commands.ran("systemctl", "reload-or-restart", "nginx.service")
    assert commands.ran("systemctl", "disable", "--now", "haproxy.service")
    again = Commands()
    assert ps.ProxySetup(nginx(tmp_path), again).apply() == ps.Result()
    assert not again.ran("nginx", "-t", "-q")


def test_the_upstream_is_slot_cutover_s_once_it_exists(tmp_path: Path) -> None:
    (tmp_path / "app.upstream").write_text("# live slot: green; fallback: blue\n")
    ps.ProxySetup(nginx(tmp_path), Commands()).apply()
    assert (tmp_path / "app.upstream").read_text() == "# live slot: green; fallback: blue\n"


def test_a_site_nginx_rejects_is_put_back(tmp_path: Path) -> None:
    (tmp_path / "app.conf").write_text("old site\n")
    (tmp_path / "app.upstream").write_text("upstream\n")
    commands = Commands({("nginx", "-t"): (1, "")})
    with pytest.raises(ps.ProxySetupError, match="nginx rejected"):
        ps.ProxySetup(nginx(tmp_path), commands).apply()
    assert (tmp_path / "app.conf").read_text() == "old site\n"
    assert not commands.ran("systemctl", "reload-or-restart", "nginx.service")


HOST_CFG = (
    "global\n    chroot /var/lib/haproxy\n"
    "    stats socket /run/haproxy/admin.sock mode 660 level admin\n"
)


def test_haproxy_checks_the_whole_set_before_it_adds_the_app_beside_the_host_s_config(
    tmp_path: Path, runtime_api: type[RuntimeApi]
) -> None:
    runtime_api.loaded = [str(tmp_path / "app-live.map")]
    (tmp_path / "haproxy.cfg").write_text(HOST_CFG)
    (tmp_path / "beamops.d").mkdir()
    (tmp_path / "beamops.d" / "other.cfg").write_text("frontend other_public\n")
    (tmp_path / "app.conf").write_text("this app's nginx site\n")
    refused = Commands({("haproxy", "-c"): (1, "")})
    request = nginx(tmp_path, proxy="haproxy")
    with pytest.raises(ps.ProxySetupError, match="haproxy -c rejected this app's configuration"):
        ps.ProxySetup(request, refused).apply()
    # The check saw the host's file, the other app's and this one's, in that order.
    check = next(argv for argv in refused.seen if argv[:2] == ["haproxy", "-c"])
    assert check.count("-f") == 3
    # The map is in place before the check: haproxy -c loads it.
    assert (tmp_path / "app-live.map").read_text() == "live app_blue\n"
    assert not (tmp_path / "beamops.d" / "app.cfg").exists()
    assert (tmp_path / "app.conf").exists(), "the port was given up for a config never applied"
    accepted = Commands()
    result = ps.ProxySetup(request, accepted).apply()
    assert (tmp_path / "haproxy.cfg").read_text() == HOST_CFG, "the host's config is left alone"
    assert (tmp_path / "beamops.d" / "app.cfg").read_text() == "frontend app_public\n"
    assert not (tmp_path / "beamops.d" / ps.RUNTIME_API_FILE).exists()
    dropin = (tmp_path / "haproxy.service.d" / "beamops.conf").read_text()
    assert f'CONFIG={ps.HAPROXY_CFG} -f {ps.HAPROXY_DIR}"' in dropin
    assert accepted.ran("systemctl", "daemon-reload")
    assert accepted.ran("systemctl", "restart", "haproxy.service")
    assert not (tmp_path / "app.conf").exists()
    assert result.changed
    # Next time only the app's file changes: a reload, no restart.
    request.haproxy_cfg = "frontend app_public\n    maxconn 10\n"
    later = Commands()
    ps.ProxySetup(request, later).apply()
    assert later.ran("systemctl", "reload-or-restart", "haproxy.service")
    assert not later.ran("systemctl", "restart", "haproxy.service")


def test_a_haproxy_cfg_an_earlier_version_wrote_goes_back_to_debian_s(
    tmp_path: Path, runtime_api: type[RuntimeApi]
) -> None:
    runtime_api.loaded = [str(tmp_path / "app-live.map")]
    (tmp_path / "haproxy.cfg").write_text("# Per-host proxy for app\nfrontend app_public\n")
    ps.ProxySetup(nginx(tmp_path, proxy="haproxy"), Commands()).apply()
    assert (tmp_path / "haproxy.cfg").read_text() == ps.DEBIAN_HAPROXY_CFG


def test_a_host_config_without_an_admin_socket_gets_one_in_its_own_file(
    tmp_path: Path, runtime_api: type[RuntimeApi]
) -> None:
    runtime_api.loaded = [str(tmp_path / "app-live.map")]
    (tmp_path / "haproxy.cfg").write_text("global\n    daemon\n")
    ps.ProxySetup(nginx(tmp_path, proxy="haproxy"), Commands()).apply()
    socket = (tmp_path / "beamops.d" / ps.RUNTIME_API_FILE).read_text()
    assert "stats socket /run/haproxy/admin.sock mode 600 level admin" in socket
    assert (tmp_path / "haproxy.cfg").read_text() == "global\n    daemon\n"


def test_moving_to_nginx_removes_only_this_app_s_haproxy_frontend(tmp_path: Path) -> None:
    (tmp_path / "haproxy.cfg").write_text(HOST_CFG)
    (tmp_path / "beamops.d").mkdir()
    (tmp_path / "beamops.d" / "app.cfg").write_text("frontend app_public\n")
    (tmp_path / "beamops.d" / "other.cfg").write_text("frontend other_public\n")
    commands = Commands()
    result = ps.ProxySetup(nginx(tmp_path), commands).apply()
    assert sorted(p.name for p in (tmp_path / "beamops.d").iterdir()) == ["other.cfg"]
    assert commands.ran("systemctl", "reload", "haproxy.service")
    assert not commands.ran("systemctl", "disable", "--now", "haproxy.service")
    assert "removed this app's HAProxy frontend" in result.actions


def test_check_mode_says_what_would_be_written_and_writes_nothing(tmp_path: Path) -> None:
    commands = Commands()
    result = ps.ProxySetup(nginx(tmp_path), commands).apply(check_mode=True)
    assert result.changed and len(result.written) == 3
    assert not (tmp_path / "app.conf").exists() and commands.seen == []


def test_a_stopped_proxy_is_started_and_enabled(tmp_path: Path) -> None:
    ps.ProxySetup(nginx(tmp_path), Commands()).apply()
    stopped = Commands({("systemctl", "is-active"): (3, ""), ("systemctl", "is-enabled"): (1, "")})
    result = ps.ProxySetup(nginx(tmp_path), stopped).apply()
    assert result.changed and "started nginx.service" in result.actions
    assert stopped.ran("systemctl", "enable", "nginx.service")


def test_the_app_file_passes_the_real_haproxy_check_beside_debian_s_config(
    tmp_path: Path, runtime_api: type[RuntimeApi]
) -> None:
    """haproxy -c loads the map the frontend names: it must exist before the check."""
    runtime_api.loaded = [str(tmp_path / "app-live.map")]
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed on this machine")
    live_map = tmp_path / "app-live.map"
    cfg = (
        "frontend app\n    mode http\n    bind 127.0.0.1:18081\n    timeout client 1s\n"
        "    timeout http-request 1s\n"
        f"    use_backend %[str(live),map({live_map},app_blue)]\n"
        "backend app_blue\n    mode http\n    timeout connect 1s\n    timeout server 1s\n"
        "    server blue 127.0.0.1:1\n"
    )
    (tmp_path / "haproxy.cfg").write_text(
        ps.DEBIAN_HAPROXY_CFG.replace("\tchroot /var/lib/haproxy\n", "")
        .replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock"))
        .replace("\tuser haproxy\n\tgroup haproxy\n", "")
    )
    request = nginx(
        tmp_path, proxy="haproxy", haproxy_cfg=cfg, haproxy_socket=str(tmp_path / "admin.sock")
    )

    def real_haproxy(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        if argv[0] == "haproxy":
            return co.run_command(argv, timeout)
        return Commands()(argv, timeout)

    result = ps.ProxySetup(request, real_haproxy).apply()
    assert str(tmp_path / "beamops.d" / "app.cfg") in result.written
    assert live_map.read_text() == "live app_blue\n"


def test_a_reload_haproxy_did_not_load_is_an_error(
    tmp_path: Path, runtime_api: type[RuntimeApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's reload returns at once; a config that fails to load (port in use) leaves the
    old one running, which the runtime API shows: the map is unknown."""
    runtime_api.loaded = ["/etc/haproxy/other.map"]
    setup = ps.ProxySetup(nginx(tmp_path, proxy="haproxy"), Commands())
    monkeypatch.setattr(
        setup, "_wait_for_haproxy_map", lambda: setup.__class__._wait_for_haproxy_map(setup, 0.3)
    )
    with pytest.raises(ps.ProxySetupError, match="HAProxy did not load the new configuration"):
        setup.apply()


def test_debian_s_default_nginx_site_goes_for_haproxy_too(
    tmp_path: Path, runtime_api: type[RuntimeApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ps, "NGINX_DEFAULT_SITE", str(tmp_path / "default"))
    (tmp_path / "default").write_text("server {\n  listen 80 default_server;\n}\n")
    runtime_api.loaded = [str(tmp_path / "app-live.map")]
    commands = Commands()
    # nginx's reload returns before its master closes port 80: HAProxy waits for that.
    answers = [{22, 80}, {22, 80}, {22}]
    polled: List[int] = []

    def listening() -> set[int]:
        polled.append(len(commands.seen))
        return answers.pop(0) if answers else {22}

    setup = ps.ProxySetup(nginx(tmp_path, proxy="haproxy"), commands, listening)
    result = setup.apply()
    assert not (tmp_path / "default").exists()
    assert "removed Debian's default nginx site" in result.actions
    assert commands.ran("systemctl", "reload", "nginx.service")
    assert len(polled) == 3 and not answers
    restart = commands.seen.index(["systemctl", "restart", "haproxy.service"])
    assert polled[-1] <= restart, "HAProxy started before nginx gave up port 80"


def test_nginx_still_on_the_port_after_its_reload_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    clock = iter(range(0, 1000, 3))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    (tmp_path / "app.conf").write_text("server {\n    listen 0.0.0.0:8080;\n}\n")
    commands = Commands()
    setup = ps.ProxySetup(nginx(tmp_path, proxy="haproxy"), commands, lambda: {8080})
    with pytest.raises(ps.ProxySetupError, match=r"nginx still listens on port\(s\) \[8080\]"):
        setup.apply()


def test_listen_ports_come_from_nginx_sites_and_the_kernel_s_tables(tmp_path: Path) -> None:
    site = "server {\n  listen 80;\n  listen [::]:81 ipv6only=on;\n  # listen 82;\n}\n"
    assert ps.nginx_listen_ports(site) == {80, 81}
    # An address alone listens on nginx's default port, not on a port named like its first octet.
    bare = "listen 127.0.0.1;\nlisten 10.0.0.1:8443 ssl;\nlisten [::];\nlisten unix:/run/a.sock;\n"
    assert ps.nginx_listen_ports(bare) == {80, 8443}
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 00000000:0050 00000000:0000 0A 00000000:00000000\n"
        "   1: 0100007F:0FA1 0100007F:C350 01 00000000:00000000\n"
    )
    assert ps.listening_ports([str(table), str(tmp_path / "missing")]) == {80}


def test_a_proxy_not_installed_is_named_with_the_variable_that_installs_it(
    tmp_path: Path,
) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    message = ps.proxy_missing("nginx", [str(sbin)])
    assert message is not None
    assert message.startswith("nginx (beamops_proxy) is not installed on this host")
    assert "beamops_install_packages" in message and str(sbin) in message
    (sbin / "nginx").write_text("#!/bin/sh\n")
    assert ps.proxy_missing("nginx", [str(sbin)]) is not None  # not executable: not a command
    (sbin / "nginx").chmod(0o755)
    assert ps.proxy_missing("nginx", [str(sbin)]) is None
