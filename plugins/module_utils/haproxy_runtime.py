# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy runtime API (stats socket) client, and the blue-green slot switch built on it.

Runs on managed hosts: standard library only, Python 3.8+.

Formats follow HAProxy's management guide and were checked against HAProxy 2.6 (Debian 12):
- ``show servers state <backend>``: a format version line (``1``), a ``#``-prefixed header of
  space-separated column names, then one line per server. ``srv_op_state`` is 0 STOPPED,
  1 STARTING, 2 RUNNING, 3 STOPPING; ``srv_admin_state`` is a bit mask (FMAINT 0x01,
  IMAINT 0x02, CMAINT 0x04, FDRAIN 0x08, IDRAIN 0x10, RMAINT 0x20, HMAINT 0x40).
- ``show stat <backend> 4 -1``: CSV of that backend's servers after a ``# pxname,svname,...``
  header; ``scur`` is the number of current sessions.
- ``set server <backend>/<server> ...`` answers an empty line on success, text otherwise.
"""

from __future__ import annotations

import csv
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

DEFAULT_SOCKET = "/run/haproxy/admin.sock"
DRAIN_POLL_INTERVAL = 0.2
STATES_FORMAT_VERSION = "1"
OTHERS_STATES = ("drain", "maint")

ADMIN_FLAGS: Tuple[Tuple[int, str], ...] = (
    (0x01, "FMAINT"),  # forced into maintenance (CLI `state maint`, or `disabled` in the config)
    (0x02, "IMAINT"),  # inherited from a tracked server
    (0x04, "CMAINT"),  # `disabled` in the config; stays set after `state ready`, harmless then
    (0x08, "FDRAIN"),  # forced into drain (CLI `state drain`)
    (0x10, "IDRAIN"),  # inherited from a tracked server
    (0x20, "RMAINT"),  # address resolution failed
    (0x40, "HMAINT"),  # FQDN set from the CLI
)
FMAINT = 0x01
FDRAIN = 0x08
# Maintenance flags that keep a server out of rotation; a CLI `state ready` lifts only FMAINT.
MAINT_FLAGS = 0x01 | 0x02 | 0x20

OP_STATES: Dict[int, str] = {0: "STOPPED", 1: "STARTING", 2: "RUNNING", 3: "STOPPING"}
OP_STOPPED = 0
OP_RUNNING = 2
# STARTING is up but throttled by slowstart: it takes traffic, so it counts as serving.
SERVING_OP_STATES = (1, 2)

# HAProxy accepts only these characters in proxy and server names. Checking them also keeps a
# `;` (the CLI's command separator) from smuggling a second command into ours.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]+$")
SOCKET_HINT = "stats socket {path} level admin"


class RuntimeApiError(Exception):
    """Anything that stops the switch; the message is meant for the user as is."""


class SocketUnavailable(RuntimeApiError):
    pass


class CommandRejected(RuntimeApiError):
    def __init__(self, command: str, answer: str, hint: str = "") -> None:
        self.command = command
        self.answer = answer
        message = f"HAProxy rejected `{command}`: {answer.strip()}"
        super().__init__(f"{message} ({hint})" if hint else message)


class UnknownName(RuntimeApiError):
    pass


class UnexpectedAnswer(RuntimeApiError):
    pass


class LiveNotServing(RuntimeApiError):
    pass


# --------------------------------------------------------------------------- decoding


def admin_flag_names(mask: int) -> List[str]:
    """Names of the bits set in srv_admin_state; unknown bits as hex so nothing is hidden."""
    names = [name for bit, name in ADMIN_FLAGS if mask & bit]
    known = 0
    for bit, _name in ADMIN_FLAGS:
        known |= bit
    if mask & ~known:
        names.append(hex(mask & ~known))
    return names


def op_state_name(code: int) -> str:
    return OP_STATES.get(code, f"UNKNOWN({code})")


@dataclass(frozen=True)
class ServerState:
    """One line of `show servers state`, reduced to what the switch needs."""

    backend: str
    name: str
    op_state: int
    admin_state: int

    @property
    def admin_ready(self) -> bool:
        """No forced maintenance or drain: what `set server ... state ready` produces."""
        return not self.admin_state & (FMAINT | FDRAIN)

    @property
    def serving(self) -> bool:
        """HAProxy sends it new traffic: admin ready, not in any maintenance, and up."""
        return (
            self.admin_ready
            and not self.admin_state & MAINT_FLAGS
            and self.op_state in SERVING_OP_STATES
        )

    def in_state(self, wanted: str) -> bool:
        """Whether the server already is in `wanted` (drain or maint) as the switch leaves it."""
        if wanted == "maint":
            return bool(self.admin_state & FMAINT)
        return bool(self.admin_state & FDRAIN) and not self.admin_state & FMAINT

    def with_admin(self, set_bits: int = 0, clear_bits: int = 0) -> ServerState:
        return ServerState(
            self.backend, self.name, self.op_state, (self.admin_state | set_bits) & ~clear_bits
        )

    def with_op(self, op_state: int) -> ServerState:
        return ServerState(self.backend, self.name, op_state, self.admin_state)


@dataclass(frozen=True)
class ServerStats:
    """The `show stat` columns the switch reports for one server."""

    scur: int
    status: str


def _excerpt(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def parse_servers_state(text: str) -> List[ServerState]:
    """Parse the answer to `show servers state [<backend>]`; columns are found by name."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != STATES_FORMAT_VERSION:
        raise UnexpectedAnswer(
            "expected `show servers state` to start with format version "
            f"{STATES_FORMAT_VERSION}, got: {_excerpt(text)!r}"
        )
    header: Optional[List[str]] = None
    servers: List[ServerState] = []
    for line in lines[1:]:
        if line.startswith("#"):
            header = line[1:].split()
            continue
        if header is None:
            raise UnexpectedAnswer(f"`show servers state` data before its header: {line!r}")
        row = dict(zip(header, line.split()))
        try:
            servers.append(
                ServerState(
                    backend=row["be_name"],
                    name=row["srv_name"],
                    op_state=int(row["srv_op_state"]),
                    admin_state=int(row["srv_admin_state"]),
                )
            )
        except (KeyError, ValueError) as exc:
            raise UnexpectedAnswer(
                f"`show servers state` line lacks be_name/srv_name/srv_op_state/"
                f"srv_admin_state ({exc}): {line!r}"
            ) from exc
    return servers


