# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A slot's runtime configuration in one call: its directories and three files.

    <config_dir>/                     root:<group> 0750
    <config_dir>/<slot>.env           root:<group> 0640  plain environment, collection's values
    <config_dir>/<slot>.secrets.env   root:root    0600  secrets and the cookie (systemd reads it)
    <config_dir>/<slot>.vm.args       root:<group> 0640  deploy-time vm.args (RELEASE_VM_ARGS)
    <state_dir>/<slot>/               <user>:<group> 0750 the slot's working directory

Each file is replaced atomically, and only when its content, mode or owner differ. The
secrets file's content never leaves this module: not in a diff, not in a message.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.beamops.release.plugins.module_utils import environment_file

SLOTS = ("blue", "green")


class ConfigError(Exception):
    """A setting that cannot be written as asked; the message names the variable."""


# Emulator flags from the collection's own variables, before beamops_vm_args' lines.
BUSY_WAIT = ("none", "very_short", "short", "medium", "long", "very_long")


def beam_flags(beam: Dict[str, Any]) -> List[str]:
    """vm.args lines for the VM's schedulers, process and port limits and busy waiting.

    Busy waiting ("none" by default) is how long an idle scheduler spins before it sleeps:
    spinning looks like load to the host and to CPUQuota, so a shared host wants none."""
    lines = []
    if beam.get("schedulers"):
        lines.append(f"+S {beam['schedulers']}")
    if beam.get("process_limit"):
        lines.append(f"+P {int(beam['process_limit'])}")
    if beam.get("port_limit"):
        lines.append(f"+Q {int(beam['port_limit'])}")
    busy = beam.get("busy_wait")
    if busy:
        if busy not in BUSY_WAIT:
            raise ConfigError(f"beamops_beam_busy_wait: got {busy!r}; expected one of {BUSY_WAIT}")
        lines += [f"+sbwt {busy}", f"+sbwtdcpu {busy}", f"+sbwtdio {busy}"]
    return lines


@dataclasses.dataclass
class Request:
    slot: str
    config_dir: str
    state_dir: str
    app_user: str
    app_group: str
    env: Dict[str, Any]
    reserved: Dict[str, Any]  # what the collection sets per slot (PORT, SLOT, RELEASE_*)
    secret_env: Dict[str, Any]
    cookie: Optional[str]
    vm_args: List[str]
    beam: Dict[str, Any] = dataclasses.field(default_factory=dict)  # see beam_flags


@dataclasses.dataclass
class FileChange:
    path: str
    secret: bool
    before: str
    after: str


def _ids(request: Request, check_mode: bool) -> Tuple[int, int]:
    try:
        uid = pwd.getpwnam(request.app_user).pw_uid
        gid = grp.getgrnam(request.app_group).gr_gid
    except KeyError as exc:
        if check_mode:
            # A check run on a fresh host: the account is not made yet, everything would change.
            return -1, -1
        raise ConfigError(
            f"beamops_app_user {request.app_user!r} or beamops_app_group {request.app_group!r} "
            "does not exist on the host (the release_install role creates them)"
        ) from exc
    return uid, gid


def check(request: Request) -> None:
    if request.slot not in SLOTS:
        raise ConfigError(f"slot must be blue or green, got {request.slot!r}")
    clashes = [
        (source, sorted(set(mapping) & (set(request.reserved) | {"RELEASE_COOKIE"})))
        for source, mapping in (
            ("beamops_env", request.env),
            ("beamops_secret_env", request.secret_env),
        )
    ]
    for source, names in clashes:
        if names:
            raise ConfigError(
                f"{source} sets {', '.join(names)}: the collection sets "
                f"{', '.join(sorted([*request.reserved, 'RELEASE_COOKIE']))} itself, per slot"
            )
    both = sorted(set(request.env) & set(request.secret_env))
    if both:
        raise ConfigError(
            f"both beamops_env and beamops_secret_env set {', '.join(both)}: a name must be "
            "either plain or secret"
        )
    for line in request.vm_args:
        if not isinstance(line, str) or any(c in line for c in "\n\r\0"):
            raise ConfigError(f"beamops_vm_args: {line!r} must be one line of text")


def render(request: Request) -> Dict[str, Tuple[str, int, bool]]:
    """path -> (content, mode, secret)."""
    base = os.path.join(request.config_dir, request.slot)
    plain = {**request.env, **request.reserved}
    secrets = dict(request.secret_env)
    if request.cookie:
        secrets["RELEASE_COOKIE"] = request.cookie
    head = "# Managed by beamops.release (slot_config)"
    try:
        env_text = environment_file.render(plain, "beamops_env")
        secret_text = environment_file.render(secrets, "beamops_secret_env")
    except environment_file.BadEnvironment as exc:
        raise ConfigError(str(exc)) from exc
    vm_args = "".join(f"{line}\n" for line in [*beam_flags(request.beam), *request.vm_args])
    return {
        f"{base}.env": (
            f"{head}. Plain settings only; secrets are in {request.slot}.secrets.env, "
            f"readable by root alone.\n{env_text}",
            0o640,
            False,
        ),
        f"{base}.secrets.env": (f"{head}. Secrets: root only.\n{secret_text}", 0o600, True),
        f"{base}.vm.args": (
            f"## {head}: deploy-time vm.args for slot {request.slot}.\n"
            "## epmd runs as its own unit (beamops-epmd.service), so that stopping one slot\n"
            "## never takes down the epmd the other slot registered with.\n"
            f"-start_epmd false\n{vm_args}",
            0o640,
            False,
        ),
    }


def _current(path: str) -> Tuple[Optional[str], Optional[os.stat_result]]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(), os.stat(path)
    except OSError:
        return None, None


def _ensure_dir(path: str, uid: int, gid: int, mode: int, check_mode: bool) -> bool:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if not check_mode:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            os.mkdir(path, mode)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return True
    if (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (uid, gid, mode):
        return False
    if not check_mode:
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return True


def apply(request: Request, check_mode: bool = False) -> Tuple[bool, List[FileChange]]:
    """Write what differs; return (anything changed, the files that changed)."""
    check(request)
    uid, gid = _ids(request, check_mode)
    files = render(request)  # refuses a bad name or value before anything is written
    changed = _ensure_dir(request.config_dir, 0, gid, 0o750, check_mode)
    workdir = os.path.join(request.state_dir, request.slot)
    changed = _ensure_dir(workdir, uid, gid, 0o750, check_mode) or changed
    changes: List[FileChange] = []
    for path, (content, mode, secret) in files.items():
        owner_gid = 0 if secret else gid
        before, info = _current(path)
        same = (
            before == content
            and info is not None
            and (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, owner_gid, mode)
        )
        if same:
            continue
        changes.append(FileChange(path, secret, before or "", content))
        if not check_mode:
            _write(path, content, mode, owner_gid)
    return changed or bool(changes), changes


def _write(path: str, content: str, mode: int, gid: int) -> None:
    temp = f"{path}.beamops-tmp"
    # Created with the final mode: a secret is never readable by others, not even briefly.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchown(fd, 0, gid)
        os.fchmod(fd, mode)
        handle.write(content)
        handle.flush()
        os.fsync(fd)
    os.replace(temp, path)
