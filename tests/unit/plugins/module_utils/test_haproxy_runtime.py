"""haproxy_runtime: parsing on output captured from HAProxy 2.6, and the client against a real one.

The captured answers below were copied verbatim from `haproxy -db` 2.6.12 (Debian 12) over its
admin socket; test_captured_formats_match_the_installed_haproxy re-checks their headers
against whatever haproxy is installed, so a format change shows up as a failure here.

The second half is a harness that later tests (and test_haproxy_slot.py) use: a real haproxy
process per test, started in the foreground with its admin socket in a tmp dir, a frontend on
a free 127.0.0.1 port and a backend of two tiny HTTP servers, `blue` and `green`, that answer
their own name. The module under test is loaded from its file, as it runs on managed hosts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.unit.standalone import load_standalone

REPO = Path(__file__).resolve().parents[4]
RUNTIME_FILE = REPO / "plugins" / "module_utils" / "haproxy_runtime.py"


if TYPE_CHECKING:
    from ansible_collections.beamops.release.plugins.module_utils import haproxy_runtime as hr
else:
    hr = load_standalone(RUNTIME_FILE)


# --------------------------------------------------------------------------- captured output

# `show servers state app` with blue drained (FDRAIN) while a request was in flight, green
# ready, and spare declared `disabled` in haproxy.cfg (FMAINT|CMAINT, stopped).
SERVERS_STATE_DRAIN = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweigh\
t srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_stat\
e srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_c\
heck_port srv_check_addr srv_agent_addr srv_agent_port
3 app 1 blue 127.0.0.1 2 8 1 1 1 15 3 4 6 0 0 0 - 18081 - 0 0 - - 0
3 app 2 green 127.0.0.1 2 0 1 1 1 15 3 4 6 0 0 0 - 18082 - 0 0 - - 0
3 app 3 spare 127.0.0.1 0 5 1 1 3 1 0 0 8 0 0 0 - 18083 - 0 0 - - 0

"""

# The same backend after `set server app/blue state maint` (FMAINT, stopped).
SERVERS_STATE_MAINT = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweigh\
t srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_stat\
e srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_c\
heck_port srv_check_addr srv_agent_addr srv_agent_port
3 app 1 blue 127.0.0.1 0 1 1 1 0 15 3 0 14 0 0 0 - 18081 - 0 0 - - 0
3 app 2 green 127.0.0.1 2 0 1 1 1 15 3 4 6 0 0 0 - 18082 - 0 0 - - 0
3 app 3 spare 127.0.0.1 0 5 1 1 1 1 0 0 8 0 0 0 - 18083 - 0 0 - - 0

"""

# `show stat app 4 -1` taken with SERVERS_STATE_DRAIN: blue still holds one session.
STAT_BACKEND = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis\
,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,trac\
ked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_\
3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp\
_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status\
,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise\
,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dc\
on,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtim\
e_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_serve\
r_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handsh\
ake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detecte\
d_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_o\
pen_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_\
connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_\
spliced_bytes_in,h1_spliced_bytes_out,
app,blue,0,0,1,1,,1,0,0,,0,,0,0,0,0,DRAIN,1,1,0,0,0,1,0,,1,3,1,,1,,2,1,,1,L7OK,200,11,0,0,0,0,\
0,0,,,,0,0,0,,,,,2,,,0,0,0,0,,,,Layer7 check passed,,2,3,4,,,,127.0.0.1:18081,,http,,,,,,,,0,1\
,0,,,0,,0,0,0,0,0,0,0,1,2,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
app,green,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,0,1,1,0,,1,3,2,,0,,2,0,,0,L7OK,200,0,0,0,0,0,0,0\
,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,2,3,4,,,,127.0.0.1:18082,,http,,,,,,,,0,0,0\
,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
app,spare,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,,,3,,,1,3,3,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,\
0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:18083,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,0,1,,,,-\
,0,0,0,,,,,,,,,,,,,,,,,,,,,,

"""

