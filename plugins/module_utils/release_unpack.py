# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install a release tarball on the host: verify, unpack safely, move into place, register.

    releases/.<version>.partial  <- unpacked here, root-owned, no write bits for others
    releases/<version>           <- renamed into place only when complete and checked

A tarball is refused, with nothing left behind, when its sha256 differs from the expected one,
when a member would land outside the release (absolute path, ``..``, a link pointing out), when
it holds a device, a FIFO or anything but files, directories and links, or when it has no
executable ``bin/<app>``. Set-uid/set-gid bits and group/other write bits are dropped.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import shutil
import tarfile
from typing import List, Optional

from ansible_collections.beamops.release.plugins.module_utils import (
    app_account,
    release_state,
    state_repair,
)
from ansible_collections.beamops.release.plugins.module_utils.atomic_file import (
    write_if_changed,
)

CHUNK = 1024 * 1024


class UnpackError(Exception):
    """The tarball or the host's releases directory is not what a release install needs."""


@dataclasses.dataclass
class Request:
    app: str
    version: str
    sha256: str
    base_dir: str
    state_path: str
    helper_dir: str
    src: Optional[str] = None  # the tarball on the host; None: only say whether one is needed
    run_id: Optional[str] = None
    # The system account the release runs as (created here when missing; see app_account).
    user: Optional[str] = None
    group: Optional[str] = None
    home: Optional[str] = None
    adopt_account: bool = False

    @property
    def account(self) -> Optional[app_account.Account]:
        if not self.user:
            return None
        return app_account.Account(
            user=self.user,
            group=self.group or self.user,
            home=self.home or f"/var/lib/{self.app}",
            app=self.app,
            adopt=self.adopt_account,
        )

    @property
    def releases_dir(self) -> str:
        return os.path.join(self.base_dir, "releases")

    @property
    def release_dir(self) -> str:
        return os.path.join(self.releases_dir, self.version)

    @property
    def partial_dir(self) -> str:
        return os.path.join(self.releases_dir, f".{self.version}.partial")


@dataclasses.dataclass
class Result:
    changed: bool = False
    needs_transfer: bool = False
    installed: bool = False  # this call unpacked the release
    msg: str = ""
    epmd: Optional[str] = None
    account_created: bool = False


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def registered_sha(request: Request) -> Optional[str]:
    state, _unused = release_state.read_state(request.state_path)
    known = state["releases"].get(request.version)
    return known["sha256"] if known else None


# Left free after unpacking: the state file and the lock must still be writable.
SPACE_MARGIN = 1048576


def ensure_layout(request: Request) -> None:
    for path in (request.base_dir, request.releases_dir, os.path.join(request.base_dir, "slots")):
        os.makedirs(path, mode=0o755, exist_ok=True)


def install(request: Request, check_mode: bool = False) -> Result:
    """Do what is needed for releases/<version> to hold this exact release, registered,
    and for the account it runs as to exist."""
    release_state.check_version("version", request.version)
    account = request.account
    created = app_account.ensure(account, check_mode) if account else False
    result = _install_release(request, check_mode)
    result.account_created = created
    result.changed = result.changed or created
    return result


def _install_release(request: Request, check_mode: bool) -> Result:
    sha256 = request.sha256.lower()
    known = registered_sha(request)
    present = os.path.isfile(os.path.join(request.release_dir, "bin", request.app))
    if present and known == sha256:
        result = Result(msg=f"release {request.version} already installed", epmd=_epmd(request))
        if not check_mode:
            _ensure_record(request, sha256)
        if result.epmd is None and not check_mode:
            # The helper directory was emptied since: put epmd back.
            result.epmd = _install_epmd(request)
            result.changed = result.epmd is not None
        return result
    if present or (known is not None and known != sha256):
        raise UnpackError(
            f"{request.release_dir} already holds a release {request.version} with another "
            f"checksum than beamops_release_sha256 {sha256} (registered: {known or 'none'}). "
            "A version must never change content: build a new version"
        )
    if check_mode:
        return Result(changed=True, msg=f"would install release {request.version}")
    if request.src is None:
        return Result(needs_transfer=True, msg=f"release {request.version} needs its tarball")
    ensure_layout(request)
    try:
        _verify_and_unpack(request, sha256)
    except BaseException:
        shutil.rmtree(request.partial_dir, ignore_errors=True)
        raise
    installed_at = release_state.format_timestamp(release_state.utc_now())
    state_repair.write_record(request.partial_dir, request.version, sha256, installed_at)
    os.rename(request.partial_dir, request.release_dir)
    release_state.execute(
        release_state.Request(
            action="register",
            path=request.state_path,
            version=request.version,
            sha256=sha256,
            run_id=request.run_id,
        )
    )
    epmd = _install_epmd(request)
    return Result(
        changed=True, installed=True, msg=f"release {request.version} installed", epmd=epmd
    )


