# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blue-green cutover of one host, run on the host itself in one call.

    wait for a drain in progress -> link the slot -> start it through its gate -> switch the
    proxy (the old slot stays as its fallback) -> watch -> record it live and good, prune,
    retire the old slot in the background
    ... or, at the first failure: switch back at once, stop the new slot, mark it bad.

The decisions that must be fast (is the new slot failing? move traffic back) are taken here,
at the speed of the proxy, not one Ansible task per step. Used by the ``slot_cutover`` module
and by the on-host rollback command, which imports this file from the helper directory.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

# The on-host rollback command finds these under the helper directory, installed in the same
# package layout, so one import line serves the module and the command.
from ansible_collections.beamops.release.plugins.module_utils import (
    deploy_metrics,
    haproxy_runtime,
    health_probe,
    redact,
    release_state,
    routing,
)
from ansible_collections.beamops.release.plugins.module_utils.atomic_file import (
    read_text,
    restore,
    write_if_changed,
)

SLOTS: Tuple[str, ...] = ("blue", "green")
PROXIES: Tuple[str, ...] = ("nginx", "haproxy")
EVENTS: Tuple[str, ...] = ("deploy", "rollback")
# Lines of the slot's journal kept for an error: enough for a stack trace's head.
JOURNAL_LINES = 12
# systemd's own messages about the unit, and the gate's, are not the release's words.
GATE_PREFIX = health_probe.GATE_PREFIX
SETTINGS_FILE_NAME = "cutover.json"
JOURNAL_DROPIN = "50-beamops-version.conf"
# How long a watch waits for a proxy that stopped (killed, crashed) to be back: systemd
# restarts it (the drop-ins proxy_setup writes); after a few seconds the cutover starts it.
PROXY_RETURN_SECONDS = 15.0
PROXY_START_AFTER_SECONDS = 3.0
# How long a ready slot may wait for HAProxy's own check (every second) to call it UP.
HAPROXY_ADMISSION_SECONDS = 10.0

Run = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]
Clock = Callable[[], float]
Sleep = Callable[[float], None]
T = TypeVar("T")


class CutoverError(Exception):
    """Something the operator must fix before a cutover can run (bad settings, no release)."""


def run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run argv without a shell; never raises for a non-zero exit (callers read returncode)."""
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(list(argv), 124, "", f"timed out after {exc.timeout}s")
    except OSError as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass
class Settings:
    """What a cutover needs besides which release goes where. Kept on the host as JSON, so
    the rollback command uses exactly what the last deploy used."""

    app: str
    base_dir: str
    state_path: str
    config_dir: str
    slot_ports: Dict[str, int]
    proxy: str
    proxy_port: int
    ready_path: str = "/health/ready"
    json_fields: Dict[str, Any] = dataclasses.field(default_factory=dict)
    slot_field: str = ""
    nginx_upstream_file: str = ""
    nginx_access_log: str = ""
    haproxy_socket: str = "/run/haproxy/admin.sock"
    haproxy_map_file: str = ""
    watch_seconds: float = 10.0
    watch_interval: float = 1.0
    watch_failure_threshold: int = 2
    watch_max_5xx_ratio: float = 0.2
    probe_timeout: float = 2.0
    drain_seconds: float = 5.0
    stop_timeout: float = 30.0
    start_timeout: float = 60.0
    keep_old_warm: bool = False
    releases_keep: int = 5
    helper_dir: str = "/usr/local/lib/beamops"
    # Where each cutover leaves its metrics (node_exporter textfile) and its event line; empty:
    # not at all. See deploy_metrics.
    metrics_dir: str = ""
    events_log: str = ""
    # Where the slot unit's drop-ins go: one names the release in every journal line.
    unit_dir: str = "/etc/systemd/system"

    def problems(self) -> List[str]:
        found: List[str] = []
        if sorted(self.slot_ports) != list(SLOTS) or len(set(self.slot_ports.values())) != 2:
            found.append(f"slot_ports must map blue and green to two ports, got {self.slot_ports}")
        if self.proxy not in PROXIES:
            found.append(f"proxy must be one of {', '.join(PROXIES)}, got {self.proxy!r}")
        if self.proxy == "nginx" and not (self.nginx_upstream_file and self.nginx_access_log):
            found.append("nginx needs nginx_upstream_file and nginx_access_log")
        if self.proxy == "haproxy" and not self.haproxy_map_file:
            found.append("haproxy needs haproxy_map_file")
        for name in ("watch_interval", "probe_timeout", "start_timeout"):
            if getattr(self, name) <= 0:
                found.append(f"{name} must be more than 0, got {getattr(self, name)}")
        for name in ("watch_seconds", "drain_seconds", "stop_timeout"):
            if getattr(self, name) < 0:
                found.append(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.watch_failure_threshold < 1:
            found.append(
                f"watch_failure_threshold must be 1 or more, got {self.watch_failure_threshold}"
            )
        if not 0 < self.watch_max_5xx_ratio <= 1:
            found.append(f"watch_max_5xx_ratio must be in (0, 1], got {self.watch_max_5xx_ratio}")
        return found

    def routing(self) -> routing.Routing:
        """Where this host's proxy says which slot it routes to."""
        return routing.Routing(
            proxy=self.proxy,
            app=self.app,
            nginx_upstream_file=self.nginx_upstream_file,
            haproxy_map_file=self.haproxy_map_file,
            slots_dir=os.path.join(self.base_dir, "slots"),
        )

    def unit(self, slot: str) -> str:
        return f"{self.app}@{slot}.service"

    def retire_unit(self, slot: str) -> str:
        return f"beamops-retire-{self.app}-{slot}"

    def slot_url(self, slot: str) -> str:
        return f"http://127.0.0.1:{self.slot_ports[slot]}{self.ready_path}"

    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}{self.ready_path}"

    def settings_path(self) -> str:
        return os.path.join(self.config_dir, SETTINGS_FILE_NAME)


