# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP readiness probe shared by the ``health_check`` module and the systemd gate.

Pure standard library, Python 3.8+, no Ansible import: a role copies this file to the
managed host and runs it from ``ExecStartPost=`` so that ``systemctl start`` only returns
once the release answers healthy::

    python3 health_probe.py --url http://127.0.0.1:4000/health/ready \\
        --json-field status=ready --deadline 60

Semantics follow Kubernetes probes: an attempt passes when every URL answers an expected
status (and every expected JSON field matches); ``success_threshold`` consecutive passing
attempts make the target healthy, ``failure_threshold`` consecutive failing attempts
(0 = never) give up early, and an overall deadline bounds everything, including the last
sleep and each request's timeout.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import http.client
import json
import math
import os
import random
import socket
import ssl
import sys
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

DEFAULT_STATUS_CODES: Tuple[int, ...] = (200,)
DEFAULT_BODY_EXCERPT_BYTES = 512
# A readiness document is small; refusing to parse more keeps a misbehaving endpoint from
# making the probe (which runs inside `systemctl start`) buffer an unbounded body.
MAX_JSON_BODY_BYTES = 1024 * 1024
USER_AGENT = "beamops-health-probe/1"

TIMED_OUT = "timed out after"
NOT_PROBED = "not probed before the deadline"

REASON_HEALTHY = "healthy"
REASON_FAILURE_THRESHOLD = "failure_threshold"
REASON_DEADLINE = "deadline"
REASON_EXITED = "process_exited"

# Every line the command prints starts with this, so a unit's journal tells the gate's
# words from the release's.
GATE_PREFIX = "readiness gate:"

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Uniform = Callable[[float, float], float]
# Returns why the watched process is gone, or None while it runs.
Alive = Callable[[], Optional[str]]


@dataclasses.dataclass
class ProbeConfig:
    """What to probe and how patiently. Field names are the module's parameter names."""

    urls: List[str]
    status_codes: List[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_STATUS_CODES))
    json_fields: Dict[str, Any] = dataclasses.field(default_factory=dict)
    timeout: float = 2.0
    interval: float = 1.0
    jitter: float = 0.1
    initial_delay: float = 0.0
    success_threshold: int = 1
    failure_threshold: int = 0
    deadline: float = 60.0
    headers: Dict[str, str] = dataclasses.field(default_factory=dict)
    validate_certs: bool = True
    body_excerpt_bytes: int = DEFAULT_BODY_EXCERPT_BYTES


@dataclasses.dataclass
class UrlAnswer:
    """The last answer one URL gave: either an HTTP status and body, or a connection error."""

    url: str
    status: Optional[int] = None
    body: str = ""
    error: Optional[str] = None
    passed: bool = False
    # Why this answer does not count as healthy (None when it does).
    failure: Optional[str] = None