# `show stat` (every proxy) once that request had ended: frontend and backend summary lines too.
STAT_ALL = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis\
,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,trac\
ked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_\
3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp\
_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status\
,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise\
,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dc\
on,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtim\
e_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_serve\
r_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handsh\
ake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detecte\
d_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_o\
pen_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_\
connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_\
spliced_bytes_in,h1_spliced_bytes_out,
web,FRONTEND,,,0,1,9985,1,88,118,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,1,,,,0,1,0,0,0,0,,0,1,1\
,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,1,1,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0\
,0,0,0,0,0,0,0,0,1,1,85,115,0,0,
app,blue,0,0,0,1,,1,88,118,,0,,0,0,0,0,DRAIN,1,1,0,0,0,1,0,,1,3,1,,1,,2,0,,1,L7OK,200,11,0,1,0\
,0,0,0,,,,1,0,0,,,,,2,,,0,0,2004,2005,,,,Layer7 check passed,,2,3,4,,,,127.0.0.1:18081,,http,,\
,,,,,,0,1,0,,,1,,0,0,2004,2005,0,1,0,0,2,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
app,green,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,0,1,1,0,,1,3,2,,0,,2,0,,0,L7OK,200,0,0,0,0,0,0,0\
,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,2,3,4,,,,127.0.0.1:18082,,http,,,,,,,,0,0,0\
,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
app,spare,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,,,3,,,1,3,3,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,\
0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:18083,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,0,1,,,,-\
,0,0,0,,,,,,,,,,,,,,,,,,,,,,
app,BACKEND,0,0,0,1,999,1,88,118,0,0,,0,0,0,0,UP,1,1,0,,1,1,0,,1,3,0,,1,,1,0,,1,,,,0,1,0,0,0,0\
,,,,1,0,0,0,0,0,0,2,,,0,0,2004,2005,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,1,0,0,0,,,0,0,2004,20\
05,0,,,,,1,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,8,8,919,211,0,0,

"""

# `show backend`.
SHOW_BACKEND = """\
# name
app

"""

# `show servers state app2` after `set server app2/green state ready` on a server declared
# `disabled`: CMAINT stays set, yet the server runs and takes traffic.
SERVERS_STATE_ENABLED_FROM_DISABLED = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweigh\
t srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_stat\
e srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_c\
heck_port srv_check_addr srv_agent_addr srv_agent_port
2 app2 1 blue 127.0.0.1 2 0 1 1 1 1 0 4 0 0 0 0 - 18081 - 0 0 - - 0
2 app2 2 green 127.0.0.1 2 4 1 1 0 1 0 0 8 0 0 0 - 18082 - 0 0 - - 0

"""

# What HAProxy 2.6 answers to `show servers state nope` and to a `set` on an unknown server.
UNKNOWN_BACKEND_ANSWER = "Can't find backend.\n\n"


def by_name(servers: List[hr.ServerState]) -> Dict[str, hr.ServerState]:
    return {server.name: server for server in servers}


# --------------------------------------------------------------------------- parsing


def test_servers_state_decodes_drain_and_disabled() -> None:
    servers = by_name(hr.parse_servers_state(SERVERS_STATE_DRAIN))

    assert list(servers) == ["blue", "green", "spare"]
    assert {s.backend for s in servers.values()} == {"app"}
    assert (servers["blue"].op_state, servers["blue"].admin_state) == (2, 8)
    assert hr.admin_flag_names(servers["blue"].admin_state) == ["FDRAIN"]
    assert hr.admin_flag_names(servers["green"].admin_state) == []
    assert hr.admin_flag_names(servers["spare"].admin_state) == ["FMAINT", "CMAINT"]
    assert hr.op_state_name(servers["spare"].op_state) == "STOPPED"


def test_servers_state_decodes_maint() -> None:
    blue = by_name(hr.parse_servers_state(SERVERS_STATE_MAINT))["blue"]

    assert hr.admin_flag_names(blue.admin_state) == ["FMAINT"]
    assert hr.op_state_name(blue.op_state) == "STOPPED"
    assert blue.in_state("maint") and not blue.in_state("drain")
    assert not blue.serving


