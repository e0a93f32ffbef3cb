"""A bounded HTTP load generator that counts every failed request.

Used by the zero-downtime tests, the demo and the benchmarks. Half the workers open a new
connection per request; the other half reuse keep-alive connections. A request on a reused
connection that the server had closed, with no byte of answer received, is retried once on a
new connection (as browsers and HTTP libraries do) and counted as a retry, not a failure.

    python tests/tools/loadgen.py --url http://10.213.0.11/ --seconds 30 --rate 200
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

# Errors that mean "the server closed this connection before answering": safe to retry once
# on a fresh connection when the connection had been reused.
CLOSED_BEFORE_ANSWER = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


@dataclass
class Tally:
    """Counts shared by all workers (guarded by a lock)."""

    ok: int = 0
    failed: int = 0
    retries: int = 0
    by_answer: Counter[str] = field(default_factory=Counter)
    failures: List[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The longest time no request got a good answer: what a user would feel as an outage.
    last_ok_at: Optional[float] = None
    max_gap: float = 0.0

    def record_ok(self, body: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.ok += 1
            self.by_answer[body.strip()] += 1
            if self.last_ok_at is not None:
                self.max_gap = max(self.max_gap, now - self.last_ok_at)
            self.last_ok_at = now

    def record_failure(self, reason: str) -> None:
        with self.lock:
            self.failed += 1
            if len(self.failures) < 20:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {reason}")

    def record_retry(self) -> None:
        with self.lock:
            self.retries += 1

    def summary(self) -> Dict[str, Any]:
        with self.lock:
            return {
                "requests": self.ok + self.failed,
                "ok": self.ok,
                "failed": self.failed,
                "retries": self.retries,
                "max_gap_ms": round(self.max_gap * 1000),
                "answers": dict(self.by_answer),
                "failures": list(self.failures),
            }


class Pacer:
    """Spreads one worker's requests evenly: rate/worker requests per second, no bursts."""

    def __init__(self, per_second: float) -> None:
        self.period = 1.0 / per_second
        self.next_at = time.monotonic()

    def wait(self) -> None:
        self.next_at += self.period
        delay = self.next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self.next_at = time.monotonic()


def split_url(url: str) -> Tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--url must be http://HOST[:PORT]/PATH, got {url!r}")
    return parts.hostname, parts.port or 80, parts.path or "/"


def fetch(conn: http.client.HTTPConnection, path: str) -> Tuple[int, str]:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode("utf-8", "replace")
    if response.getheader("Connection", "").lower() == "close":
        conn.close()
    return response.status, body


class Worker(threading.Thread):
    def __init__(
        self,
        url: str,
        keep_alive: bool,
        rate: float,
        stop: threading.Event,
        tally: Tally,
        timeout: float,
    ) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.path = split_url(url)
        self.keep_alive, self.stop, self.tally, self.timeout = keep_alive, stop, tally, timeout
        self.pacer = Pacer(rate)
        self.conn: Optional[http.client.HTTPConnection] = None
        self.reused = False

    def connection(self) -> http.client.HTTPConnection:
        if self.conn is None or self.conn.sock is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.reused = False
        return self.conn

    def drop_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn, self.reused = None, False

    def one_request(self) -> None:
        conn = self.connection()
        was_reused = self.reused
        try:
            status, body = fetch(conn, self.path)
        except CLOSED_BEFORE_ANSWER as error:
            self.drop_connection()
            if not was_reused:
                self.tally.record_failure(f"{type(error).__name__}: {error}")
                return
            self.tally.record_retry()
            try:
                status, body = fetch(self.connection(), self.path)
            except (OSError, http.client.HTTPException) as retry_error:
                self.drop_connection()
                self.tally.record_failure(f"retry: {type(retry_error).__name__}: {retry_error}")
                return
        except (OSError, http.client.HTTPException) as error:
            self.drop_connection()
            self.tally.record_failure(f"{type(error).__name__}: {error}")
            return
        if status != 200:
            self.tally.record_failure(f"HTTP {status}: {body[:120]!r}")
        else:
            self.tally.record_ok(body)
        if self.keep_alive and self.conn is not None and self.conn.sock is not None:
            self.reused = True
        else:
            self.drop_connection()

    def run(self) -> None:
        while not self.stop.is_set():
            self.one_request()
            self.pacer.wait()
        self.drop_connection()


class Load:
    """Runs workers against a URL until stopped (or for a bounded time)."""

    def __init__(
        self,
        url: str,
        rate: float = 200.0,
        workers: int = 8,
        timeout: float = 5.0,
        max_seconds: float = 600.0,
    ) -> None:
        self.stop_event = threading.Event()
        self.tally = Tally()
        self.max_seconds = max_seconds
        per_worker = rate / workers
        self.workers = [
            Worker(
                url,
                keep_alive=i % 2 == 1,
                rate=per_worker,
                stop=self.stop_event,
                tally=self.tally,
                timeout=timeout,
            )
            for i in range(workers)
        ]
        self.started = 0.0
        self.timer = threading.Timer(max_seconds, self.stop_event.set)

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self.timer.start()
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Dict[str, Any]:
        self.stop_event.set()
        self.timer.cancel()
        for worker in self.workers:
            worker.join(timeout=10)
        return self.result()

    def result(self) -> Dict[str, Any]:
        summary = self.tally.summary()
        summary["seconds"] = round(time.monotonic() - self.started, 2)
        return summary


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description="Bounded HTTP load with failure accounting.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, total")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    with Load(args.url, rate=args.rate, workers=args.workers) as load:
        time.sleep(args.seconds)
        result = load.stop()
    print(json.dumps(result, indent=2))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
