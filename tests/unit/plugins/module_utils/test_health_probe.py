"""health_probe against a real scripted HTTP server on 127.0.0.1 (see tests/unit/conftest.py).

The module under test is loaded from its file, not through Ansible's collection loader: on
managed hosts it runs as a plain script, so the tests hold it to that.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import pytest

from tests.unit.standalone import load_standalone

from ...conftest import Reply, ScriptedServer

REPO = Path(__file__).resolve().parents[4]
PROBE_FILE = REPO / "plugins" / "module_utils" / "health_probe.py"
# How far past its deadline a probe may end: scheduling and one loopback round trip.
DEADLINE_MARGIN = 0.25


if TYPE_CHECKING:
    from ansible_collections.beamops.release.plugins.module_utils import health_probe as hp
else:
    hp = load_standalone(PROBE_FILE)


class FakeTime:
    """A clock that only moves when the probe sleeps: exact, instant timing tests."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: List[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def config(urls: List[str], **overrides: Any) -> hp.ProbeConfig:
    """Fast defaults for tests: the real defaults (1 s interval, 60 s deadline) are too slow."""
    settings: Dict[str, Any] = {"interval": 0.01, "jitter": 0.0, "timeout": 1.0, "deadline": 5.0}
    settings.update(overrides)
    return hp.ProbeConfig(urls=urls, **settings)


def timed(probe: Callable[[], hp.ProbeResult]) -> Tuple[hp.ProbeResult, float]:
    started = time.monotonic()
    result = probe()
    return result, time.monotonic() - started


# --------------------------------------------------------------------------- thresholds


def test_healthy_on_first_passing_answer(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [(200, '{"status":"ready"}')])

    result = hp.run_probe(config([url]))

    assert result.passed is True
    assert (result.attempts, result.consecutive_successes, result.reason) == (1, 1, "healthy")
    answer = result.answers[0]
    assert (answer.url, answer.status, answer.body, answer.error) == (
        url,
        200,
        '{"status":"ready"}',
        None,
    )
    assert len(http_server.requests_to("/ready")) == 1


def test_success_threshold_counts_consecutive_passes(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [(503, "starting"), (200, "ok")])

    result = hp.run_probe(config([url], success_threshold=3))

    assert result.passed is True
    assert (result.attempts, result.consecutive_successes) == (4, 3)
    assert len(http_server.requests_to("/ready")) == 4


def test_failure_in_between_resets_success_count(http_server: ScriptedServer) -> None:
    replies = [(200, "ok"), (200, "ok"), (503, "blip"), (200, "ok"), (200, "ok"), (200, "ok")]
    url = http_server.script("/ready", replies)

    result = hp.run_probe(config([url], success_threshold=3))

    # Without the reset the third pass (attempt 4) would already have been enough.
    assert result.passed is True
    assert (result.attempts, result.consecutive_successes) == (6, 3)


def test_failure_threshold_ends_early(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [(503, '{"status":"starting"}')])

    result, wall = timed(lambda: hp.run_probe(config([url], failure_threshold=3, deadline=30)))

    assert result.passed is False
    assert (result.attempts, result.reason) == (3, "failure_threshold")
    assert wall < 1.0
    assert len(http_server.requests_to("/ready")) == 3
    assert result.answers[0].failure == "status 503 not in [200]"


def test_failure_threshold_needs_consecutive_failures(http_server: ScriptedServer) -> None:
    replies = [(503, "a"), (503, "b"), (200, "ok"), (503, "c"), (503, "d"), (503, "e")]
    url = http_server.script("/ready", replies)

    result = hp.run_probe(config([url], failure_threshold=3, success_threshold=2))

    assert (result.attempts, result.reason) == (6, "failure_threshold")


def test_zero_failure_threshold_leaves_it_to_the_deadline(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [(503, "starting")])
    fake = FakeTime()

    result = hp.run_probe(
        config([url], interval=1, failure_threshold=0, deadline=20), fake.clock, fake.sleep
    )

    # Attempts at t=0..19; the sleep after the 20th reaches the deadline exactly.
    assert (result.reason, result.attempts, result.elapsed) == ("deadline", 20, 20.0)