def test_state_predicates_on_captured_servers() -> None:
    drained = by_name(hr.parse_servers_state(SERVERS_STATE_DRAIN))
    assert drained["blue"].in_state("drain") and not drained["blue"].in_state("maint")
    assert not drained["blue"].admin_ready and not drained["blue"].serving
    assert drained["green"].serving and drained["green"].admin_ready
    assert not drained["spare"].serving

    # CMAINT alone is what `disabled` leaves behind once readied: the server takes traffic.
    enabled = by_name(hr.parse_servers_state(SERVERS_STATE_ENABLED_FROM_DISABLED))["green"]
    assert hr.admin_flag_names(enabled.admin_state) == ["CMAINT"]
    assert enabled.serving


def test_every_admin_bit_has_a_name_and_unknown_bits_show() -> None:
    assert hr.admin_flag_names(0x7F) == [
        "FMAINT", "IMAINT", "CMAINT", "FDRAIN", "IDRAIN", "RMAINT", "HMAINT",
    ]  # fmt: skip
    assert hr.admin_flag_names(0x81) == ["FMAINT", "0x80"]
    assert hr.op_state_name(3) == "STOPPING"
    assert hr.op_state_name(9) == "UNKNOWN(9)"


def test_show_stat_gives_sessions_per_server() -> None:
    stats = hr.server_stats(hr.parse_stat_csv(STAT_BACKEND), "app")

    assert stats == {
        "blue": hr.ServerStats(1, "DRAIN"),
        "green": hr.ServerStats(0, "UP"),
        "spare": hr.ServerStats(0, "MAINT"),
    }


def test_show_stat_of_everything_skips_summaries_and_other_proxies() -> None:
    rows = hr.parse_stat_csv(STAT_ALL)

    assert (rows[0]["pxname"], rows[0]["svname"]) == ("web", "FRONTEND")
    assert sorted(hr.server_stats(rows, "app")) == ["blue", "green", "spare"]
    assert hr.server_stats(rows, "web") == {}


def test_show_backend_lists_names() -> None:
    assert hr.parse_backend_names(SHOW_BACKEND) == ["app"]


@pytest.mark.parametrize("answer", [UNKNOWN_BACKEND_ANSWER, "", "2\n# be_id\n"])
def test_unexpected_servers_state_answer_is_an_error(answer: str) -> None:
    with pytest.raises(hr.UnexpectedAnswer, match="format version 1"):
        hr.parse_servers_state(answer)


def test_unexpected_stat_answer_is_an_error() -> None:
    with pytest.raises(hr.UnexpectedAnswer, match="pxname"):
        hr.parse_stat_csv("Unknown command\n\n")


# --------------------------------------------------------------------------- planning


def request(live: str, others: List[str], **overrides: object) -> hr.SwitchRequest:
    return hr.SwitchRequest(backend="app", live=live, others=others, **overrides)  # type: ignore[arg-type]


def test_plan_readies_a_maintained_live_and_drains_the_other() -> None:
    servers = by_name(hr.parse_servers_state(SERVERS_STATE_MAINT))

    plan = hr.plan_switch(servers, request("blue", ["green"]))

    assert plan.commands(request("blue", ["green"])) == [
        "set server app/blue state ready",
        "set server app/blue health up",
        "set server app/green state drain",
    ]


def test_plan_is_empty_when_already_switched() -> None:
    servers = by_name(hr.parse_servers_state(SERVERS_STATE_DRAIN))

    assert not hr.plan_switch(servers, request("green", ["blue"])).changed


def test_plan_to_maint_skips_the_drain_already_done() -> None:
    servers = by_name(hr.parse_servers_state(SERVERS_STATE_DRAIN))
    wanted = request("green", ["blue", "spare"], others_state="maint")

    plan = hr.plan_switch(servers, wanted)

    # blue is drained already; spare is in maintenance already.
    assert plan.commands(wanted) == ["set server app/blue state maint"]


def test_plan_without_forced_health_leaves_live_health_alone() -> None:
    servers = by_name(hr.parse_servers_state(SERVERS_STATE_MAINT))
    wanted = request("blue", ["green"], force_health_up=False)

    assert hr.plan_switch(servers, wanted).live == ["state ready"]