def settings_from_dict(raw: Dict[str, Any]) -> Settings:
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CutoverError(f"unknown cutover settings: {', '.join(unknown)}")
    try:
        settings = Settings(**raw)
    except TypeError as exc:
        raise CutoverError(f"incomplete cutover settings: {exc}") from exc
    settings.slot_ports = {k: int(v) for k, v in settings.slot_ports.items()}
    problems = settings.problems()
    if problems:
        raise CutoverError("; ".join(problems))
    return settings


def save_settings(settings: Settings) -> bool:
    """Write the settings file atomically (0644: nothing secret in it); True when it changed."""
    text = json.dumps(dataclasses.asdict(settings), indent=2, sort_keys=True) + "\n"
    return write_if_changed(settings.settings_path(), text, 0o644)


def load_settings(path: str) -> Settings:
    try:
        with open(path, encoding="utf-8") as handle:
            return settings_from_dict(json.load(handle))
    except (OSError, ValueError) as exc:
        raise CutoverError(
            f"cannot read the cutover settings {path} ({exc}); a deploy writes them"
        ) from exc


# --------------------------------------------------------------------------- proxies


@dataclasses.dataclass
class Traffic:
    """What the proxy saw of one slot since the last sample."""

    responses: int = 0
    errors: int = 0  # 5xx answers
    down: str = ""  # the proxy's own verdict, when it took the slot out

    def problem(self, max_ratio: float) -> Optional[str]:
        if self.down:
            return self.down
        if self.errors and self.errors >= max_ratio * self.responses:
            return f"{self.errors} of {self.responses} requests through the proxy answered 5xx"
        return None


class Proxy:
    """Routes the app's traffic to a primary slot, with the other slot as fallback."""

    name = "proxy"
    service = ""  # its systemd unit; empty: not watched for restarts

    def __init__(self, settings: Settings, run: Run) -> None:
        self.settings = settings
        self.run = run

    def main_pid(self) -> Optional[int]:
        """The proxy's main PID as systemd sees it (0: not running; None: cannot tell)."""
        if not self.service:
            return None
        shown = self.run(["systemctl", "show", "-p", "MainPID", "--value", self.service], 10)
        try:
            return int(shown.stdout.strip())
        except ValueError:
            return None

    def live_slot(self) -> Optional[str]:
        raise NotImplementedError

    def route(self, primary: str, fallback: Optional[str]) -> None:
        raise NotImplementedError

    def route_offline(self, primary: str) -> None:
        """Point the proxy's files at `primary` for when it starts; it is not running now."""
        raise NotImplementedError

    def await_admission(self, slot: str, clock: Clock, sleep: Sleep) -> Optional[str]:
        """Wait until the proxy itself would send `slot` traffic; the problem, or None.

        A proxy without checks of its own admits a ready slot at once."""
        del slot, clock, sleep
        return None

    def start_observing(self, slot: str) -> None:
        raise NotImplementedError

    def sample(self) -> Traffic:
        raise NotImplementedError


