"""state_repair on a real host layout in a temporary tree: release directories with their
install records, slot links, the proxy's routing file; the running slots as systemd says."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

import pytest
from ansible_collections.beamops.release.plugins.module_utils import release_state as rs
from ansible_collections.beamops.release.plugins.module_utils import state_repair as sr

NOW = datetime(2026, 11, 30, 3, 0, 0, tzinfo=timezone.utc)
SHA = {"0.1.0": "a" * 64, "0.2.0": "b" * 64, "0.3.0": "c" * 64}


class Host:
    """/opt/app with releases, slot links and nginx's upstream file naming the live slot."""

    def __init__(self, root: Path) -> None:
        self.base = root / "opt"
        self.releases = self.base / "releases"
        self.slots = self.base / "slots"
        self.upstream = root / "app.upstream"
        for directory in (self.releases, self.slots):
            directory.mkdir(parents=True)
        self.state = self.base / "release-state.json"

    def install(self, version: str, at: str, record: bool = True) -> None:
        release = self.releases / version
        (release / "bin").mkdir(parents=True)
        if record:
            sr.write_record(str(release), version, SHA[version], at)

    def link(self, slot: str, version: str) -> None:
        os.symlink(str(self.releases / version), str(self.slots / slot))

    def route(self, slot: str) -> None:
        self.upstream.write_text(f"# live slot: {slot}; written by slot_cutover\n")

    def request(self, **changes: Any) -> rs.Request:
        made = rs.Request(
            action="repair",
            path=str(self.state),
            releases_dir=str(self.releases),
            run_id="repair-1",
            routing={
                "proxy": "nginx",
                "app": "app",
                "nginx_upstream_file": str(self.upstream),
                "haproxy_map_file": str(self.base / "none.map"),
                "slots_dir": str(self.slots),
            },
        )
        for key, value in changes.items():
            setattr(made, key, value)
        return made

    def repair(self, running: List[str], **kw: Any) -> Dict[str, Any]:
        check_mode = bool(kw.pop("check_mode", False))
        return sr.repair(self.request(**kw), running, check_mode=check_mode, now=NOW)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    made = Host(tmp_path)
    made.install("0.1.0", "2026-11-01T10:00:00Z")
    made.install("0.2.0", "2026-11-02T10:00:00Z")
    made.link("blue", "0.1.0")
    made.link("green", "0.2.0")
    made.route("green")
    return made


def test_a_lost_state_is_rebuilt_from_what_serves_and_nothing_is_guessed(host: Host) -> None:
    host.install("0.3.0", "2026-11-03T10:00:00Z", record=False)
    result = host.repair(["blue", "green"])
    assert result["changed"] and result["msg"].endswith("0.2.0 active on green")
    state = json.loads(host.state.read_text())
    assert state["active"] == {"slot": "green", "version": "0.2.0", "since": "2026-11-30T03:00:00Z",
                               "event": "repair"}  # fmt: skip
    assert state["previous"]["slot"] == "blue" and state["previous"]["version"] == "0.1.0"
    releases = state["releases"]
    assert sorted(releases) == ["0.1.0", "0.2.0"]
    assert releases["0.2.0"]["status"] == "good" and releases["0.2.0"]["sha256"] == SHA["0.2.0"]
    # The idle slot's release may be the one that just failed: installed, not good.
    assert releases["0.1.0"]["status"] == "installed"
    assert releases["0.1.0"]["installed_at"] == "2026-11-01T10:00:00Z"
    assert [releases[v]["seq"] for v in ("0.1.0", "0.2.0")] == [1, 2]
    assert result["rollback_candidate"] is None
    assert result["repair"]["slots"]["green"] == {"version": "0.2.0", "running": True}
    assert result["repair"]["unrecorded"] == ["0.3.0"]
    notes = " ".join(result["warnings"])
    assert "rollback_to=0.1.0" in notes and "0.3.0" in notes
    assert state["history"][-1]["event"] == "repair"
    again = host.repair(["blue", "green"])
    assert not again["changed"] and again["msg"] == "the release state already agrees with the host"
    assert again["warnings"] == [
        "state repair: releases without an install record left out: 0.3.0 (remove them, or "
        "deploy under a new version)"
    ]