@dataclasses.dataclass
class ProbeResult:
    passed: bool
    attempts: int
    consecutive_successes: int
    elapsed: float
    reason: str
    answers: List[UrlAnswer]
    # Why the watched process is gone, when that ended the probe.
    exited: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- validation


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(
    errors: List[str], name: str, value: object, low: float, high: float, *, low_inclusive: bool
) -> None:
    """Append an error naming `name` unless value is finite and low <(=) value <= high."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        errors.append(f"{name} must be a finite number, got {value!r}")
        return
    too_low = value < low if low_inclusive else value <= low
    if too_low or value > high:
        low_text = f">= {low:g}" if low_inclusive else f"> {low:g}"
        high_text = "" if math.isinf(high) else f" and <= {high:g}"
        errors.append(f"{name} must be {low_text}{high_text}, got {value!r}")


def _check_int(errors: List[str], name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        errors.append(f"{name} must be an integer, got {value!r}")
    elif value < low:
        errors.append(f"{name} must be >= {low}, got {value!r}")


def _url_problem(url: object) -> Optional[str]:
    if not isinstance(url, str):
        return f"expected a string, got {url!r}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"{url!r} is not an http:// or https:// URL"
    if not parts.hostname:
        return f"{url!r} has no host"
    try:
        parts.port  # noqa: B018 -- parsing the port is the check: it raises on garbage
    except ValueError:
        return f"{url!r} has an invalid port"
    return None


def _validate_urls(errors: List[str], name: str, urls: object) -> None:
    if not isinstance(urls, list) or not urls:
        errors.append(f"{name} must be a non-empty list of URLs, got {urls!r}")
        return
    for url in urls:
        problem = _url_problem(url)
        if problem:
            errors.append(f"{name}: {problem}")


def _validate_status_codes(errors: List[str], name: str, codes: object) -> None:
    if not isinstance(codes, list) or not codes:
        errors.append(f"{name} must be a non-empty list of HTTP status codes, got {codes!r}")
        return
    for code in codes:
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 599:
            errors.append(f"{name}: {code!r} is not an HTTP status code (100-599)")


def _validate_json_fields(errors: List[str], name: str, fields: object) -> None:
    if not isinstance(fields, dict):
        errors.append(f"{name} must be a mapping of dotted path to expected value, got {fields!r}")
        return
    for path in fields:
        if not isinstance(path, str) or not path or "" in path.split("."):
            errors.append(f"{name}: {path!r} is not a dotted path such as 'checks.db'")


def _validate_headers(errors: List[str], name: str, headers: object) -> None:
    if not isinstance(headers, dict):
        errors.append(f"{name} must be a mapping of header name to value, got {headers!r}")
        return
    for key, value in headers.items():
        # http.client would reject these mid-probe; say so up front, naming the header.
        if not isinstance(key, str) or not key or any(c in key for c in ":\r\n \t"):
            errors.append(f"{name}: {key!r} is not a valid header name")
        elif not isinstance(value, str) or "\r" in value or "\n" in value:
            errors.append(f"{name}: value of {key!r} must be a single-line string")


def validate_config(config: ProbeConfig, names: Optional[Dict[str, str]] = None) -> List[str]:
    """Return one message per invalid setting; empty when the config is usable.

    `names` maps field names to what the caller calls them (e.g. CLI flags), so that the
    message names the thing the user actually typed.
    """
    label = dict(names or {})

    def n(field: str) -> str:
        return label.get(field, field)

    errors: List[str] = []
    _validate_urls(errors, n("urls"), config.urls)
    _validate_status_codes(errors, n("status_codes"), config.status_codes)
    _validate_json_fields(errors, n("json_fields"), config.json_fields)
    _validate_headers(errors, n("headers"), config.headers)
    _check_number(errors, n("timeout"), config.timeout, 0, math.inf, low_inclusive=False)
    _check_number(errors, n("interval"), config.interval, 0, math.inf, low_inclusive=True)
    _check_number(errors, n("jitter"), config.jitter, 0, 1, low_inclusive=True)
    before = len(errors)
    _check_number(errors, n("deadline"), config.deadline, 0, math.inf, low_inclusive=False)
    _check_number(errors, n("initial_delay"), config.initial_delay, 0, math.inf, low_inclusive=True)
    # Compared only when both are valid numbers, so one mistake yields one message.
    if len(errors) == before and config.initial_delay >= config.deadline:
        # Otherwise the probe would spend its whole budget waiting and never ask once.
        errors.append(
            f"{n('initial_delay')} ({config.initial_delay:g}) must be less than "
            f"{n('deadline')} ({config.deadline:g})"
        )
    _check_int(errors, n("success_threshold"), config.success_threshold, 1)
    _check_int(errors, n("failure_threshold"), config.failure_threshold, 0)
    _check_int(errors, n("body_excerpt_bytes"), config.body_excerpt_bytes, 0)
    return errors


# --------------------------------------------------------------------------- one request


def decode_excerpt(data: bytes, limit: int) -> str:
    """First `limit` bytes as text, never raising and never ending in half a character."""
    # An incremental decoder with final=False holds back a multi-byte sequence cut by the
    # limit instead of turning it into U+FFFD; invalid bytes elsewhere become U+FFFD.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder.decode(data[:limit], final=False)


def _lookup(document: object, path: str) -> Tuple[bool, object]:
    """Follow a dotted path through objects (and lists, by numeric index)."""
    current = document
    for segment in path.split("."):
        if isinstance(current, dict) and segment in current:
            current = current[segment]
        elif isinstance(current, list) and segment.isdigit() and int(segment) < len(current):
            current = current[int(segment)]
        else:
            return False, None
    return True, current


def _same_json_value(expected: object, actual: object) -> bool:
    # Python says True == 1; a health document saying 1 where `true` is expected is a
    # different answer, so booleans only match booleans.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    return bool(expected == actual)


def json_field_failure(body: bytes, fields: Dict[str, Any]) -> Optional[str]:
    """Why `body` does not carry the expected fields, or None when it does."""
    if not fields:
        return None
    if len(body) > MAX_JSON_BODY_BYTES:
        return f"body is larger than {MAX_JSON_BODY_BYTES} bytes, not parsed as JSON"
    try:
        document = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return f"body is not JSON ({exc}); expected fields {', '.join(fields)}"
    mismatches = []
    for path, expected in fields.items():
        found, actual = _lookup(document, path)
        if not found:
            mismatches.append(f"{path} missing (expected {json.dumps(expected)})")
        elif not _same_json_value(expected, actual):
            mismatches.append(f"{path} is {json.dumps(actual)}, expected {json.dumps(expected)}")
    return "; ".join(mismatches) or None


def _ssl_context(validate_certs: bool) -> ssl.SSLContext:
    if validate_certs:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _timed_out(answer: UrlAnswer) -> bool:
    return bool(answer.error and answer.error.startswith(TIMED_OUT))


def _describe_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    # socket.timeout is only an alias of TimeoutError from Python 3.10 on.
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"{TIMED_OUT} {timeout:.2f}s"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, http.client.HTTPException):
        return f"invalid HTTP response: {type(exc).__name__} {exc}".rstrip()
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _request_target(parts: urllib.parse.SplitResult) -> str:
    target = parts.path or "/"
    return f"{target}?{parts.query}" if parts.query else target


def _read_body(
    response: http.client.HTTPResponse,
    sock: socket.socket,
    limit: int,
    time_left: Callable[[], float],
) -> bytes:
    """Read at most `limit` bytes, re-arming the socket timeout so the whole read fits."""
    chunks: List[bytes] = []
    size = 0
    # HTTPResponse closes its socket once the body is complete: stop there, not at EOF.
    while size < limit and not response.isclosed():
        left = time_left()
        if left <= 0:
            raise socket.timeout("body not received in time")
        sock.settimeout(left)
        # read1: one recv per call, so the timeout set just above bounds each wait. read()
        # would loop over recvs inside one call, each allowed the full timeout again.
        chunk = response.read1(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def fetch(
    url: str,
    timeout: float,
    *,
    headers: Dict[str, str],
    validate_certs: bool,
    read_limit: int,
    clock: Clock = time.monotonic,
) -> Tuple[int, bytes]:
    """GET `url` once within `timeout` seconds in total; return (status, first bytes of body).

    http.client rather than urllib: urllib's timeout applies per socket operation, so a
    server that trickles its answer could hold the probe past its deadline; here the socket
    timeout is re-armed with what is left before every phase. Redirects are not followed and
    proxy variables are ignored on purpose: a readiness probe asks the service itself.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    finish_by = clock() + timeout

    def time_left() -> float:
        return finish_by - clock()

    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=_ssl_context(validate_certs)
        )
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        connection.connect()
        sock = connection.sock
        if sock is None:  # connect() sets it or raises; this only narrows the type
            raise ConnectionError(f"no socket after connecting to {host}")
        sock.settimeout(max(time_left(), 0.001))
        request_headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
        request_headers.update(headers)
        connection.request("GET", _request_target(parts), headers=request_headers)
        response = connection.getresponse()
        body = _read_body(response, sock, read_limit, time_left)
        return response.status, body
    finally:
        connection.close()


