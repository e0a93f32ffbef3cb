"""The on-host cutover: real HTTP servers stand in for the slots and the proxy, a recording
command runner for systemctl/journalctl, a recording proxy for the switch. The real thing
(systemd, nginx, HAProxy, the Elixir release) is proven by the molecule deploy scenario."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from ansible_collections.beamops.release.plugins.module_utils import (
    cutover as co,
)
from ansible_collections.beamops.release.plugins.module_utils import (
    release_state as rs,
)
from ansible_collections.beamops.release.plugins.modules import slot_cutover

from tests.unit.conftest import ScriptedServer, start_server, stop_server
from tests.unit.plugins.modules.test_entry_points import run

READY = (200, '{"status": "ready", "slot": "blue"}')


class Commands:
    """Records every command; answers from rules (first argv words -> rc, stdout)."""

    def __init__(self, rules: Optional[Dict[Tuple[str, ...], Tuple[int, str]]] = None) -> None:
        self.rules = rules or {}
        self.seen: List[List[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.seen.append(list(argv))
        for prefix, (rc, out) in self.rules.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return subprocess.CompletedProcess(list(argv), rc, out, "")
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    def ran(self, *prefix: str) -> bool:
        return any(tuple(c[: len(prefix)]) == prefix for c in self.seen)


class RecordingProxy(co.Proxy):
    name = "fakeproxy"

    def __init__(self, settings: co.Settings, traffic: Optional[List[co.Traffic]] = None) -> None:
        super().__init__(settings, co.run_command)
        self.routes: List[Tuple[str, Optional[str], float]] = []
        self.traffic = traffic or []
        self.fail_route = False

    def live_slot(self) -> Optional[str]:
        return self.routes[-1][0] if self.routes else None

    def route(self, primary: str, fallback: Optional[str]) -> None:
        if self.fail_route:
            raise co.CutoverError("proxy said no")
        self.routes.append((primary, fallback, time.monotonic()))

    def start_observing(self, slot: str) -> None:
        self.observing = slot

    def sample(self) -> co.Traffic:
        return self.traffic.pop(0) if self.traffic else co.Traffic(responses=5)


@pytest.fixture
def slots() -> Iterator[Dict[str, ScriptedServer]]:
    servers = {name: start_server() for name in ("blue", "green", "proxy")}
    yield {name: pair[0] for name, pair in servers.items()}
    for scripted, httpd in servers.values():
        stop_server(scripted, httpd)


def make_settings(tmp_path: Path, slots: Dict[str, ScriptedServer]) -> co.Settings:
    base = tmp_path / "opt"
    for version in ("0.1.0", "0.2.0"):
        (base / "releases" / version).mkdir(parents=True)
        rs.execute(
            rs.Request(
                action="register",
                path=str(base / "release-state.json"),
                version=version,
                sha256=version.replace(".", "") * 16 + "0" * 16,
            )
        )
    (tmp_path / "etc").mkdir()
    return co.Settings(
        app="demo",
        base_dir=str(base),
        state_path=str(base / "release-state.json"),
        config_dir=str(tmp_path / "etc"),
        slot_ports={"blue": slots["blue"].port, "green": slots["green"].port},
        proxy="nginx",
        proxy_port=slots["proxy"].port,
        nginx_upstream_file=str(tmp_path / "up"),
        nginx_access_log=str(tmp_path / "log"),
        watch_seconds=0.3,
        watch_interval=0.05,
        watch_failure_threshold=2,
        probe_timeout=1.0,
        drain_seconds=2.0,
        unit_dir=str(tmp_path / "systemd"),
    )


def cutover(
    settings: co.Settings, commands: Commands, proxy: RecordingProxy, **request: object
) -> co.Cutover:
    fields: Dict[str, object] = {
        "slot": "blue",
        "version": "0.2.0",
        "from_slot": "green",
        "from_version": "0.1.0",
        "host": "bo1",
    }
    fields.update(request)
    return co.Cutover(settings, co.Request(**fields), run=commands, proxy=proxy)  # type: ignore[arg-type]


def state(settings: co.Settings) -> rs.State:
    return rs.read_state(settings.state_path)[0]


def test_a_good_release_is_started_switched_watched_recorded_and_the_old_slot_retired(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    slots["blue"].script("/health/ready", [READY])
    commands = Commands({("systemctl", "is-active"): (3, "inactive\n")})
    proxy = RecordingProxy(settings)
    out = cutover(settings, commands, proxy).execute()
    assert (out.result, out.stage, out.started) == ("ok", "done", "started"), out.msg
    assert os.readlink(Path(settings.base_dir) / "slots" / "blue").endswith("releases/0.2.0")
    assert commands.ran("systemctl", "enable", "--quiet", "demo@blue.service")
    assert commands.ran("systemctl", "start", "demo@blue.service")
    assert [(p, f) for p, f, _unused in proxy.routes] == [("blue", "green")]
    after = state(settings)
    active = after["active"]
    assert active is not None and (active["slot"], active["version"]) == ("blue", "0.2.0")
    assert after["releases"]["0.2.0"]["status"] == "good"
    # Retired in the background: disabled now, stopped by a timer after the drain.
    assert commands.ran("systemctl", "disable", "--quiet", "demo@green.service")
    timer = next(c for c in commands.seen if c[0] == "systemd-run")
    assert "--on-active=2s" in timer and timer[-3:] == ["systemctl", "stop", "demo@green.service"]
    assert not commands.ran("systemctl", "stop", "demo@green.service")
    steps = {"drain_wait", "start", "admission", "switch", "watch", "record", "retire"}
    assert set(out.timings) == steps
    assert out.timings["watch"] >= settings.watch_seconds
    # The slot's journal lines name the release it runs (a drop-in read at its start).
    dropin = Path(settings.unit_dir) / "demo@blue.service.d" / co.JOURNAL_DROPIN
    assert "LogExtraFields=BEAMOPS_VERSION=0.2.0" in dropin.read_text()
    reload_at = commands.seen.index(["systemctl", "daemon-reload"])
    assert reload_at < commands.seen.index(["systemctl", "start", "demo@blue.service"])
    # The retired slot drains for a while yet: no longer a scrape target.
    assert out.serving == {"live": {"slot": "blue", "version": "0.2.0"}, "idle": None}


def test_a_slot_that_fails_its_gate_is_stopped_with_the_release_s_own_words(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    journal = "\n".join(
        json.dumps(entry)
        for entry in (
            {"_PID": "1", "MESSAGE": "Starting demo@blue.service"},
            {"_PID": "77", "MESSAGE": "FATAL: SECRET_KEY_BASE is missing"},
            {"_PID": "1", "MESSAGE": "demo@blue.service: Main process exited"},
            {"_PID": "78", "MESSAGE": "readiness gate: http://x not healthy (process 77 exited)"},
        )
    )
    commands = Commands(
        {
            ("systemctl", "is-active"): (3, ""),
            ("systemctl", "start"): (1, ""),
            ("journalctl",): (0, journal),
        }
    )
    proxy = RecordingProxy(settings)
    out = cutover(settings, commands, proxy).execute()
    assert (out.result, out.stage) == ("failed", "start")
    assert out.release_log == ["FATAL: SECRET_KEY_BASE is missing"]
    assert "not healthy (process 77 exited)" in out.msg
    assert "the release's last lines: FATAL: SECRET_KEY_BASE is missing" in out.msg
    assert "Traffic never left slot green (0.1.0)" in out.msg
    assert proxy.routes == []
    assert commands.ran("systemctl", "stop", "demo@blue.service")
    assert state(settings)["releases"]["0.2.0"]["status"] == "bad"
    assert state(settings)["active"] is None


@pytest.mark.parametrize(
    ("ready", "traffic", "problem"),
    [
        ((503, '{"status": "failing"}'), [], "last answer 503"),
        (READY, [co.Traffic(10, 9)] * 10, "9 of 10 requests through the proxy answered 5xx"),
        (READY, [co.Traffic(down="check took it out")] * 10, "check took it out"),
    ],
    ids=["readiness", "http_500", "proxy-check"],
)
def test_a_failure_after_the_switch_switches_back_within_the_threshold(
    tmp_path: Path,
    slots: Dict[str, ScriptedServer],
    ready: Tuple[int, str],
    traffic: List[co.Traffic],
    problem: str,
) -> None:
    settings = make_settings(tmp_path, slots)
    slots["blue"].script("/health/ready", [READY, READY, ready])
    proxy = RecordingProxy(settings, list(traffic))
    commands = Commands({("systemctl", "is-active"): (3, "")})
    out = cutover(settings, commands, proxy).execute()
    assert (out.result, out.stage, out.switched_back) == ("failed", "watch", True), out.msg
    assert out.serving["live"] is not None and out.serving["live"]["slot"] == "green"
    assert out.serving["idle"] is None
    assert [(p, f) for p, f, _unused in proxy.routes] == [("blue", "green"), ("green", None)]
    assert problem in out.msg and "traffic switched back to slot green (0.1.0)" in out.msg
    assert out.switch_back_ms is not None and out.switch_back_ms < 100
    threshold = settings.watch_failure_threshold * settings.watch_interval
    assert out.detect_seconds is not None and out.detect_seconds <= threshold + 0.2
    assert commands.ran("systemctl", "stop", "demo@blue.service")
    assert state(settings)["releases"]["0.2.0"]["status"] == "bad"


def test_a_warm_slot_already_running_the_release_is_only_probed(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    (Path(settings.base_dir) / "slots").mkdir()
    os.symlink(
        Path(settings.base_dir) / "releases" / "0.2.0", Path(settings.base_dir) / "slots" / "blue"
    )
    slots["blue"].script("/health/ready", [READY])
    commands = Commands()
    out = cutover(settings, commands, RecordingProxy(settings), event="rollback").execute()
    assert (out.result, out.started) == ("ok", "already running"), out.msg
    assert not commands.ran("systemctl", "start") and not commands.ran("systemctl", "restart")
    assert [h["event"] for h in state(settings)["history"]][-2:] == ["rollback", "mark"]


def test_a_changed_configuration_restarts_a_running_slot(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    slots["blue"].script("/health/ready", [READY])
    commands = Commands()
    out = cutover(settings, commands, RecordingProxy(settings), restart=True).execute()
    assert out.started == "restarted" and commands.ran("systemctl", "restart", "demo@blue.service")


def test_check_mode_runs_nothing(tmp_path: Path, slots: Dict[str, ScriptedServer]) -> None:
    settings = make_settings(tmp_path, slots)
    commands, proxy = Commands(), RecordingProxy(settings)
    out = cutover(settings, commands, proxy, version="9.9.9").execute(check_mode=True)
    assert out.changed and "would be started" in out.msg
    assert commands.seen == [] and proxy.routes == []
    assert not (Path(settings.base_dir) / "slots").exists()


def test_a_release_that_is_not_installed_is_refused(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    with pytest.raises(co.CutoverError, match=r"release 9\.9\.9 is not installed"):
        cutover(settings, Commands(), RecordingProxy(settings), version="9.9.9").execute()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"slot": "red"}, "slot must be blue or green"),
        ({"from_slot": "blue"}, "both blue"),
        ({"event": "oops"}, "event must be one of deploy, rollback"),
    ],
)
def test_bad_requests_are_named(
    tmp_path: Path, slots: Dict[str, ScriptedServer], fields: Dict[str, str], message: str
) -> None:
    settings = make_settings(tmp_path, slots)
    with pytest.raises(co.CutoverError, match=message):
        cutover(settings, Commands(), RecordingProxy(settings), **fields).execute()


def test_settings_name_what_is_wrong_and_round_trip_through_the_file(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    assert co.save_settings(settings) and not co.save_settings(settings)
    assert co.load_settings(settings.settings_path()) == settings
    raw = json.loads(Path(settings.settings_path()).read_text())
    raw.update(proxy="caddy", watch_interval=0, watch_max_5xx_ratio=2)
    with pytest.raises(co.CutoverError) as info:
        co.settings_from_dict(raw)
    for part in ("proxy must be one of nginx, haproxy", "watch_interval must be more than 0",
                 "watch_max_5xx_ratio must be in (0, 1]"):  # fmt: skip
        assert part in str(info.value)
    with pytest.raises(co.CutoverError, match="unknown cutover settings: colour"):
        co.settings_from_dict({**raw, "colour": "red"})


def test_nginx_upstream_names_the_primary_then_the_backup(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    proxy = co.NginxProxy(make_settings(tmp_path, slots), Commands())
    text = proxy.render("blue", "green")
    blue, green = slots["blue"].port, slots["green"].port
    assert text.index(f":{blue} max_fails=0;") < text.index(f":{green} max_fails=0 backup;")
    assert "backup" not in proxy.render("green", None)


def test_nginx_route_puts_the_old_file_back_when_nginx_rejects_it(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    Path(settings.nginx_upstream_file).write_text("old\n")
    commands = Commands({("nginx", "-t"): (1, "")})
    with pytest.raises(co.CutoverError, match="nginx rejected"):
        co.NginxProxy(settings, commands).route("blue", "green")
    assert Path(settings.nginx_upstream_file).read_text() == "old\n"
    ok = Commands()
    co.NginxProxy(settings, ok).route("blue", "green")
    assert ok.ran("systemctl", "reload", "nginx.service")
    assert co.NginxProxy(settings, ok).live_slot() == "blue"


def test_nginx_access_log_counts_only_the_new_slot_s_answers(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    log = Path(settings.nginx_access_log)
    log.write_text('1.0 200 "127.0.0.1:1" "200"\n')
    proxy = co.NginxProxy(settings, Commands())
    proxy.start_observing("blue")
    blue = f"127.0.0.1:{slots['blue'].port}"
    green = f"127.0.0.1:{slots['green'].port}"
    with log.open("a") as handle:
        handle.write(f'2.0 500 "{blue}" "500"\n')
        handle.write(f'2.1 200 "{blue}, {green}" "502, 200"\n')
        handle.write(f'2.2 200 "{blue}" "200"\n')
        handle.write(f'2.3 200 "{blue}"')  # still being written
    assert proxy.sample() == co.Traffic(responses=3, errors=2)
    with log.open("a") as handle:
        handle.write(' "200"\n')
    assert proxy.sample() == co.Traffic(responses=1, errors=0)
    log.unlink()
    log.write_text(f'3.0 503 "{blue}" "503"\n')  # rotated: read from the start
    assert proxy.sample() == co.Traffic(responses=1, errors=1)


def test_traffic_problem_needs_a_share_of_5xx() -> None:
    assert co.Traffic(100, 10).problem(0.2) is None
    assert co.Traffic(100, 20).problem(0.2) == "20 of 100 requests through the proxy answered 5xx"
    assert co.Traffic(0, 0).problem(0.2) is None
    assert co.Traffic(down="gone").problem(0.2) == "gone"


class FakeClient:
    def __init__(self, answers: Dict[str, str]) -> None:
        self.answers = answers
        self.sent: List[str] = []

    def send(self, command: str) -> str:
        self.sent.append(command)
        return next((a for prefix, a in self.answers.items() if command.startswith(prefix)), "")


def test_haproxy_route_is_one_set_map_then_the_file(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    settings.proxy, settings.haproxy_map_file = "haproxy", str(tmp_path / "live.map")
    client = FakeClient({})
    proxy = co.HaproxyProxy(settings, Commands(), client)  # type: ignore[arg-type]
    proxy.route("green", "blue")
    assert client.sent == [f"set map {tmp_path}/live.map live demo_green"]
    assert Path(settings.haproxy_map_file).read_text() == "live demo_green\n"
    assert proxy.live_slot() == "green"
    refused = co.HaproxyProxy(settings, Commands(), FakeClient({"set map": "Unknown map"}))  # type: ignore[arg-type]
    with pytest.raises(co.CutoverError, match=r"HAProxy refused .* Unknown map"):
        refused.route("blue", None)


def test_haproxy_sample_reads_the_server_s_counters_and_check(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    settings.proxy, settings.haproxy_map_file = "haproxy", str(tmp_path / "live.map")
    header = "# pxname,svname,status,hrsp_2xx,hrsp_5xx\n"
    client = FakeClient({"show stat": header + "demo_blue,blue,UP,10,0\n"})
    proxy = co.HaproxyProxy(settings, Commands(), client)  # type: ignore[arg-type]
    proxy.start_observing("blue")
    client.answers["show stat"] = header + "demo_blue,blue,UP,12,8\n"
    assert proxy.sample() == co.Traffic(responses=10, errors=8)
    client.answers["show stat"] = header + "demo_blue,blue,DOWN,12,8\n"
    assert "health check took slot blue out (DOWN)" in proxy.sample().down


def test_haproxy_admits_a_slot_only_once_its_own_check_calls_it_up(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    settings.proxy, settings.haproxy_map_file = "haproxy", str(tmp_path / "live.map")
    header = "# pxname,svname,status,hrsp_2xx,hrsp_5xx\n"
    statuses = iter(["DOWN", "DOWN", "UP"])
    client = FakeClient({})
    client.send = lambda command: header + f"demo_green,green,{next(statuses)},0,0\n"  # type: ignore[method-assign]
    proxy = co.HaproxyProxy(settings, Commands(), client)  # type: ignore[arg-type]
    now = [0.0]
    naps: List[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds

    assert proxy.await_admission("green", lambda: now[0], sleep) is None
    assert naps == [0.1, 0.1]
    client.send = lambda command: header + "demo_green,green,DOWN,0,0\n"  # type: ignore[method-assign]
    refused = proxy.await_admission("green", lambda: now[0], sleep)
    assert refused is not None
    assert "still called slot green DOWN 10s after it answered ready" in refused


def test_a_drain_in_progress_is_waited_for(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    answers = iter(["active\ninactive\n", "inactive\nactive\n", "inactive\ninactive\n"])

    def run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), 0, next(answers), "")

    assert co.wait_for_retirement(settings, "green", run, sleep=lambda _unused: None)
    assert co.wait_for_retirement(settings, "green", Commands()) is False
    forever = Commands({("systemctl", "is-active"): (0, "active\n")})
    clock = iter(range(0, 1000, 10))
    with pytest.raises(co.CutoverError, match="still draining"):
        co.wait_for_retirement(settings, "green", forever, sleep=lambda _unused: None,
                               clock=lambda: float(next(clock)))  # fmt: skip


def test_the_slot_the_proxy_routes_to_is_never_restarted(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    """A killed run left the proxy on blue and the state on green: blue is not idle."""
    settings = make_settings(tmp_path, slots)
    commands = Commands()
    proxy = RecordingProxy(settings)
    proxy.routes.append(("blue", None, 0.0))
    with pytest.raises(co.CutoverError, match="refusing to relink or restart the slot that serves"):
        cutover(settings, commands, proxy).execute()
    assert commands.seen == [] and len(proxy.routes) == 1
    assert not (Path(settings.base_dir) / "slots" / "blue").exists()


def test_a_switch_the_proxy_refuses_moves_nothing_and_stops_the_new_slot(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    slots["blue"].script("/health/ready", [READY])
    commands = Commands({("systemctl", "is-active"): (3, "")})
    proxy = RecordingProxy(settings)
    proxy.fail_route = True
    out = cutover(settings, commands, proxy).execute()
    assert (out.result, out.stage, out.switched_back) == ("failed", "switch", False)
    assert "the proxy refused the switch: proxy said no" in out.msg
    assert "Traffic never left slot green (0.1.0)" in out.msg
    assert proxy.routes == [] and commands.ran("systemctl", "stop", "demo@blue.service")
    assert state(settings)["releases"]["0.2.0"]["status"] == "bad"


def test_nginx_puts_the_upstream_back_when_its_reload_fails(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    upstream = Path(settings.nginx_upstream_file)
    upstream.write_text("# live slot: green; fallback: none\n")
    commands = Commands({("systemctl", "reload"): (1, "")})
    with pytest.raises(co.CutoverError, match="nginx did not reload"):
        co.NginxProxy(settings, commands).route("blue", "green")
    assert upstream.read_text() == "# live slot: green; fallback: none\n"


class RestartingProxy(RecordingProxy):
    """A proxy whose main PID follows a script (one value per look; the last one stays)."""

    service = "fakeproxy.service"

    def __init__(self, settings: co.Settings, pids: List[int]) -> None:
        super().__init__(settings)
        self.pids = pids
        self.offline: List[str] = []

    def main_pid(self) -> Optional[int]:
        return self.pids.pop(0) if len(self.pids) > 1 else self.pids[0]

    def route_offline(self, primary: str) -> None:
        self.offline.append(primary)


def test_a_proxy_restarted_during_the_watch_is_waited_for_and_the_new_slot_stays(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    """Killed, then restarted by systemd (PID 100, then none, then 200): the watch starts
    over and passes; nothing switches back, the release is recorded with a warning."""
    settings = make_settings(tmp_path, slots)
    slots["blue"].script("/health/ready", [READY])
    proxy = RestartingProxy(settings, [100, 100, 0, 0, 200])
    commands = Commands({("systemctl", "is-active"): (3, "")})
    out = cutover(settings, commands, proxy).execute()
    assert (out.result, out.stage, out.switched_back) == ("ok", "done", False), out.msg
    assert [(p, f) for p, f, _unused in proxy.routes] == [("blue", "green")]
    assert proxy.offline == []
    assert any(
        "fakeproxy stopped during the watch (main PID 100)" in w and "as PID 200" in w
        for w in out.warnings
    ), out.warnings
    assert not commands.ran("systemctl", "start", "fakeproxy.service")  # systemd did it
    active = state(settings)["active"]
    assert active is not None and (active["slot"], active["version"]) == ("blue", "0.2.0")


def test_a_proxy_that_never_comes_back_leaves_its_files_on_the_old_slot(
    tmp_path: Path, slots: Dict[str, ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing runs to switch back through: the proxy's files name the old slot again (as
    the state does), the cutover tried `systemctl start` once, the new slot is stopped."""
    monkeypatch.setattr(co, "PROXY_RETURN_SECONDS", 0.6)
    monkeypatch.setattr(co, "PROXY_START_AFTER_SECONDS", 0.2)
    settings = make_settings(tmp_path, slots)
    slots["blue"].script("/health/ready", [READY])
    proxy = RestartingProxy(settings, [100, 100, 0])
    commands = Commands({("systemctl", "is-active"): (3, "failed\n")})
    out = cutover(settings, commands, proxy).execute()
    assert (out.result, out.stage, out.switched_back) == ("failed", "watch", False), out.msg
    assert "fakeproxy stopped during the watch (main PID 100) and was not back" in out.msg
    assert "fakeproxy.service is failed" in out.msg
    assert "its configuration routes to slot green (0.1.0) again" in out.msg
    assert proxy.offline == ["green"]
    assert [(p, f) for p, f, _unused in proxy.routes] == [("blue", "green")]  # no live switch back
    assert commands.ran("systemctl", "start", "fakeproxy.service")
    assert commands.ran("systemctl", "stop", "demo@blue.service")
    assert state(settings)["releases"]["0.2.0"]["status"] == "bad"


