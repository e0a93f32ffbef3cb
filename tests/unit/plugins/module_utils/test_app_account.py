"""app_account: the release's account is created once, never rewritten, never root, and an
account the collection did not make is refused unless the user opts in."""

from __future__ import annotations

import grp
import pwd
import subprocess
from typing import Dict, List, Sequence

import pytest
from ansible_collections.beamops.release.plugins.module_utils import app_account as aa

ACCOUNT = aa.Account(user="demo", group="demo", home="/var/lib/demo", app="demo")


def passwd(name: str, uid: int, gecos: str, home: str = "/var/lib/demo") -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, uid, gecos, home, aa.NOLOGIN))


class Host:
    """A host's account database and the commands run against it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.users: Dict[str, pwd.struct_passwd] = {}
        self.groups: Dict[str, grp.struct_group] = {}
        self.commands: List[List[str]] = []
        monkeypatch.setattr(aa, "_user", self.users.get)
        monkeypatch.setattr(aa, "_group", self.groups.get)

    def add_group(self, name: str, gid: int) -> None:
        self.groups[name] = grp.struct_group((name, "x", gid, []))

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        if argv[0] == "groupadd":
            self.add_group(argv[-1], 999)
        else:
            gecos = argv[argv.index("--comment") + 1]
            self.users[argv[-1]] = passwd(argv[-1], 999, gecos, argv[argv.index("--home-dir") + 1])
        return subprocess.CompletedProcess(list(argv), 0, "", "")


@pytest.fixture(name="host")
def fixture_host(monkeypatch: pytest.MonkeyPatch) -> Host:
    return Host(monkeypatch)


def test_a_missing_account_is_created_locked_without_shell_then_left_alone(host: Host) -> None:
    assert aa.ensure(ACCOUNT, run=host.run) is True
    assert host.commands == [
        ["groupadd", "--system", "demo"],
        [
            "useradd", "--system", "--gid", "demo", "--no-create-home", "--home-dir",
            "/var/lib/demo", "--shell", aa.NOLOGIN, "--comment", "beamops.release demo", "demo",
        ],
    ]  # fmt: skip
    assert aa.ensure(ACCOUNT, run=host.run) is False
    assert len(host.commands) == 2


def test_an_existing_group_is_used_not_recreated(host: Host) -> None:
    host.add_group("demo", 990)
    assert aa.ensure(ACCOUNT, run=host.run) is True
    assert [c[0] for c in host.commands] == ["useradd"]


@pytest.mark.parametrize("gecos", ["beamops.release demo", ""], ids=["marked", "earlier-version"])
def test_an_account_made_by_the_collection_is_accepted_unchanged(host: Host, gecos: str) -> None:
    host.users["demo"] = passwd("demo", 998, gecos)
    assert aa.ensure(ACCOUNT, run=host.run) is False
    assert host.commands == []


def test_a_foreign_account_is_refused_unless_adopted_and_never_modified(host: Host) -> None:
    host.users["demo"] = passwd("demo", 113, "PostgreSQL administrator", "/var/lib/postgresql")
    with pytest.raises(aa.AccountError, match="beamops_app_user 'demo' is an existing account"):
        aa.ensure(ACCOUNT, run=host.run)
    adopted = aa.Account(**{**ACCOUNT.__dict__, "adopt": True})
    assert aa.ensure(adopted, run=host.run) is False
    assert host.commands == []


@pytest.mark.parametrize("adopt", [False, True])
def test_root_is_refused_even_when_adopted(host: Host, adopt: bool) -> None:
    host.users["root"] = passwd("root", 0, "root", "/root")
    host.add_group("root", 0)
    account = aa.Account(user="root", group="root", home="/var/lib/demo", app="demo", adopt=adopt)
    with pytest.raises(aa.AccountError) as refused:
        aa.ensure(account, run=host.run)
    assert "uid 0" in str(refused.value) and "gid 0" in str(refused.value)
    assert host.commands == []


def test_check_mode_reports_the_creation_and_runs_nothing(host: Host) -> None:
    assert aa.ensure(ACCOUNT, check_mode=True, run=host.run) is True
    assert host.commands == []


def test_a_failing_useradd_is_reported_with_its_message(host: Host) -> None:
    def failing(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), 9, "", "useradd: cannot lock /etc/passwd")

    host.add_group("demo", 990)
    with pytest.raises(aa.AccountError, match="useradd demo failed: useradd: cannot lock"):
        aa.ensure(ACCOUNT, run=failing)
