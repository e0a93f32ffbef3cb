"""Throw-away Debian test hosts for beamops.release: systemd as PID 1, sshd, one address each.

Each host is a systemd-nspawn container booted from an overlayfs copy of one template
root filesystem, attached to a private bridge. The harness is meant for CI machines and
developer boxes where the controller's PID 1 may not be systemd and cgroups may be v1 or
hybrid, so it never asks a host systemd for anything:

* nspawn runs with ``--register=no --keep-unit`` (without ``--keep-unit`` it tries the
  host's system bus and dies when there is none);
* every container gets a cgroup of its own in each hierarchy its systemd manages, created
  here before nspawn starts (otherwise all containers share one "payload" cgroup);
* PID 1 inside is a tiny wrapper that remounts the v1 controllers read-write before it
  execs systemd: nspawn mounts them read-only, and then ``MemoryMax=`` and friends are
  accepted by systemd but silently not enforced;
* a detached supervisor per host runs nspawn and restarts it when the guest reboots
  (nspawn exits 133), and turns SIGTERM into an orderly guest poweroff.

Usage: ``python3 tests/harness/testhosts.py --help``. The same operations are importable
(``up``, ``down``, ``stop``, ``inventory_json`` ...) for pytest fixtures and molecule.

Configuration comes from the environment (see ``Config.from_env``). Two checkouts on one
machine coexist when they use distinct state dirs, bridges, subnets and name prefixes.
Hosts have no default route and no DNS: every package a test needs is in the template.

Besides that full template, the harness builds *bare* images (``bare-bookworm``,
``bare-trixie``): systemd, sshd and python3 only, as a freshly provisioned Debian 12 or 13
server looks. What a deploy installs on them comes from a local package source made with the
image: a flat apt repository of those packages and their dependencies, read-only at
``/srv/beamops-apt`` inside the host and the only entry in its ``/etc/apt/sources.list``
(it stands in for the host's mirror, which the test network cannot reach).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Iterator, Mapping, Sequence

# ----------------------------------------------------------------------------- recipe
# Bump when the way the template is made changes, so existing images get rebuilt.
RECIPE_VERSION = 1
SUITE = "bookworm"  # the full template's suite, and the controller's

# Everything the hosts will ever need: they have no network to install anything later.
# No Erlang/Elixir on purpose: the sample release ships its own ERTS and must run without.
TEMPLATE_PACKAGES: tuple[str, ...] = (
    # systemd as PID 1, logind sessions for ssh logins, the package manager's python API
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    # tools tasks and tests call
    "curl",
    "ca-certificates",
    "iproute2",
    "procps",
    "acl",
    "xz-utils",
    "netcat-openbsd",
    "socat",  # HAProxy's runtime API is a unix socket
    # traffic switching and observation
    "nginx",
    "haproxy",
    "prometheus",
    "prometheus-node-exporter",  # its textfile collector carries the deploy metrics
    # shared libraries an OTP release with bundled ERTS links against
    "libssl3",
    "libstdc++6",
    "libgcc-s1",
    "libtinfo6",
    "zlib1g",
)

# A bare host: what a provider's minimal Debian image has (systemd, sshd, python3).
BARE_PACKAGES: tuple[str, ...] = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3")

# What a deploy may install on a bare host, downloaded with its dependencies into the bare
# image's local package source (python3-apt: Ansible's apt module installs it first).
BARE_SOURCE_PACKAGES: tuple[str, ...] = ("nginx", "haproxy", "python3-apt")

# Where a bare host sees its package source.
BARE_SOURCE_MOUNT = "/srv/beamops-apt"


@dataclasses.dataclass(frozen=True)
class Image:
    """One kind of host root filesystem the harness can build and boot."""

    name: str
    suite: str
    packages: tuple[str, ...]
    bare: bool

    @property
    def directory(self) -> str:
        # The full template keeps its historical place so existing state dirs stay valid.
        return "template" if self.name == FULL_IMAGE else f"image-{self.name}"


FULL_IMAGE = "full"
IMAGES: Mapping[str, Image] = {
    FULL_IMAGE: Image(FULL_IMAGE, SUITE, TEMPLATE_PACKAGES, bare=False),
    # The full template's packages on Debian 13: the deploy scenario runs on it too.
    "full-trixie": Image("full-trixie", "trixie", TEMPLATE_PACKAGES, bare=False),
    "bare-bookworm": Image("bare-bookworm", "bookworm", BARE_PACKAGES, bare=True),
    "bare-trixie": Image("bare-trixie", "trixie", BARE_PACKAGES, bare=True),
}

# v1 controllers made writable inside the hosts; each also gets a per-host cgroup.
RW_CONTROLLERS: tuple[str, ...] = ("memory", "cpu", "cpuacct", "pids", "blkio")

# Background jobs that would hold the dpkg lock mid-test, and consoles nobody uses.
MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_reap.service",
    "console-getty.service",
    "getty@tty1.service",
)

# Installed for the tests that use them, but not started at boot: Debian enables Prometheus
# (and its node exporter, when present) on every host, which costs a 2-core machine CPU the
# other tests need. A test that needs one starts it.
DISABLED_UNITS: tuple[str, ...] = ("prometheus.service", "prometheus-node-exporter.service")

# Files dpkg skips while unpacking: documentation and translations, and the 210 MB of
# time-zone data that prometheus drags in through libjs-moment-timezone for its legacy
# console pages (the UI itself works without it).
DPKG_PATH_FILTERS: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/javascript/moment-timezone/data/*",
)

INIT_WRAPPER = "/usr/local/sbin/beamops-testhost-init"
TEMPLATE_ID_FILE = "etc/beamops-testhost-template"
UNPRIVILEGED_USER = "ansible"
INVENTORY_GROUP = "testhosts"
NSPAWN_REBOOT_EXIT = 133
MAX_HOSTS = 99
STOP_TIMEOUT = 30.0  # orderly poweroff takes well under a second; this is the ceiling
KILL_TIMEOUT = 10.0
SSH_OPTIONS: tuple[str, ...] = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=2",
)

# Controller tools and the Debian package that provides each.
CONTROLLER_TOOLS: Mapping[str, str] = {
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "mount": "mount",
}

SCRIPT = Path(__file__).resolve()
SUPERVISE_COMMAND = "_supervise"


class HarnessError(Exception):
    """A failure the user can act on; the CLI prints it as one line."""


def log(message: str) -> None:
    print(f"[testhosts] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- config
# Every setting, its environment variable and its default.
ENV_DEFAULTS: Mapping[str, str] = {
    "BEAMOPS_TH_DIR": "/var/lib/beamops-testhosts",  # template, key, per-host overlays
    "BEAMOPS_TH_NET": "10.213.0",  # a /24: bridge .1, host i .(10+i)
    "BEAMOPS_TH_BRIDGE": "bobr0",
    "BEAMOPS_TH_PREFIX": "bo",  # hosts bo1..boN
    "BEAMOPS_TH_MIRROR": "",  # empty: the mirror of the controller's apt sources
    "BEAMOPS_TH_BOOT_TIMEOUT": "90",  # seconds until ssh must answer
}


@dataclasses.dataclass(frozen=True)
class Config:
    state_dir: Path
    net: str
    bridge: str
    prefix: str
    mirror: str
    boot_timeout: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        values = {var: env.get(var) or default for var, default in ENV_DEFAULTS.items()}
        state_dir = Path(values["BEAMOPS_TH_DIR"])
        net = values["BEAMOPS_TH_NET"]
        bridge = values["BEAMOPS_TH_BRIDGE"]
        prefix = values["BEAMOPS_TH_PREFIX"]
        mirror = values["BEAMOPS_TH_MIRROR"]
        timeout_text = values["BEAMOPS_TH_BOOT_TIMEOUT"]
        if not state_dir.is_absolute():
            raise HarnessError(f"BEAMOPS_TH_DIR={state_dir}: expected an absolute path")
        octets = net.split(".")
        if len(octets) != 3 or not all(o.isdigit() and int(o) <= 255 for o in octets):
            raise HarnessError(f"BEAMOPS_TH_NET={net!r}: expected three octets such as 10.213.0")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", bridge):
            raise HarnessError(f"BEAMOPS_TH_BRIDGE={bridge!r}: expected an interface name")
        # nspawn names the host side of each veth "vb-<machine>" and must fit 15 bytes,
        # or it hashes the name and leftovers could no longer be found by name.
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,9}", prefix) or prefix[-1].isdigit():
            raise HarnessError(
                f"BEAMOPS_TH_PREFIX={prefix!r}: expected 1-10 lowercase letters, digits or "
                "dashes, starting with a letter and not ending with a digit"
            )
        if mirror and not re.match(r"^[a-z+]+://\S+$", mirror):
            raise HarnessError(f"BEAMOPS_TH_MIRROR={mirror!r}: expected a URI such as http://...")
        try:
            boot_timeout = float(timeout_text)
        except ValueError:
            boot_timeout = 0.0
        if boot_timeout <= 0:
            raise HarnessError(
                f"BEAMOPS_TH_BOOT_TIMEOUT={timeout_text!r}: expected a positive number of seconds"
            )
        return cls(state_dir.resolve(), net, bridge, prefix, mirror, boot_timeout)

    def to_env(self) -> dict[str, str]:
        """The environment that makes Config.from_env() return this config again."""
        return {
            "BEAMOPS_TH_DIR": str(self.state_dir),
            "BEAMOPS_TH_NET": self.net,
            "BEAMOPS_TH_BRIDGE": self.bridge,
            "BEAMOPS_TH_PREFIX": self.prefix,
            "BEAMOPS_TH_MIRROR": self.mirror,
            "BEAMOPS_TH_BOOT_TIMEOUT": repr(self.boot_timeout),
        }

    # paths ------------------------------------------------------------------
    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def inventory_ini_path(self) -> Path:
        return self.state_dir / "inventory.ini"

    @property
    def inventory_json_path(self) -> Path:
        return self.state_dir / "inventory.json"

    def host_dir(self, name: str) -> Path:
        return self.hosts_dir / name

    def image_dir(self, image: Image) -> Path:
        return self.state_dir / image.directory

    def source_dir(self, image: Image) -> Path:
        """A bare image's local package source (a flat apt repository)."""
        return self.state_dir / f"apt-{image.name}"

    # names ------------------------------------------------------------------
    @property
    def cgroup_group(self) -> str:
        """Directory under which this checkout's per-host cgroups live, in every hierarchy."""
        return f"beamops-th-{self.prefix}"

    def host_name(self, index: int) -> str:
        return f"{self.prefix}{index}"

    def host_index(self, name: str) -> int | None:
        match = re.fullmatch(re.escape(self.prefix) + r"([1-9][0-9]?)", name)
        return int(match.group(1)) if match else None

    def host_address(self, index: int) -> str:
        return f"{self.net}.{10 + index}"

    @property
    def bridge_address(self) -> str:
        return f"{self.net}.1"