def _ensure_record(request: Request, sha256: str) -> None:
    """Releases installed before install records existed get theirs on the next deploy."""
    if state_repair.read_record(request.release_dir, request.version) is not None:
        return
    state, _unused = release_state.read_state(request.state_path)
    known = state["releases"].get(request.version)
    installed_at = (
        known["installed_at"] if known else release_state.format_timestamp(release_state.utc_now())
    )
    state_repair.write_record(request.release_dir, request.version, sha256, installed_at)


def _verify_and_unpack(request: Request, sha256: str) -> None:
    if request.src is None:
        raise UnpackError("no tarball on the host to unpack (src)")
    actual = sha256_of(request.src)
    if actual != sha256:
        raise UnpackError(
            f"the tarball on the host has sha256 {actual}, not beamops_release_sha256 {sha256} "
            "(changed in transit?)"
        )
    shutil.rmtree(request.partial_dir, ignore_errors=True)  # left by an interrupted run
    os.mkdir(request.partial_dir, 0o755)
    try:
        with tarfile.open(request.src, "r:*") as tar:
            members = safe_members(tar.getmembers())
            check_space(request.partial_dir, members, request.version)
            tar.extractall(request.partial_dir, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnpackError(f"cannot unpack the tarball of {request.version}: {exc}") from exc
    binary = os.path.join(request.partial_dir, "bin", request.app)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise UnpackError(
            f"the tarball has no executable bin/{request.app}: is beamops_app_name "
            f"({request.app}) the release's name?"
        )


def check_space(directory: str, members: List[tarfile.TarInfo], version: str) -> None:
    """Refuse to start unpacking what cannot fit: a disk filled half-way by a release fails
    later writes of everything else on it (the state file, the live release's logs)."""
    # Each file takes whole blocks; a margin keeps the state file writable afterwards.
    block = 4096
    needed = sum(-(-m.size // block) * block for m in members if m.isfile()) + SPACE_MARGIN
    found = os.statvfs(directory)
    free = found.f_bavail * found.f_frsize
    problems = []
    if needed > free:
        problems.append(f"needs about {_mib(needed)} unpacked, {_mib(free)} is free")
    if found.f_files and len(members) + 64 > found.f_favail:
        problems.append(f"needs {len(members)} inodes, {found.f_favail} are free")
    if problems:
        raise UnpackError(
            f"no room for release {version} in {os.path.dirname(directory)}: "
            f"{'; '.join(problems)}. Free space there (older releases go with "
            "beamops_releases_keep) and deploy again; nothing was unpacked"
        )


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB"


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse a member that could escape the release or create a special file."""
    name = member.name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise UnpackError(f"tarball member {name!r} would land outside the release")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnpackError(f"tarball member {name!r} is a device, FIFO or other special file")
    if member.issym() or member.islnk():
        _check_link(member, parts)


def check_tarball(path: str, app: str) -> int:
    """Check every member of the tarball at path, and that it has bin/<app>, without
    unpacking anything; return the number of members."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnpackError(f"{path} is not a readable tarball: {exc}") from exc
    for member in members:
        check_member(member)
    binary = [m for m in members if os.path.normpath(m.name) == f"bin/{app}"]
    if not binary or (binary[-1].isfile() and not binary[-1].mode & 0o111):
        raise UnpackError(
            f"the tarball has no executable bin/{app}: is beamops_app_name ({app}) the "
            "release's name?"
        )
    return len(members)


def safe_members(members: List[tarfile.TarInfo]) -> List[tarfile.TarInfo]:
    """Refuse what could escape the release or create special files; make the rest root's."""
    for member in members:
        check_member(member)
        member.uid = member.gid = 0
        member.uname = member.gname = "root"
        member.mode = 0o755 if member.isdir() else member.mode & 0o755
    return members


def _check_link(member: tarfile.TarInfo, parts: List[str]) -> None:
    target = member.linkname
    outside = f"tarball member {member.name!r} links to {target!r}, outside the release"
    if target.startswith("/"):
        raise UnpackError(outside)
    # A symlink resolves from its own directory; a hard link names a path in the archive.
    base = parts[:-1] if member.issym() else []
    resolved: List[str] = []
    for part in [*base, *target.split("/")]:
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                raise UnpackError(outside)
            resolved.pop()
        else:
            resolved.append(part)


def _epmd(request: Request) -> Optional[str]:
    path = os.path.join(request.helper_dir, "epmd")
    return path if os.path.exists(path) else None


def _install_epmd(request: Request) -> Optional[str]:
    """epmd runs as its own unit shared by every slot and app: it lives outside the releases
    (pruning must not remove it). The first copy stays: its protocol is stable, and a new
    ERTS must not restart it."""
    existing = _epmd(request)
    if existing:
        return existing
    found = sorted(glob.glob(os.path.join(request.release_dir, "erts-*", "bin", "epmd")))
    if not found or os.path.islink(found[-1]) or not os.path.isfile(found[-1]):
        return None
    target = os.path.join(request.helper_dir, "epmd")
    with open(found[-1], "rb") as handle:
        write_if_changed(target, handle.read(), 0o755)
    return target