def test_prediction_matches_what_haproxy_does() -> None:
    servers = by_name(hr.parse_servers_state(SERVERS_STATE_MAINT))
    wanted = request("blue", ["green"], others_state="maint")

    after = hr.predict(servers, hr.plan_switch(servers, wanted), "blue")

    assert after["blue"].serving
    assert hr.admin_flag_names(after["green"].admin_state) == ["FMAINT"]
    assert hr.op_state_name(after["green"].op_state) == "STOPPED"
    assert after["spare"] == servers["spare"]


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"backend": "app;shutdown sessions"}, "backend must be an HAProxy name"),
        ({"live": "blue green"}, "live must be an HAProxy name"),
        ({"others": ["blue"]}, "also listed in others"),
        ({"others_state": "ready"}, "others_state must be one of drain, maint"),
        ({"drain_timeout": -1.0}, "drain_timeout must be 0 or more"),
    ],
)
def test_request_problems_name_the_parameter(overrides: Dict[str, object], problem: str) -> None:
    fields: Dict[str, object] = {"backend": "app", "live": "blue", "others": ["green"]}
    fields.update(overrides)

    problems = hr.SwitchRequest(**fields).problems()  # type: ignore[arg-type]

    assert any(problem in found for found in problems), problems


# --------------------------------------------------------------------------- real HAProxy harness

LAB_BACKEND = "app"
# Mirrors roles/traffic_switch/templates/haproxy.cfg.j2: blue is live, green is `disabled`.
# The operator-level socket exists only so a test can show what a non-admin socket does.
HAPROXY_CFG = """\
global
    stats socket {socket} mode 600 level admin
    stats socket {operator_socket} mode 600 level operator

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend {backend}_public
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    option httpchk
    http-check send meth GET uri /ready
    server blue 127.0.0.1:{blue_port} check inter 1s fall 2 rise 1
    server green 127.0.0.1:{green_port} check inter 1s fall 2 rise 1 disabled
"""
HEALTH_PATH = "/ready"
STARTUP_DEADLINE = 5.0


@dataclass
class NamedServer:
    """A tiny HTTP server on 127.0.0.1 that answers its own name.

    `/slow?seconds=N` holds its answer N seconds, to keep a session open through HAProxy.
    """

    name: str
    port: int = 0
    paths: List[str] = field(default_factory=list)  # requests other than health checks
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: Optional[ThreadingHTTPServer] = None

    def requests(self) -> List[str]:
        with self.lock:
            return list(self.paths)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        # HAProxy's health checks hang up as soon as they have the status line.
        pass


def start_named_server(name: str) -> NamedServer:
    server = NamedServer(name)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != HEALTH_PATH:
                with server.lock:
                    server.paths.append(self.path)
            if url.path == "/slow":
                seconds = float(parse_qs(url.query)["seconds"][0])
                if server.stopping.wait(seconds):
                    return
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = _QuietServer(("127.0.0.1", 0), Handler)
    server.httpd = httpd
    server.port = httpd.server_address[1]
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server


def stop_named_server(server: NamedServer) -> None:
    server.stopping.set()
    if server.httpd is not None:
        server.httpd.shutdown()
        server.httpd.server_close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HAProxyLab:
    directory: Path  # short, for the sockets: a Unix socket path may hold 107 bytes at most
    socket: str
    operator_socket: str
    port: int
    config: str
    servers: Dict[str, NamedServer]
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, path: Optional[str] = None, timeout: float = 2.0) -> hr.RuntimeClient:
        return hr.RuntimeClient(path or self.socket, timeout)

    def send(self, command: str) -> str:
        return self.client().send(command)

    def states(self) -> Dict[str, hr.ServerState]:
        return self.client().servers_state(LAB_BACKEND)

    def flags(self) -> Dict[str, List[str]]:
        return {name: hr.admin_flag_names(s.admin_state) for name, s in self.states().items()}

    def get(self, path: str, timeout: float = 5.0) -> str:
        """One request through the frontend, on a fresh connection; returns who answered."""
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return str(answer.read().decode())

    def answers(self, count: int, tag: str) -> List[str]:
        return [self.get(f"/{tag}/{index}") for index in range(count)]

    def requests_seen(self, name: str, tag: str) -> int:
        return sum(1 for path in self.servers[name].requests() if path.startswith(f"/{tag}/"))

    def haproxy_log(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_until_ready(lab: HAProxyLab) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        if lab.process.poll() is not None:
            raise RuntimeError(
                f"haproxy exited with {lab.process.returncode}:\n{lab.haproxy_log()}"
            )
        try:
            lab.states()
            with socket.create_connection(("127.0.0.1", lab.port), 0.5):
                return
        except (hr.RuntimeApiError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"haproxy not ready in {STARTUP_DEADLINE}s:\n{lab.haproxy_log()}")
        time.sleep(0.05)


def start_lab(binary: str) -> HAProxyLab:
    servers = {name: start_named_server(name) for name in ("blue", "green")}
    directory = Path(tempfile.mkdtemp(prefix="hx-", dir="/tmp"))
    port = free_port()
    socket_path = str(directory / "admin.sock")
    operator_socket = str(directory / "operator.sock")
    config = HAPROXY_CFG.format(
        socket=socket_path,
        operator_socket=operator_socket,
        backend=LAB_BACKEND,
        port=port,
        blue_port=servers["blue"].port,
        green_port=servers["green"].port,
    )
    config_file = directory / "haproxy.cfg"
    config_file.write_text(config)
    log = directory / "haproxy.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config_file)], stdout=log_file, stderr=subprocess.STDOUT
        )
    lab = HAProxyLab(directory, socket_path, operator_socket, port, config, servers, process, log)
    try:
        _wait_until_ready(lab)
    except BaseException:
        stop_lab(lab)
        raise
    return lab