# ----------------------------------------------------------------------------- hosts
@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    address: str
    key_path: Path
    user: str = "root"

    def ssh_argv(self, *command: str, user: str | None = None) -> list[str]:
        """argv for running COMMAND on this host over ssh (an interactive login if empty)."""
        target = f"{user or self.user}@{self.address}"
        return ["ssh", *SSH_OPTIONS, "-i", str(self.key_path), target, *command]

    def run(
        self, command: str, *, user: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell COMMAND on this host over ssh; never raises on a non-zero exit."""
        return subprocess.run(
            self.ssh_argv(command, user=user),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _host(cfg: Config, name: str) -> Host:
    index = cfg.host_index(name)
    if index is None:
        raise HarnessError(f"{name!r} is not a test host name (expected {cfg.prefix}1, ...)")
    return Host(name, cfg.host_address(index), cfg.key_path)


# ----------------------------------------------------------------------------- system helpers
def _run(
    argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ARGV, capture its output, and turn a failure into a HarnessError naming WHAT."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise HarnessError(f"{what}: {argv[0]} not found (run `testhosts.py deps`)") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise HarnessError(f"{what} failed (exit {result.returncode}): {' | '.join(detail)}")
    return result


def _require_root() -> None:
    if os.geteuid() != 0:
        raise HarnessError(
            "must run as root: systemd-nspawn, overlay mounts, bridges and cgroups need it"
        )


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(content[-lines:])


def _unescape_mount_field(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, options) of every mount visible to this process."""
    result = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 4:
                result.append((_unescape_mount_field(fields[1]), fields[2], fields[3]))
    return result


def _mounts_under(path: Path) -> list[str]:
    top = str(path)
    return [m for m, _fstype, _options in _mounts() if m == top or m.startswith(top + "/")]


def _unmount_all_under(path: Path) -> None:
    """Unmount everything at or below PATH, deepest first; lazily if a mount stays busy."""
    for point in sorted(set(_mounts_under(path)), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = _mounts_under(path)
    if left:
        raise HarnessError(f"cannot unmount {', '.join(left)}")


def _safe_rmtree(path: Path) -> None:
    """rmtree that first unmounts what is below PATH, so it never deletes through a mount
    (a crashed mmdebstrap leaves /dev, /proc and /sys bind-mounted in its target)."""
    if not path.exists() and not path.is_symlink():
        return
    _unmount_all_under(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@dataclasses.dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    argv: tuple[str, ...]


def _read_proc(pid: int) -> _Proc | None:
    """The process PID, or None if it is gone or a zombie (a zombie has nothing left to stop)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw_argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    if state in ("Z", "X"):
        return None
    argv = tuple(a.decode(errors="replace") for a in raw_argv.split(b"\0") if a)
    return _Proc(pid, int(ppid), argv)


def _processes() -> list[_Proc]:
    procs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = _read_proc(int(entry))
            if proc is not None:
                procs.append(proc)
    return procs


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
    return _read_proc(pid) is not None


def _signal(pid: int, sig: int) -> None:
    if pid != os.getpid():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _supervisor_machine(proc: _Proc) -> str | None:
    """Machine name if PROC is a supervisor started by this script."""
    argv = proc.argv
    for i in range(1, len(argv) - 1):
        if argv[i] == SUPERVISE_COMMAND and argv[i - 1].endswith("testhosts.py"):
            return argv[i + 1]
    return None


def _nspawn_machine(proc: _Proc) -> str | None:
    if not proc.argv or os.path.basename(proc.argv[0]) != "systemd-nspawn":
        return None
    for arg in proc.argv:
        if arg.startswith("--machine="):
            return arg.split("=", 1)[1]
    return None


@dataclasses.dataclass
class _Machine:
    """What of one host is alive, found by scanning the system rather than trusting state files."""

    supervisors: list[int] = dataclasses.field(default_factory=list)
    nspawns: list[int] = dataclasses.field(default_factory=list)


def _scan_machines(cfg: Config) -> dict[str, _Machine]:
    machines: dict[str, _Machine] = {}
    for proc in _processes():
        name = _supervisor_machine(proc)
        if name is not None and cfg.host_index(name) is not None:
            machines.setdefault(name, _Machine()).supervisors.append(proc.pid)
            continue
        name = _nspawn_machine(proc)
        if name is not None and cfg.host_index(name) is not None:
            machines.setdefault(name, _Machine()).nspawns.append(proc.pid)
    return machines


def _children(pid: int, procs: list[_Proc] | None = None) -> list[int]:
    return [p.pid for p in (procs if procs is not None else _processes()) if p.ppid == pid]


# ----------------------------------------------------------------------------- cgroups
def _cgroup_mounts() -> list[tuple[str, str, frozenset[str]]]:
    """(mount point, fs type, options) of every cgroup hierarchy."""
    return [
        (point, fstype, frozenset(opts.split(",")))
        for point, fstype, opts in _mounts()
        if fstype in ("cgroup", "cgroup2")
    ]


def _hierarchy_mount(controllers: str, mounts: list[tuple[str, str, frozenset[str]]]) -> str | None:
    """Mount point of the hierarchy a /proc/self/cgroup line names, if a host manages it:
    the unified one, name=systemd, or a v1 one holding one of RW_CONTROLLERS."""
    if not controllers:
        return next((point for point, fstype, _unused in mounts if fstype == "cgroup2"), None)
    wanted = set(controllers.split(","))
    if controllers != "name=systemd" and not wanted & set(RW_CONTROLLERS):
        return None
    for point, fstype, opts in mounts:
        if fstype == "cgroup" and wanted <= opts:
            return point
    return None


def _host_cgroup_dirs(cfg: Config, name: str) -> list[Path]:
    """Where host NAME's cgroups go: below this process's own cgroup in each hierarchy
    the host's systemd manages."""
    mounts = _cgroup_mounts()
    dirs = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _unused, controllers, path = line.split(":", 2)
        mount_point = _hierarchy_mount(controllers, mounts)
        if mount_point is None or not os.path.exists(os.path.join(mount_point, "cgroup.procs")):
            continue
        # Never nest a host below another one, even when called from inside one's cgroup.
        path = path.rstrip("/").split(f"/{cfg.cgroup_group}/")[0]
        dirs.append(Path(f"{mount_point}{path}") / cfg.cgroup_group / name)
    return dirs


def _our_cgroup_groups(cfg: Config) -> list[Path]:
    """Every cgroup directory named after this checkout, wherever an earlier run put it."""
    found = []
    for point, _fstype, _options in _cgroup_mounts():
        for root, dirs, _unused in os.walk(point):
            if cfg.cgroup_group in dirs:
                found.append(Path(root) / cfg.cgroup_group)
                dirs.remove(cfg.cgroup_group)
    return found


def _cgroup_pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    for root, _unused, files in os.walk(directory):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(root, "cgroup.procs").read_text().split())
    return pids


def _remove_cgroup_tree(directory: Path) -> None:
    """rmdir depth-first: cgroup directories hold pseudo-files and cannot be rm -rf'ed."""
    if not directory.is_dir():
        return
    for _attempt in range(20):  # a just-emptied cgroup can stay busy for a moment
        for root, _dirs, _files in sorted(
            os.walk(directory), key=lambda w: len(w[0]), reverse=True
        ):
            with contextlib.suppress(OSError):
                os.rmdir(root)
        if not directory.exists():
            return
        time.sleep(0.1)
    raise HarnessError(f"cannot remove cgroup {directory}: pids {sorted(_cgroup_pids(directory))}")


# ----------------------------------------------------------------------------- locking
_lock_depth: dict[Path, int] = {}


@contextlib.contextmanager
def _locked(cfg: Config) -> Iterator[None]:
    """Serialise build/up/down/stop for one state dir (re-entrant within this process)."""
    key = cfg.state_dir
    if _lock_depth.get(key):
        _lock_depth[key] += 1
        try:
            yield
        finally:
            _lock_depth[key] -= 1
        return
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.state_dir / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        _lock_depth[key] = 1
        try:
            yield
        finally:
            _lock_depth[key] = 0


# ----------------------------------------------------------------------------- deps
def missing_packages() -> list[str]:
    return sorted({pkg for tool, pkg in CONTROLLER_TOOLS.items() if shutil.which(tool) is None})


def deps() -> None:
    """Install the controller packages the harness needs, if any is missing."""
    _require_root()
    missing = missing_packages()
    if not missing:
        log("controller tools present: " + ", ".join(sorted(CONTROLLER_TOOLS)))
        return
    log(f"installing {' '.join(missing)}")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], what="apt-get update", env=apt_env)
    _run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        what=f"apt-get install {' '.join(missing)}",
        env=apt_env,
    )