def parse_stat_csv(text: str) -> List[Dict[str, str]]:
    """Parse the CSV answer to `show stat`: one dict per line, keyed by the header's names."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise UnexpectedAnswer(
            f"expected `show stat` to start with a '# pxname,...' header, got: {_excerpt(text)!r}"
        )
    header = lines[0][2:].split(",")
    rows = csv.reader(line for line in lines[1:] if line.strip())
    return [dict(zip(header, row)) for row in rows]


def server_stats(rows: Sequence[Dict[str, str]], backend: str) -> Dict[str, ServerStats]:
    """Per-server scur and status of `backend`, skipping its FRONTEND/BACKEND summary lines."""
    stats: Dict[str, ServerStats] = {}
    for row in rows:
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        scur = row.get("scur", "")
        stats[row["svname"]] = ServerStats(
            int(scur) if scur.isdigit() else 0, row.get("status", "")
        )
    return stats


def parse_backend_names(text: str) -> List[str]:
    """Parse the answer to `show backend`: a '# name' header, then one name per line."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def check_name(parameter: str, value: str) -> None:
    if not NAME_PATTERN.fullmatch(value):
        raise UnknownName(
            f"{parameter} must be an HAProxy name (letters, digits, '-', '_', '.', ':'), "
            f"got {value!r}"
        )


# --------------------------------------------------------------------------- socket client