def probe_url(
    url: str, config: ProbeConfig, timeout: float, clock: Clock = time.monotonic
) -> UrlAnswer:
    """Ask `url` once and judge the answer against the expected status codes and fields."""
    # JSON has to be parsed whole; without fields only the excerpt is worth reading.
    read_limit = MAX_JSON_BODY_BYTES + 1 if config.json_fields else config.body_excerpt_bytes
    try:
        status, body = fetch(
            url,
            timeout,
            headers=config.headers,
            validate_certs=config.validate_certs,
            read_limit=read_limit,
            clock=clock,
        )
    except (OSError, http.client.HTTPException) as exc:
        error = _describe_error(exc, timeout)
        return UrlAnswer(url=url, error=error, failure=error)
    answer = UrlAnswer(url=url, status=status, body=decode_excerpt(body, config.body_excerpt_bytes))
    if status not in config.status_codes:
        expected = ", ".join(str(code) for code in config.status_codes)
        answer.failure = f"status {status} not in [{expected}]"
    else:
        answer.failure = json_field_failure(body, config.json_fields)
    answer.passed = answer.failure is None
    return answer


# --------------------------------------------------------------------------- the probe loop


def next_sleep(config: ProbeConfig, uniform: Uniform) -> float:
    """Interval +/- jitter*interval, drawn uniformly, so a fleet does not probe in lockstep."""
    spread = config.jitter * config.interval
    return max(0.0, config.interval + uniform(-spread, spread))


