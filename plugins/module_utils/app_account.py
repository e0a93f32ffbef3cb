# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The app's system account: created once by the collection, never rewritten, never root.

An account the collection made carries ``beamops.release`` in its comment (GECOS). Accounts
made by earlier versions (no comment, the nologin shell and the app's state directory as home)
count as ours too. Any other existing account - ``root``, ``postgres``, a person - is refused
unless the user opts in (``adopt``); even then it is used as it is, never modified, and uid 0
or gid 0 is refused whatever the option says. The release would run as that account and every
file of the app would belong to it.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import dataclasses
import grp
import pwd
import subprocess
from typing import Callable, List, Optional, Sequence

MARKER = "beamops.release"
NOLOGIN = "/usr/sbin/nologin"

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class AccountError(Exception):
    """The account or group cannot safely run the release."""


@dataclasses.dataclass
class Account:
    user: str
    group: str
    home: str
    app: str
    adopt: bool = False  # use an existing account the collection did not create

    @property
    def comment(self) -> str:
        return f"{MARKER} {self.app}"


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)


def _user(name: str) -> Optional[pwd.struct_passwd]:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _group(name: str) -> Optional[grp.struct_group]:
    try:
        return grp.getgrnam(name)
    except KeyError:
        return None


def made_by_us(entry: pwd.struct_passwd, account: Account) -> bool:
    if entry.pw_gecos.startswith(MARKER):
        return True
    # Made by an earlier version with ansible.builtin.user: exactly these settings, no comment.
    return entry.pw_gecos == "" and entry.pw_shell == NOLOGIN and entry.pw_dir == account.home


def problems(account: Account) -> List[str]:
    """Why the existing account or group must not run the release (empty: fine)."""
    found: List[str] = []
    group = _group(account.group)
    if group is not None and group.gr_gid == 0:
        found.append(f"beamops_app_group {account.group!r} is gid 0 (root's group)")
    user = _user(account.user)
    if user is None:
        return found
    if user.pw_uid == 0:
        found.append(f"beamops_app_user {account.user!r} is uid 0 (root)")
    elif not made_by_us(user, account) and not account.adopt:
        found.append(
            f"beamops_app_user {account.user!r} is an existing account (uid {user.pw_uid}) "
            "that beamops.release did not create; the release would run as it and own the "
            "app's files. Choose another name, or set beamops_app_user_adopt: true to use it "
            "as it is (it is never modified)"
        )
    return found


def ensure(account: Account, check_mode: bool = False, run: Runner = _run) -> bool:
    """Create what is missing (group, then user); return whether anything was created."""
    found = problems(account)
    if found:
        raise AccountError("; ".join(found))
    if _user(account.user) is not None:
        return False
    if check_mode:
        return True
    if _group(account.group) is None:
        _checked(run(["groupadd", "--system", account.group]), f"groupadd {account.group}")
    argv = ["useradd", "--system", "--gid", account.group, "--no-create-home"]
    argv += ["--home-dir", account.home, "--shell", NOLOGIN, "--comment", account.comment]
    # useradd leaves the password locked ("!"): nobody logs in as the app.
    _checked(run([*argv, account.user]), f"useradd {account.user}")
    return True


def _checked(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise AccountError(f"{what} failed: {(done.stderr or done.stdout).strip()}")