class RuntimeClient:
    """Sends one command per connection: HAProxy answers, then closes (non-interactive mode)."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def send(self, command: str) -> str:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        chunks: List[bytes] = []
        try:
            sock.connect(self.path)
            sock.sendall(command.encode() + b"\n")
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            raise SocketUnavailable(self._explain(exc, command)) from exc
        finally:
            sock.close()
        return b"".join(chunks).decode("utf-8", "replace")

    def _explain(self, exc: OSError, command: str) -> str:
        expected = SOCKET_HINT.format(path=self.path)
        if isinstance(exc, FileNotFoundError):
            return (
                f"HAProxy admin socket {self.path} does not exist: expected a running haproxy "
                f"with `{expected}` in the global section of haproxy.cfg (parameter socket)"
            )
        if isinstance(exc, PermissionError):
            return (
                f"permission denied on HAProxy admin socket {self.path}: run the task as root "
                f"(become) or as a user the socket's mode/user/group admit, e.g. "
                f"`{expected} mode 660 group haproxy` in haproxy.cfg"
            )
        if isinstance(exc, ConnectionRefusedError):
            return (
                f"HAProxy admin socket {self.path} refuses connections (haproxy not running, "
                f"or a stale socket file): expected `{expected}` in haproxy.cfg"
            )
        if isinstance(exc, socket.timeout):
            return (
                f"HAProxy admin socket {self.path} did not answer `{command}` within "
                f"{self.timeout:g}s (parameter timeout)"
            )
        return f"cannot use HAProxy admin socket {self.path} ({exc}): expected `{expected}`"

    # The typed helpers below turn HAProxy's free-text answers into values or errors.

    def backend_names(self) -> List[str]:
        return parse_backend_names(self.send("show backend"))

    def servers_state(self, backend: str) -> Dict[str, ServerState]:
        answer = self.send(f"show servers state {backend}")
        if answer.strip().startswith("Can't find backend"):
            raise UnknownName(
                f"backend {backend!r} not found in HAProxy (socket {self.path}); "
                f"backends: {', '.join(self.backend_names()) or 'none'}"
            )
        return {s.name: s for s in parse_servers_state(answer) if s.backend == backend}

    def server_stats(self, backend: str) -> Dict[str, ServerStats]:
        # 4 = servers only, -1 = all of them (management guide, `show stat`).
        return server_stats(parse_stat_csv(self.send(f"show stat {backend} 4 -1")), backend)

    def cli_level(self) -> Optional[str]:
        """The socket's level (user, operator, admin), or None on an HAProxy without the command."""
        answer = self.send("show cli level").strip()
        return answer if answer in ("user", "operator", "admin") else None

    def set_server(self, backend: str, server: str, setting: str) -> str:
        """Send `set server <backend>/<server> <setting>`; any answer at all is a refusal."""
        command = f"set server {backend}/{server} {setting}"
        answer = self.send(command)
        if answer.strip():
            hint = ""
            if "Permission denied" in answer:
                hint = f"the socket needs `{SOCKET_HINT.format(path=self.path)}`"
            raise CommandRejected(command, answer, hint)
        return command


# --------------------------------------------------------------------------- the switch


@dataclass(frozen=True)
class SwitchRequest:
    backend: str
    live: str
    others: List[str]
    others_state: str = "drain"
    drain_timeout: float = 0.0
    force_health_up: bool = True

    def problems(self) -> List[str]:
        """What is wrong with the request itself, before HAProxy is asked anything."""
        found: List[str] = []
        for parameter, value in [("backend", self.backend), ("live", self.live)] + [
            ("others", name) for name in self.others
        ]:
            try:
                check_name(parameter, value)
            except UnknownName as exc:
                found.append(str(exc))
        if self.live in self.others:
            found.append(f"live server {self.live!r} is also listed in others")
        if self.others_state not in OTHERS_STATES:
            found.append(f"others_state must be one of {', '.join(OTHERS_STATES)}")
        if self.drain_timeout < 0:
            found.append(f"drain_timeout must be 0 or more seconds, got {self.drain_timeout:g}")
        return found