def test_a_damaged_state_is_kept_beside_the_rebuilt_one(host: Host) -> None:
    host.state.write_text('{"schema": 1, "releases": ')
    preview = host.repair(["green"], check_mode=True)
    assert preview["changed"] and host.state.read_text() == '{"schema": 1, "releases": '
    result = host.repair(["green"])
    kept = Path(result["repair"]["damaged_file_kept_as"])
    assert kept.name == "release-state.json.damaged-20261130T030000Z"
    assert kept.read_text() == '{"schema": 1, "releases": '
    assert "not valid JSON" in result["repair"]["damage"]
    assert json.loads(host.state.read_text())["active"]["version"] == "0.2.0"


def test_a_state_of_a_newer_schema_is_not_overwritten(host: Host) -> None:
    host.state.write_text(json.dumps({"schema": 99}))
    with pytest.raises(rs.StateFileError, match="schema 99, written by a newer"):
        host.repair(["green"])
    assert json.loads(host.state.read_text()) == {"schema": 99}


def test_an_intact_state_follows_the_proxy_learns_and_forgets(host: Host) -> None:
    state = rs.empty_state()
    state["releases"]["0.1.0"] = {
        "seq": 1, "status": "good", "sha256": SHA["0.1.0"], "installed_at": "2026-11-01T10:00:00Z",
        "updated_at": "2026-11-01T10:00:00Z", "reason": None, "activated_seq": 1,
        "activated_at": "2026-11-01T10:00:00Z",
    }  # fmt: skip
    forgotten = dict(state["releases"]["0.1.0"])
    forgotten.update(seq=0, activated_seq=None)
    state["releases"]["0.0.1"] = forgotten  # type: ignore[assignment]
    state["active"] = {"slot": "blue", "version": "0.1.0", "since": "x", "event": "deploy"}
    host.state.write_text(rs.serialize_state(state))
    result = host.repair(["blue", "green"])
    after = json.loads(host.state.read_text())
    # 0.2.0 was learned from its record, then the proxy's slot made it active.
    assert after["active"]["slot"] == "green" and after["active"]["version"] == "0.2.0"
    assert after["releases"]["0.1.0"]["status"] == "good", "known verdicts are kept"
    assert "0.0.1" not in after["releases"]
    notes = result["repair"]["notes"]
    assert any("learned 0.2.0" in n for n in notes) and any("forgot 0.0.1" in n for n in notes)
    assert not result["repair"]["rebuilt"]


def test_another_run_s_lock_or_a_running_cutover_stops_the_repair(host: Host) -> None:
    state = rs.empty_state()
    state["lock"] = {"run_id": "deploy-7", "holder": "alice@ci", "purpose": "deploy 0.3.0",
                     "since": "2026-11-30T02:59:00Z", "pid": None}  # fmt: skip
    host.state.write_text(rs.serialize_state(state))
    with pytest.raises(rs.LockHeldError, match=r"cannot repair: .*alice@ci"):
        host.repair(["green"])
    assert host.repair(["green"], force=True)["changed"]
    busy = pytest.raises(rs.ReleaseStateError, match="a cutover is running on this host")
    with rs.cutover_in_progress(str(host.state)), busy:
        host.repair(["green"])


def test_without_a_routing_file_the_only_running_slot_serves(host: Host) -> None:
    host.upstream.unlink()
    assert host.repair(["blue"], check_mode=True)["active_version"] == "0.1.0"
    nobody = host.repair([], check_mode=True)
    assert nobody["active_version"] is None
    assert "no slot serves" in " ".join(nobody["warnings"])


def test_a_proxy_routing_to_an_unknown_release_is_said_each_time_but_changes_nothing(
    host: Host,
) -> None:
    host.repair(["blue", "green"])
    host.install("0.3.0", "2026-11-03T10:00:00Z", record=False)
    os.unlink(host.slots / "blue")
    host.link("blue", "0.3.0")
    host.route("blue")
    first, again = host.repair(["blue", "green"]), host.repair(["blue", "green"])
    for result in (first, again):
        assert not result["changed"], result["repair"]["notes"]
        assert "slot blue runs no release this state knows (0.3.0)" in " ".join(result["warnings"])
    assert json.loads(host.state.read_text())["active"]["version"] == "0.2.0"