# ----------------------------------------------------------------------------- apt mirror
def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()


def _suite_wanted(suite: str) -> bool:
    return suite == SUITE or suite.startswith(SUITE + "-")


def _sources_entries(text: str) -> list[str]:
    entries = []
    for fields in _deb822_paragraphs(text):
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        components = fields.get("components", "") or "main"
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                if _suite_wanted(suite):
                    entries.append(f"deb {uri} {suite} {components}")
    return entries


def _list_entries(text: str) -> list[str]:
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # one-line options: [arch=... signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and _suite_wanted(words[1]):
            entries.append(" ".join(["deb", *words]))
    return entries


def _rename_suite(entry: str, suite: str) -> str:
    """'deb URI bookworm-security main' -> 'deb URI trixie-security main'."""
    words = entry.split()
    words[2] = suite + words[2][len(SUITE) :]
    return " ".join(words)


def apt_source_entries(
    cfg: Config, apt_dir: Path = Path("/etc/apt"), suite: str = SUITE
) -> list[str]:
    """One-line "deb URI SUITE COMPONENTS" entries for SUITE (and its -updates/-security
    siblings), read from the controller's apt configuration: the controller runs Debian
    SUITE, and another suite is served by the same mirrors under its own name."""
    if cfg.mirror:
        return [f"deb {cfg.mirror} {suite} main"]
    entries: list[str] = []
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        entries += _sources_entries(path.read_text(errors="replace"))
    for path in [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]:
        if path.is_file():
            entries += _list_entries(path.read_text(errors="replace"))
    if suite != SUITE:
        entries = [_rename_suite(entry, suite) for entry in entries]
    unique = list(dict.fromkeys(entries))
    if not unique:
        raise HarnessError(
            f"no apt source for Debian {SUITE} in {apt_dir}/sources.list or "
            f"{apt_dir}/sources.list.d/*.list|*.sources: set BEAMOPS_TH_MIRROR to a mirror URI"
        )
    return unique


