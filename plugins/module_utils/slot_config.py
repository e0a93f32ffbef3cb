# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A slot's runtime configuration in one call: its directories and three files.

    <config_dir>/                     root:<group> 0750
    <config_dir>/<slot>.env           root:<group> 0640  plain environment, collection's values
    <config_dir>/<slot>.secrets.env   root:root    0600  secrets (systemd reads it)
    <config_dir>/<slot>.vm.args       root:<group> 0640  deploy-time vm.args (RELEASE_VM_ARGS)
    <config_dir>/<slot>.remote.vm.args root:<group> 0640 the same for remote shells and rpc
    <state_dir>/<slot>/               <user>:<group> 0750 the slot's working directory (HOME)
    <state_dir>/<slot>/.erlang.cookie <user>:<group> 0400 the cookie, read by the VM itself
    <config_dir>/dist-tls/            root:<group> 0750 TLS distribution: ssl_dist.conf, PEMs
    <config_dir>/<slot>.credentials/  root:root    0700 with secrets_delivery "credentials": one
                                                        0600 file per secret, loaded by the unit's
                                                        LoadCredential= (no secret in environ);
                                                        "encrypted_credentials": the same sealed by
                                                        systemd-creds (LoadCredentialEncrypted=)

The cookie never reaches argv: Elixir's start script always passes `--cookie
"$RELEASE_COOKIE"` to erl, so RELEASE_COOKIE is set to COOKIE_FROM_HOME, a flag with no
value. erl then sees `-setcookie` without a value and reads `$HOME/.erlang.cookie`, as
Erlang does when no cookie is given (checked on OTP 25: erlang:get_cookie/0 returns the
file's content).

Each file is replaced atomically, and only when its content, mode or owner differ. The
secrets file's content never leaves this module: not in a diff, not in a message.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import pwd
import subprocess
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


# RELEASE_COOKIE's value: a flag with no value, so that erl's `-setcookie` has none and the
# VM reads $HOME/.erlang.cookie (see the module's docstring). Its name says where to look.
COOKIE_FROM_HOME = "-beamops_cookie_in_home_erlang_cookie"
TLS_DIR = "dist-tls"
DELIVERIES = ("environment", "credentials", "encrypted_credentials")
AS_CREDENTIALS = ("credentials", "encrypted_credentials")


def credentials_dir(request: Request) -> str:
    return os.path.join(request.config_dir, f"{request.slot}.credentials")


def dist_flags(dist: Dict[str, Any], config_dir: str, remote: bool = False) -> List[str]:
    """vm.args lines for distribution: the interface, the slot's pinned port, TLS.

    A remote shell or rpc node (remote=True) listens on any free port: the pinned one is
    the slot's own. Both must speak the slot's protocol (TLS or not) to reach it."""
    lines = []
    address = dist.get("address")
    if address:
        try:
            parts = [int(part) for part in str(address).split(".")]
        except ValueError:
            parts = []
        if len(parts) != 4 or not all(0 <= part <= 255 for part in parts):
            raise ConfigError(f"beamops_dist_address: got {address!r}; expected an IPv4 address")
        lines.append(f"-kernel inet_dist_use_interface {{{','.join(map(str, parts))}}}")
    port = dist.get("port")
    if port and not remote:
        lines += [
            f"-kernel inet_dist_listen_min {int(port)}",
            f"-kernel inet_dist_listen_max {int(port)}",
        ]
    if dist.get("tls"):
        optfile = os.path.join(config_dir, TLS_DIR, "ssl_dist.conf")
        lines += ["-proto_dist inet_tls", f"-ssl_dist_optfile {optfile}"]
    return lines


def _erlang_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ssl_dist_conf(config_dir: str) -> str:
    """OTP's ssl_dist_optfile: both ends present a certificate and verify the other's."""
    tls = os.path.join(config_dir, TLS_DIR)
    files = ", ".join(
        f"{{{key}, {_erlang_string(os.path.join(tls, name))}}}"
        for key, name in (
            ("certfile", "cert.pem"),
            ("keyfile", "key.pem"),
            ("cacertfile", "cacert.pem"),
        )
    )
    return (
        "%% Managed by beamops.release (slot_config): TLS for Erlang distribution.\n"
        "%% Every node shows a certificate signed by the cluster's CA and checks the other's.\n"
        f"[{{server, [{files}, {{verify, verify_peer}}, {{fail_if_no_peer_cert, true}},\n"
        "           {secure_renegotiate, true}]},\n"
        f" {{client, [{files}, {{verify, verify_peer}}, {{secure_renegotiate, true}}]}}].\n"
    )


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
    # address, port, tls (bool) and, with tls, cert/key/cacert (PEM text): see dist_flags
    dist: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # "environment" (the secrets file systemd reads into the environment) or "credentials"
    secrets_delivery: str = "environment"


@dataclasses.dataclass
class FileChange:
    path: str
    secret: bool
    before: str
    after: str


@dataclasses.dataclass(frozen=True)
class Wanted:
    content: str
    mode: int
    secret: bool = False  # never shown in a diff
    # root:<group> (the VM reads it through its group), root:root (systemd reads it) or
    # <user>:<group> (the VM reads it as itself)
    owner: str = "group"
    # A credential encrypted by systemd-creds under this name (LoadCredentialEncrypted=): the
    # file holds ciphertext, compared by decrypting it.
    sealed_as: str = ""

    def ids(self, uid: int, gid: int) -> Tuple[int, int]:
        return {"group": (0, gid), "root": (0, 0), "app": (uid, gid)}[self.owner]


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
    if request.secrets_delivery not in DELIVERIES:
        raise ConfigError(
            f"beamops_secrets_delivery: got {request.secrets_delivery!r}; expected one of "
            f"{', '.join(DELIVERIES)}"
        )
    if request.dist.get("tls"):
        missing = [
            f"beamops_dist_tls_{key}"
            for key in ("cert", "key", "cacert")
            if not request.dist.get(key)
        ]
        if missing:
            raise ConfigError(
                f"beamops_dist_tls is true but {', '.join(missing)} is empty; expected PEM text"
            )


def _vm_args_file(head: str, what: str, lines: List[str]) -> str:
    return (
        f"## {head}: {what}.\n"
        "## epmd runs as its own unit (beamops-epmd.service), so that stopping one slot\n"
        "## never takes down the epmd the other slot registered with.\n"
        "-start_epmd false\n" + "".join(f"{line}\n" for line in lines)
    )


def render(request: Request) -> Dict[str, Wanted]:
    """Every file of the slot: path -> what it must hold."""
    base = os.path.join(request.config_dir, request.slot)
    plain = {**request.env, **request.reserved}
    if request.cookie:
        plain["RELEASE_COOKIE"] = COOKIE_FROM_HOME
    head = "# Managed by beamops.release (slot_config)"
    as_credentials = request.secrets_delivery in AS_CREDENTIALS
    encrypted = request.secrets_delivery == "encrypted_credentials"
    try:
        env_text = environment_file.render(plain, "beamops_env")
        # Rendered either way: it checks every name and value.
        secret_text = environment_file.render(dict(request.secret_env), "beamops_secret_env")
    except environment_file.BadEnvironment as exc:
        raise ConfigError(str(exc)) from exc
    if as_credentials:
        secret_text = f"# None here: they are credentials in {request.slot}.credentials/.\n"
    dist = dist_flags(request.dist, request.config_dir)
    files = {
        f"{base}.env": Wanted(
            f"{head}. Plain settings only; secrets are in {request.slot}.secrets.env, "
            f"readable by root alone.\n{env_text}",
            0o640,
        ),
        f"{base}.secrets.env": Wanted(
            f"{head}. Secrets: root only.\n{secret_text}", 0o600, secret=True, owner="root"
        ),
        f"{base}.vm.args": Wanted(
            _vm_args_file(
                head,
                f"deploy-time vm.args for slot {request.slot}",
                [*beam_flags(request.beam), *dist, *request.vm_args],
            ),
            0o640,
        ),
        f"{base}.remote.vm.args": Wanted(
            _vm_args_file(
                head,
                f"vm.args of remote shells and rpc calls to slot {request.slot}",
                dist_flags(request.dist, request.config_dir, remote=True),
            ),
            0o640,
        ),
    }
    if as_credentials:
        for name, value in request.secret_env.items():
            path = os.path.join(credentials_dir(request), name)
            files[path] = Wanted(
                _credential(value),
                0o600,
                secret=True,
                owner="root",
                sealed_as=name if encrypted else "",
            )
    if request.cookie:
        cookie = os.path.join(request.state_dir, request.slot, ".erlang.cookie")
        # Erlang reads it only when no one but its owner may: 0400, owned by the app user.
        files[cookie] = Wanted(request.cookie, 0o400, secret=True, owner="app")
    if request.dist.get("tls"):
        tls = os.path.join(request.config_dir, TLS_DIR)
        files[os.path.join(tls, "ssl_dist.conf")] = Wanted(ssl_dist_conf(request.config_dir), 0o640)
        files[os.path.join(tls, "cert.pem")] = Wanted(_pem(request.dist["cert"]), 0o640)
        files[os.path.join(tls, "cacert.pem")] = Wanted(_pem(request.dist["cacert"]), 0o640)
        # Read by the VM as the app user: its group may read it, nobody else.
        files[os.path.join(tls, "key.pem")] = Wanted(_pem(request.dist["key"]), 0o640, secret=True)
    return files


def _credential(value: object) -> str:
    """A credential file holds the value as it is: no quoting, no newline added."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _pem(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


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
    if request.dist.get("tls"):
        tls = os.path.join(request.config_dir, TLS_DIR)
        changed = _ensure_dir(tls, 0, gid, 0o750, check_mode) or changed
    if request.secrets_delivery in AS_CREDENTIALS:
        changed = _ensure_dir(credentials_dir(request), 0, 0, 0o700, check_mode) or changed
    changes: List[FileChange] = []
    for path, wanted in files.items():
        owner = wanted.ids(uid, gid)
        before, info = _current(path) if not wanted.sealed_as else _unsealed(path, wanted.sealed_as)
        same = (
            before == wanted.content
            and info is not None
            and (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (*owner, wanted.mode)
        )
        if same:
            continue
        changes.append(FileChange(path, wanted.secret, before or "", wanted.content))
        if not check_mode:
            content = (
                _sealed(wanted.content, wanted.sealed_as) if wanted.sealed_as else wanted.content
            )
            _write(path, content, wanted.mode, *owner)
    changes += _remove_stale_credentials(request, files, check_mode)
    return changed or bool(changes), changes


SYSTEMD_CREDS = "systemd-creds"


def _sealed(plain: str, name: str) -> str:
    """systemd-creds' ciphertext of `plain` for credential `name` (the value goes by stdin)."""
    done = subprocess.run(
        [SYSTEMD_CREDS, "encrypt", f"--name={name}", "-", "-"],
        input=plain,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(
            f"systemd-creds could not encrypt credential {name} (beamops_secrets_delivery "
            f"encrypted_credentials): {done.stderr.strip()}"
        )
    return done.stdout


def _unsealed(path: str, name: str) -> Tuple[Optional[str], Optional[os.stat_result]]:
    """What an encrypted credential holds; None when missing, or not one for this name."""
    try:
        info = os.stat(path)
    except OSError:
        return None, None
    done = subprocess.run(
        [SYSTEMD_CREDS, "decrypt", f"--name={name}", path, "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (done.stdout if done.returncode == 0 else None), info


def _remove_stale_credentials(
    request: Request, files: Dict[str, Wanted], check_mode: bool
) -> List[FileChange]:
    """A secret no longer set, or no longer delivered as a credential, leaves no file behind."""
    folder = credentials_dir(request)
    try:
        present = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    stale = [os.path.join(folder, name) for name in present]
    stale = [path for path in stale if path not in files]
    if not check_mode:
        for path in stale:
            os.unlink(path)
        if request.secrets_delivery not in AS_CREDENTIALS:
            os.rmdir(folder)
    return [FileChange(path, True, "", "") for path in stale]


def _write(path: str, content: str, mode: int, uid: int, gid: int) -> None:
    temp = f"{path}.beamops-tmp"
    # Created with the final mode: a secret is never readable by others, not even briefly.
    # (A temp file left by an earlier crash may have another mode: it goes first.)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        handle.write(content)
        handle.flush()
        os.fsync(fd)
    os.replace(temp, path)