class NginxProxy(Proxy):
    """The upstream file names the primary and a `backup` server; `nginx -t`, then reload.

    nginx retries a request on the backup when the primary refuses, times out or answers
    502/503/504 (idempotent requests only, nginx's rule), so a slot that dies or drains
    after the switch costs no request. The access log in the `beamops` format says which
    slot answered what, which is how real 5xx answers are seen."""

    name = "nginx"
    service = "nginx.service"

    def __init__(self, settings: Settings, run: Run) -> None:
        super().__init__(settings, run)
        self._log_position = 0
        self._log_inode = 0
        self._address = ""

    def render(self, primary: str, fallback: Optional[str]) -> str:
        s = self.settings
        lines = [
            "# Managed by beamops.release (slot_cutover): rewritten on every switch.",
            f"{routing.NGINX_MARK}{primary}; fallback: {fallback or 'none'}",
            f"upstream {s.app}_live {{",
            f"    server 127.0.0.1:{s.slot_ports[primary]} max_fails=0;",
        ]
        if fallback:
            lines.append(f"    server 127.0.0.1:{s.slot_ports[fallback]} max_fails=0 backup;")
        lines += ["    keepalive 32;", "}", ""]
        return "\n".join(lines)

    def live_slot(self) -> Optional[str]:
        return routing.nginx_live_slot(self.settings.nginx_upstream_file)

    def route(self, primary: str, fallback: Optional[str]) -> None:
        before = self._write_checked(primary, fallback)
        if before is None:
            return
        reload = self.run(["systemctl", "reload", "nginx.service"], 30)
        if reload.returncode != 0:
            # nginx serves on with what it had loaded: the file says so again.
            restore(before)
            raise CutoverError(f"nginx did not reload: {reload.stderr.strip()}")

    def route_offline(self, primary: str) -> None:
        self._write_checked(primary, None)

    def _write_checked(
        self, primary: str, fallback: Optional[str]
    ) -> Optional[Dict[str, Optional[str]]]:
        """Write the upstream file and `nginx -t` it (put back when rejected); the earlier
        text, or None when the file already said this."""
        path = self.settings.nginx_upstream_file
        before = {path: read_text(path)}
        if not write_if_changed(path, self.render(primary, fallback), 0o644):
            return None
        rejected = nginx_test_or_restore(self.run, before)
        if rejected:
            raise CutoverError(
                f"nginx rejected the configuration for slot {primary}: {rejected}; "
                "the previous one was put back"
            )
        return before

    def start_observing(self, slot: str) -> None:
        self._address = f"127.0.0.1:{self.settings.slot_ports[slot]}"
        try:
            info = os.stat(self.settings.nginx_access_log)
            self._log_position, self._log_inode = info.st_size, info.st_ino
        except OSError:
            self._log_position, self._log_inode = 0, 0

    def sample(self) -> Traffic:
        traffic = Traffic()
        path = self.settings.nginx_access_log
        try:
            info = os.stat(path)
        except OSError:
            return traffic
        if info.st_ino != self._log_inode or info.st_size < self._log_position:
            self._log_position, self._log_inode = 0, info.st_ino  # rotated or truncated
        with open(path, "rb") as handle:
            handle.seek(self._log_position)
            data = handle.read()
        # A line still being written waits for the next sample.
        complete = data[: data.rfind(b"\n") + 1]
        self._log_position += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            count_upstream_answers(line, self._address, traffic)
        return traffic


def nginx_test_or_restore(run: Run, before: Dict[str, Optional[str]]) -> Optional[str]:
    """`nginx -t` after writing files whose earlier text is `before`: when nginx rejects them,
    put that text back and return nginx's words (None when it accepted them)."""
    test = run(["nginx", "-t", "-q"], 30)
    if test.returncode == 0:
        return None
    restore(before)
    return (test.stderr or test.stdout).strip() or f"nginx -t exited {test.returncode}"


def count_upstream_answers(line: str, address: str, traffic: Traffic) -> None:
    """One `beamops` log line: `<msec> <status> "<upstream_addr>" "<upstream_status>"`.

    nginx lists every upstream a request tried, "a, b" (and "a : b" across groups), with
    their statuses in the same order; only the answers of `address` are counted."""
    parts = line.split('"')
    if len(parts) < 4:
        return
    addresses = [a.strip() for a in parts[1].replace(" : ", ", ").split(",")]
    statuses = [s.strip() for s in parts[3].replace(" : ", ", ").split(",")]
    for upstream, status in zip(addresses, statuses):
        if upstream != address:
            continue
        traffic.responses += 1
        if status.startswith("5") or status == "-":
            traffic.errors += 1


class HaproxyProxy(Proxy):
    """One backend per slot, `<app>_<slot>`, whose other server is a `backup`; the frontend
    picks the backend from a map, so a switch is one `set map` on the runtime API: no
    reload, and HAProxy's own checks send traffic to the backup the moment the primary
    fails them."""

    name = "haproxy"
    service = "haproxy.service"

    def __init__(
        self,
        settings: Settings,
        run: Run,
        client: Optional[haproxy_runtime.RuntimeClient] = None,
    ) -> None:
        super().__init__(settings, run)
        self.client = client or haproxy_runtime.RuntimeClient(settings.haproxy_socket, 5.0)
        self._slot = ""
        self._seen = (0, 0)

    def backend(self, slot: str) -> str:
        return f"{self.settings.app}_{slot}"

    def live_slot(self) -> Optional[str]:
        return routing.haproxy_live_slot(self.settings.haproxy_map_file, self.settings.app)

    def route(self, primary: str, fallback: Optional[str]) -> None:
        # The fallback is the other server of the primary's backend, a `backup` in the
        # configuration: it takes traffic only when the primary is down.
        del fallback
        map_file = self.settings.haproxy_map_file
        try:
            answer = self.client.send(f"set map {map_file} live {self.backend(primary)}")
        except haproxy_runtime.RuntimeApiError as exc:
            raise CutoverError(f"HAProxy did not switch to slot {primary}: {exc}") from exc
        if answer.strip():
            raise CutoverError(
                f"HAProxy refused `set map {map_file} live {self.backend(primary)}`: "
                f"{answer.strip()} (is haproxy.cfg the one beamops.release renders?)"
            )
        # The runtime change is what moves traffic; the file keeps it across a reload.
        self.route_offline(primary)

    def route_offline(self, primary: str) -> None:
        # HAProxy reads the map file when it starts.
        write_if_changed(self.settings.haproxy_map_file, f"live {self.backend(primary)}\n", 0o644)

    def _counters(self) -> Tuple[int, int, str]:
        rows = haproxy_runtime.parse_stat_csv(
            self.client.send(f"show stat {self.backend(self._slot)} 4 -1")
        )
        for row in rows:
            if row.get("svname") == self._slot:
                codes = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
                total = sum(int(row.get(c) or 0) for c in codes)
                return total, int(row.get("hrsp_5xx") or 0), row.get("status", "")
        return 0, 0, ""

    def await_admission(self, slot: str, clock: Clock, sleep: Sleep) -> Optional[str]:
        # HAProxy checks a stopped server every second and calls it DOWN until one check
        # passes after the slot is ready. Switched to before that, HAProxy would send the
        # traffic to the backup (the old slot) and the watch would take it for a failure:
        # on a busy host that check can lag the readiness gate by more than a watch tick.
        self._slot = slot
        began, status = clock(), ""
        while True:
            try:
                status = self._counters()[2]
            except haproxy_runtime.RuntimeApiError as exc:
                return f"HAProxy's runtime API did not answer: {exc}"
            if status in {"UP", "no check"}:
                return None
            if clock() - began >= HAPROXY_ADMISSION_SECONDS:
                return (
                    f"HAProxy's own health check still called slot {slot} "
                    f"{status or 'unknown'} {HAPROXY_ADMISSION_SECONDS:.0f}s after it answered "
                    "ready (it checks every second: can HAProxy reach the slot's port?)"
                )
            sleep(0.1)

    def start_observing(self, slot: str) -> None:
        self._slot = slot
        total, errors, _unused = self._counters()
        self._seen = (total, errors)

    def sample(self) -> Traffic:
        try:
            total, errors, status = self._counters()
        except haproxy_runtime.RuntimeApiError as exc:
            return Traffic(down=f"HAProxy's runtime API did not answer: {exc}")
        traffic = Traffic(total - self._seen[0], errors - self._seen[1])
        self._seen = (total, errors)
        if status.startswith(("DOWN", "MAINT")):
            traffic.down = f"HAProxy's health check took slot {self._slot} out ({status})"
        return traffic