# ----------------------------------------------------------------------------- template
def image_named(name: str) -> Image:
    try:
        return IMAGES[name]
    except KeyError:
        raise HarnessError(f"image {name!r}: expected one of {', '.join(sorted(IMAGES))}") from None


def template_id(image: Image = IMAGES[FULL_IMAGE]) -> str:
    """Identifies what a template built by this code contains; a change means rebuild."""
    recipe = {
        "recipe": RECIPE_VERSION,
        "suite": image.suite,
        "packages": sorted(image.packages),
        "rw_controllers": list(RW_CONTROLLERS),
        "masked": sorted(MASKED_UNITS),
        "disabled": sorted(DISABLED_UNITS),
        "dpkg_filters": list(DPKG_PATH_FILTERS),
    }
    if image.bare:
        recipe["source_packages"] = sorted(BARE_SOURCE_PACKAGES)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def installed_template_id(cfg: Config, image: Image = IMAGES[FULL_IMAGE]) -> str | None:
    try:
        return (cfg.image_dir(image) / TEMPLATE_ID_FILE).read_text().strip()
    except FileNotFoundError:
        return None


def _init_wrapper_script() -> str:
    controllers = " ".join(RW_CONTROLLERS)
    return f"""#!/bin/sh
# PID 1 of a beamops test host. systemd-nspawn mounts the cgroup v1 controllers read-only;
# they are this container's own cgroups, so make them writable for systemd, which can then
# enforce MemoryMax=, CPUQuota=, TasksMax= and IO limits. Then become systemd.
for c in {controllers}; do
  if mountpoint -q /sys/fs/cgroup/$c; then
    mount -o remount,bind,rw,nosuid,nodev,noexec /sys/fs/cgroup/$c
  fi
done
exec /lib/systemd/systemd "$@"
"""


def _customize_template(root: Path, image: Image) -> None:
    """Turn a fresh bootstrap into a host template: users, sudo, systemd units, no identity."""

    def chroot(*argv: str) -> None:
        _run(["chroot", str(root), *argv], what=f"chroot {root} {' '.join(argv)}")

    if image.bare:
        # root over ssh only, and the local package source as the host's only mirror
        (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        for sources in [
            root / "etc/apt/sources.list",
            *(root / "etc/apt").glob("sources.list.d/*"),
        ]:
            sources.unlink(missing_ok=True)
        (root / "etc/apt/sources.list").write_text(
            f"deb [trusted=yes] file:{BARE_SOURCE_MOUNT} ./\n"
        )
        (root / BARE_SOURCE_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    else:
        chroot(
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "--groups",
            "sudo",
            UNPRIVILEGED_USER,
        )
        sudoers = root / "etc/sudoers.d" / UNPRIVILEGED_USER
        _write_atomic(sudoers, f"{UNPRIVILEGED_USER} ALL=(ALL) NOPASSWD:ALL\n", 0o440)
        for home in (root / "root", root / "home" / UNPRIVILEGED_USER):
            (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    # Each host gets its own identity when it is first booted.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# beamops test host: no DNS on purpose\n")
    wrapper = root / INIT_WRAPPER.lstrip("/")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(wrapper, _init_wrapper_script(), 0o755)
    # systemctl inside a chroot edits unit symlinks without talking to any manager.
    chroot("systemctl", "enable", "systemd-networkd.service")
    chroot("systemctl", "mask", *MASKED_UNITS)
    present = [u for u in DISABLED_UNITS if (root / "lib/systemd/system" / u).exists()]
    if present:
        chroot("systemctl", "disable", *present)
    for cache in (root / "var/cache/apt").glob("*.bin"):
        cache.unlink()
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    for lists in (root / "var/lib/apt/lists").iterdir():
        if lists.is_file():
            lists.unlink()


def _directory_size_mib(path: Path) -> int:
    result = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=False)
    return int(result.stdout.split()[0]) if result.returncode == 0 else -1


def build(force: bool = False, cfg: Config | None = None, image: str = FULL_IMAGE) -> str:
    """Make sure IMAGE's template exists and matches this recipe; returns its id."""
    cfg = cfg or Config.from_env()
    _require_root()
    with _locked(cfg):
        return _ensure_template(cfg, force, image_named(image))


def _ensure_template(cfg: Config, force: bool, image: Image = IMAGES[FULL_IMAGE]) -> str:
    want = template_id(image)
    have = installed_template_id(cfg, image)
    target = cfg.image_dir(image)
    if have == want and not force:
        log(f"reusing template {want} at {target}")
        _remove_unfinished_templates(cfg)
        return want
    running = [n for n in running_host_names(cfg) if _host_image(cfg, n) == image.name]
    if running:
        raise HarnessError(
            f"template {have} must be rebuilt as {want} but hosts are running "
            f"({', '.join(running)}): run `testhosts.py down` first"
        )
    _ensure_deps_present()
    entries = apt_source_entries(cfg, suite=image.suite)
    log(
        f"building template {want} ({image.name}: {image.suite}, {len(image.packages)} "
        "packages) from: " + "; ".join(entries)
    )
    started = time.monotonic()
    tmp = cfg.state_dir / "template.tmp"
    source_tmp = cfg.state_dir / "source.tmp"
    _remove_unfinished_templates(cfg)
    build_log = cfg.state_dir / "build.log"
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(image.packages),
        *(f"--dpkgopt={rule}" for rule in DPKG_PATH_FILTERS),
        *(_source_hooks(source_tmp) if image.bare else []),
        image.suite,
        str(tmp),
        *entries,
    ]
    with open(build_log, "w") as out:
        rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        _remove_unfinished_templates(cfg)
        raise HarnessError(
            f"mmdebstrap failed (exit {rc}); {build_log} ends with:\n" + _tail(build_log)
        )
    _customize_template(tmp, image)
    (tmp / TEMPLATE_ID_FILE).write_text(want + "\n")
    if image.bare:
        _write_apt_index(source_tmp)
        _swap_in(cfg, source_tmp, cfg.source_dir(image))
    _swap_in(cfg, tmp, target)
    elapsed = time.monotonic() - started
    log(f"template {want} built in {elapsed:.1f}s: {_directory_size_mib(target)} MiB at {target}")
    return want


def _swap_in(cfg: Config, built: Path, target: Path) -> None:
    """Replace TARGET by BUILT with renames: an image dir is always complete."""
    old = cfg.state_dir / "template.old"
    _safe_rmtree(old)
    if target.exists():
        target.rename(old)
    built.rename(target)
    _safe_rmtree(old)


def _source_hooks(destination: Path) -> list[str]:
    """mmdebstrap hooks that download what a deploy may install on a bare host (with every
    dependency the bare image lacks) and copy those packages out to DESTINATION."""
    packages = " ".join(BARE_SOURCE_PACKAGES)
    return [
        '--customize-hook=chroot "$1" apt-get install --download-only --yes '
        f"--no-install-recommends {packages}",
        f"--customize-hook=sync-out /var/cache/apt/archives {destination}",
    ]


def _write_apt_index(repo: Path) -> None:
    """Make REPO a flat apt repository: Packages (control fields of each .deb plus where it
    is and its checksums) and a Release file naming it (apt wants one even when trusted)."""
    # apt-get download leaves these behind; they are no packages.
    for leftover in (repo / "lock", repo / "partial"):
        if leftover.is_dir():
            _safe_rmtree(leftover)
        else:
            leftover.unlink(missing_ok=True)
    paragraphs = []
    for deb in sorted(repo.glob("*.deb")):
        control = _run(["dpkg-deb", "--field", str(deb)], what=f"dpkg-deb --field {deb.name}")
        data = deb.read_bytes()
        paragraphs.append(
            control.stdout.rstrip("\n")
            + f"\nFilename: ./{deb.name}\nSize: {len(data)}"
            + f"\nMD5sum: {hashlib.md5(data).hexdigest()}"
            + f"\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    if not paragraphs:
        raise HarnessError(f"no packages were downloaded into {repo}")
    index = "\n".join(paragraphs).encode()
    (repo / "Packages").write_bytes(index)
    (repo / "Release").write_text(
        "Origin: beamops-testhosts\nLabel: beamops-testhosts\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\n"
        f"SHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n"
    )


def _remove_unfinished_templates(cfg: Config) -> None:
    """What an interrupted build leaves: its target, with /proc, /sys and /dev/pts mounted."""
    for unfinished in ("template.tmp", "template.old", "source.tmp"):
        _safe_rmtree(cfg.state_dir / unfinished)


def _ensure_deps_present() -> None:
    missing = missing_packages()
    if missing:
        deps()


def _ensure_key(cfg: Config) -> None:
    if cfg.key_path.exists() and cfg.key_path.with_suffix(".pub").exists():
        return
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    for stale in (cfg.key_path, cfg.key_path.with_suffix(".pub")):
        stale.unlink(missing_ok=True)
    _run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "beamops-testhosts",
            "-f",
            str(cfg.key_path),
        ],
        what="ssh-keygen",
    )