@dataclass
class SwitchPlan:
    """The `set server` settings to send, in order: live first, so traffic always has a home."""

    live: List[str] = field(default_factory=list)  # e.g. ["state ready", "health up"]
    drain: List[str] = field(default_factory=list)  # servers to put in drain
    maint: List[str] = field(default_factory=list)  # servers to put in maint after the wait

    @property
    def changed(self) -> bool:
        return bool(self.live or self.drain or self.maint)

    def commands(self, request: SwitchRequest) -> List[str]:
        prefix = f"set server {request.backend}/"
        return (
            [f"{prefix}{request.live} {setting}" for setting in self.live]
            + [f"{prefix}{name} state drain" for name in self.drain]
            + [f"{prefix}{name} state maint" for name in self.maint]
        )


def plan_switch(servers: Dict[str, ServerState], request: SwitchRequest) -> SwitchPlan:
    plan = SwitchPlan()
    live = servers[request.live]
    if not live.admin_ready:
        plan.live.append("state ready")
    # Once the caller's readiness gate passed, HAProxy's own checks would only delay the switch.
    if request.force_health_up and (plan.live or live.op_state not in SERVING_OP_STATES):
        plan.live.append("health up")
    for name in request.others:
        other = servers[name]
        if other.in_state(request.others_state):
            continue
        # Maint is reached through drain so that sessions can finish during the wait.
        if request.others_state == "drain" or not other.admin_state & FDRAIN:
            plan.drain.append(name)
        if request.others_state == "maint":
            plan.maint.append(name)
    return plan


def predict(servers: Dict[str, ServerState], plan: SwitchPlan, live: str) -> Dict[str, ServerState]:
    """The states HAProxy 2.6 shows after the plan, for check mode."""
    after = dict(servers)
    if "state ready" in plan.live:
        # Leaving maintenance, HAProxy marks the server up at once and lets checks confirm.
        after[live] = after[live].with_admin(clear_bits=FMAINT | FDRAIN).with_op(OP_RUNNING)
    if "health up" in plan.live:
        after[live] = after[live].with_op(OP_RUNNING)
    for name in plan.drain:
        was_maint = after[name].admin_state & FMAINT
        after[name] = after[name].with_admin(set_bits=FDRAIN, clear_bits=FMAINT)
        if was_maint:
            after[name] = after[name].with_op(OP_RUNNING)
    for name in plan.maint:
        after[name] = after[name].with_admin(set_bits=FMAINT, clear_bits=FDRAIN).with_op(OP_STOPPED)
    return after


def describe(servers: Dict[str, ServerState], stats: Dict[str, ServerStats]) -> Dict[str, Any]:
    """Per-server report: decoded admin flags, op state name, current sessions."""
    report: Dict[str, Any] = {}
    for name, state in servers.items():
        stat = stats.get(name, ServerStats(0, ""))
        report[name] = {
            "admin_state": admin_flag_names(state.admin_state),
            "admin_state_mask": state.admin_state,
            "op_state": op_state_name(state.op_state),
            "op_state_code": state.op_state,
            "scur": stat.scur,
            "status": stat.status,
        }
    return report


def remaining_sessions(stats: Dict[str, ServerStats], servers: Sequence[str]) -> int:
    return sum(stats[name].scur for name in servers if name in stats)


def wait_for_drain(
    client: RuntimeClient,
    backend: str,
    servers: Sequence[str],
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Dict[str, ServerStats]:
    """Poll `show stat` until `servers` have no current session or `timeout` seconds passed."""
    deadline = clock() + timeout
    while True:
        stats = client.server_stats(backend)
        left = deadline - clock()
        if remaining_sessions(stats, servers) == 0 or left <= 0:
            return stats
        sleep(min(DRAIN_POLL_INTERVAL, left))


@dataclass
class SwitchOutcome:
    changed: bool = False
    before: Dict[str, Any] = field(default_factory=dict)
    after: Dict[str, Any] = field(default_factory=dict)
    commands: List[str] = field(default_factory=list)
    drained: bool = False
    remaining_sessions: int = 0
    waited: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "changed": self.changed,
            "before": self.before,
            "after": self.after,
            "commands": self.commands,
            "drained": self.drained,
            "remaining_sessions": self.remaining_sessions,
            "waited": round(self.waited, 3),
        }