# --------------------------------------------------------------------------- time limits


def test_deadline_ends_never_ready_probe(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [(503, '{"status":"starting"}')])

    result, wall = timed(lambda: hp.run_probe(config([url], interval=0.05, deadline=0.6)))

    assert (result.passed, result.reason) == (False, "deadline")
    assert 0.6 <= wall <= 0.6 + DEADLINE_MARGIN
    assert 0.6 <= result.elapsed <= 0.6 + DEADLINE_MARGIN
    assert result.attempts >= 5


def test_deadline_caps_the_last_sleep(closed_port: int) -> None:
    fake = FakeTime()
    refused = f"http://127.0.0.1:{closed_port}/"

    result = hp.run_probe(
        config([refused], interval=1, deadline=2.5, timeout=0.2), fake.clock, fake.sleep
    )

    assert fake.sleeps == [1.0, 1.0, 0.5]
    assert (result.attempts, result.elapsed, result.reason) == (3, 2.5, "deadline")


def test_per_request_timeout_on_a_server_that_sleeps(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [Reply(200, "late", delay=3)])

    result, wall = timed(lambda: hp.run_probe(config([url], timeout=0.2, failure_threshold=1)))

    answer = result.answers[0]
    assert answer.status is None
    assert answer.error == "timed out after 0.20s"
    assert 0.2 <= wall < 0.2 + DEADLINE_MARGIN


def test_deadline_caps_the_request_timeout(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [Reply(200, "late", delay=3)])

    result, wall = timed(lambda: hp.run_probe(config([url], timeout=10, deadline=0.4)))

    assert (result.attempts, result.reason) == (1, "deadline")
    assert result.answers[0].error is not None
    assert result.answers[0].error.startswith("timed out after 0.")
    assert wall <= 0.4 + DEADLINE_MARGIN


def test_request_cut_short_by_the_deadline_keeps_the_last_real_answer(
    http_server: ScriptedServer,
) -> None:
    url = http_server.script(
        "/ready", [Reply(503, '{"status":"starting"}'), Reply(200, "", delay=3)]
    )
    probe = config([url], timeout=5, interval=0.05, deadline=0.5)

    result = hp.run_probe(probe)

    assert (result.attempts, result.reason) == (2, "deadline")
    assert (result.answers[0].status, result.answers[0].body) == (503, '{"status":"starting"}')
    assert hp.failure_message(result, probe).endswith('last answer 503 {"status":"starting"}')


def test_timeout_covers_a_body_that_trickles_in(http_server: ScriptedServer) -> None:
    # Every byte arrives within the timeout, the whole body (4 s) does not: a per-read
    # timeout would wait it out, the probe must not.
    url = http_server.script("/ready", [Reply(200, "x" * 80, trickle=0.05)])

    result, wall = timed(lambda: hp.run_probe(config([url], timeout=0.5, failure_threshold=1)))

    assert result.answers[0].error == "timed out after 0.50s"
    assert wall < 0.5 + DEADLINE_MARGIN


def test_initial_delay_before_first_attempt(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [(200, "ok")])
    started = time.monotonic()

    result = hp.run_probe(config([url], initial_delay=0.3))

    first_request = http_server.requests_to("/ready")[0]
    assert first_request.at - started >= 0.3
    assert result.passed and result.elapsed >= 0.3


@pytest.mark.parametrize(
    ("uniform", "expected"),
    [
        (lambda low, high: low, 0.9),
        (lambda low, high: high, 1.1),
    ],
    ids=["lowest", "highest"],
)
def test_jitter_extremes(
    closed_port: int, uniform: Callable[[float, float], float], expected: float
) -> None:
    fake = FakeTime()
    refused = f"http://127.0.0.1:{closed_port}/"
    probe = config([refused], interval=1, jitter=0.1, failure_threshold=4, deadline=100)

    hp.run_probe(probe, fake.clock, fake.sleep, uniform)

    assert fake.sleeps == pytest.approx([expected] * 3)