# ----------------------------------------------------------------------------- network
def _ensure_bridge(cfg: Config) -> None:
    if not Path("/sys/class/net", cfg.bridge).exists():
        _run(
            ["ip", "link", "add", cfg.bridge, "type", "bridge"], what=f"create bridge {cfg.bridge}"
        )
        # nothing here speaks IPv6; keep link-local chatter off the bridge
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{cfg.bridge}/disable_ipv6").write_text("1")
    shown = _run(["ip", "-4", "-o", "addr", "show", "dev", cfg.bridge], what="ip addr show")
    if f"inet {cfg.bridge_address}/24" not in shown.stdout:
        _run(
            ["ip", "addr", "add", f"{cfg.bridge_address}/24", "dev", cfg.bridge],
            what=f"address {cfg.bridge_address}/24 on {cfg.bridge}",
        )
    _run(["ip", "link", "set", cfg.bridge, "up"], what=f"bring {cfg.bridge} up")


def _our_veths(cfg: Config) -> list[str]:
    veths = []
    for link in os.listdir("/sys/class/net"):
        if link.startswith("vb-") and cfg.host_index(link[3:]) is not None:
            veths.append(link)
    return veths


def _delete_link(name: str) -> None:
    if Path("/sys/class/net", name).exists():
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


# ----------------------------------------------------------------------------- host state
def _supervisor_pid(cfg: Config, name: str) -> int | None:
    """PID of NAME's supervisor if its pid file names a live supervisor for NAME."""
    try:
        pid = int((cfg.host_dir(name) / "pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    proc = _read_proc(pid)
    return pid if proc is not None and _supervisor_machine(proc) == name else None


def running_host_names(cfg: Config) -> list[str]:
    if not cfg.hosts_dir.is_dir():
        return []
    names = [d.name for d in cfg.hosts_dir.iterdir() if cfg.host_index(d.name) is not None]
    running = [n for n in names if _supervisor_pid(cfg, n) is not None]
    return sorted(running, key=lambda n: cfg.host_index(n) or 0)


def running_hosts(cfg: Config | None = None) -> list[Host]:
    cfg = cfg or Config.from_env()
    return [_host(cfg, name) for name in running_host_names(cfg)]


def _leader_pid(cfg: Config, name: str) -> int | None:
    """The host's PID 1 as the controller sees it (nspawn's child)."""
    procs = _processes()
    for proc in procs:
        if _nspawn_machine(proc) == name:
            children = _children(proc.pid, procs)
            if children:
                return children[0]
    return None


def _etc_hosts(cfg: Config, names: Sequence[str]) -> str:
    lines = [
        "127.0.0.1 localhost",
        "::1 localhost ip6-localhost ip6-loopback",
        f"{cfg.bridge_address} controller",
    ]
    lines += [f"{_host(cfg, name).address} {name}" for name in names]
    return "\n".join(lines) + "\n"


def _networkd_config(address: str) -> str:
    return f"""[Match]
Name=host0

[Network]
Address={address}/24
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise HarnessError(f"user {user} missing from {root}/etc/passwd: rebuild the template")


def _authorize_key(cfg: Config, root: Path, image: Image) -> None:
    public_key = cfg.key_path.with_suffix(".pub").read_text()
    users = [("root", "root")]
    if not image.bare:
        users.append((UNPRIVILEGED_USER, f"home/{UNPRIVILEGED_USER}"))
    for user, home in users:
        uid, gid = _passwd_ids(root, user)
        ssh_dir = root / home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        keys = ssh_dir / "authorized_keys"
        keys.write_text(public_key)
        keys.chmod(0o600)
        for path in (ssh_dir, keys):
            os.chown(path, uid, gid)


def _host_image(cfg: Config, name: str) -> str:
    """The image NAME was booted from (hosts booted before images existed: the full one)."""
    try:
        return (cfg.host_dir(name) / "image").read_text().strip()
    except FileNotFoundError:
        return FULL_IMAGE


def _prepare_root(cfg: Config, name: str, all_names: Sequence[str], image: Image) -> None:
    """Mount the host's overlay and give it its identity, address and keys."""
    host = _host(cfg, name)
    hd = cfg.host_dir(name)
    for sub in ("upper", "work", "root"):
        (hd / sub).mkdir(parents=True, exist_ok=True)
    (hd / "image").write_text(image.name + "\n")
    root = hd / "root"
    _run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={cfg.image_dir(image)},upperdir={hd / 'upper'},workdir={hd / 'work'}",
            str(root),
        ],
        what=f"overlay mount for {name}",
    )
    (root / "etc/hostname").write_text(name + "\n")
    (root / "etc/hosts").write_text(_etc_hosts(cfg, all_names))
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    _run(["ssh-keygen", "-q", "-A", "-f", str(root)], what=f"ssh host keys for {name}")
    network_dir = root / "etc/systemd/network"
    network_dir.mkdir(parents=True, exist_ok=True)
    (network_dir / "10-host0.network").write_text(_networkd_config(host.address))
    _authorize_key(cfg, root, image)