class SlotSwitch:
    """Reads the backend, plans, then sends the plan. `outcome` holds what happened so far,
    so a caller can report the commands already sent when a later one fails."""

    def __init__(
        self,
        client: RuntimeClient,
        request: SwitchRequest,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.request = request
        self.clock = clock
        self.sleep = sleep
        self.outcome = SwitchOutcome()

    def run(self, check_mode: bool) -> SwitchOutcome:
        request = self.request
        problems = request.problems()
        if problems:
            raise RuntimeApiError("; ".join(problems))
        servers = self.client.servers_state(request.backend)
        self._check_servers_exist(servers)
        stats = self.client.server_stats(request.backend)
        self.outcome.before = describe(servers, stats)

        plan = plan_switch(servers, request)
        self.outcome.changed = plan.changed
        if plan.changed:
            self._check_admin_level()
        if check_mode:
            # Check mode reports the commands it would send and the states they would give.
            after = predict(servers, plan, request.live)
            self._check_live_serving(after[request.live], would=True)
            self.outcome.commands = plan.commands(request)
            return self._finish(after, stats)

        if not plan.changed:
            # Nothing to send; a wait still guarantees what drain_timeout promises on a rerun.
            self._check_live_serving(servers[request.live], would=False)
            return self._finish(servers, self._wait() if self._waits() else stats)

        for setting in plan.live:
            self._set(request.live, setting)
        if plan.live:
            servers = self.client.servers_state(request.backend)
        self._check_live_serving(servers[request.live], would=False)
        for name in plan.drain:
            self._set(name, "state drain")
        if self._waits():
            self._wait()
        for name in plan.maint:
            self._set(name, "state maint")
        after = self.client.servers_state(request.backend)
        return self._finish(after, self.client.server_stats(request.backend))

    def _waits(self) -> bool:
        return self.request.drain_timeout > 0 and bool(self.request.others)

    def _wait(self) -> Dict[str, ServerStats]:
        started = self.clock()
        stats = wait_for_drain(
            self.client,
            self.request.backend,
            self.request.others,
            self.request.drain_timeout,
            clock=self.clock,
            sleep=self.sleep,
        )
        self.outcome.waited = self.clock() - started
        return stats

    def _finish(
        self, after: Dict[str, ServerState], stats: Dict[str, ServerStats]
    ) -> SwitchOutcome:
        self.outcome.after = describe(after, stats)
        self.outcome.remaining_sessions = remaining_sessions(stats, self.request.others)
        self.outcome.drained = self.outcome.remaining_sessions == 0
        return self.outcome

    def _set(self, server: str, setting: str) -> None:
        command = self.client.set_server(self.request.backend, server, setting)
        self.outcome.commands.append(command)

    def _check_servers_exist(self, servers: Dict[str, ServerState]) -> None:
        wanted = [("live", self.request.live)] + [("others", name) for name in self.request.others]
        for parameter, name in wanted:
            if name not in servers:
                raise UnknownName(
                    f"server {name!r} (parameter {parameter}) not found in backend "
                    f"{self.request.backend!r}; servers: {', '.join(sorted(servers)) or 'none'}"
                )

    def _check_admin_level(self) -> None:
        level = self.client.cli_level()
        if level is not None and level != "admin":
            raise RuntimeApiError(
                f"HAProxy socket {self.client.path} is at level {level!r}; `set server` needs "
                f"`{SOCKET_HINT.format(path=self.client.path)}` in haproxy.cfg"
            )

    def _check_live_serving(self, live: ServerState, would: bool) -> None:
        """Never drain the others while the live server cannot take their traffic."""
        if live.serving:
            return
        flags = ",".join(admin_flag_names(live.admin_state)) or "none"
        hint = (
            "HAProxy's own checks have not marked it up; set force_health_up=true once the "
            "caller has checked readiness"
            if not self.request.force_health_up
            else "check the server's tracking and DNS state in HAProxy"
        )
        verb = "would not take" if would else "does not take"
        raise LiveNotServing(
            f"live server {self.request.backend}/{live.name} {verb} traffic (op_state "
            f"{op_state_name(live.op_state)}, admin flags {flags}); others left untouched: {hint}"
        )