def test_nginx_route_offline_writes_and_tests_the_file_without_a_reload(tmp_path: Path) -> None:
    settings = co.Settings(
        app="demo",
        base_dir=str(tmp_path),
        state_path=str(tmp_path / "state.json"),
        config_dir=str(tmp_path),
        slot_ports={"blue": 4001, "green": 4002},
        proxy="nginx",
        proxy_port=80,
        nginx_upstream_file=str(tmp_path / "up"),
        nginx_access_log=str(tmp_path / "log"),
    )
    commands = Commands({("systemctl", "show"): (0, "4242\n")})
    nginx = co.NginxProxy(settings, commands)
    assert nginx.main_pid() == 4242
    nginx.route_offline("green")
    assert "server 127.0.0.1:4002 max_fails=0;" in (tmp_path / "up").read_text()
    assert commands.ran("nginx", "-t", "-q")
    assert not commands.ran("systemctl", "reload")


def test_each_cutover_leaves_its_metrics_and_its_event_line(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    """A success, then a gate that refuses: both counted, both logged, the textfile naming the
    release that serves; a directory that cannot be written is a warning, not a failure."""
    settings = dataclasses.replace(
        make_settings(tmp_path, slots),
        metrics_dir=str(tmp_path / "textfile"),
        events_log=str(tmp_path / "log" / "demo-events.jsonl"),
    )
    slots["blue"].script("/health/ready", [READY])
    proxy = RecordingProxy(settings)
    ok = cutover(settings, Commands({("systemctl", "is-active"): (3, "")}), proxy).execute()
    assert ok.result == "ok" and not ok.warnings
    refused = cutover(
        settings,
        Commands({("systemctl", "is-active"): (3, ""), ("systemctl", "start"): (1, "")}),
        proxy,
        slot="green", version="0.1.0", from_slot="blue", from_version="0.2.0",
    ).execute()  # fmt: skip
    assert refused.result == "failed"
    text = (tmp_path / "textfile" / "beamops_demo.prom").read_text()
    assert 'beamops_deploys_total{app="demo",result="success"} 1' in text
    assert 'beamops_deploys_total{app="demo",result="gate_failed"} 1' in text
    assert 'beamops_release_info{app="demo",version="0.2.0",slot="blue"} 1' in text
    events = (tmp_path / "log" / "demo-events.jsonl").read_text().splitlines()
    assert [json.loads(e)["result"] for e in events] == ["success", "gate_failed"]
    (tmp_path / "not-a-directory").write_text("")
    blocked = dataclasses.replace(settings, metrics_dir=str(tmp_path / "not-a-directory"))
    slots["green"].script("/health/ready", [READY])
    again = cutover(
        blocked, Commands({("systemctl", "is-active"): (3, "")}), RecordingProxy(blocked),
        slot="green", version="0.1.0", from_slot="blue", from_version="0.2.0",
    ).execute()  # fmt: skip
    assert again.result == "ok"
    assert any("deploy metrics and events were not written" in w for w in again.warnings)


def test_a_held_cutover_stops_ready_before_the_switch_and_the_next_call_switches(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    settings = make_settings(tmp_path, slots)
    slots["blue"].script("/health/ready", [READY])
    commands = Commands({("systemctl", "is-active"): (3, "inactive\\n")})
    proxy = RecordingProxy(settings)
    held = cutover(settings, commands, proxy, hold=True).execute()
    assert (held.result, held.stage) == ("ok", "gate"), held.msg
    assert "traffic not moved yet" in held.msg and proxy.routes == []
    assert held.serving["live"] is not None and held.serving["live"]["slot"] == "green"
    assert not os.path.exists(os.path.join(settings.metrics_dir or str(tmp_path), "x"))
    running = Commands({("systemctl", "is-active"): (0, "active\\n")})
    done = cutover(settings, running, proxy).execute()
    assert (done.result, done.stage, done.started) == ("ok", "done", "already running"), done.msg
    assert [p for p, _f, _unused in proxy.routes] == ["blue"]


# --------------------------------------------------------------------------- edges and main()
def test_a_command_that_hangs_or_is_missing_is_an_exit_status_not_an_exception() -> None:
    hung = co.run_command(["sleep", "5"], 0.2)
    assert hung.returncode == 124 and "timed out after 0.2s" in hung.stderr
    missing = co.run_command(["/nonexistent/beamops-tool"], 5)
    assert missing.returncode == 127 and "beamops-tool" in missing.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"slot_ports": {"blue": 4001, "green": 4001}}, "slot_ports must map blue and green"),
        ({"proxy": "traefik"}, "proxy must be one of nginx, haproxy, got 'traefik'"),
        ({"nginx_access_log": ""}, "nginx needs nginx_upstream_file and nginx_access_log"),
        ({"proxy": "haproxy"}, "haproxy needs haproxy_map_file"),
        ({"watch_interval": 0}, "watch_interval must be more than 0, got 0"),
        ({"drain_seconds": -1}, "drain_seconds must be 0 or more, got -1"),
        ({"watch_failure_threshold": 0}, "watch_failure_threshold must be 1 or more, got 0"),
        ({"colour": "blue"}, "unknown cutover settings: colour"),
    ],
    ids=["ports", "proxy", "nginx-files", "haproxy-map", "interval", "drain", "threshold",
         "unknown"],
)  # fmt: skip
def test_bad_settings_are_refused_naming_each_one(
    tmp_path: Path, slots: Dict[str, ScriptedServer], change: Dict[str, object], message: str
) -> None:
    raw = {**dataclasses.asdict(make_settings(tmp_path, slots)), **change}
    with pytest.raises(co.CutoverError, match=re.escape(message)):
        co.settings_from_dict(raw)
    incomplete = {k: v for k, v in raw.items() if k not in ("app", "colour")}
    with pytest.raises(co.CutoverError, match="incomplete cutover settings"):
        co.settings_from_dict(incomplete)


def test_the_module_in_check_mode_says_what_it_would_do_and_writes_nothing(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    """slot_cutover's main() in this process (check mode: no gate installed, no settings saved)."""
    settings = make_settings(tmp_path, slots)
    options = set(slot_cutover.ARGUMENT_SPEC)
    given = {k: v for k, v in dataclasses.asdict(settings).items() if k in options}
    args = {**given, "slot": "green", "version": "0.2.0",
            "from_slot": "blue", "from_version": "0.1.0", "host": "web1"}  # fmt: skip
    preview = run(slot_cutover.main, args, check=True)
    assert not preview.get("failed"), preview.get("msg")
    assert preview["changed"] and preview["slot"] == "green" and preview["from_version"] == "0.1.0"
    assert "would be started, switched to and watched" in preview["msg"]
    assert preview["tools_changed"] == []
    assert not (tmp_path / "etc" / "cutover.json").exists()