def _create_cgroups(cfg: Config, name: str) -> None:
    dirs = _host_cgroup_dirs(cfg, name)
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
    (cfg.host_dir(name) / "cgroups").write_text("".join(f"{d}\n" for d in dirs))


def _spawn_supervisor(cfg: Config, name: str) -> int:
    hd = cfg.host_dir(name)
    pid_file = hd / "pid"
    pid_file.unlink(missing_ok=True)
    with open(hd / "nspawn.log", "ab") as log_file:
        # The supervisor forks once more and this first process exits at once: the
        # supervisor ends up owned by init, detached from whoever called `up`.
        launcher = subprocess.Popen(
            [sys.executable, str(SCRIPT), SUPERVISE_COMMAND, name],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
            env={**os.environ, **cfg.to_env()},
        )
    launcher_rc = launcher.wait()
    deadline = time.monotonic() + 10
    # The pid file is written once the supervisor sits in the host's cgroups, just before
    # nspawn starts; whether nspawn then keeps running is for _wait_for_ssh to find out.
    while launcher_rc == 0 and time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(pid_file.read_text())
        time.sleep(0.05)
    raise HarnessError(
        f"{name}: supervisor did not start; {hd / 'nspawn.log'} ends with:\n"
        + _tail(hd / "nspawn.log")
    )


def _wait_for_ssh(cfg: Config, name: str, deadline: float) -> None:
    host = _host(cfg, name)
    log_path = cfg.host_dir(name) / "nspawn.log"
    while True:
        if _supervisor_pid(cfg, name) is None:
            raise HarnessError(
                f"{name}: systemd-nspawn exited; {log_path} ends with:\n" + _tail(log_path)
            )
        probe = subprocess.run(
            host.ssh_argv("true"), capture_output=True, check=False, stdin=subprocess.DEVNULL
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise HarnessError(
                f"{name}: ssh root@{host.address} not reachable after {cfg.boot_timeout:g}s "
                f"(BEAMOPS_TH_BOOT_TIMEOUT); last error: {probe.stderr.decode().strip()!r}; "
                f"{log_path} ends with:\n{_tail(log_path)}"
            )
        time.sleep(0.25)


def _boot_host(
    cfg: Config, name: str, all_names: Sequence[str], deadline: float, image: Image
) -> None:
    _release_host(cfg, name, quiet=True)  # leftovers of a crashed run, if any
    _prepare_root(cfg, name, all_names, image)
    _create_cgroups(cfg, name)
    _spawn_supervisor(cfg, name)
    _wait_for_ssh(cfg, name, deadline)


# ----------------------------------------------------------------------------- stopping
def _stop_processes(cfg: Config, names: Sequence[str], quiet: bool) -> None:
    """Orderly poweroff of NAMES (by scanning, not by pid files), SIGKILL after a bounded wait."""
    machines = _scan_machines(cfg)
    targets: list[int] = []
    for name in names:
        machine = machines.get(name, _Machine())
        # The supervisor forwards SIGTERM to nspawn, which powers the guest off (SIGRTMIN+3
        # to its PID 1); an orphaned nspawn whose supervisor is gone gets it directly.
        first = machine.supervisors or machine.nspawns
        for pid in first:
            if not quiet:
                log(f"stopping {name} (pid {pid})")
            _signal(pid, signal.SIGTERM)
        targets += machine.supervisors + machine.nspawns
    if not _wait_gone(targets, STOP_TIMEOUT):
        log(
            f"still alive after {STOP_TIMEOUT:g}s: {sorted(p for p in targets if _alive(p))}; "
            "sending SIGKILL"
        )
    # Whatever is left in the hosts' cgroups (guest PID 1 first: killing it ends its whole
    # PID namespace), then nspawn and the supervisors.
    stragglers: list[int] = []
    for name in names:
        for group in _our_cgroup_groups(cfg):
            stragglers += sorted(_cgroup_pids(group / name))
    machines = _scan_machines(cfg)
    for name in names:
        machine = machines.get(name, _Machine())
        stragglers += machine.nspawns + machine.supervisors
    for pid in stragglers:
        _signal(pid, signal.SIGKILL)
    if not _wait_gone(stragglers, KILL_TIMEOUT):
        raise HarnessError(f"processes survived SIGKILL: {[p for p in stragglers if _alive(p)]}")


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _release_host(cfg: Config, name: str, quiet: bool) -> None:
    """Stop NAME if anything of it runs and remove every trace of it: processes, veth,
    overlay mount, cgroups, nspawn runtime dirs and the host dir."""
    _stop_processes(cfg, [name], quiet)
    _delete_link(f"vb-{name}")
    for group in _our_cgroup_groups(cfg):
        _remove_cgroup_tree(group / name)
    for runtime in ("propagate", "unix-export"):
        _safe_rmtree(Path("/run/systemd/nspawn", runtime, name))
    _safe_rmtree(cfg.host_dir(name))


def _leftover_names(cfg: Config) -> set[str]:
    """Hosts of ours that left any trace, whatever state files say."""
    names = set(_scan_machines(cfg))
    if cfg.hosts_dir.is_dir():
        names |= {d.name for d in cfg.hosts_dir.iterdir() if cfg.host_index(d.name) is not None}
    for group in _our_cgroup_groups(cfg):
        names |= {d.name for d in group.iterdir() if d.is_dir() and cfg.host_index(d.name)}
    names |= {link[3:] for link in _our_veths(cfg)}
    hosts_prefix = str(cfg.hosts_dir) + "/"
    for point in _mounts_under(cfg.hosts_dir):
        name = point[len(hosts_prefix) :].split("/")[0]
        if cfg.host_index(name) is not None:
            names.add(name)
    return names


# ----------------------------------------------------------------------------- public API
def up(count: int, cfg: Config | None = None, images: Sequence[str] = ()) -> list[Host]:
    """Boot hosts 1..COUNT (keeping those already running) and return them, reachable over ssh.
    IMAGES names the image of host 1, 2, ... in turn (the full one for hosts not named)."""
    cfg = cfg or Config.from_env()
    _require_root()
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_HOSTS:
        raise HarnessError(f"host count {count!r}: expected a whole number from 1 to {MAX_HOSTS}")
    if len(images) > count:
        raise HarnessError(f"{len(images)} images named for {count} host(s)")
    chosen = [image_named(name) for name in images]
    chosen += [IMAGES[FULL_IMAGE]] * (count - len(chosen))
    with _locked(cfg):
        _ensure_deps_present()
        for image in dict.fromkeys(chosen):
            _ensure_template(cfg, force=False, image=image)
        _ensure_key(cfg)
        started = time.monotonic()
        _ensure_bridge(cfg)
        cfg.hosts_dir.mkdir(parents=True, exist_ok=True)
        wanted = [cfg.host_name(i) for i in range(1, count + 1)]
        image_of = {cfg.host_name(i + 1): image for i, image in enumerate(chosen)}
        running = running_host_names(cfg)
        # A wanted host booted from another image starts afresh; hosts beyond COUNT stay as
        # they are (a scenario's extra host outlives a smaller `up`).
        kept = [n for n in running if n not in image_of or _host_image(cfg, n) == image_of[n].name]
        for name in running:
            if name not in kept:
                _release_host(cfg, name, quiet=True)
        to_boot = [n for n in wanted if n not in kept]
        every = sorted(set(wanted) | set(kept), key=lambda n: cfg.host_index(n) or 0)
        # Kept hosts learn about the new ones (written through the overlay, as the guest sees it).
        etc_hosts = _etc_hosts(cfg, every)
        for name in kept:
            path = cfg.host_dir(name) / "root/etc/hosts"
            if path.read_text() != etc_hosts:
                path.write_text(etc_hosts)
        deadline = time.monotonic() + cfg.boot_timeout
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(wanted)) as pool:
            futures = [
                pool.submit(_boot_host, cfg, n, every, deadline, image_of[n]) for n in to_boot
            ]
            # a kept host must still answer: it may have been running but broken
            futures += [pool.submit(_wait_for_ssh, cfg, n, deadline) for n in wanted if n in kept]
            for future in futures:
                future.result()
        elapsed = time.monotonic() - started
        _write_inventories(cfg)
        log(
            f"{count} host(s) reachable over ssh in {elapsed:.1f}s "
            f"(booted {len(to_boot)}, kept {len([n for n in wanted if n in kept])})"
        )
        return [_host(cfg, n) for n in wanted]


