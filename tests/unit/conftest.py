"""A real HTTP server on 127.0.0.1 whose answers are scripted per path, for the probe tests."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pytest


@dataclass
class Reply:
    """One scripted answer: sent after `delay` seconds (the server stays interruptible)."""

    status: int = 200
    body: Union[str, bytes] = ""
    delay: float = 0.0
    content_type: str = "application/json"
    trickle: float = 0.0  # seconds between body bytes: a server that dribbles its answer


@dataclass
class SeenRequest:
    path: str
    headers: Dict[str, str]
    at: float  # time.monotonic() when the request line arrived


@dataclass
class ScriptedServer:
    """Each path answers from its queue; the last reply repeats once the queue is exhausted."""

    host: str
    port: int
    scheme: str = "http"
    scripts: Dict[str, Deque[Reply]] = field(default_factory=dict)
    seen: List[SeenRequest] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def script(
        self, path: str, replies: Sequence[Union[Reply, Tuple[int, Union[str, bytes]]]]
    ) -> str:
        """Script `path` and return its URL. Tuples are (status, body) shorthands."""
        queue: Deque[Reply] = deque(r if isinstance(r, Reply) else Reply(*r) for r in replies)
        with self.lock:
            self.scripts[path] = queue
        return self.url(path)

    def next_reply(self, path: str) -> Reply:
        with self.lock:
            queue = self.scripts.get(path)
            if not queue:
                return Reply(404, '{"error":"unscripted path"}')
            return queue.popleft() if len(queue) > 1 else queue[0]

    def requests_to(self, path: str) -> List[SeenRequest]:
        with self.lock:
            return [seen for seen in self.seen if seen.path == path]


def _handler_for(server: ScriptedServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            with server.lock:
                server.seen.append(SeenRequest(self.path, dict(self.headers), time.monotonic()))
            reply = server.next_reply(self.path)
            if reply.delay and server.stopping.wait(reply.delay):
                return
            body = reply.body.encode() if isinstance(reply.body, str) else reply.body
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if not reply.trickle:
                self.wfile.write(body)
                return
            for index in range(len(body)):
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
                if server.stopping.wait(reply.trickle):
                    return

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest output readable

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out hang up mid-answer by design; a broken pipe is expected.
        pass


def start_server(tls: Optional[ssl.SSLContext] = None) -> Tuple[ScriptedServer, _QuietServer]:
    scripted = ScriptedServer(host="127.0.0.1", port=0)
    httpd = _QuietServer(("127.0.0.1", 0), _handler_for(scripted))
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    scripted.port = httpd.server_address[1]
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return scripted, httpd


def stop_server(scripted: ScriptedServer, httpd: _QuietServer) -> None:
    scripted.stopping.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def http_server() -> Iterator[ScriptedServer]:
    scripted, httpd = start_server()
    yield scripted
    stop_server(scripted, httpd)


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[ScriptedServer]:
    """The same server behind TLS with a fresh self-signed certificate for 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    scripted, httpd = start_server(tls)
    scripted.scheme = "https"
    yield scripted
    stop_server(scripted, httpd)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound then released, so it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