def run_attempt(
    config: ProbeConfig, answers: Dict[str, UrlAnswer], deadline_at: float, clock: Clock
) -> bool:
    """Ask every URL once, updating `answers`; True only when all of them passed."""
    attempt_passed = True
    for url in config.urls:
        left = deadline_at - clock()
        if left <= 0:
            # Out of time mid-attempt: the attempt cannot pass, and this URL keeps its
            # previous answer, which is still the most recent thing it said.
            return False
        budget = min(config.timeout, left)
        answer = probe_url(url, config, budget, clock)
        attempt_passed = attempt_passed and answer.passed
        if budget < config.timeout and _timed_out(answer) and answers[url].error != NOT_PROBED:
            # The probe ran out of time, the service did not: its last real answer says
            # more about why it is not healthy than our own cut-short request.
            continue
        answers[url] = answer
    return attempt_passed


def run_probe(
    config: ProbeConfig,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    uniform: Uniform = random.uniform,
    alive: Optional[Alive] = None,
) -> ProbeResult:
    """Probe until healthy, the failure threshold, the deadline, or (with `alive`) the end of
    the process that should answer; never raises for HTTP.

    Raises ValueError for an invalid config: with no URL, for instance, every attempt would
    pass vacuously.
    """
    errors = validate_config(config)
    if errors:
        raise ValueError("invalid probe config: " + "; ".join(errors))
    started = clock()
    deadline_at = started + config.deadline
    answers = {url: UrlAnswer(url=url, error=NOT_PROBED) for url in config.urls}
    attempts = successes = failures = 0
    reason = REASON_DEADLINE
    exited = ""

    if config.initial_delay > 0:
        sleep(min(config.initial_delay, max(deadline_at - clock(), 0.0)))

    while True:
        attempts += 1
        attempt_passed = run_attempt(config, answers, deadline_at, clock)
        successes, failures = (successes + 1, 0) if attempt_passed else (0, failures + 1)
        if successes >= config.success_threshold:
            reason = REASON_HEALTHY
            break
        if config.failure_threshold and failures >= config.failure_threshold:
            reason = REASON_FAILURE_THRESHOLD
            break
        gone = alive() if alive else None
        if gone:
            # Probing a port nobody will ever open again until the deadline helps no one.
            reason = REASON_EXITED
            exited = gone
            break
        left = deadline_at - clock()
        if left <= 0:
            break
        sleep(min(next_sleep(config, uniform), left))
        if deadline_at - clock() <= 0:
            break

    return ProbeResult(
        passed=reason == REASON_HEALTHY,
        attempts=attempts,
        consecutive_successes=successes,
        elapsed=round(clock() - started, 3),
        reason=reason,
        answers=[answers[url] for url in config.urls],
        exited=exited,
    )