def stop(name: str, cfg: Config | None = None) -> None:
    """Stop one host and discard its overlay."""
    cfg = cfg or Config.from_env()
    _require_root()
    _host(cfg, name)  # validates the name
    with _locked(cfg):
        _release_host(cfg, name, quiet=False)
        _write_inventories(cfg)


def down(cfg: Config | None = None) -> None:
    """Stop every host of this checkout and remove all their traces, including a crashed
    run's whose state files are gone: found by scanning processes, mounts, links, cgroups."""
    cfg = cfg or Config.from_env()
    _require_root()
    with _locked(cfg):
        names = sorted(_leftover_names(cfg), key=lambda n: cfg.host_index(n) or 0)
        _stop_processes(cfg, names, quiet=False)
        for name in names:
            _release_host(cfg, name, quiet=True)
        for veth in _our_veths(cfg):
            _delete_link(veth)
        _delete_link(cfg.bridge)
        for group in _our_cgroup_groups(cfg):
            _remove_cgroup_tree(group)
        _safe_rmtree(cfg.hosts_dir)
        _remove_unfinished_templates(cfg)
        for inventory in (cfg.inventory_ini_path, cfg.inventory_json_path):
            inventory.unlink(missing_ok=True)
        remaining = _remaining_traces(cfg)
        if remaining:
            raise HarnessError("down left traces behind: " + "; ".join(remaining))
        log(f"down: {len(names)} host(s) removed; nothing of ours is left running")


def _remaining_traces(cfg: Config) -> list[str]:
    traces = [f"host {name}" for name in sorted(_leftover_names(cfg))]
    traces += [f"cgroup {group}" for group in _our_cgroup_groups(cfg)]
    if Path("/sys/class/net", cfg.bridge).exists():
        traces.append(f"bridge {cfg.bridge}")
    below = str(cfg.state_dir) + "/"
    traces += [f"mount {m}" for m in _mounts_under(cfg.state_dir) if m.startswith(below)]
    return traces


def purge(cfg: Config | None = None) -> None:
    """down, then delete the template, the ssh key and the state dir."""
    cfg = cfg or Config.from_env()
    down(cfg)
    with _locked(cfg):
        for path in ("template.tmp", "template.old", "source.tmp", "build.log"):
            _safe_rmtree(cfg.state_dir / path)
        for image in IMAGES.values():
            _safe_rmtree(cfg.image_dir(image))
            _safe_rmtree(cfg.source_dir(image))
        for key in (cfg.key_path, cfg.key_path.with_suffix(".pub")):
            key.unlink(missing_ok=True)
    (cfg.state_dir / ".lock").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        cfg.state_dir.rmdir()
    log(f"purged {cfg.state_dir}")


def _inventory_vars(cfg: Config) -> dict[str, str]:
    return {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(cfg.key_path),
        # host keys are new on every boot
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ansible_python_interpreter": "/usr/bin/python3",
    }


def inventory_ini(cfg: Config | None = None) -> str:
    cfg = cfg or Config.from_env()
    lines = [f"[{INVENTORY_GROUP}]"]
    lines += [f"{h.name} ansible_host={h.address}" for h in running_hosts(cfg)]
    lines += ["", f"[{INVENTORY_GROUP}:vars]"]
    for key, value in _inventory_vars(cfg).items():
        lines.append(f"{key}='{value}'" if " " in value else f"{key}={value}")
    lines.append(
        f"# unprivileged alternative: ansible_user={UNPRIVILEGED_USER} ansible_become=true"
    )
    return "\n".join(lines) + "\n"


def inventory_json(cfg: Config | None = None) -> str:
    """The inventory in the layout Ansible's yaml inventory plugin reads from a .json file."""
    cfg = cfg or Config.from_env()
    hosts = {h.name: {"ansible_host": h.address} for h in running_hosts(cfg)}
    group = {"hosts": hosts, "vars": _inventory_vars(cfg)}
    return json.dumps({"all": {"children": {INVENTORY_GROUP: group}}}, indent=2) + "\n"


def _write_inventories(cfg: Config) -> None:
    _write_atomic(cfg.inventory_ini_path, inventory_ini(cfg))
    _write_atomic(cfg.inventory_json_path, inventory_json(cfg))