def test_jitter_stays_within_bounds(closed_port: int) -> None:
    fake = FakeTime()
    drawn: List[Tuple[float, float]] = []
    rng = random.Random(20240611)

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return rng.uniform(low, high)

    probe = config(
        [f"http://127.0.0.1:{closed_port}/"],
        interval=2,
        jitter=0.25,
        failure_threshold=200,
        deadline=10_000,
    )
    hp.run_probe(probe, fake.clock, fake.sleep, uniform)

    assert len(fake.sleeps) == 199
    assert set(drawn) == {(-0.5, 0.5)}
    assert min(fake.sleeps) >= 1.5 and max(fake.sleeps) <= 2.5
    # Actually spread out, not a constant interval.
    assert max(fake.sleeps) - min(fake.sleeps) > 0.5


# --------------------------------------------------------------------------- answers


def test_connection_refused_on_a_closed_port(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/health"

    result = hp.run_probe(config([url], failure_threshold=2))

    answer = result.answers[0]
    assert (answer.status, answer.error, answer.body) == (None, "connection refused", "")
    assert hp.failure_message(result, config([url])).endswith("last error: connection refused")


READY_DOCUMENT = json.dumps(
    {"status": "ready", "checks": {"db": True, "queue": 3}, "nodes": [{"up": True}]}
)


@pytest.mark.parametrize(
    ("fields", "failure"),
    [
        ({"status": "ready", "checks.db": True, "checks.queue": 3, "nodes.0.up": True}, None),
        ({"status": "starting"}, 'status is "ready", expected "starting"'),
        ({"checks.db": False}, "checks.db is true, expected false"),
        ({"checks.queue": True}, "checks.queue is 3, expected true"),
        ({"checks.cache": True}, "checks.cache missing (expected true)"),
        ({"nodes.1.up": True}, "nodes.1.up missing (expected true)"),
        (
            {"status": "ready", "checks.db": False, "checks.cache": 1},
            "checks.db is true, expected false; checks.cache missing (expected 1)",
        ),
    ],
    ids=["match", "string", "bool", "bool-vs-int", "missing", "index", "several"],
)
def test_json_fields(
    http_server: ScriptedServer, fields: Dict[str, Any], failure: Optional[str]
) -> None:
    url = http_server.script("/ready", [(200, READY_DOCUMENT)])

    result = hp.run_probe(config([url], json_fields=fields, failure_threshold=1))

    assert result.answers[0].failure == failure
    assert result.passed is (failure is None)


def test_non_json_body_fails_when_fields_are_expected(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [Reply(200, "OK", content_type="text/plain")])
    probe = config([url], json_fields={"status": "ready"}, failure_threshold=1)

    result = hp.run_probe(probe)

    failure = result.answers[0].failure
    assert failure is not None
    assert failure.startswith("body is not JSON (Expecting value")
    assert failure.endswith("expected fields status")
    assert hp.failure_message(result, probe).endswith(f"last answer 200 OK ({failure})")


def test_non_json_body_passes_when_no_fields_are_expected(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [Reply(200, "OK", content_type="text/plain")])

    assert hp.run_probe(config([url])).passed is True


def test_status_codes_are_checked_before_fields(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [(204, READY_DOCUMENT)])

    failing = hp.run_probe(config([url], json_fields={"status": "ready"}, failure_threshold=1))
    passing = hp.run_probe(config([url], status_codes=[200, 204]))

    assert failing.answers[0].failure == "status 204 not in [200]"
    assert passing.passed is True


def test_several_urls_where_one_fails(http_server: ScriptedServer) -> None:
    live = http_server.script("/live", [(200, "alive")])
    ready = http_server.script("/ready", [(503, '{"status":"starting"}')])
    probe = config([live, ready], failure_threshold=2)

    result = hp.run_probe(probe)

    assert (result.passed, result.attempts) == (False, 2)
    assert [answer.passed for answer in result.answers] == [True, False]
    assert len(http_server.requests_to("/live")) == len(http_server.requests_to("/ready")) == 2
    message = hp.failure_message(result, probe)
    assert message.startswith(f"{ready} (1 of 2 URLs) not healthy after 2 attempts")
    assert live not in message


def test_several_urls_all_passing(http_server: ScriptedServer) -> None:
    urls = [http_server.script(path, [(200, "ok")]) for path in ("/live", "/ready")]

    result = hp.run_probe(config(urls, success_threshold=2))

    assert (result.passed, result.attempts) == (True, 2)
    assert [answer.status for answer in result.answers] == [200, 200]


def test_body_excerpt_is_truncated(http_server: ScriptedServer) -> None:
    url = http_server.script("/big", [(503, "x" * 5000)])

    result = hp.run_probe(config([url], body_excerpt_bytes=100, failure_threshold=1))

    assert result.answers[0].body == "x" * 100


def test_body_excerpt_limits_the_report_not_the_json_check(http_server: ScriptedServer) -> None:
    document = json.dumps({"padding": "p" * 5000, "status": "ready"})
    url = http_server.script("/big", [(200, document)])

    result = hp.run_probe(config([url], body_excerpt_bytes=64, json_fields={"status": "ready"}))

    assert result.passed is True
    assert result.answers[0].body == document[:64]


def test_body_excerpt_decodes_safely() -> None:
    assert hp.decode_excerpt("é".encode() * 10, 5) == "éé"  # the cut half character is dropped
    assert hp.decode_excerpt(b"\xff\xfeok", 10) == "\ufffd\ufffdok"
    assert hp.decode_excerpt(b"abc", 0) == ""


def test_headers_are_sent(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [(200, "ok")])

    hp.run_probe(config([url], headers={"Authorization": "Bearer t0k", "Host": "app.internal"}))

    seen = http_server.requests_to("/ready")[0].headers
    assert seen["Authorization"] == "Bearer t0k"
    assert seen["Host"] == "app.internal"
    assert seen["User-Agent"].startswith("beamops-health-probe/")


def test_query_string_is_kept(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready?full=1", [(200, "ok")])

    assert hp.run_probe(config([url])).passed is True


def test_https_certificate_validation(https_server: ScriptedServer) -> None:
    url = https_server.script("/ready", [(200, "ok")])

    verified = hp.run_probe(config([url], failure_threshold=1))
    unverified = hp.run_probe(config([url], validate_certs=False))

    error = verified.answers[0].error
    assert error is not None and "CERTIFICATE_VERIFY_FAILED" in error
    assert unverified.passed is True


# --------------------------------------------------------------------------- messages


def test_failure_message_format(http_server: ScriptedServer) -> None:
    url = http_server.script("/health/ready", [(503, '{"status":"starting"}')])
    probe = config([url], interval=0.05, deadline=0.3)

    message = hp.failure_message(hp.run_probe(probe), probe)

    pattern = (
        re.escape(url)
        + r" not healthy after \d+ attempts in 0\.[3-5]s \(deadline\): "
        + re.escape('last answer 503 {"status":"starting"}')
    )
    assert re.fullmatch(pattern, message), message


def test_failure_message_with_success_threshold_not_reached(http_server: ScriptedServer) -> None:
    url = http_server.script("/ready", [(200, "multi\nline\n  body")])
    probe = config([url], success_threshold=5, interval=0.2, deadline=0.5)

    result = hp.run_probe(probe)
    message = hp.failure_message(result, probe)

    assert result.passed is False
    assert f"with {result.consecutive_successes} of 5 consecutive successes" in message
    assert message.endswith("last answer 200 multi line body")
    assert "\n" not in message


# --------------------------------------------------------------------------- validation


def test_default_config_is_valid() -> None:
    assert hp.validate_config(hp.ProbeConfig(urls=["https://app.example:8443/health"])) == []


def test_validation_names_every_bad_setting() -> None:
    bad = hp.ProbeConfig(
        urls=["ftp://host/", "http://:80/"],
        status_codes=[99],
        json_fields={"checks..db": True},
        timeout=float("nan"),
        interval=-1,
        jitter=1.5,
        initial_delay=5,
        success_threshold=0,
        failure_threshold=-1,
        deadline=2,
        headers={"Bad Name": "x", "X-Ok": "two\nlines"},
        body_excerpt_bytes=-1,
    )

    errors = hp.validate_config(bad)

    assert errors == [
        "urls: 'ftp://host/' is not an http:// or https:// URL",
        "urls: 'http://:80/' has no host",
        "status_codes: 99 is not an HTTP status code (100-599)",
        "json_fields: 'checks..db' is not a dotted path such as 'checks.db'",
        "headers: 'Bad Name' is not a valid header name",
        "headers: value of 'X-Ok' must be a single-line string",
        "timeout must be a finite number, got nan",
        "interval must be >= 0, got -1",
        "jitter must be >= 0 and <= 1, got 1.5",
        "initial_delay (5) must be less than deadline (2)",
        "success_threshold must be >= 1, got 0",
        "failure_threshold must be >= 0, got -1",
        "body_excerpt_bytes must be >= 0, got -1",
    ]


def test_validation_uses_the_callers_names() -> None:
    errors = hp.validate_config(hp.ProbeConfig(urls=[], deadline=0), hp.CLI_NAMES)

    assert errors == [
        "--url must be a non-empty list of URLs, got []",
        "--deadline must be > 0, got 0",
    ]


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status=ready", ("status", "ready")),
        ("checks.db=true", ("checks.db", True)),
        ("queue=3", ("queue", 3)),
        ('version="1.2"', ("version", "1.2")),
        ("note=a=b", ("note", "a=b")),
    ],
)
def test_parse_json_field(text: str, expected: Tuple[str, Any]) -> None:
    assert hp.parse_json_field(text) == expected