def process_gone(pid: int) -> Optional[str]:
    """None while `pid` runs; else why not. A zombie has exited too, only not been reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} exited"
    except PermissionError:
        pass  # it exists (another user's)
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[-1].split()
    except OSError:
        # It exists, but /proc hides it: the unit's ExecStartPost= runs in a user namespace of
        # its own (PrivateUsers=), where ProtectProc=invisible hides the main process.
        return None
    if fields and fields[0] in ("Z", "X"):
        return f"process {pid} exited"
    return None


# --------------------------------------------------------------------------- reporting


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe_answer(answer: UrlAnswer) -> str:
    """'last answer 503 {"status":"starting"}' or 'last error: connection refused'."""
    if answer.status is None:
        return f"last error: {answer.error}"
    body = _one_line(answer.body) or "(empty body)"
    text = f"last answer {answer.status} {body}"
    # A wrong status speaks for itself; a right status that still failed needs the why.
    if answer.failure and not answer.failure.startswith("status "):
        text += f" ({answer.failure})"
    return text


def failure_message(result: ProbeResult, config: ProbeConfig) -> str:
    """One line for a human: which URL, how long, why it stopped, what it last said."""
    failing = [answer for answer in result.answers if not answer.passed] or result.answers
    subject = ", ".join(answer.url for answer in failing)
    if len(result.answers) > 1:
        subject = f"{subject} ({len(failing)} of {len(result.answers)} URLs)"
    attempts = "attempt" if result.attempts == 1 else "attempts"
    head = (
        f"{subject} not healthy after {result.attempts} {attempts} "
        f"in {result.elapsed:.1f}s ({result.exited or result.reason})"
    )
    if config.success_threshold > 1:
        head += (
            f" with {result.consecutive_successes} of {config.success_threshold}"
            " consecutive successes"
        )
    if len(failing) == 1:
        return f"{head}: {describe_answer(failing[0])}"
    details = "; ".join(f"{answer.url}: {describe_answer(answer)}" for answer in failing)
    return f"{head}: {details}"


def success_message(result: ProbeResult) -> str:
    urls = ", ".join(answer.url for answer in result.answers)
    attempts = "attempt" if result.attempts == 1 else "attempts"
    return f"{urls} healthy after {result.attempts} {attempts} in {result.elapsed:.1f}s"


# --------------------------------------------------------------------------- command line

CLI_NAMES = {
    "urls": "--url",
    "status_codes": "--status",
    "json_fields": "--json-field",
    "timeout": "--timeout",
    "interval": "--interval",
    "jitter": "--jitter",
    "initial_delay": "--initial-delay",
    "success_threshold": "--success-threshold",
    "failure_threshold": "--failure-threshold",
    "deadline": "--deadline",
    "headers": "--header",
    "body_excerpt_bytes": "--body-excerpt-bytes",
}


def parse_json_field(text: str) -> Tuple[str, Any]:
    """'checks.db=true' -> ('checks.db', True); values are JSON when they parse, else strings."""
    path, sep, raw = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected PATH=VALUE such as status=ready, got {text!r}")
    try:
        return path, json.loads(raw)
    except ValueError:
        return path, raw


def parse_header(text: str) -> Tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    defaults = ProbeConfig(urls=[])
    parser = argparse.ArgumentParser(
        prog="health_probe.py",
        description="Probe HTTP endpoints until healthy. Exit 0 when healthy, 1 when not "
        "(with one line saying why on stderr), 2 on bad usage.",
    )
    add = parser.add_argument
    add("--url", dest="urls", action="append", required=True, help="URL to GET; repeatable")
    add(
        "--status",
        dest="status_codes",
        action="append",
        type=int,
        metavar="CODE",
        help="expected HTTP status; repeatable (default: 200)",
    )
    add(
        "--json-field",
        dest="json_fields",
        action="append",
        type=parse_json_field,
        default=[],
        metavar="PATH=VALUE",
        help="dotted path into the JSON body and its expected value (JSON, else a string); "
        "repeatable",
    )
    add(
        "--header",
        dest="headers",
        action="append",
        type=parse_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="request header; repeatable",
    )
    for flag, field, kind, text in (
        ("--timeout", "timeout", float, "per-request timeout, seconds"),
        ("--interval", "interval", float, "seconds between attempts"),
        ("--jitter", "jitter", float, "fraction of the interval added or removed at random"),
        ("--initial-delay", "initial_delay", float, "seconds to wait before the first attempt"),
        ("--success-threshold", "success_threshold", int, "consecutive passes needed"),
        ("--failure-threshold", "failure_threshold", int, "consecutive failures that end it"),
        ("--deadline", "deadline", float, "overall limit, seconds"),
        ("--body-excerpt-bytes", "body_excerpt_bytes", int, "body bytes kept for the report"),
    ):
        add(
            flag,
            dest=field,
            type=kind,
            default=getattr(defaults, field),
            help=f"{text} (default: {getattr(defaults, field)})",
        )
    add(
        "--no-validate-certs",
        dest="validate_certs",
        action="store_false",
        help="accept any TLS certificate (self-signed endpoints)",
    )
    add(
        "--pid",
        type=int,
        default=0,
        help="stop as soon as this process exits (systemd's $MAINPID in ExecStartPost=)",
    )
    add("--verbose", action="store_true", help="also print one line when healthy")
    return parser


def config_from_args(args: argparse.Namespace) -> ProbeConfig:
    return ProbeConfig(
        urls=list(args.urls),
        status_codes=list(args.status_codes or DEFAULT_STATUS_CODES),
        json_fields=dict(args.json_fields),
        timeout=args.timeout,
        interval=args.interval,
        jitter=args.jitter,
        initial_delay=args.initial_delay,
        success_threshold=args.success_threshold,
        failure_threshold=args.failure_threshold,
        deadline=args.deadline,
        headers=dict(args.headers),
        validate_certs=args.validate_certs,
        body_excerpt_bytes=args.body_excerpt_bytes,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args)
    errors = validate_config(config, CLI_NAMES)
    if errors:
        parser.error("; ".join(errors))  # exits with EXIT_USAGE
    pid: int = args.pid
    result = run_probe(config, alive=(lambda: process_gone(pid)) if pid > 0 else None)
    if result.passed:
        if args.verbose:
            say(sys.stdout, f"{GATE_PREFIX} {success_message(result)}")
        return EXIT_HEALTHY
    say(sys.stderr, f"{GATE_PREFIX} {failure_message(result, config)}")
    return EXIT_UNHEALTHY


def say(stream: TextIO, line: str) -> None:
    """One line to the journal (the unit's stdout or stderr), flushed: the command-line side of
    this file, where Ansible's module.log does not apply."""
    stream.write(line + "\n")
    stream.flush()


if __name__ == "__main__":
    raise SystemExit(main())
