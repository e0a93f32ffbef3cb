# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-host proxy's configuration for one app, in one call; it moves no traffic.

nginx: the site (rewritten when it differs) and the upstream file (created once; from then
on slot_cutover owns it). HAProxy: the live map (created once, then slot_cutover's) and the
app's own file in ``/etc/haproxy/beamops.d/``, loaded beside the host's ``haproxy.cfg`` (a
systemd drop-in adds ``-f /etc/haproxy/beamops.d``), so the host's global settings, chroot
and other applications stay. The whole set is checked with ``haproxy -c`` before anything
is replaced. A ``haproxy.cfg`` an earlier version of this collection wrote is put back to
Debian's defaults; a host configuration without an admin runtime socket gets one in its own
file.

When a file changed, the other proxy gives up the port (Debian's default nginx site, this
app's nginx site, a HAProxy this collection configured), the configuration is validated
(a rejected nginx site is put back) and the proxy reloads. Either way it ends enabled and
running. Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ansible_collections.beamops.release.plugins.module_utils import haproxy_runtime
from ansible_collections.beamops.release.plugins.module_utils.atomic_file import (
    read_text,
    write_if_changed,
)
from ansible_collections.beamops.release.plugins.module_utils.cutover import (
    Run,
    nginx_test_or_restore,
    run_command,
)

# path, wanted text, written only when the file is missing (then slot_cutover owns it)
FileSpec = Tuple[str, str, bool]
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
HAPROXY_DIR = "/etc/haproxy/beamops.d"
HAPROXY_DROPIN = "/etc/systemd/system/haproxy.service.d/beamops.conf"
# Debian's haproxy.service runs `haproxy -f $CONFIG` and checks reloads with the same words:
# unbraced, $CONFIG splits into both -f arguments.
HAPROXY_DROPIN_TEXT = (
    "# Managed by beamops.release: the apps' files are loaded beside the host's haproxy.cfg.\n"
    "[Service]\n"
    f'Environment="CONFIG={HAPROXY_CFG} -f {HAPROXY_DIR}"\n'
)
NGINX_DROPIN = "/etc/systemd/system/nginx.service.d/beamops.conf"
# Debian's nginx.service never restarts; HAProxy's does (Restart=always). A proxy killed or
# crashed mid-deploy comes back by itself, and a cutover watching it waits for that.
NGINX_DROPIN_TEXT = (
    "# Managed by beamops.release: nginx killed or crashed is started again at once.\n"
    "[Service]\n"
    "Restart=on-failure\n"
    "RestartSec=200ms\n"
)
RUNTIME_API_FILE = "00-runtime-api.cfg"
# Debian's own haproxy.cfg, put back where an earlier version replaced it with its own.
DEBIAN_HAPROXY_CFG = """global
\tlog /dev/log\tlocal0
\tlog /dev/log\tlocal1 notice
\tchroot /var/lib/haproxy
\tstats socket /run/haproxy/admin.sock mode 660 level admin
\tstats timeout 30s
\tuser haproxy
\tgroup haproxy
\tdaemon

defaults
\tlog\tglobal
\tmode\thttp
\toption\thttplog
\toption\tdontlognull
\ttimeout connect 5000
\ttimeout client  50000
\ttimeout server  50000
"""
NGINX_DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
# haproxy.cfg written by this collection says so in its first lines.
OURS_MARK = "Per-host proxy for"


class ProxySetupError(Exception):
    """The proxy refused its configuration; the previous one is in place."""


# Where Debian's packages put the proxies; a module's PATH may lack the sbin directories.
PROXY_BINARY_DIRS: Tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/sbin")


def proxy_missing(proxy: str, dirs: Sequence[str] = PROXY_BINARY_DIRS) -> Optional[str]:
    """Why PROXY cannot be set up here (its command is not installed), or None."""
    if any(os.access(os.path.join(directory, proxy), os.X_OK) for directory in dirs):
        return None
    return (
        f"{proxy} (beamops_proxy) is not installed on this host: no {proxy} command in "
        f"{', '.join(dirs)}. Let the deploy install it (beamops_install_packages: true, the "
        "default) or install it with whatever manages this host's packages"
    )


_LISTEN_RE = re.compile(r"^\s*listen\s+([^\s;]+)", re.MULTILINE)
TCP_LISTEN = "0A"  # the st column of /proc/net/tcp for a listening socket
NGINX_DEFAULT_PORT = 80


def nginx_listen_ports(site: str) -> Set[int]:
    """The TCP ports an nginx site's `listen` lines name (`listen 80`, `listen [::]:80 ...`);
    an address alone (`listen 127.0.0.1;`) listens on nginx's default port, 80."""
    ports: Set[int] = set()
    for target in _LISTEN_RE.findall(site):
        if target.startswith("unix:"):
            continue
        port = target.rsplit(":", 1)[1] if ":" in target and not target.endswith("]") else target
        ports.add(int(port) if port.isdigit() else NGINX_DEFAULT_PORT)
    return ports


def listening_ports(tables: Sequence[str] = ("/proc/net/tcp", "/proc/net/tcp6")) -> Set[int]:
    """Local ports with a listening TCP socket on this host, from the kernel's tables."""
    ports: Set[int] = set()
    for table in tables:
        for line in (read_text(table) or "").splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclasses.dataclass
class Request:
    proxy: str
    nginx_site_file: str
    nginx_upstream_file: str
    haproxy_map_file: str
    site: str = ""  # nginx site text
    upstream: str = ""  # nginx upstream text, written only when the file is missing
    haproxy_cfg: str = ""
    live_map: str = ""  # HAProxy map text, written only when the file is missing
    disable_default_site: bool = True
    haproxy_socket: str = "/run/haproxy/admin.sock"
    haproxy_app_file: str = ""  # the app's file; default <haproxy_dir>/<map name>.cfg
    haproxy_cfg_path: str = HAPROXY_CFG  # the host's own configuration, left alone
    haproxy_dropin: str = HAPROXY_DROPIN
    nginx_dropin: str = NGINX_DROPIN

    @property
    def haproxy_dir(self) -> str:
        return os.path.dirname(self.app_file)

    @property
    def app_file(self) -> str:
        if self.haproxy_app_file:
            return self.haproxy_app_file
        name = os.path.basename(self.haproxy_map_file).replace("-live.map", "")
        return os.path.join(HAPROXY_DIR, f"{name}.cfg")


@dataclasses.dataclass
class Result:
    changed: bool = False
    written: List[str] = dataclasses.field(default_factory=list)
    actions: List[str] = dataclasses.field(default_factory=list)


class ProxySetup:
    def __init__(
        self,
        request: Request,
        run: Run = run_command,
        listening: Callable[[], Set[int]] = listening_ports,
    ) -> None:
        self.r = request
        self.run = run
        self.listening = listening
        self.result = Result()

    def apply(self, check_mode: bool = False) -> Result:
        if self.r.proxy not in ("nginx", "haproxy"):
            raise ProxySetupError(f"beamops_proxy must be nginx or haproxy, got {self.r.proxy!r}")
        wanted = self._files()
        pending = [spec for spec in wanted if self._differs(*spec)]
        if check_mode:
            self.result.written = [path for path, _text, _once in pending]
            self.result.changed = bool(pending)
            return self.result
        if pending:
            self._write(pending)
        self._ensure_running()
        return self.result

    def _files(self) -> List[FileSpec]:
        if self.r.proxy == "nginx":
            return [
                (self.r.nginx_site_file, self.r.site, False),
                (self.r.nginx_upstream_file, self.r.upstream, True),
                (self.r.nginx_dropin, NGINX_DROPIN_TEXT, False),
            ]
        files: List[FileSpec] = [(self.r.haproxy_map_file, self.r.live_map, True)]
        base = read_text(self.r.haproxy_cfg_path)
        if base is None or OURS_MARK in base:
            base = DEBIAN_HAPROXY_CFG
            files.append((self.r.haproxy_cfg_path, base, False))
        if not self._has_admin_socket(base):
            socket = f"global\n    stats socket {self.r.haproxy_socket} mode 600 level admin\n"
            files.append((os.path.join(self.r.haproxy_dir, RUNTIME_API_FILE), socket, False))
        files.append((self.r.app_file, self.r.haproxy_cfg, False))
        files.append((self.r.haproxy_dropin, HAPROXY_DROPIN_TEXT, False))
        return files

    def _has_admin_socket(self, config: str) -> bool:
        for line in config.splitlines():
            words = line.split()
            if words[:3] == ["stats", "socket", self.r.haproxy_socket] and "admin" in words:
                return True
        return False

    @staticmethod
    def _differs(path: str, text: str, create_only: bool) -> bool:
        try:
            with open(path, encoding="utf-8") as handle:
                return not create_only and handle.read() != text
        except OSError:
            return True

    def _write(self, pending: List[FileSpec]) -> None:
        previous = {path: read_text(path) for path, _text, _once in pending}
        # The files written once (the map, the upstream) go first: `haproxy -c` loads the map.
        first = [spec for spec in pending if spec[2]]
        then = [spec for spec in pending if not spec[2]]
        for path, text, _unused in first:
            write_if_changed(path, text, 0o644)
        if self.r.proxy == "haproxy":
            self._check_haproxy({path: text for path, text, _unused in then})
        self._free_port()
        for path, text, _unused in then:
            write_if_changed(path, text, 0o644)
        self.result.written = [path for path, _text, _once in first + then]
        self.result.changed = True
        rejected = nginx_test_or_restore(self.run, previous) if self.r.proxy == "nginx" else None
        if rejected:
            raise ProxySetupError(
                f"nginx rejected the configuration of this app ({rejected}); the previous one "
                "was put back and traffic was not moved"
            )
        if self.r.nginx_dropin in self.result.written:
            self._systemctl("daemon-reload")  # Restart= needs no restart of nginx itself
        if self.r.haproxy_dropin in self.result.written:
            # A new command line: a reload keeps the old one, so the unit restarts (once).
            self._systemctl("daemon-reload")
            self._systemctl("restart", "haproxy.service")
            self.result.actions.append("HAProxy now loads beamops.d beside haproxy.cfg")
        else:
            self._systemctl("reload-or-restart", f"{self.r.proxy}.service")
        if self.r.proxy == "haproxy":
            self._wait_for_haproxy_map()

    def _wait_for_haproxy_map(self, seconds: float = 10.0) -> None:
        """Debian's HAProxy reload only signals the master and returns: the new configuration
        may still fail to load (a port in use) while the old one keeps running. It has loaded
        when the runtime API knows this app's map."""
        client = haproxy_runtime.RuntimeClient(self.r.haproxy_socket, 2.0)
        deadline = time.monotonic() + seconds
        while True:
            try:
                if self.r.haproxy_map_file in client.send("show map"):
                    return
            except haproxy_runtime.RuntimeApiError:
                pass  # the new worker is still taking over the socket
            if time.monotonic() > deadline:
                raise ProxySetupError(
                    f"HAProxy did not load the new configuration within {seconds:.0f}s (its "
                    f"runtime API does not know {self.r.haproxy_map_file}); the old one keeps "
                    "running; see `journalctl -u haproxy` (a port in use?)"
                )
            time.sleep(0.1)

    def _check_haproxy(self, changes: Dict[str, str]) -> None:
        """`haproxy -c` on the whole set as it will be: the host's haproxy.cfg, then every
        file of beamops.d (other apps' too), with this run's changes in place."""
        configs = [self.r.haproxy_cfg_path]
        if os.path.isdir(self.r.haproxy_dir):
            names = sorted(n for n in os.listdir(self.r.haproxy_dir) if n.endswith(".cfg"))
            configs += [os.path.join(self.r.haproxy_dir, n) for n in names]
        configs += [path for path in changes if path.endswith(".cfg") and path not in configs]
        staging = tempfile.mkdtemp(prefix="beamops-haproxy-check-")
        try:
            argv = ["haproxy", "-c"]
            for path in configs:
                if path not in changes:
                    # Unchanged files are checked where they are: an error names them.
                    argv += ["-f", path] if os.path.exists(path) else []
                    continue
                staged = os.path.join(staging, f"{len(argv):03d}-{os.path.basename(path)}")
                write_if_changed(staged, changes[path], 0o600)
                argv += ["-f", staged]
            check = self.run(argv, 30)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if check.returncode != 0:
            why = (check.stderr or check.stdout).strip()
            raise ProxySetupError(
                f"haproxy -c rejected this app's configuration beside the host's ({why}); the "
                "previous files are in place and traffic was not moved"
            )

    def _free_port(self) -> None:
        """One proxy per host owns the port: the one not chosen gives it up. Debian's default
        nginx site listens on port 80 too, whichever proxy is chosen."""
        removed = False
        # What the removed nginx sites listened on: HAProxy may bind it only once nginx's
        # reload has closed it (the reload returns before that).
        ports: Set[int] = set()
        if self.r.disable_default_site and os.path.lexists(NGINX_DEFAULT_SITE):
            ports |= nginx_listen_ports(read_text(NGINX_DEFAULT_SITE) or "")
            os.unlink(NGINX_DEFAULT_SITE)
            removed = True
            self.result.actions.append("removed Debian's default nginx site")
        if self.r.proxy == "nginx":
            cfg = read_text(self.r.haproxy_cfg_path) or ""
            if OURS_MARK in cfg and self._active("haproxy.service"):
                self._systemctl("disable", "--now", "haproxy.service")
                self.result.actions.append("stopped the HAProxy this collection configured")
            elif os.path.lexists(self.r.app_file):
                os.unlink(self.r.app_file)
                if self._active("haproxy.service"):
                    self._systemctl("reload", "haproxy.service")
                self.result.actions.append("removed this app's HAProxy frontend")
            return
        for path in (self.r.nginx_site_file, self.r.nginx_upstream_file):
            if os.path.lexists(path):
                ports |= nginx_listen_ports(read_text(path) or "")
                os.unlink(path)
                removed = True
        if removed and self._active("nginx.service"):
            self.run(["systemctl", "reload", "nginx.service"], 60)
            self.result.actions.append("removed this app's nginx site")
            self._wait_ports_closed(ports)

    def _wait_ports_closed(self, ports: Set[int], seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        still = ports & self.listening()
        while still:
            if time.monotonic() > deadline:
                raise ProxySetupError(
                    f"nginx still listens on port(s) {sorted(still)} "
                    f"{seconds:.0f}s after its site was removed; HAProxy cannot take them over"
                )
            time.sleep(0.05)
            still = ports & self.listening()

    def _ensure_running(self) -> None:
        unit = f"{self.r.proxy}.service"
        if self.run(["systemctl", "is-enabled", "--quiet", unit], 10).returncode != 0:
            self._systemctl("enable", unit)
            self.result.changed = True
        if not self._active(unit):
            self._systemctl("start", unit)
            self.result.actions.append(f"started {unit}")
            self.result.changed = True

    def _active(self, unit: str) -> bool:
        return self.run(["systemctl", "is-active", "--quiet", unit], 10).returncode == 0

    def _systemctl(self, *args: str) -> None:
        done = self.run(["systemctl", *args], 120)
        if done.returncode != 0:
            raise ProxySetupError(f"systemctl {' '.join(args)} failed: {done.stderr.strip()}")