def make_proxy(settings: Settings, run: Run) -> Proxy:
    return NginxProxy(settings, run) if settings.proxy == "nginx" else HaproxyProxy(settings, run)


# --------------------------------------------------------------------------- the cutover


@dataclasses.dataclass
class Request:
    """Which release goes to which slot, and why."""

    slot: str
    version: str
    from_slot: str = ""
    from_version: str = ""
    event: str = "deploy"
    restart: bool = False  # the slot's configuration or unit changed: restart it if running
    run_id: Optional[str] = None
    host: str = ""
    # Stop once the slot is ready, before the switch (the after_gate hooks run then; a second
    # call finds the slot running this release and only switches and watches).
    hold: bool = False

    def problems(self) -> List[str]:
        found = []
        if self.slot not in SLOTS:
            found.append(f"slot must be blue or green, got {self.slot!r}")
        if self.from_slot not in ("", *SLOTS):
            found.append(f"from_slot must be blue, green or empty, got {self.from_slot!r}")
        if self.from_slot and self.from_slot == self.slot:
            found.append(f"slot and from_slot are both {self.slot}: a cutover needs the idle slot")
        if self.event not in EVENTS:
            found.append(f"event must be one of {', '.join(EVENTS)}, got {self.event!r}")
        return found


@dataclasses.dataclass
class Outcome:
    result: str = "ok"  # ok, failed
    stage: str = "start"  # where it ended: start, switch, watch, record, done
    msg: str = ""
    changed: bool = False
    started: str = ""  # started, restarted, already running
    switched_back: bool = False
    detect_seconds: Optional[float] = None  # switch to the failing verdict
    switch_back_ms: Optional[int] = None  # verdict to traffic back on the old slot
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)
    release_log: List[str] = dataclasses.field(default_factory=list)
    warnings: List[str] = dataclasses.field(default_factory=list)
    # What runs afterwards, for scrape targets: {"live": {"slot", "version"} or None, "idle": ...}
    serving: Dict[str, Optional[Dict[str, str]]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class Cutover:
    """One activation: see the module docstring for the sequence."""

    def __init__(
        self,
        settings: Settings,
        request: Request,
        run: Run = run_command,
        proxy: Optional[Proxy] = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        wall: Clock = time.time,
    ) -> None:
        self.s = settings
        self.r = request
        self.run = run
        self.proxy = proxy or make_proxy(settings, run)
        self.clock = clock
        self.sleep = sleep
        self.wall = wall
        self.out = Outcome()
        self._since = 0.0  # wall clock when the slot was started, for its journal
        self._switched_at = 0.0
        self._start_failure = "not ready"
        self._proxy_lost = False  # stopped during the watch and not back: no live switch back

    # ----------------------------------------------------------------- entry point

    def execute(self, check_mode: bool = False) -> Outcome:
        problems = self.r.problems()
        if problems:
            raise CutoverError("; ".join(problems))
        if check_mode:
            self.out.changed = True
            self.out.stage = "done"
            self.out.msg = self._what() + " would be started, switched to and watched"
            return self.out
        started_at = self.wall()
        with release_state.cutover_in_progress(self.s.state_path):
            outcome = self._execute()
        outcome.serving = self._serving_afterwards()
        if not (self.r.hold and outcome.result == "ok"):
            self._publish(started_at)  # a held slot's cutover finishes with the next call
        return outcome

    def _serving_afterwards(self) -> Dict[str, Optional[Dict[str, str]]]:
        """The slot that serves and the one kept running idle (warm), after this cutover.

        A retired old slot still drains for a few seconds: it no longer counts as running."""
        ok = self.out.result == "ok" and not self.r.hold
        live = (self.r.slot, self.r.version) if ok else (self.r.from_slot, self.r.from_version)
        idle = (self.r.from_slot, self.r.from_version) if ok and self.s.keep_old_warm else ("", "")
        return {
            role: {"slot": slot, "version": version} if slot else None
            for role, (slot, version) in (("live", live), ("idle", idle))
        }

    def _publish(self, started_at: float) -> None:
        """Metrics, the event line and the webhooks: never a reason to fail a cutover, only a
        warning; a webhook delays it by its own timeout at most."""
        try:
            hooks = deploy_metrics.load_webhooks(self.s.config_dir)
        except (OSError, ValueError) as exc:
            hooks = []
            self.out.warnings.append(f"webhooks were not sent: {exc}")
        if not (self.s.metrics_dir or self.s.events_log or hooks):
            return
        try:
            state, _missing = release_state.read_state(self.s.state_path)
            active: Dict[str, Any] = dict(state["active"] or {})
            lock: Dict[str, Any] = dict(state["lock"] or {})
            record = deploy_metrics.Cutover(
                app=self.s.app,
                host=self.r.host,
                event=self.r.event,
                version=self.r.version,
                slot=self.r.slot,
                from_version=self.r.from_version,
                from_slot=self.r.from_slot,
                result=deploy_metrics.result_of(
                    self.out.result == "ok", self.out.switched_back, self.out.stage
                ),
                stage=self.out.stage,
                started_at=started_at,
                ended_at=self.wall(),
                timings=self.out.timings,
                msg=self.out.msg,
                run_id=self.r.run_id,
                holder=lock.get("holder"),
            )
            serving = deploy_metrics.Serving(
                version=active.get("version"),
                slot=active.get("slot"),
                routed_slot=routing.routed_slot(self.s.routing()),
            )
            deploy_metrics.publish(record, serving, self.s.metrics_dir, self.s.events_log)
        except (OSError, ValueError, release_state.ReleaseStateError) as exc:
            self.out.warnings.append(f"deploy metrics and events were not written: {exc}")
            return
        # Named by host: Ansible shows a warning repeated word for word by several hosts once.
        where = f"{self.r.host}: " if self.r.host else ""
        self.out.warnings += [where + w for w in deploy_metrics.notify(hooks, record, serving)]

    def _execute(self) -> Outcome:
        release_dir = os.path.join(self.s.base_dir, "releases", self.r.version)
        if not os.path.isdir(release_dir):
            raise CutoverError(f"release {self.r.version} is not installed ({release_dir})")
        self._refuse_the_serving_slot()
        self._timed("drain_wait", lambda: wait_for_retirement(self.s, self.r.slot, self.run))
        linked = self._link(release_dir)
        self._label_journal()
        if not self._timed("start", lambda: self._start(linked)) or not self._admitted():
            return self._fail_before_switch()
        if self.r.hold:
            self.out.stage = "gate"
            self.out.msg = (
                f"{self._what()} is ready; traffic not moved yet (held before the switch)"
            )
            return self.out
        self.out.stage = "switch"
        try:
            self._timed("switch", self._switch)
        except CutoverError as exc:
            # A refused switch moved nothing: the proxy's files are put back, nothing reloaded.
            return self._fail_switch(str(exc))
        self.out.stage = "watch"
        problem = self._timed("watch", self._watch)
        if problem:
            return self._fail_after_switch(problem)
        self.out.stage = "record"
        try:
            self._timed("record", self._record_success)
        except release_state.ReleaseStateError as exc:
            # The proxy and the state file must agree: unrecorded, the new slot gives way.
            return self._fail_after_switch(f"recording the release failed: {exc}")
        self._timed("retire", self._retire_old_slot)
        self.out.stage = "done"
        self.out.msg = f"{self.r.event} of {self.r.version} to slot {self.r.slot} ok"
        return self.out

    def _refuse_the_serving_slot(self) -> None:
        """The slot the proxy routes to is never relinked or restarted, whatever the state
        says: after a run killed between its switch and its state write, the state names the
        other slot. Taking the deploy lock repairs that; this is the last line of defence."""
        serving = self.proxy.live_slot()
        if self.r.from_slot and serving == self.r.slot:
            raise CutoverError(
                f"the proxy routes to slot {self.r.slot}, which the state calls idle (it says "
                f"{self.r.from_slot} serves): refusing to relink or restart the slot that serves. "
                "Re-run: taking the deploy lock with routing makes the state follow the proxy"
            )

    def _what(self) -> str:
        host = f"{self.r.host}: " if self.r.host else ""
        return f"{host}slot {self.r.slot} (release {self.r.version})"

    def _timed(self, name: str, step: Callable[[], T]) -> T:
        began = self.clock()
        try:
            return step()
        finally:
            self.out.timings[name] = round(self.clock() - began, 3)

    # ----------------------------------------------------------------- start

    def _link(self, release_dir: str) -> bool:
        """Point slots/<slot> at the release, atomically; True when the link changed."""
        link = os.path.join(self.s.base_dir, "slots", self.r.slot)
        if os.path.islink(link) and os.readlink(link) == release_dir:
            return False
        os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
        temp = f"{link}.beamops-tmp"
        if os.path.lexists(temp):
            os.unlink(temp)
        os.symlink(release_dir, temp)
        os.replace(temp, link)
        self.out.changed = True
        return True

    def _label_journal(self) -> None:
        """Every journal line of the slot carries the release's version (BEAMOPS_VERSION), so
        `journalctl -t <app>-<slot> BEAMOPS_VERSION=<version>` finds what one release said.
        A drop-in of the slot's instance; systemd reads it at the (re)start that follows."""
        unit = self.s.unit(self.r.slot)
        path = os.path.join(self.s.unit_dir, f"{unit}.d", JOURNAL_DROPIN)
        text = (
            "# Managed by beamops.release (slot_cutover): the release this slot runs.\n"
            f"[Service]\nLogExtraFields=BEAMOPS_VERSION={self.r.version}\n"
        )
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if write_if_changed(path, text, 0o644):
            # A warm slot already running this release is not restarted for it: it carries
            # the field from its next start (it was written when it last started, normally).
            self.run(["systemctl", "daemon-reload"], 60)

    def _start(self, linked: bool) -> bool:
        """Start (or restart) the slot through its unit's readiness gate; True when ready."""
        unit = self.s.unit(self.r.slot)
        active = self.run(["systemctl", "is-active", "--quiet", unit], 10).returncode == 0
        self._since = self.wall()
        if active and not (linked or self.r.restart):
            # A warm slot already running this release as configured: only re-checked.
            self.out.started = "already running"
            return self._ready_now()
        action = "restart" if active else "start"
        self.run(["systemctl", "enable", "--quiet", unit], 30)
        self.out.changed = True
        done = self.run(["systemctl", action, unit], self.s.start_timeout + 15)
        self.out.started = "restarted" if active else "started"
        if done.returncode == 0:
            return True
        lines, gate = slot_journal(self.run, unit, self._since)
        # Its own words, but never its secrets: they reach the controller and the state file.
        secrets_file = os.path.join(self.s.config_dir, f"{self.r.slot}.secrets.env")
        self.out.release_log = redact.redact_lines(lines, secrets_file)
        self._start_failure = gate or (done.stderr.strip() or f"systemctl {action} failed")
        return False

    def _admitted(self) -> bool:
        """The proxy's own verdict on the ready slot, before any traffic moves to it."""
        refused = self._timed(
            "admission", lambda: self.proxy.await_admission(self.r.slot, self.clock, self.sleep)
        )
        if refused:
            self._start_failure = refused
        return not refused

    def _ready_now(self) -> bool:
        config = self._probe_config(self.s.slot_url(self.r.slot), json_fields=self.s.json_fields)
        config.success_threshold = 2
        config.interval = min(self.s.watch_interval, 0.1)  # a warm slot answers at once
        config.deadline = max(self.s.probe_timeout * 3, 5.0)
        result = health_probe.run_probe(config, clock=self.clock, sleep=self.sleep)
        if not result.passed:
            self._start_failure = health_probe.failure_message(result, config)
        return result.passed

    def _fail_before_switch(self) -> Outcome:
        self._stop(self.r.slot)
        reason = self._start_failure
        message = f"{self._what()} did not become ready at {self.s.slot_url(self.r.slot)}: {reason}"
        if self.out.release_log:
            message += " | the release's last lines: " + " / ".join(self.out.release_log[-5:])
        message += f"; it was stopped. {self._traffic_stayed()}"
        return self._record_failure(message)

    def _fail_switch(self, problem: str) -> Outcome:
        self._stop(self.r.slot)
        message = (
            f"{self._what()} was ready, but the proxy refused the switch: {problem}; "
            f"slot {self.r.slot} was stopped. {self._traffic_stayed()}"
        )
        return self._record_failure(message)

    def _traffic_stayed(self) -> str:
        if not self.r.from_slot:
            return "No traffic had moved."
        return f"Traffic never left slot {self.r.from_slot} ({self.r.from_version})."

    # ----------------------------------------------------------------- switch and watch

    def _fallback(self) -> Optional[str]:
        return self.r.from_slot or None

    def _switch(self) -> None:
        self.proxy.route(self.r.slot, self._fallback())
        self.out.changed = True
        self._switched_at = self.clock()

    def _probe_config(self, url: str, json_fields: Dict[str, Any]) -> health_probe.ProbeConfig:
        return health_probe.ProbeConfig(
            urls=[url],
            json_fields=json_fields,
            timeout=self.s.probe_timeout,
            interval=self.s.watch_interval,
            jitter=0.0,
        )

    def _watch(self) -> Optional[str]:
        """Probe every interval; `watch_failure_threshold` failing ticks in a row end it.

        A proxy that stops meanwhile (killed, crashed) is not the new release's fault: the
        watch waits for it to be back, then starts over; see _ride_out_proxy_restart."""
        direct = self._probe_config(self.s.slot_url(self.r.slot), self.s.json_fields)
        fields = dict(self.s.json_fields)
        if self.s.slot_field:
            fields[self.s.slot_field] = self.r.slot
        through = self._probe_config(self.s.proxy_url(), fields)
        try:
            self.proxy.start_observing(self.r.slot)
        except haproxy_runtime.RuntimeApiError as exc:
            return f"cannot read HAProxy's counters: {exc}"
        proxy_pid = self.proxy.main_pid()
        began = self.clock()
        failures = 0
        problems: List[str] = []
        while True:
            tick = self.clock()
            problems = self._tick_problems(direct, through)
            current = self.proxy.main_pid()
            if proxy_pid and current != proxy_pid:
                # Checked after the probes: their failures may be the proxy's going.
                back = self._ride_out_proxy_restart(proxy_pid)
                if back is None:
                    self._proxy_lost = True
                    return self._proxy_lost_problem(proxy_pid)
                proxy_pid, began, failures = back, self.clock(), 0
                continue
            failures = failures + 1 if problems else 0
            if failures >= self.s.watch_failure_threshold:
                self.out.detect_seconds = round(self.clock() - self._switched_at, 3)
                return "; ".join(problems)
            if not failures and self.clock() - began >= self.s.watch_seconds:
                return None
            self.sleep(max(0.0, self.s.watch_interval - (self.clock() - tick)))

    def _ride_out_proxy_restart(self, old_pid: int) -> Optional[int]:
        """The proxy's main PID changed: wait until it runs again and can be observed (systemd
        restarts it; if not, `systemctl start` after PROXY_START_AFTER_SECONDS); its files
        route to the new slot, so the new slot stays. The new PID, or None if it never came
        back within PROXY_RETURN_SECONDS."""
        lost_at = self.clock()
        started = False
        while self.clock() - lost_at < PROXY_RETURN_SECONDS:
            pid = self.proxy.main_pid()
            if pid and pid != old_pid and self._observing_again():
                how = " after `systemctl start`" if started else ""
                self.out.warnings.append(
                    f"{self.proxy.name} stopped during the watch (main PID {old_pid}) and was "
                    f"back {self.clock() - lost_at:.1f}s later{how} as PID {pid}, routing to "
                    f"slot {self.r.slot}; requests sent to it meanwhile failed; the watch "
                    "started over"
                )
                return pid
            if not pid and not started and self.clock() - lost_at > PROXY_START_AFTER_SECONDS:
                started = True
                self.run(["systemctl", "start", self.proxy.service], 30)
            self.sleep(0.1)
        return None

    def _observing_again(self) -> bool:
        try:
            self.proxy.start_observing(self.r.slot)  # HAProxy: its counters started again
        except haproxy_runtime.RuntimeApiError:
            return False  # its runtime API is not up yet
        return True

    def _proxy_lost_problem(self, old_pid: int) -> str:
        status = self.run(["systemctl", "is-active", self.proxy.service], 10).stdout.strip()
        return (
            f"{self.proxy.name} stopped during the watch (main PID {old_pid}) and was not back "
            f"within {PROXY_RETURN_SECONDS:.0f}s ({self.proxy.service} is {status or 'unknown'}"
            f"; journalctl -u {self.proxy.service})"
        )

    def _tick_problems(
        self, direct: health_probe.ProbeConfig, through: health_probe.ProbeConfig
    ) -> List[str]:
        problems = []
        answer = health_probe.probe_url(direct.urls[0], direct, direct.timeout, self.clock)
        if not answer.passed:
            problems.append(f"{answer.url} {health_probe.describe_answer(answer)}")
        traffic = self.proxy.sample()
        seen = traffic.problem(self.s.watch_max_5xx_ratio)
        if seen:
            problems.append(seen)
        if self.s.slot_field or self.s.json_fields:
            answer = health_probe.probe_url(through.urls[0], through, through.timeout, self.clock)
            if not answer.passed:
                problems.append(
                    f"through {self.proxy.name}: {answer.url} "
                    f"{health_probe.describe_answer(answer)}"
                )
        return problems

    def _fail_after_switch(self, problem: str) -> Outcome:
        back = self._route_back() if self.r.from_slot else ""
        self._stop(self.r.slot)
        message = (
            f"{self._what()} failed after the switch ({self.out.stage}): {problem}{back}; "
            f"slot {self.r.slot} was stopped"
        )
        return self._record_failure(message)

    def _route_back(self) -> str:
        """Traffic back to the old slot; what happened, as the tail of the error."""
        old = f"slot {self.r.from_slot} ({self.r.from_version})"
        if self._proxy_lost:
            # Nothing runs to switch: its files name the old slot again, as the state does.
            try:
                self.proxy.route_offline(self.r.from_slot)
            except CutoverError as exc:
                return f"; PUTTING ITS CONFIGURATION BACK FAILED: {exc}"
            return f"; its configuration routes to {old} again, for when it starts"
        verdict = self.clock()
        try:
            self.proxy.route(self.r.from_slot, None)
        except CutoverError as exc:
            return f"; SWITCHING BACK FAILED: {exc}"
        self.out.switched_back = True
        self.out.switch_back_ms = int((self.clock() - verdict) * 1000)
        return (
            f"; traffic switched back to {old} {self.out.switch_back_ms} ms after the failure "
            "was seen"
        )

    # ----------------------------------------------------------------- record and retire

    def _state(self, action: str, fields: Dict[str, Any]) -> Dict[str, Any]:
        request = release_state.Request(
            action=action, path=self.s.state_path, run_id=self.r.run_id, **fields
        )
        return release_state.execute(request)

    def _record_success(self) -> None:
        what = f"{self.r.event} {self.r.version} to slot {self.r.slot}"
        self._state(
            "activate",
            {"slot": self.r.slot, "version": self.r.version, "event": self.r.event, "msg": what},
        )
        self._state(
            "mark",
            {
                "version": self.r.version,
                "status": "good",
                "reason": "passed the readiness gate and the watch on the host",
            },
        )
        try:
            pruned = self._state(
                "prune",
                {
                    "releases_dir": os.path.join(self.s.base_dir, "releases"),
                    "keep": self.s.releases_keep,
                },
            )
            self.out.warnings.extend(pruned.get("warnings", []))
        except release_state.ReleaseStateError as exc:
            # The release serves and is recorded: a prune that fails is a warning, not a
            # failed deploy (the next run prunes again).
            self.out.warnings.append(f"pruning old releases failed: {exc}")

    def _record_failure(self, message: str) -> Outcome:
        self.out.result = "failed"
        self.out.msg = message
        try:
            if self.r.version != self.r.from_version:
                self._state(
                    "mark", {"version": self.r.version, "status": "bad", "reason": message[:300]}
                )
            self._state(
                "record_event",
                {
                    "event": self.r.event,
                    "result": "failed",
                    "version": self.r.version,
                    "slot": self.r.slot,
                    "msg": message[:500],
                },
            )
        except release_state.ReleaseStateError as exc:
            self.out.warnings.append(f"could not record the failure in the state file: {exc}")
        return self.out

    def _retire_old_slot(self) -> None:
        if not self.r.from_slot or self.s.keep_old_warm:
            return
        schedule_retirement(self.s, self.r.from_slot, self.run)

    def _stop(self, slot: str) -> None:
        unit = self.s.unit(slot)
        self.run(["systemctl", "disable", "--quiet", unit], 30)
        self.run(["systemctl", "stop", unit], self.s.stop_timeout + 15)


# --------------------------------------------------------------------------- host helpers


def slot_journal(run: Run, unit: str, since: float) -> Tuple[List[str], str]:
    """The release's own lines since `since` (not systemd's, not the gate's), and the gate's
    last line: what an operator would look for in `journalctl -u UNIT`."""
    found = run(
        ["journalctl", "--no-pager", "-o", "json", "-u", unit, f"--since=@{int(since)}"], 15
    )
    release: List[str] = []
    gate = ""
    for line in found.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if not isinstance(message, str) or entry.get("_PID") == "1":
            continue
        if message.startswith(GATE_PREFIX):
            gate = message[len(GATE_PREFIX) :].strip()
        elif message.strip():
            release.append(message.strip()[:300])
    return release[-JOURNAL_LINES:], gate


def retirement_active(settings: Settings, slot: str, run: Run) -> bool:
    name = settings.retire_unit(slot)
    found = run(["systemctl", "is-active", f"{name}.timer", f"{name}.service"], 10)
    return any(line.strip() in ("active", "activating") for line in found.stdout.splitlines())


def wait_for_retirement(
    settings: Settings,
    slot: str,
    run: Run,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
) -> bool:
    """A slot still draining from an earlier run is left to finish before it is touched."""
    if not retirement_active(settings, slot, run):
        return False
    deadline = clock() + settings.drain_seconds + settings.stop_timeout + 10
    while retirement_active(settings, slot, run):
        if clock() > deadline:
            raise CutoverError(
                f"slot {slot} is still draining from an earlier run after "
                f"{settings.drain_seconds + settings.stop_timeout + 10:.0f}s "
                f"(systemctl status {settings.retire_unit(slot)})"
            )
        sleep(0.2)
    return True


def schedule_retirement(settings: Settings, slot: str, run: Run) -> None:
    """Disable the old slot now (a reboot must not start it) and stop it after the drain, in
    a transient systemd timer: the run does not wait, the slot still drains in full."""
    unit = settings.unit(slot)
    name = settings.retire_unit(slot)
    run(["systemctl", "disable", "--quiet", unit], 30)
    run(["systemctl", "stop", f"{name}.timer", f"{name}.service"], 30)
    run(["systemctl", "reset-failed", f"{name}.timer", f"{name}.service"], 10)
    drain = max(settings.drain_seconds, 0.1)
    started = run(
        [
            "systemd-run",
            "--quiet",
            f"--unit={name}",
            f"--description=beamops.release: drain, then stop {unit}",
            f"--on-active={drain:g}s",
            "--timer-property=AccuracySec=100ms",
            "systemctl",
            "stop",
            unit,
        ],
        30,
    )
    if started.returncode != 0:
        # No timer: drain here rather than leave the slot running unrecorded.
        time.sleep(settings.drain_seconds)
        run(["systemctl", "stop", unit], settings.stop_timeout + 15)
