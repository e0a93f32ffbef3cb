"""Integration tests for the sample Elixir release in examples/sample_app.

Builds real tarballs with build.sh, unpacks one into a read-only directory and runs it with
`bin/sample_app start`, checking every behaviour the blue-green deploy roles depend on:
health endpoints, keep-alive, readiness knobs, graceful draining on SIGTERM and clean
FATAL exits for bad configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Tuple

import pytest

pytestmark = pytest.mark.release

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "sample_app"
BUILD_SH = APP_DIR / "build.sh"
SECRET = "test-secret-key-base-0123456789"
BOOT_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 5.0
FATAL_EXIT_STATUS = 1
SHA256_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)\n$")
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
METRIC_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# --- building ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    version: str
    out_dir: Path
    stdout: str
    seconds: float

    @property
    def tarball(self) -> Path:
        return self.out_dir / f"sample_app-{self.version}.tar.gz"

    @property
    def checksum_file(self) -> Path:
        return self.out_dir / f"sample_app-{self.version}.tar.gz.sha256"


def run_build(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUILD_SH), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def build_version(version: str, out_dir: Path) -> Build:
    started = time.monotonic()
    result = run_build(version, str(out_dir))
    assert result.returncode == 0, f"build.sh {version} failed:\n{result.stderr}"
    return Build(version, out_dir, result.stdout, time.monotonic() - started)


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Build, Build]:
    """Two versions built concurrently into one OUT_DIR: the first one is run by the tests.

    The second version carries SemVer build metadata, the least common valid form.
    """
    if shutil.which("mix") is None:
        pytest.skip("mix (Elixir) is not installed")
    out_dir = tmp_path_factory.mktemp("sample_app_dist")
    run_id = random.randrange(1, 10_000)
    versions = (f"0.1.{run_id}-test.1", f"0.2.{run_id}-rc.2+build.7")
    with ThreadPoolExecutor(max_workers=2) as pool:
        main, other = pool.map(lambda version: build_version(version, out_dir), versions)
    return main, other


@pytest.fixture(scope="session")
def build(builds: Tuple[Build, Build]) -> Build:
    return builds[0]


Snapshot = Dict[str, Tuple[int, int, int]]


def file_snapshot(root: Path) -> Snapshot:
    snapshot: Snapshot = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        snapshot[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return snapshot


@dataclass(frozen=True)
class Unpacked:
    root: Path
    snapshot: Snapshot


@pytest.fixture(scope="session")
def unpacked(build: Build) -> Iterator[Unpacked]:
    """The release unpacked as the deploy roles do it, then made read-only.

    Root ignores permission bits, so the snapshot taken here is compared after all runs.
    The directory is world-traversable so that the unprivileged test can run it too.
    """
    base = Path(tempfile.mkdtemp(prefix="sample_app_release."))
    try:
        base.chmod(0o755)
        root = base / "release"
        root.mkdir()
        subprocess.run(["tar", "-xzf", str(build.tarball), "-C", str(root)], check=True, timeout=60)
        subprocess.run(["chmod", "-R", "a-w", str(root)], check=True, timeout=60)
        yield Unpacked(root, file_snapshot(root))
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(base)], check=False, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def release_root(unpacked: Unpacked) -> Path:
    return unpacked.root


# --- running -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Response:
    status: int
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Dict[str, Any]:
        assert self.headers.get("content-type") == "application/json", self.headers
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


def http_request(
    port: int, path: str, method: str = "GET", headers: Optional[Mapping[str, str]] = None
) -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        return read_client_response(connection.getresponse())
    finally:
        connection.close()


def read_client_response(response: http.client.HTTPResponse) -> Response:
    body = response.read()
    return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


@dataclass
class Release:
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    started_at: float

    @property
    def stdout(self) -> str:
        return (self.workdir / "stdout.log").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.workdir / "stderr.log").read_text(errors="replace")

    def get(self, path: str, **kwargs: Any) -> Response:
        return http_request(self.port, path, **kwargs)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"release still running after {timeout}s\n{self.logs()}")

    def wait_until_live(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"release exited with {self.process.returncode}\n{self.logs()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/health/live").status == 200:
                    return
            time.sleep(0.05)
        pytest.fail(f"release not live after {BOOT_TIMEOUT_S}s\n{self.logs()}")

    def logs(self) -> str:
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class Launcher:
    """Starts releases and helper processes; `close` kills whatever is still running."""

    def __init__(self, release_root: Path, scratch: Path) -> None:
        self.release_root = release_root
        self.scratch = scratch
        self.processes: List[subprocess.Popen[bytes]] = []
        self.releases: List[Release] = []

    def base_env(self, port: int, workdir: Path) -> Dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "RELEASE_DISTRIBUTION": "none",
            "RELEASE_TMP": str(workdir / "release_tmp"),
            "SECRET_KEY_BASE": SECRET,
            "BIND_ADDRESS": "127.0.0.1",
            "PORT": str(port),
        }

    def start(
        self,
        env: Optional[Mapping[str, Optional[str]]] = None,
        *,
        wait_live: bool = True,
        wrapper: Optional[List[str]] = None,
        workdir: Optional[Path] = None,
    ) -> Release:
        """Runs `bin/sample_app start` in workdir (its cwd, logs and RELEASE_TMP).

        env values of None remove the variable from the defaults.
        """
        port = free_port()
        workdir = workdir or Path(tempfile.mkdtemp(prefix="run.", dir=self.scratch))
        full_env = self.base_env(port, workdir)
        for name, value in (env or {}).items():
            if value is None:
                full_env.pop(name, None)
            else:
                full_env[name] = value
        if full_env.get("PORT", "").isdigit():
            port = int(full_env["PORT"])
        command = [*(wrapper or []), str(self.release_root / "bin" / "sample_app"), "start"]
        with (workdir / "stdout.log").open("wb") as out, (workdir / "stderr.log").open("wb") as err:
            process = self.spawn(command, env=full_env, cwd=workdir, stdout=out, stderr=err)
        release = Release(process, port, workdir, time.monotonic())
        self.releases.append(release)
        if wait_live:
            release.wait_until_live()
        return release

    def spawn(self, command: List[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # A new session per process: teardown kills the whole group, children included.
        process = subprocess.Popen(command, start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=EXIT_TIMEOUT_S)


@pytest.fixture
def launcher(release_root: Path, tmp_path: Path) -> Iterator[Launcher]:
    runner = Launcher(release_root, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="module")
def server(release_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """One long-running release shared by the read-only endpoint tests."""
    runner = Launcher(release_root, tmp_path_factory.mktemp("server"))
    try:
        yield runner.start({"SLOT": "blue"})
    finally:
        runner.close()


def wait_for(predicate: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {message}")


def parse_metrics(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    samples: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = METRIC_LINE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, raw_labels, value = match.groups()
        labels = tuple(
            sorted(
                (key, unescape_label(raw)) for key, raw in METRIC_LABEL.findall(raw_labels or "")
            )
        )
        samples[(name, labels)] = float(value)
    return samples


def unescape_label(raw: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw)


def metric(text: str, name: str, **labels: str) -> Optional[float]:
    return parse_metrics(text).get((name, tuple(sorted(labels.items()))))


# Raw-socket helpers: http.client hides connection reuse, pipelining and partial writes.


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def raw_connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT_S)


def read_raw_response(reader: IO[bytes], head: bool = False) -> Response:
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), f"bad status line {status_line!r}"
    headers: Dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _unused, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b"" if head else reader.read(int(headers["content-length"]))
    return Response(int(status_line.split()[1]), headers, body)


def assert_closed_by_server(sock: socket.socket) -> None:
    sock.settimeout(HTTP_TIMEOUT_S)
    with contextlib.suppress(ConnectionResetError):  # a reset is a close too
        assert sock.recv(1) == b"", "server sent data instead of closing"


# --- build tests ---------------------------------------------------------------------------


def test_build_writes_tarball_and_sha256_file(builds: Tuple[Build, Build]) -> None:
    for build_result in builds:
        content = build_result.checksum_file.read_text()
        match = SHA256_LINE.match(content)
        assert match, f"not sha256sum format: {content!r}"
        digest = hashlib.sha256(build_result.tarball.read_bytes()).hexdigest()
        assert match.groups() == (digest, build_result.tarball.name)
        assert build_result.stdout.splitlines() == [
            f"tarball: {build_result.tarball}",
            f"size: {build_result.tarball.stat().st_size} bytes",
        ]
    assert sorted(p.name for p in builds[0].out_dir.iterdir()) == sorted(
        name for b in builds for name in (b.tarball.name, b.checksum_file.name)
    ), "temporary files left in OUT_DIR"


def test_tarballs_built_concurrently_hold_only_their_own_version(
    builds: Tuple[Build, Build],
) -> None:
    for build_result in builds:
        with tarfile.open(build_result.tarball) as archive:
            names = archive.getnames()
        top = {name.lstrip("./").split("/")[0] for name in names} - {""}
        assert {"bin", "lib", "releases"} < top
        assert [t for t in top if t.startswith("erts-")], top
        assert len(top) == 4, top
        releases = {n.lstrip("./").split("/")[1] for n in names if n.lstrip("./").count("/") >= 2}
        release_dirs = {r for r in releases if r[0].isdigit()}
        assert f"sample_app-{build_result.version}" in releases
        assert release_dirs == {build_result.version}
        assert sorted(r for r in releases if r.startswith("sample_app-")) == [
            f"sample_app-{build_result.version}"
        ]


@pytest.mark.parametrize(
    "version", ["1.0", "v1.0.0", "01.2.3", "1.2.3-", "1.2.3+", "1.2.3-01", "1.2.3 ", ""]
)
def test_build_rejects_invalid_version(version: str, tmp_path: Path) -> None:
    result = run_build(version, str(tmp_path / "out"), timeout=30)
    assert result.returncode != 0
    assert "VERSION" in result.stderr and "SemVer" in result.stderr, result.stderr
    assert f"'{version}'" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists(), "nothing may be created for an invalid VERSION"


def test_build_without_arguments_prints_usage() -> None:
    result = run_build(timeout=30)
    assert result.returncode != 0
    assert "usage: build.sh VERSION [OUT_DIR]" in result.stderr


# --- endpoint tests on a shared server ------------------------------------------------------


def test_root_names_version_and_slot(server: Release, build: Build) -> None:
    response = server.get("/")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.body == f"sample_app {build.version} on blue\n".encode()


def test_startup_is_logged_once_on_stdout(server: Release, build: Build) -> None:
    started = [line for line in server.stdout.splitlines() if "sample_app started" in line]
    assert len(started) == 1, server.logs()
    for field in (f"version={build.version}", "slot=blue", f"port={server.port}", "node=nonode"):
        assert field in started[0]
    assert server.stderr == ""


def test_live_is_200_json(server: Release, build: Build) -> None:
    response = server.get("/health/live")
    assert response.status == 200
    assert response.json()["version"] == build.version


def test_ready_reports_identity_and_cluster(server: Release, build: Build) -> None:
    response = server.get("/health/ready")
    assert response.status == 200
    assert response.json() == {
        "status": "ready",
        "version": build.version,
        "slot": "blue",
        "node": "nonode@nohost",
        "connected_nodes": [],
        "cluster": {"connected": 0, "missing": {}, "required": 0},
    }


def test_version_endpoint(server: Release, build: Build) -> None:
    response = server.get("/version?cache-buster=1")
    assert response.status == 200
    assert response.json() == {"version": build.version, "slot": "blue", "node": "nonode@nohost"}


def test_forwarded_echoes_what_the_proxy_in_front_said(server: Release) -> None:
    response = server.get(
        "/forwarded", headers={"X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": "https"}
    )
    assert response.status == 200
    assert response.json() == {"x_forwarded_for": ["192.0.2.7"], "x_forwarded_proto": ["https"]}
    assert server.get("/forwarded").json() == {"x_forwarded_for": [], "x_forwarded_proto": []}


def test_metrics_exposition(server: Release, build: Build) -> None:
    before = server.get("/metrics")
    assert before.status == 200
    assert before.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = before.body.decode()
    assert "# TYPE sample_app_http_requests_total counter" in text
    assert "# TYPE sample_app_ready gauge" in text
    assert metric(text, "sample_app_build_info", version=build.version, slot="blue") == 1
    assert metric(text, "sample_app_ready") == 1
    uptime = metric(text, "sample_app_uptime_seconds")
    assert uptime is not None and uptime > 0
    memory = metric(text, "sample_app_beam_memory_bytes", kind="total")
    assert memory is not None and memory > 1_000_000
    flavors = {
        dict(k[1])["emu_flavor"] for k in parse_metrics(text) if k[0] == "sample_app_beam_info"
    }
    assert flavors in ({"jit"}, {"emu"}), flavors
    assert (metric(text, "sample_app_beam_limit", kind="process_limit") or 0) >= 262144
    assert (metric(text, "sample_app_beam_limit", kind="schedulers_online") or 0) >= 1

    count_before = metric(text, "sample_app_http_requests_total", path="/", status="200") or 0
    for _unused in range(3):
        server.get("/")
    server.get("/no/such/path")
    after = server.get("/metrics").body.decode()
    assert metric(after, "sample_app_http_requests_total", path="/", status="200") == (
        count_before + 3
    )
    assert (
        metric(after, "sample_app_http_requests_total", path="unmatched", status="404") or 0
    ) >= 1


def test_unknown_path_404_and_wrong_method_405(server: Release) -> None:
    assert server.get("/nope").status == 404
    response = server.get("/version", method="POST", headers={"Content-Length": "0"})
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_head_has_get_headers_without_body(server: Release) -> None:
    get = server.get("/version")
    head = server.get("/version", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(get.body))
    assert head.headers["content-type"] == get.headers["content-type"]


def test_keep_alive_serves_many_requests_on_one_connection(server: Release) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HTTP_TIMEOUT_S)
    try:
        local_addresses = set()
        for path in ["/", "/version", "/health/ready", "/metrics", "/nope", "/"]:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            assert response.getheader("connection") == "keep-alive"
            assert connection.sock is not None
            local_addresses.add(connection.sock.getsockname())
        assert len(local_addresses) == 1, "client had to reconnect: keep-alive not honoured"
    finally:
        connection.close()


def test_connection_close_is_honoured(server: Release) -> None:
    with raw_connect(server.port) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        response = read_raw_response(sock.makefile("rb"))
        assert response.status == 200
        assert response.headers["connection"] == "close"
        assert_closed_by_server(sock)


def test_http10_closes_unless_keep_alive_requested(server: Release) -> None:
    with raw_connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_raw_response(sock.makefile("rb")).headers["connection"] == "close"
        assert_closed_by_server(sock)
    with raw_connect(server.port) as sock:
        reader = sock.makefile("rb")
        for _unused in range(2):
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = read_raw_response(reader)
            assert response.status == 200
            assert response.headers["connection"] == "keep-alive"


def test_pipelined_and_fragmented_requests(server: Release, build: Build) -> None:
    with raw_connect(server.port) as sock:
        reader = sock.makefile("rb")
        # Three requests in one write, one of them with a body that must be skipped.
        sock.sendall(
            b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
            b"\r\nHEAD / HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        assert read_raw_response(reader).json()["version"] == build.version
        assert read_raw_response(reader).status == 404
        head = read_raw_response(reader, head=True)
        assert head.status == 200 and head.headers["content-length"] != "0"
        # One request dribbled in small pieces.
        request = b"GET /health/ready HTTP/1.1\r\nHost: t\r\nX-Long: " + b"x" * 200 + b"\r\n\r\n"
        for offset in range(0, len(request), 7):
            sock.sendall(request[offset : offset + 7])
            time.sleep(0.002)
        assert read_raw_response(reader).json()["status"] == "ready"


def test_malformed_request_gets_400_and_close(server: Release) -> None:
    with raw_connect(server.port) as sock:
        sock.sendall(b"this is not http\r\n\r\n")
        response = read_raw_response(sock.makefile("rb"))
        assert response.status == 400
        assert response.headers["connection"] == "close"
        assert_closed_by_server(sock)


# --- behaviour knobs, one release each -----------------------------------------------------


def test_idle_keep_alive_connection_is_closed_after_timeout(launcher: Launcher) -> None:
    release = launcher.start({"HTTP_IDLE_TIMEOUT_MS": "500"})
    with raw_connect(release.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_raw_response(sock.makefile("rb")).headers["connection"] == "keep-alive"
        started = time.monotonic()
        assert_closed_by_server(sock)
        assert 0.3 < time.monotonic() - started < 3


def test_ready_delay_reports_starting(launcher: Launcher, build: Build) -> None:
    release = launcher.start({"READY_DELAY_MS": "2000", "SLOT": "green"})
    starting = release.get("/health/ready")
    assert starting.status == 503
    assert starting.json() == {
        "status": "starting",
        "version": build.version,
        "slot": "green",
        "node": "nonode@nohost",
        "connected_nodes": [],
        "cluster": {"connected": 0, "missing": {}, "required": 0},
    }
    assert release.get("/health/live").status == 200
    assert metric(release.get("/metrics").body.decode(), "sample_app_ready") == 0
    wait_for(lambda: release.get("/health/ready").status == 200, 10, "readiness")
    assert time.monotonic() - release.started_at >= 2.0, "ready before READY_DELAY_MS"


def test_fail_health_never_ready_and_escapes_slot(launcher: Launcher) -> None:
    slot = 'gr"een\\ \n\t\x01 é☃'
    release = launcher.start({"FAIL_HEALTH": "true", "SLOT": slot})
    for _unused in range(5):
        response = release.get("/health/ready")
        assert response.status == 503
        assert response.json()["status"] == "failing"
        assert response.json()["slot"] == slot
        time.sleep(0.1)
    assert release.get("/health/live").status == 200
    assert release.get("/").status == 200
    assert release.get("/version").json()["slot"] == slot
    metrics = release.get("/metrics").body.decode()
    build_info = [k for k in parse_metrics(metrics) if k[0] == "sample_app_build_info"]
    assert build_info and dict(build_info[0][1])["slot"] == slot


def test_fail_after_breaks_the_release_after_it_was_ready(launcher: Launcher) -> None:
    release = launcher.start({"FAIL_AFTER_MS": "1500"})
    assert release.get("/health/ready").status == 200
    assert release.get("/").status == 200
    wait_for(lambda: release.get("/health/ready").status == 503, 10, "readiness to fail")
    assert time.monotonic() - release.started_at >= 1.5
    assert release.get("/health/ready").json()["status"] == "failing"
    assert release.get("/").status == 500
    assert release.get("/health/live").status == 200


def test_sigterm_drains_then_exits_zero(launcher: Launcher) -> None:
    drain_s = 2.5
    release = launcher.start({"SHUTDOWN_DRAIN_MS": str(int(drain_s * 1000))})
    pooled = http.client.HTTPConnection("127.0.0.1", release.port, timeout=HTTP_TIMEOUT_S)
    pooled.request("GET", "/")
    assert read_client_response(pooled.getresponse()).headers["connection"] == "keep-alive"
    in_flight = raw_connect(release.port)
    try:
        release.process.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        wait_for(lambda: release.get("/health/ready").status == 503, 2, "draining readiness")
        ready = release.get("/health/ready")
        assert ready.json()["status"] == "draining"
        assert ready.headers["connection"] == "close"
        assert release.get("/health/live").status == 200
        root = release.get("/")
        assert root.status == 200 and root.headers["connection"] == "close"
        # A pooled keep-alive connection is told to go away on its next response.
        pooled.request("GET", "/version")
        assert read_client_response(pooled.getresponse()).headers["connection"] == "close"
        # A request that is still arriving when the listener closes must be answered.
        in_flight.sendall(b"GET /version HTTP/1.1\r\nHost: t\r\n")
        assert time.monotonic() - sigterm_at < drain_s, "checks ran too late to be meaningful"
        assert release.process.poll() is None

        time.sleep(max(sigterm_at + drain_s + 0.4 - time.monotonic(), 0))
        with pytest.raises(OSError):
            raw_connect(release.port).close()
        in_flight.sendall(b"\r\n")
        finished = read_raw_response(in_flight.makefile("rb"))
        assert finished.status == 200 and finished.headers["connection"] == "close"

        assert release.wait_exit(timeout=drain_s + 3) == 0, release.logs()
        assert time.monotonic() - sigterm_at <= drain_s + 3
    finally:
        pooled.close()
        in_flight.close()
    assert "draining" in release.stdout


def test_sigterm_without_drain_exits_promptly(launcher: Launcher) -> None:
    release = launcher.start()
    release.process.send_signal(signal.SIGTERM)
    sigterm_at = time.monotonic()
    assert release.wait_exit() == 0, release.logs()
    assert time.monotonic() - sigterm_at < 3
    assert "sample_app draining for 0 ms" in release.stdout, release.logs()


@pytest.mark.parametrize("secret", [None, ""], ids=["unset", "empty"])
def test_missing_secret_key_base_is_one_fatal_line(
    launcher: Launcher, release_root: Path, secret: Optional[str]
) -> None:
    release = launcher.start({"SECRET_KEY_BASE": secret}, wait_live=False)
    assert release.wait_exit() == FATAL_EXIT_STATUS
    lines = release.stderr.splitlines()
    assert len(lines) == 1, release.logs()
    assert lines[0].startswith("FATAL:") and "SECRET_KEY_BASE" in lines[0]
    assert "expected" in lines[0]
    dumps = [*release.workdir.rglob("erl_crash.dump"), *release_root.rglob("erl_crash.dump")]
    assert dumps == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "80x"),
        ("PORT", ""),
        ("READY_DELAY_MS", "-1"),
        ("FAIL_HEALTH", "maybe"),
        ("BIND_ADDRESS", "localhost"),
        ("CLUSTER_NODES", "no-at-sign"),
    ],
)
def test_invalid_setting_is_one_fatal_line(launcher: Launcher, name: str, value: str) -> None:
    release = launcher.start({name: value}, wait_live=False)
    assert release.wait_exit() == FATAL_EXIT_STATUS
    lines = release.stderr.splitlines()
    assert len(lines) == 1, release.logs()
    assert lines[0].startswith(f"FATAL: {name} ")
    assert f'got "{value}"' in lines[0], lines[0]
    assert list(release.workdir.rglob("erl_crash.dump")) == []


def test_port_in_use_is_one_fatal_line(launcher: Launcher) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        port = occupier.getsockname()[1]
        release = launcher.start({"PORT": str(port)}, wait_live=False)
        assert release.wait_exit() == FATAL_EXIT_STATUS
    lines = release.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL: cannot listen"), release.logs()
    assert f"PORT={port}" in lines[0]


def test_crash_dump_goes_to_release_tmp(launcher: Launcher, release_root: Path) -> None:
    release = launcher.start()
    release.process.send_signal(signal.SIGUSR1)  # the VM writes a crash dump and halts
    assert release.wait_exit(timeout=30) != 0
    assert (release.workdir / "release_tmp" / "erl_crash.dump").is_file(), release.logs()
    assert not (release.workdir / "erl_crash.dump").exists()
    assert list(release_root.rglob("erl_crash.dump")) == []


def test_sname_node_name_and_cluster_retry(launcher: Launcher, release_root: Path) -> None:
    epmd_port = free_port()
    erts_bin = next(release_root.glob("erts-*/bin"))
    # A private epmd in the foreground, so teardown can stop it (a VM-started one lingers).
    launcher.spawn([str(erts_bin / "epmd"), "-port", str(epmd_port)], stdout=subprocess.DEVNULL)
    wait_for(lambda: port_open(epmd_port), 5, "the private epmd")
    host = socket.gethostname().split(".")[0]
    suffix = random.randrange(10**6)
    first, second = f"sa_a{suffix}", f"sa_b{suffix}"
    common = {
        "RELEASE_DISTRIBUTION": "sname",
        "RELEASE_COOKIE": f"cookie{suffix}",
        "ERL_EPMD_PORT": str(epmd_port),
    }
    # The first node starts before its peer exists: it must keep retrying, and with
    # READY_MIN_NODES it is not ready until it has joined, saying why it has not.
    node_a = launcher.start(
        {**common, "RELEASE_NODE": first, "CLUSTER_NODES": f" {second}@{host} ,",
         "READY_MIN_NODES": "1"}
    )  # fmt: skip
    assert node_a.get("/version").json()["node"] == f"{first}@{host}"
    wait_for(
        lambda: (
            node_a.get("/health/ready").json()["cluster"]["missing"]
            == {f"{second}@{host}": "not running (its host's epmd does not know it)"}
        ),
        10,
        "the first node to say why its peer is missing",
    )
    alone = node_a.get("/health/ready")
    assert (alone.status, alone.json()["status"], alone.json()["connected_nodes"]) == (
        503, "joining", [])  # fmt: skip
    node_b = launcher.start({**common, "RELEASE_NODE": second})
    wait_for(
        lambda: node_a.get("/health/ready").json()["connected_nodes"] == [f"{second}@{host}"],
        10,
        "the first node to connect to the late peer",
    )
    assert node_a.get("/health/ready").status == 200
    assert node_b.get("/health/ready").json()["connected_nodes"] == [f"{first}@{host}"]
    # A node with another cookie is refused, and its readiness says so.
    intruder = launcher.start(
        {**common, "RELEASE_COOKIE": f"other{suffix}", "RELEASE_NODE": f"sa_c{suffix}",
         "CLUSTER_NODES": f"{first}@{host}", "READY_MIN_NODES": "1"}
    )  # fmt: skip
    wait_for(
        lambda: intruder.get("/health/ready").json()["cluster"]["missing"]
        == {f"{first}@{host}": "running, but the connection failed: a different cookie or TLS "
            "settings"},
        10,
        "the node with the wrong cookie to say why it is alone",
    )  # fmt: skip
    assert intruder.get("/health/ready").status == 503
    assert f"sa_c{suffix}@{host}" not in node_a.get("/health/ready").json()["connected_nodes"]


def test_runs_unprivileged_without_system_erlang(launcher: Launcher, build: Build) -> None:
    """Hides /usr/lib/erlang and /usr/lib/elixir in a private mount namespace, runs as nobody.

    RELEASE_TMP is left unset: the release must pick a writable default outside its root.
    """
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs root, unshare and setpriv")
    nobody = pwd.getpwnam("nobody")
    hide = " && ".join(
        f"mount -t tmpfs none {d}"
        for d in ("/usr/lib/erlang", "/usr/lib/elixir")
        if Path(d).is_dir()
    )
    wrapper = [
        *("unshare", "--mount", "sh", "-c"),
        f'{hide or "true"} && exec setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"',
        "sh",
    ]
    # Under /tmp itself: nobody cannot traverse pytest's private temporary directories.
    workdir = Path(tempfile.mkdtemp(prefix="sample_app_nobody."))
    try:
        workdir.chmod(0o755)
        tmpdir = workdir / "tmp"
        tmpdir.mkdir()
        os.chown(tmpdir, nobody.pw_uid, nobody.pw_gid)
        env = {"RELEASE_TMP": None, "TMPDIR": str(tmpdir), "SLOT": "nobody"}
        release = launcher.start(env, wrapper=wrapper, workdir=workdir)
        assert release.get("/version").json()["version"] == build.version
        status = Path(f"/proc/{release.process.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{nobody.pw_uid}\s", status, re.MULTILINE), status
        release.process.send_signal(signal.SIGTERM)
        assert release.wait_exit() == 0, release.logs()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_release_directory_unchanged(unpacked: Unpacked) -> None:
    """Runs last: no run above may have written into the (read-only) release directory."""
    assert file_snapshot(unpacked.root) == unpacked.snapshot