@pytest.mark.parametrize(
    ("routing", "why"),
    [({"proxy": "nginx"}, "routing needs app, haproxy_map_file"),
     ({"app": "app; rm -rf /"}, "routing.app must be the app's name"),
     (None, "routing is required when action=repair")],
    ids=["missing-keys", "bad-app", "none"],
)  # fmt: skip
def test_a_bad_repair_request_is_refused_before_the_host_is_read(
    host: Host, routing: Any, why: str
) -> None:
    request = host.request()
    if routing is not None and "app" in routing:
        routing = {**(request.routing or {}), **routing}
    request.routing = routing
    with pytest.raises(rs.ValidationError, match=re.escape(why)):
        sr.repair(request, ["green"], now=NOW)
    request.routing, request.releases_dir = host.request().routing, "relative/releases"
    with pytest.raises(rs.ValidationError, match="releases_dir must be"):
        sr.repair(request, ["green"], now=NOW)


def test_a_serving_slot_with_an_unrecorded_release_is_said_so(host: Host) -> None:
    os.unlink(sr.record_path(str(host.releases / "0.2.0")))
    result = host.repair(["green"])
    assert result["active_version"] is None
    assert "slot green serves but runs no recorded release (0.2.0)" in " ".join(result["warnings"])


@pytest.mark.parametrize(
    "content",
    ['{"version": "9.9.9", "sha256": "%s", "installed_at": "2026-11-01T10:00:00Z"}' % ("a" * 64),
     '{"version": "0.1.0", "sha256": "xyz", "installed_at": "2026-11-01T10:00:00Z"}',
     '{"version": "0.1.0", "sha256": "%s", "installed_at": "yesterday"}' % ("a" * 64),
     "not json"],
    ids=["other-version", "bad-sha", "bad-time", "not-json"],
)  # fmt: skip
def test_a_record_that_does_not_vouch_for_its_release_is_ignored(host: Host, content: str) -> None:
    sr.record_path(str(host.releases / "0.1.0"))
    Path(sr.record_path(str(host.releases / "0.1.0"))).write_text(content)
    assert sr.read_record(str(host.releases / "0.1.0"), "0.1.0") is None


def test_a_deploy_on_a_host_whose_state_was_lost_is_sent_to_the_repair(host: Host) -> None:
    lock = host.request(action="lock", holder="alice@ci", run_id="deploy-8")
    lost = r"knows no release, but the proxy routes to slot green running 0\.2\.0: the state "
    with pytest.raises(rs.ReleaseStateError, match=lost + r"was lost; run playbooks/repair"):
        rs.execute(lock)
    read = rs.execute(host.request(action="read"))
    assert re.search(lost, read["drift"]), read["drift"]
    assert not host.state.exists()
    host.repair(["blue", "green"])
    assert rs.execute(lock)["lock"]["run_id"] == "deploy-8"


def damaged(**changes: Any) -> bytes:
    raw = json.loads(rs.serialize_state(rs.empty_state()))
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (damaged(schema=0), "schema must be an integer between 1 and 1"),
        (damaged(history="lost"), "history must be a list"),
        (damaged(history=[{"at": "2026-11-30T03:00:00Z", "event": ""}]), "a non-empty string"),
        (damaged(history=[{"at": "2026-11-30T03:00:00Z", "event": "deploy", "msg": 7}]),
         "a string or null"),
        (b"\xff\xfe not text", "not UTF-8 text"),
    ],
    ids=["schema-0", "history-not-list", "empty-event", "msg-not-text", "not-utf8"],
)  # fmt: skip
def test_each_kind_of_damage_is_named_and_repaired(host: Host, content: bytes, why: str) -> None:
    host.state.write_bytes(content)
    with pytest.raises(rs.DamagedStateError, match=re.escape(why)):
        rs.read_state(str(host.state))
    result = host.repair(["green"])
    assert result["repair"]["rebuilt"] and why in result["repair"]["damage"]
    assert Path(result["repair"]["damaged_file_kept_as"]).read_bytes() == content


@pytest.mark.parametrize(
    ("age", "said"), [(90 * 60, "90m ago"), (5 * 3600, "5h ago"), (3 * 86400, "3d ago")]
)
def test_a_lock_s_age_is_said_in_the_unit_that_reads_best(host: Host, age: int, said: str) -> None:
    since = datetime.fromtimestamp(NOW.timestamp() - age, tz=timezone.utc)
    lock: rs.DeployLock = {"run_id": "r", "holder": "a@b", "purpose": "deploy",
                           "since": rs.format_timestamp(since), "pid": None}  # fmt: skip
    assert f"({said})" in rs.describe_lock("/x", lock, NOW)