def status_lines(cfg: Config | None = None) -> list[str]:
    """One line per host dir: supervisor pid, address, `systemctl is-system-running` inside."""
    cfg = cfg or Config.from_env()
    _require_root()  # nsenter into the hosts
    if not cfg.hosts_dir.is_dir():
        return []
    names = sorted(
        (d.name for d in cfg.hosts_dir.iterdir() if cfg.host_index(d.name) is not None),
        key=lambda n: cfg.host_index(n) or 0,
    )
    lines = []
    for name in names:
        pid = _supervisor_pid(cfg, name)
        leader = _leader_pid(cfg, name) if pid is not None else None
        orphans = _scan_machines(cfg).get(name, _Machine()).nspawns if pid is None else []
        if orphans:
            state = f"orphaned: systemd-nspawn pid {orphans[0]} has no supervisor (run down)"
        elif leader is None:
            state = "stopped"
        else:
            probe = subprocess.run(
                ["nsenter", "-t", str(leader), "-a", "systemctl", "is-system-running"],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            state = probe.stdout.strip() or probe.stderr.strip() or "unknown"
        lines.append(
            f"{name:<6} supervisor={pid or '-':<8} ip={_host(cfg, name).address:<15} {state}"
        )
    return lines


def exec_argv(name: str, command: Sequence[str], cfg: Config | None = None) -> list[str]:
    """argv that runs COMMAND inside host NAME's namespaces, without ssh."""
    cfg = cfg or Config.from_env()
    _require_root()
    leader = _leader_pid(cfg, name) if _supervisor_pid(cfg, name) else None
    if leader is None:
        raise HarnessError(f"{name} is not running (see `testhosts.py status`)")
    return ["nsenter", "-t", str(leader), "-a", *command]


# ----------------------------------------------------------------------------- supervisor
def _nspawn_argv(cfg: Config, name: str) -> list[str]:
    image = image_named(_host_image(cfg, name))
    binds = [f"--bind-ro={cfg.source_dir(image)}:{BARE_SOURCE_MOUNT}"] if image.bare else []
    return [
        "systemd-nspawn",
        "--quiet",
        "--register=no",  # no machined to register with
        "--keep-unit",  # stay in the cgroups made for this host; no host bus needed
        f"--machine={name}",
        f"--hostname={name}",
        f"--directory={cfg.host_dir(name) / 'root'}",
        "--console=passive",
        "--kill-signal=SIGRTMIN+3",  # what systemd takes as "power off cleanly"
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        f"--network-bridge={cfg.bridge}",
        *binds,
        INIT_WRAPPER,
    ]


def _supervise(cfg: Config, name: str) -> int:
    """Run nspawn for NAME until it exits for a reason other than a guest reboot."""
    if os.fork() > 0:
        os._exit(0)
    hd = cfg.host_dir(name)
    for cgroup in (hd / "cgroups").read_text().split():
        Path(cgroup, "cgroup.procs").write_text(f"{os.getpid()}\n")
    _write_atomic(hd / "pid", f"{os.getpid()}\n")
    stopping = False
    child_pid = 0

    def on_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child_pid:
            _signal(child_pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        child = subprocess.Popen(_nspawn_argv(cfg, name), stdin=subprocess.DEVNULL)
        child_pid = child.pid
        if stopping:
            _signal(child_pid, signal.SIGTERM)
        rc = child.wait()
        child_pid = 0
        if stopping or rc != NSPAWN_REBOOT_EXIT:
            print(f"[testhosts] systemd-nspawn for {name} exited {rc}", flush=True)
            return rc
        print(f"[testhosts] {name} rebooted; starting systemd-nspawn again", flush=True)


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testhosts.py",
        description="Throw-away Debian test hosts (systemd-nspawn) for beamops.release.",
        epilog="environment (default):\n"
        + "".join(f"  {var:<24} {default or '(empty)'}\n" for var, default in ENV_DEFAULTS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("deps", help="install missing controller packages (apt-get)")
    build_cmd = commands.add_parser("build", help="build the template image unless current")
    build_cmd.add_argument("--force", action="store_true", help="rebuild even if current")
    build_cmd.add_argument("--image", choices=sorted(IMAGES), default=FULL_IMAGE)
    up_cmd = commands.add_parser("up", help="boot hosts 1..N, print the inventory")
    up_cmd.add_argument("count", metavar="N")
    up_cmd.add_argument(
        "--images",
        default="",
        metavar="I1,I2,...",
        help=f"image of host 1, 2, ... ({', '.join(sorted(IMAGES))}; default {FULL_IMAGE})",
    )
    commands.add_parser("down", help="stop all hosts and remove every trace of them")
    stop_cmd = commands.add_parser("stop", help="stop one host and discard its overlay")
    stop_cmd.add_argument("name")
    commands.add_parser("status", help="one line per host")
    inventory_cmd = commands.add_parser("inventory", help="print the Ansible inventory")
    inventory_cmd.add_argument("--format", choices=("ini", "json"), default="ini")
    ssh_cmd = commands.add_parser("ssh", help="ssh into a host as root")
    ssh_cmd.add_argument("name")
    ssh_cmd.add_argument("cmd", nargs=argparse.REMAINDER)
    exec_cmd = commands.add_parser("exec", help="run a command inside a host (nsenter, no ssh)")
    exec_cmd.add_argument("name")
    exec_cmd.add_argument("cmd", nargs=argparse.REMAINDER)
    commands.add_parser("purge", help="down, then delete the template and the ssh key")
    return parser


def _parse_count(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or not 1 <= int(text) <= MAX_HOSTS:
        raise HarnessError(f"N={text!r}: expected a whole number from 1 to {MAX_HOSTS}")
    return int(text)


def _dispatch(args: argparse.Namespace, cfg: Config, out: IO[str]) -> int:
    command: str = args.command
    if command == "deps":
        deps()
    elif command == "build":
        build(args.force, cfg, args.image)
    elif command == "up":
        up(_parse_count(args.count), cfg, [i for i in args.images.split(",") if i])
        out.write(inventory_ini(cfg))
    elif command == "down":
        down(cfg)
    elif command == "stop":
        stop(args.name, cfg)
    elif command == "status":
        out.writelines(line + "\n" for line in status_lines(cfg))
    elif command == "inventory":
        out.write(inventory_json(cfg) if args.format == "json" else inventory_ini(cfg))
    elif command == "ssh":
        argv = _host(cfg, args.name).ssh_argv(*args.cmd)
        os.execvp(argv[0], argv)
    elif command == "exec":
        if not args.cmd:
            raise HarnessError("exec: expected a command to run")
        argv = exec_argv(args.name, args.cmd, cfg)
        os.execvp(argv[0], argv)
    elif command == "purge":
        purge(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = Config.from_env()
        if argv[:1] == [SUPERVISE_COMMAND] and len(argv) == 2:
            return _supervise(cfg, argv[1])
        return _dispatch(_parser().parse_args(argv), cfg, sys.stdout)
    except HarnessError as exc:
        print(f"testhosts: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
