"""The load generator behind every "0 failed" figure must count failures and retries right."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from typing import ClassVar, Iterator, List

import pytest

from tests.tools.loadgen import Load


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    status = 200
    # Close each connection after answering, without saying so: what nginx does to idle
    # keep-alive connections when it reloads.
    drop_idle = False
    served: ClassVar[List[int]] = []

    def do_GET(self) -> None:
        body = b"ok v1\n"
        self.send_response(type(self).status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        type(self).served.append(1)
        if type(self).drop_idle:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    Handler.status = 200
    Handler.drop_idle = False
    Handler.served = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(httpd: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/"


def test_every_request_is_counted_and_answers_are_tallied(
    server: http.server.ThreadingHTTPServer,
) -> None:
    with Load(url(server), rate=100, workers=4) as load:
        time.sleep(1.0)
        result = load.stop()
    assert result["failed"] == 0
    assert result["ok"] == result["requests"] == len(Handler.served)
    assert result["requests"] > 50
    assert result["answers"] == {"ok v1": result["ok"]}


def test_an_error_status_is_a_failure(server: http.server.ThreadingHTTPServer) -> None:
    Handler.status = 503
    with Load(url(server), rate=50, workers=2) as load:
        time.sleep(0.5)
        result = load.stop()
    assert result["ok"] == 0
    assert result["failed"] == result["requests"] > 0
    assert "HTTP 503" in result["failures"][0]


def test_a_refused_connection_is_a_failure_not_a_retry() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Load(f"http://127.0.0.1:{port}/", rate=20, workers=2) as load:
        time.sleep(0.5)
        result = load.stop()
    assert result["ok"] == 0 and result["failed"] > 0
    assert result["retries"] == 0


def test_a_reused_connection_closed_by_the_server_is_retried_once(
    server: http.server.ThreadingHTTPServer,
) -> None:
    """A keep-alive connection the server closed, with no byte answered: one retry on a new
    connection, counted as a retry and not as a failure."""
    Handler.drop_idle = True
    with Load(url(server), rate=40, workers=2) as load:
        time.sleep(1.0)
        result = load.stop()
    assert result["retries"] >= 5, result
    assert result["failed"] == 0, result
    assert result["ok"] == result["requests"]


def test_max_gap_is_the_longest_time_without_a_good_answer(
    server: http.server.ThreadingHTTPServer,
) -> None:
    with Load(url(server), rate=100, workers=4) as load:
        time.sleep(0.5)
        Handler.status = 503  # an outage of about 0.6 s
        time.sleep(0.6)
        Handler.status = 200
        time.sleep(0.5)
        result = load.stop()
    assert 550 <= result["max_gap_ms"] <= 900, result
    assert result["failed"] > 0