def stop_lab(lab: HAProxyLab) -> None:
    lab.process.terminate()
    try:
        lab.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        lab.process.kill()
        lab.process.wait(timeout=5)
    for server in lab.servers.values():
        stop_named_server(server)
    shutil.rmtree(lab.directory, ignore_errors=True)


@pytest.fixture
def haproxy_lab() -> Iterator[HAProxyLab]:
    """A fresh haproxy per test, stopped in teardown even when the test fails."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("needs haproxy: apt-get install -y --no-install-recommends haproxy")
    lab = start_lab(binary)
    try:
        yield lab
    finally:
        stop_lab(lab)


# --------------------------------------------------------------------------- client, for real


def test_captured_formats_match_the_installed_haproxy(haproxy_lab: HAProxyLab) -> None:
    """The captures above stay representative: newer HAProxy versions only append columns."""
    live_state_header = haproxy_lab.send(f"show servers state {LAB_BACKEND}").splitlines()[1]
    live_stat_header = haproxy_lab.send(f"show stat {LAB_BACKEND} 4 -1").splitlines()[0]

    assert live_state_header.startswith(SERVERS_STATE_DRAIN.splitlines()[1])
    assert live_stat_header.startswith(STAT_BACKEND.splitlines()[0])


def test_lab_starts_with_blue_live_and_green_disabled(haproxy_lab: HAProxyLab) -> None:
    states = haproxy_lab.states()

    assert haproxy_lab.flags() == {"blue": [], "green": ["FMAINT", "CMAINT"]}
    assert states["blue"].serving and not states["green"].serving
    assert set(haproxy_lab.answers(4, "start")) == {"blue"}


def test_set_commands_answer_nothing_and_change_state(haproxy_lab: HAProxyLab) -> None:
    client = haproxy_lab.client()

    client.set_server(LAB_BACKEND, "blue", "state drain")

    assert haproxy_lab.flags()["blue"] == ["FDRAIN"]
    assert client.server_stats(LAB_BACKEND)["blue"].status == "DRAIN"


def test_any_answer_to_a_set_is_an_error_with_command_and_answer(
    haproxy_lab: HAProxyLab,
) -> None:
    with pytest.raises(hr.CommandRejected) as failure:
        haproxy_lab.client().set_server(LAB_BACKEND, "blue", "state asleep")

    message = str(failure.value)
    assert "`set server app/blue state asleep`" in message
    assert "expects 'ready', 'drain' and 'maint'" in message


def test_unknown_backend_is_named_with_the_existing_ones(haproxy_lab: HAProxyLab) -> None:
    with pytest.raises(hr.UnknownName) as failure:
        haproxy_lab.client().servers_state("nope")

    assert str(failure.value).startswith("backend 'nope' not found")
    assert "backends: app" in str(failure.value)


def test_unknown_server_is_named_with_the_existing_ones(haproxy_lab: HAProxyLab) -> None:
    switch = hr.SlotSwitch(haproxy_lab.client(), request("green", ["bleu"]))

    with pytest.raises(hr.UnknownName) as failure:
        switch.run(check_mode=False)

    assert str(failure.value) == (
        "server 'bleu' (parameter others) not found in backend 'app'; servers: blue, green"
    )
    assert haproxy_lab.flags() == {"blue": [], "green": ["FMAINT", "CMAINT"]}


def test_operator_socket_is_refused_before_any_set(haproxy_lab: HAProxyLab) -> None:
    client = haproxy_lab.client(haproxy_lab.operator_socket)
    switch = hr.SlotSwitch(client, request("green", ["blue"]))

    with pytest.raises(hr.RuntimeApiError) as failure:
        switch.run(check_mode=False)

    assert "at level 'operator'" in str(failure.value)
    assert f"stats socket {haproxy_lab.operator_socket} level admin" in str(failure.value)
    assert switch.outcome.commands == []
    assert haproxy_lab.flags() == {"blue": [], "green": ["FMAINT", "CMAINT"]}


def test_drain_wait_counts_a_held_open_session(haproxy_lab: HAProxyLab) -> None:
    slow = threading.Thread(target=haproxy_lab.get, args=("/slow?seconds=1.0",))
    slow.start()  # only blue is in rotation, so blue holds it
    try:
        _wait_for(lambda: haproxy_lab.client().server_stats(LAB_BACKEND)["blue"].scur == 1)
        client = haproxy_lab.client()

        held = hr.wait_for_drain(client, LAB_BACKEND, ["blue"], 0.3)
        started = time.monotonic()
        drained = hr.wait_for_drain(client, LAB_BACKEND, ["blue"], 3.0)
        waited = time.monotonic() - started
    finally:
        slow.join()

    assert held["blue"].scur == 1
    assert drained["blue"].scur == 0
    assert 0.2 < waited < 1.5


def _wait_for(condition: Callable[[], bool], deadline: float = 3.0) -> None:
    ends = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < ends, "condition not met in time"
        time.sleep(0.02)


# --------------------------------------------------------------------------- socket errors


def test_missing_socket_names_path_and_expected_stanza(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.sock")

    with pytest.raises(hr.SocketUnavailable) as failure:
        hr.RuntimeClient(path, 1.0).send("show servers state")

    assert str(failure.value) == (
        f"HAProxy admin socket {path} does not exist: expected a running haproxy with "
        f"`stats socket {path} level admin` in the global section of haproxy.cfg "
        "(parameter socket)"
    )


def test_stale_socket_file_refuses(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leftover:
        leftover.bind(path)  # a socket file nobody listens on, as a dead haproxy leaves it

    with pytest.raises(hr.SocketUnavailable, match="refuses connections"):
        hr.RuntimeClient(path, 1.0).send("show servers state")


def test_silent_socket_times_out(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(path)
        silent.listen(1)  # accepts into the backlog, never answers

        with pytest.raises(hr.SocketUnavailable) as failure:
            hr.RuntimeClient(path, 0.2).send("show servers state")

    assert "did not answer `show servers state` within 0.2s" in str(failure.value)


SETPRIV = shutil.which("setpriv")
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or not SYSTEM_PYTHON.exists(),
    reason="needs root, setpriv and /usr/bin/python3 to connect as another user",
)
def test_permission_denied_names_socket(haproxy_lab: HAProxyLab) -> None:
    """As `nobody`, on the system Python, the 0600 root socket must be refused clearly."""
    script = (
        RUNTIME_FILE.read_text()
        + "\ntry:\n"
        + f"    RuntimeClient({haproxy_lab.socket!r}, 1.0).send('show servers state')\n"
        + "except SocketUnavailable as exc:\n    print(exc)\n"
    )
    os.chmod(haproxy_lab.directory, 0o755)  # let nobody reach the socket file itself
    assert SETPRIV is not None
    result = subprocess.run(
        [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups",
         str(SYSTEM_PYTHON), "-c", script],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip

    assert result.stdout.startswith(
        f"permission denied on HAProxy admin socket {haproxy_lab.socket}: run the task as root"
    ), result.stdout + result.stderr
    assert f"stats socket {haproxy_lab.socket} level admin mode 660" in result.stdout