def test_main_in_process(http_server: ScriptedServer, capsys: pytest.CaptureFixture[str]) -> None:
    ok = http_server.script("/ok", [(200, '{"checks":{"db":true}}')])
    bad = http_server.script("/bad", [(500, "boom")])

    assert hp.main(["--url", ok, "--json-field", "checks.db=true", "--header", "X-A: 1"]) == 0
    assert capsys.readouterr() == ("", "")
    assert hp.main(["--url", bad, "--failure-threshold", "2", "--interval", "0.01"]) == 1
    assert capsys.readouterr().err == (
        f"readiness gate: {bad} not healthy after 2 attempts in 0.0s (failure_threshold): "
        "last answer 500 boom\n"
    )
    assert http_server.requests_to("/ok")[0].headers["X-A"] == "1"


def _oldest_python() -> Optional[str]:
    """A working python3.8 (the oldest managed-host Python), if this machine has one."""
    candidates = [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.8*/bin/python3.8"))]
    candidates.append(shutil.which("python3.8") or "")  # may be a pyenv shim that refuses
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


def _interpreters() -> List[Any]:
    """The controller's Python, plus the oldest Python managed hosts may have, when present."""
    oldest = _oldest_python()
    marks = [] if oldest else [pytest.mark.skip(reason="no working python3.8 on this machine")]
    return [
        pytest.param(sys.executable, id="venv"),
        pytest.param(oldest or "python3.8", id="python3.8", marks=marks),
    ]


def run_cli(interpreter: str, *args: str) -> subprocess.CompletedProcess[str]:
    # -I: no site-packages, no PYTHONPATH, no cwd on sys.path: Ansible cannot sneak in.
    return subprocess.run(
        [interpreter, "-I", str(PROBE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize("interpreter", _interpreters())
def test_cli_exit_codes_and_one_line_message(
    http_server: ScriptedServer, closed_port: int, interpreter: str
) -> None:
    ready = http_server.script(
        "/ready", [(503, '{"status":"starting"}'), (200, '{"status":"ready"}')]
    )
    starting = http_server.script("/starting", [(503, '{"status":"starting"}')])
    refused = f"http://127.0.0.1:{closed_port}/ready"
    fast = ["--interval", "0.05", "--jitter", "0", "--timeout", "1"]

    healthy = run_cli(interpreter, "--url", ready, "--json-field", "status=ready", *fast)
    unhealthy = run_cli(interpreter, "--url", starting, "--deadline", "0.5", *fast)
    no_server = run_cli(interpreter, "--url", refused, "--failure-threshold", "3", *fast)

    assert (healthy.returncode, healthy.stdout, healthy.stderr) == (0, "", "")
    assert unhealthy.returncode == 1
    assert re.fullmatch(
        "readiness gate: "
        + re.escape(starting)
        + r" not healthy after \d+ attempts in 0\.[5-7]s \(deadline\): "
        + re.escape('last answer 503 {"status":"starting"}')
        + "\n",
        unhealthy.stderr,
    ), unhealthy.stderr
    assert no_server.returncode == 1
    assert no_server.stderr == (
        f"readiness gate: {refused} not healthy after 3 attempts in 0.1s (failure_threshold): "
        "last error: connection refused\n"
    )


def test_cli_usage_errors_name_the_flag() -> None:
    result = run_cli(sys.executable, "--url", "http://127.0.0.1:1/", "--success-threshold", "0")

    assert result.returncode == 2
    assert "--success-threshold must be >= 1, got 0" in result.stderr


def test_run_probe_refuses_an_invalid_config() -> None:
    with pytest.raises(ValueError, match=r"^invalid probe config: urls must be a non-empty list"):
        hp.run_probe(hp.ProbeConfig(urls=[]))


def test_a_watched_process_that_exits_ends_the_probe_at_once(closed_port: int) -> None:
    """The unit's gate passes --pid $MAINPID: a VM that died is not probed until the deadline."""
    config = hp.ProbeConfig(urls=[f"http://127.0.0.1:{closed_port}/"], interval=0.05, deadline=30)
    gone = iter([None, None, "process 42 exited"])
    started = time.monotonic()
    result = hp.run_probe(config, alive=lambda: next(gone))
    assert not result.passed and result.reason == hp.REASON_EXITED
    assert result.attempts == 3 and time.monotonic() - started < 2
    assert "(process 42 exited)" in hp.failure_message(result, config)


def test_process_gone_tells_a_running_process_from_an_exited_one() -> None:
    assert hp.process_gone(os.getpid()) is None
    child = subprocess.Popen(["true"])
    child.wait()
    assert hp.process_gone(child.pid) == f"process {child.pid} exited"


def test_process_gone_counts_a_zombie_as_exited() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while hp.process_gone(child.pid) is None:  # running, then a zombie nobody reaped yet
        assert time.monotonic() < deadline, "the child never showed as exited"
        time.sleep(0.01)
    assert hp.process_gone(child.pid) == f"process {child.pid} exited"
    child.wait()


def test_the_command_line_prefixes_its_verdict_for_the_journal(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    url = f"http://127.0.0.1:{closed_port}/"
    assert hp.main(["--url", url, "--deadline", "20", "--pid", str(child.pid)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("readiness gate: ") and f"process {child.pid} exited" in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"urls": [7]}, "expected a string, got 7"),
        ({"urls": ["http://app:port/x"]}, "http://app:port/x"),
        ({"status_codes": []}, "must be a non-empty list of HTTP status codes"),
        ({"json_fields": ["status"]}, "must be a mapping of dotted path to expected value"),
        ({"headers": "X-A: 1"}, "must be a mapping of header name to value"),
        ({"timeout": "2"}, "timeout"),
        ({"success_threshold": 1.5}, "success_threshold must be an integer, got 1.5"),
        ({"failure_threshold": True}, "failure_threshold must be an integer, got True"),
    ],
    ids=["url-not-text", "bad-port", "no-codes", "fields-list", "headers-text", "timeout-text",
         "threshold-float", "threshold-bool"],
)  # fmt: skip
def test_every_malformed_setting_gets_its_own_message(change: Dict[str, Any], message: str) -> None:
    config = dataclasses.replace(hp.ProbeConfig(urls=["http://127.0.0.1:1/ready"]), **change)
    errors = hp.validate_config(config)
    assert any(message in error for error in errors), errors
