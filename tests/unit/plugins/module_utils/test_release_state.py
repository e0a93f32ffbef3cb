"""release_state logic on real files in tmp_path: every action, the derived view, prune, the
atomic write, and both locks (the flock around each update and the per-host deploy lock) with
real competing processes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import stat
from datetime import datetime, timedelta, timezone
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[4]


from ansible_collections.beamops.release.plugins.module_utils import (  # noqa: E402
    release_state as rs,
)

T0 = datetime(2026, 1, 31, 12, 0, 0, tzinfo=timezone.utc)
RUN = "run-1"
# fork: the children inherit the imported module and sys.path; nothing here uses threads.
FORK = multiprocessing.get_context("fork")


def sha(version: str) -> str:
    return hashlib.sha256(version.encode()).hexdigest()


class Host:
    """One managed host's base_dir, driven through rs.execute the way the roles drive the module.

    Each call advances a fake clock by a second so timestamps are distinct and predictable.
    """

    def __init__(self, base: Path, run_id: str = RUN) -> None:
        self.base = base
        self.releases_dir = base / "releases"
        self.releases_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = base / "release-state.json"
        self.run_id = run_id
        self.clock = T0

    def do(self, action: str, *, check_mode: bool = False, **params: Any) -> dict[str, Any]:
        self.clock += timedelta(seconds=1)
        params.setdefault("run_id", self.run_id)
        request = rs.Request(action=action, path=str(self.state_file), **params)
        return rs.execute(request, check_mode=check_mode, now=self.clock)

    def install(self, version: str) -> dict[str, Any]:
        (self.releases_dir / version / "bin").mkdir(parents=True, exist_ok=True)
        return self.do("register", version=version, sha256=sha(version))

    def deploy(self, version: str, status: str | None = "good") -> dict[str, Any]:
        """Install into the idle slot, switch to it, and mark it (None: leave it unverified)."""
        idle = self.install(version)["idle_slot"]
        result = self.do("activate", slot=idle, version=version, event="deploy")
        if status is not None:
            result = self.do("mark", version=version, status=status, reason="gate")
        return result

    def prune(self, keep: int, **params: Any) -> dict[str, Any]:
        return self.do("prune", releases_dir=str(self.releases_dir), keep=keep, **params)

    def file_state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.state_file.read_text())
        return loaded

    def listing(self) -> list[str]:
        return sorted(os.listdir(self.base))


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path / "app")


# --------------------------------------------------------------------------- read and format


def test_read_of_missing_file_is_empty_state_and_creates_nothing(host: Host) -> None:
    result = host.do("read")
    assert result["changed"] is False
    assert result["state"] == rs.empty_state()
    assert result["active_slot"] is None and result["active_version"] is None
    assert result["idle_slot"] == "blue"
    assert result["previous"] is None and result["lock"] is None
    assert result["last_good_version"] is None and result["rollback_candidate"] is None
    assert result["releases"] == []
    assert host.listing() == ["releases"]  # neither the state nor the lock file


def test_read_needs_no_existing_directory(tmp_path: Path) -> None:
    request = rs.Request(action="read", path=str(tmp_path / "nowhere" / "release-state.json"))
    assert rs.execute(request)["state"] == rs.empty_state()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("{not json", "not valid JSON", id="syntax"),
        pytest.param("", "not valid JSON", id="empty-file"),
        pytest.param("[]", "the top level must be a JSON object", id="list"),
        pytest.param('{"schema": "1"}', "schema must be a non-negative integer", id="schema-type"),
        pytest.param('{"schema": 1, "releases": []}', "releases must be a JSON object", id="rel"),
        pytest.param(
            '{"schema": 1, "releases": {"0.1.0": {"seq": 1, "status": "fine"}}}',
            "releases['0.1.0'].status must be one of installed, good, bad",
            id="status",
        ),
        pytest.param(
            '{"schema": 1, "releases": {"../etc": {}}}',
            "each key of releases must be a release version",
            id="traversal-key",
        ),
        pytest.param(
            '{"schema": 1, "active": {"slot": "red", "version": "1", "since": "x", "event": "d"}}',
            "active.slot must be one of blue, green",
            id="slot",
        ),
        pytest.param(
            '{"schema": 1, "lock": {"run_id": "r", "holder": "h", "purpose": "p", "since": "now"}}',
            "lock.since must be a UTC timestamp",
            id="lock-since",
        ),
    ],
)
def test_corrupt_file_is_an_error_naming_path_and_field(
    host: Host, content: str, expected: str
) -> None:
    host.state_file.write_text(content)
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("read", {}),
        ("register", {"version": "1", "sha256": sha("1")}),
    ]
    for action, params in attempts:
        with pytest.raises(rs.StateFileError) as caught:
            host.do(action, **params)
        assert str(host.state_file) in str(caught.value)
        assert expected in str(caught.value)
        assert host.state_file.read_text() == content  # never overwritten


def test_newer_schema_is_refused_untouched(host: Host) -> None:
    host.state_file.write_text('{"schema": 2, "whatever": true}')
    with pytest.raises(rs.StateFileError, match="schema 2, written by a newer"):
        host.do("lock", holder="me")
    assert host.state_file.read_text() == '{"schema": 2, "whatever": true}'


def test_minimal_hand_written_file_is_accepted_and_counters_catch_up(host: Host) -> None:
    release = {
        "seq": 7,
        "status": "good",
        "sha256": sha("0.7.0"),
        "installed_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    host.state_file.write_text(json.dumps({"schema": 1, "releases": {"0.7.0": release}}))
    result = host.install("0.8.0")
    assert [(r["version"], r["seq"]) for r in result["releases"]] == [("0.7.0", 7), ("0.8.0", 8)]


def test_file_shape_is_the_documented_schema(host: Host) -> None:
    host.do("lock", holder="ci@ctl", purpose="deploy 0.1.0", pid=4242)
    host.deploy("0.1.0")
    saved = host.file_state()
    assert list(saved) == [
        "schema",
        "counters",
        "active",
        "previous",
        "releases",
        "history",
        "lock",
    ]
    assert saved["schema"] == 1
    assert saved["counters"] == {"install": 1, "activation": 1}
    assert saved["active"] == {
        "slot": "blue",
        "version": "0.1.0",
        "since": "2026-01-31T12:00:03Z",
        "event": "deploy",
    }
    assert saved["releases"]["0.1.0"] == {
        "seq": 1,
        "status": "good",
        "sha256": sha("0.1.0"),
        "installed_at": "2026-01-31T12:00:02Z",
        "updated_at": "2026-01-31T12:00:04Z",
        "reason": "gate",
        "activated_seq": 1,
        "activated_at": "2026-01-31T12:00:03Z",
    }
    assert saved["lock"] == {
        "run_id": RUN,
        "holder": "ci@ctl",
        "purpose": "deploy 0.1.0",
        "since": "2026-01-31T12:00:01Z",
        "pid": 4242,
    }
    assert [set(entry) for entry in saved["history"]] == [
        {"at", "event", "version", "slot", "result", "msg", "run_id"}
    ] * 4
    assert [(e["event"], e["result"]) for e in saved["history"]] == [
        ("lock", "acquired"),
        ("register", "installed"),
        ("deploy", "activated"),
        ("mark", "good"),
    ]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("action", "params", "expected"),
    [
        ("register", {"version": "../evil", "sha256": sha("x")}, "version must be a non-empty"),
        ("register", {"version": "a/b", "sha256": sha("x")}, "version must be"),
        ("register", {"version": ".hidden", "sha256": sha("x")}, "version must be"),
        ("register", {"version": "", "sha256": sha("x")}, "version is required"),
        ("register", {"version": "1.0", "sha256": "abc"}, "sha256 must be 64 hexadecimal"),
        ("register", {"version": "1.0"}, "sha256 is required when action=register"),
        ("activate", {"version": "1.0", "slot": "purple"}, "slot must be blue|green, got 'purple'"),
        ("activate", {"version": "1.0"}, "slot is required when action=activate"),
        ("mark", {"version": "1.0", "status": "meh"}, "status must be good or bad"),
        ("lock", {}, "holder is required when action=lock"),
        ("lock", {"holder": "a\nb"}, "holder must be a non-empty single-line string"),
        ("lock", {"holder": "me", "stale_after": 0}, "stale_after must be an integer >= 1"),
        ("unlock", {"run_id": None}, "unlock needs run_id"),
        ("record_event", {"event": "Deploy Now"}, "event must be a lowercase word"),
        ("prune", {"releases_dir": "/tmp", "keep": 0}, "keep must be an integer >= 1, got 0"),
        ("prune", {"releases_dir": "rel", "keep": 1}, "releases_dir must be an absolute path"),
        ("prune", {"keep": 1}, "releases_dir is required when action=prune"),
        ("explode", {}, "action must be one of read, lock"),
    ],
)
def test_validation_errors_name_the_parameter(
    host: Host, action: str, params: dict[str, Any], expected: str
) -> None:
    with pytest.raises(rs.ValidationError) as caught:
        host.do(action, **params)
    assert expected in str(caught.value)
    assert not host.state_file.exists()


def test_relative_state_path_is_refused() -> None:
    with pytest.raises(rs.ValidationError, match="path must be an absolute path"):
        rs.execute(rs.Request(action="read", path="release-state.json"))


def test_request_from_params_derives_paths_from_base_dir() -> None:
    request = rs.request_from_params({"action": "prune", "base_dir": "/opt/app", "keep": 2})
    assert request.path == "/opt/app/release-state.json"
    assert request.releases_dir == "/opt/app/releases"
    assert request.keep == 2 and request.purpose == "deploy"
    explicit = rs.request_from_params(
        {"action": "read", "base_dir": "/opt/app", "path": "/srv/s.json", "releases_dir": "/r"}
    )
    assert (explicit.path, explicit.releases_dir) == ("/srv/s.json", "/r")
    with pytest.raises(rs.ValidationError, match="one of base_dir or path is required"):
        rs.request_from_params({"action": "read"})


# --------------------------------------------------------------------------- register / mark


def test_register_records_install_order_and_refuses_changed_content(host: Host) -> None:
    first = host.install("0.1.0")
    assert first["changed"] is True
    assert first["msg"] == "release 0.1.0 registered (seq 1)"
    assert first["releases"][0]["status"] == "installed"
    assert first["releases"][0]["sha256"] == sha("0.1.0")

    again = host.do("register", version="0.1.0", sha256=sha("0.1.0").upper())
    assert again["changed"] is False

    before = host.state_file.read_bytes()
    with pytest.raises(rs.ReleaseConflictError) as caught:
        host.do("register", version="0.1.0", sha256=sha("something else"))
    assert "release 0.1.0 is already registered" in str(caught.value)
    assert sha("0.1.0") in str(caught.value) and sha("something else") in str(caught.value)
    assert host.state_file.read_bytes() == before

    assert [r["seq"] for r in host.install("0.0.9")["releases"]] == [1, 2]


def test_mark_sets_status_and_reason_and_is_idempotent(host: Host) -> None:
    host.install("0.1.0")
    bad = host.do("mark", version="0.1.0", status="bad", reason="readiness gate failed")
    assert bad["changed"] is True
    assert bad["releases"][0]["status"] == "bad"
    assert bad["releases"][0]["reason"] == "readiness gate failed"
    assert bad["state"]["history"][-1]["event"] == "mark"
    assert bad["state"]["history"][-1]["result"] == "bad"
    assert bad["state"]["history"][-1]["msg"] == "readiness gate failed"

    assert host.do("mark", version="0.1.0", status="bad")["changed"] is False
    same = host.do("mark", version="0.1.0", status="bad", reason="readiness gate failed")
    assert same["changed"] is False
    good = host.do("mark", version="0.1.0", status="good", reason="fixed config")
    assert good["changed"] is True and good["releases"][0]["status"] == "good"


def test_mark_and_activate_unknown_version_fail_naming_known_ones(host: Host) -> None:
    host.install("0.1.0")
    with pytest.raises(
        rs.ReleaseConflictError, match=r"0\.9\.9 is not registered .*known: 0\.1\.0"
    ):
        host.do("mark", version="0.9.9", status="good")
    with pytest.raises(rs.ReleaseConflictError, match="register it first"):
        host.do("activate", version="0.9.9", slot="blue")


def test_long_messages_are_clipped(host: Host) -> None:
    host.install("0.1.0")
    result = host.do("mark", version="0.1.0", status="bad", reason="x" * 5000)
    reason = result["releases"][0]["reason"]
    assert len(reason) == rs.MAX_TEXT_LENGTH and reason.endswith("[truncated]")


# --------------------------------------------------------------------------- activate / view


def test_activate_moves_active_to_previous_and_is_idempotent(host: Host) -> None:
    host.install("0.1.0")
    host.install("0.2.0")
    first = host.do("activate", slot="blue", version="0.1.0")
    assert first["changed"] is True
    assert (first["active_slot"], first["active_version"], first["idle_slot"]) == (
        "blue",
        "0.1.0",
        "green",
    )
    assert first["previous"] is None

    assert host.do("activate", slot="blue", version="0.1.0")["changed"] is False

    second = host.do("activate", slot="green", version="0.2.0", event="deploy", msg="canary ok")
    assert (second["active_slot"], second["active_version"], second["idle_slot"]) == (
        "green",
        "0.2.0",
        "blue",
    )
    assert second["previous"] == {
        "slot": "blue",
        "version": "0.1.0",
        "since": "2026-01-31T12:00:03Z",
        "event": "deploy",
    }
    entry = second["state"]["history"][-1]
    assert (entry["event"], entry["version"], entry["slot"], entry["result"], entry["msg"]) == (
        "deploy",
        "0.2.0",
        "green",
        "activated",
        "canary ok",
    )
    assert [r["active"] for r in second["releases"]] == [False, True]
    assert [r["previous"] for r in second["releases"]] == [True, False]
    # activation marks nothing by itself
    assert [r["status"] for r in second["releases"]] == ["installed", "installed"]


def test_activating_a_bad_release_warns(host: Host) -> None:
    host.install("0.1.0")
    host.do("mark", version="0.1.0", status="bad", reason="crashes on boot")
    result = host.do("activate", slot="blue", version="0.1.0")
    assert result["warnings"] == ["activating release 0.1.0, which is marked bad: crashes on boot"]


def test_rollback_candidate_through_deploys_and_marks(host: Host) -> None:
    one = host.deploy("0.1.0")
    assert (one["last_good_version"], one["rollback_candidate"]) == ("0.1.0", None)

    two = host.deploy("0.2.0")
    assert (two["last_good_version"], two["rollback_candidate"]) == ("0.2.0", "0.1.0")

    # 0.3.0 is active but not verified yet: the last good release is the one before it.
    three = host.deploy("0.3.0", status=None)
    assert three["active_version"] == "0.3.0"
    assert (three["last_good_version"], three["rollback_candidate"]) == ("0.2.0", "0.2.0")

    three_bad = host.do("mark", version="0.3.0", status="bad", reason="readiness gate on blue")
    assert three_bad["rollback_candidate"] == "0.2.0"

    back = host.do(
        "activate", slot=three_bad["previous"]["slot"], version="0.2.0", event="rollback"
    )
    assert (back["active_slot"], back["active_version"]) == ("green", "0.2.0")
    assert back["previous"]["version"] == "0.3.0"
    assert (back["last_good_version"], back["rollback_candidate"]) == ("0.2.0", "0.1.0")

    # 0.2.0 turns out bad too: nothing newer than 0.1.0 is trustworthy.
    two_bad = host.do("mark", version="0.2.0", status="bad", reason="data corruption")
    assert (two_bad["last_good_version"], two_bad["rollback_candidate"]) == ("0.1.0", "0.1.0")

    host.do("mark", version="0.1.0", status="bad", reason="same bug")
    assert host.do("read")["rollback_candidate"] is None


def test_rollback_candidate_follows_activation_history_not_install_order(host: Host) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        host.deploy(version)
    host.do("activate", slot="blue", version="1.0.0", event="rollback")  # back to the oldest
    result = host.do("activate", slot="green", version="2.0.0", event="switch_back")
    # By install order 3.0.0 would be "newest good"; by activation 1.0.0 ran more recently.
    assert result["active_version"] == "2.0.0"
    assert result["rollback_candidate"] == "1.0.0"
    assert [r["version"] for r in result["releases"]] == ["1.0.0", "2.0.0", "3.0.0"]


def test_good_release_never_activated_is_not_a_rollback_candidate(host: Host) -> None:
    host.deploy("0.1.0")
    host.install("0.2.0")
    result = host.do("mark", version="0.2.0", status="good")
    assert (result["last_good_version"], result["rollback_candidate"]) == ("0.1.0", None)


def test_record_event_appends_and_history_stays_bounded(host: Host) -> None:
    result = host.do(
        "record_event",
        event="deploy",
        result="failed",
        version="0.2.0",
        slot="green",
        msg="deploy failed: readiness gate on green",
    )
    assert result["changed"] is True
    assert result["state"]["history"] == [
        {
            "at": "2026-01-31T12:00:01Z",
            "event": "deploy",
            "version": "0.2.0",
            "slot": "green",
            "result": "failed",
            "msg": "deploy failed: readiness gate on green",
            "run_id": RUN,
        }
    ]
    full = host.file_state()
    full["history"] = [dict(full["history"][0], msg=str(i)) for i in range(rs.HISTORY_LIMIT)]
    host.state_file.write_text(json.dumps(full))
    for index in range(rs.HISTORY_LIMIT, rs.HISTORY_LIMIT + 5):
        host.do("record_event", event="tick", msg=str(index))
    history = host.file_state()["history"]
    assert len(history) == rs.HISTORY_LIMIT
    assert history[0]["msg"] == "5" and history[-1]["msg"] == str(rs.HISTORY_LIMIT + 4)


# --------------------------------------------------------------------------- prune


def test_prune_keep_1_never_removes_active_previous_last_good_or_rollback_target(
    host: Host,
) -> None:
    host.deploy("0.0.1")  # good, activated long ago
    host.install("0.0.2")  # never activated
    host.deploy("0.1.0")  # good
    host.deploy("0.2.0")  # good: the last good one
    host.deploy("0.3.0", status=None)  # previous, unverified
    host.deploy("0.4.0", status="bad")  # active, bad
    host.install("0.5.0")  # newest install

    result = host.prune(keep=1)
    assert result["changed"] is True
    assert result["removed"] == ["0.0.1", "0.0.2", "0.1.0"]
    assert result["kept"] == ["0.2.0", "0.3.0", "0.4.0", "0.5.0"]
    assert result["kept_reasons"] == {
        "0.5.0": ["recent"],
        "0.4.0": ["active"],
        "0.3.0": ["previous"],
        "0.2.0": ["last_good", "rollback_candidate"],
    }
    assert sorted(os.listdir(host.releases_dir)) == ["0.2.0", "0.3.0", "0.4.0", "0.5.0"]
    assert sorted(host.file_state()["releases"]) == ["0.2.0", "0.3.0", "0.4.0", "0.5.0"]
    assert result["state"]["history"][-1]["msg"] == "removed 0.0.1, 0.0.2, 0.1.0"

    assert host.prune(keep=1)["changed"] is False


def test_prune_keeps_rollback_candidate_when_last_good_is_active(host: Host) -> None:
    for version in ("0.1.0", "0.2.0", "0.3.0", "0.4.0"):
        host.deploy(version)
    result = host.prune(keep=1)
    assert result["removed"] == ["0.1.0", "0.2.0"]
    assert result["kept_reasons"] == {
        "0.4.0": ["recent", "active", "last_good"],
        "0.3.0": ["previous", "rollback_candidate"],
    }


def test_prune_orders_by_install_sequence_not_mtime_or_name(host: Host) -> None:
    # Lexical, version and mtime order all disagree with install order here.
    installed = ["1.10.0", "1.9.0", "1.2.0", "0.1.0"]
    for version in installed:
        host.install(version)
    for age_days, version in zip([0, 1, 3000, 4000], installed):
        when = T0.timestamp() - age_days * 86400
        os.utime(host.releases_dir / version, (when, when))
    result = host.prune(keep=2)
    assert result["removed"] == ["1.10.0", "1.9.0"]
    assert sorted(os.listdir(host.releases_dir)) == ["0.1.0", "1.2.0"]


def test_prune_in_check_mode_deletes_nothing(host: Host) -> None:
    for version in ("0.1.0", "0.2.0", "0.3.0"):
        host.deploy(version)
    before = host.state_file.read_bytes()
    result = host.prune(keep=1, check_mode=True)
    assert result["changed"] is True
    assert result["removed"] == ["0.1.0"]
    assert result["msg"].startswith("would remove 0.1.0")
    assert sorted(os.listdir(host.releases_dir)) == ["0.1.0", "0.2.0", "0.3.0"]
    assert host.state_file.read_bytes() == before


def test_prune_leaves_unknown_entries_and_refuses_symlinks(host: Host, tmp_path: Path) -> None:
    for version in ("0.1.0", "0.2.0", "0.3.0", "0.4.0"):
        host.deploy(version)
    (host.releases_dir / "0.5.0-unpacking").mkdir()
    (host.releases_dir / ".tmp-download").write_text("partial")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("keep me")
    victim = host.releases_dir / "0.1.0"
    for child in sorted(victim.rglob("*"), reverse=True):
        child.rmdir()
    victim.rmdir()
    victim.symlink_to(outside)  # a known release that now points outside releases_dir

    result = host.prune(keep=1)
    assert result["unknown"] == [".tmp-download", "0.5.0-unpacking"]
    assert result["removed"] == ["0.2.0"]
    assert result["skipped"] == {"0.1.0": f"{victim} is a symlink; not following it"}
    assert "not removing release 0.1.0" in result["warnings"][0]
    assert (outside / "data").read_text() == "keep me"
    assert victim.is_symlink()
    assert "0.1.0" in host.file_state()["releases"]
    assert (host.releases_dir / "0.5.0-unpacking").is_dir()


def test_prune_drops_records_without_directory_and_reports_missing_kept(host: Host) -> None:
    for version in ("0.1.0", "0.2.0", "0.3.0"):
        host.deploy(version)
    (host.releases_dir / "0.1.0" / "bin").rmdir()
    (host.releases_dir / "0.1.0").rmdir()
    (host.releases_dir / "0.3.0" / "bin").rmdir()
    (host.releases_dir / "0.3.0").rmdir()
    result = host.prune(keep=1)
    assert result["removed"] == ["0.1.0"]
    assert result["missing"] == ["0.3.0"]
    assert any("0.3.0 is kept (recent, active, last_good)" in w for w in result["warnings"])


def test_prune_honours_protect(host: Host) -> None:
    for version in ("0.1.0", "0.2.0", "0.3.0", "0.4.0"):
        host.deploy(version)
    result = host.prune(keep=1, protect=["0.1.0"])
    assert result["removed"] == ["0.2.0"]
    assert result["kept_reasons"]["0.1.0"] == ["protect"]


def test_prune_failing_part_way_records_what_it_removed(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0"):
        host.deploy(version)
    real_rmtree = shutil.rmtree

    def rmtree_failing_on_0_2_0(path: str) -> None:
        if path.endswith("0.2.0"):
            raise PermissionError(1, "Operation not permitted", path)
        real_rmtree(path)

    monkeypatch.setattr(shutil, "rmtree", rmtree_failing_on_0_2_0)
    with pytest.raises(rs.ReleaseStateError) as caught:
        host.prune(keep=1)
    assert f"prune stopped: cannot remove {host.releases_dir / '0.2.0'}" in str(caught.value)
    # The state matches the disk: 0.1.0 is gone from both, 0.2.0 and 0.3.0 are still there.
    assert sorted(host.file_state()["releases"]) == ["0.2.0", "0.3.0", "0.4.0", "0.5.0"]
    assert sorted(os.listdir(host.releases_dir)) == ["0.2.0", "0.3.0", "0.4.0", "0.5.0"]


def test_prune_needs_an_existing_releases_dir(host: Host) -> None:
    with pytest.raises(rs.ValidationError, match="releases_dir /nonexistent/rel does not exist"):
        host.do("prune", releases_dir="/nonexistent/rel", keep=1)


# --------------------------------------------------------------------------- check and diff


def _populated(host: Host) -> None:
    host.deploy("0.0.1")
    host.deploy("0.1.0")
    host.deploy("0.2.0")
    host.install("0.3.0")
    host.do("lock", holder="ci@ctl")


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("unlock", {}),
        ("lock", {"run_id": "run-2", "holder": "bob", "force": True}),
        ("register", {"version": "0.4.0", "sha256": sha("0.4.0")}),
        ("mark", {"version": "0.3.0", "status": "bad", "reason": "x"}),
        ("activate", {"slot": "blue", "version": "0.3.0"}),
        ("record_event", {"event": "deploy", "result": "failed"}),
        ("prune", {"keep": 1}),
    ],
)
def test_check_mode_reports_change_but_writes_nothing(
    host: Host, action: str, params: dict[str, Any]
) -> None:
    _populated(host)
    if action == "prune":
        params = {**params, "releases_dir": str(host.releases_dir)}
    before_bytes = host.state_file.read_bytes()
    before_listing = (host.listing(), sorted(os.listdir(host.releases_dir)))
    predicted = host.do(action, check_mode=True, **params)
    assert predicted["changed"] is True
    assert host.state_file.read_bytes() == before_bytes
    assert (host.listing(), sorted(os.listdir(host.releases_dir))) == before_listing

    host.clock -= timedelta(seconds=1)  # same timestamp: the real run must match the prediction
    applied = host.do(action, **params)
    assert applied["changed"] is True
    assert applied["state"] == predicted["state"]
    assert host.file_state() == predicted["state"]


def test_check_mode_on_a_fresh_host_creates_no_files(tmp_path: Path) -> None:
    base = tmp_path / "fresh"  # does not even exist yet
    request = rs.Request(action="lock", path=str(base / "s.json"), run_id="r", holder="h")
    assert rs.execute(request, check_mode=True)["changed"] is True
    assert not base.exists()
    # Taking the lock for real is a host's first step: it makes the base directory.
    assert rs.execute(request)["lock"]["run_id"] == "r"
    assert stat.S_IMODE(base.stat().st_mode) == 0o755
    assert stat.S_IMODE((base / "s.json.lock").stat().st_mode) == 0o600


def test_the_lock_file_is_root_s_alone(tmp_path: Path) -> None:
    """Anyone who could open the lock file could flock it and hold every deploy back."""
    path = tmp_path / "s.json"
    lock_file = tmp_path / "s.json.lock"
    lock_file.write_text("")
    lock_file.chmod(0o644)  # as an older version left it
    rs.execute(rs.Request(action="lock", path=str(path), run_id="r", holder="h"))
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    with pytest.raises(rs.StateFileError, match="does not exist; create base_dir"):
        rs.execute(rs.Request(action="register", path=str(tmp_path / "no" / "s.json"),
                              version="1.0.0", sha256="a" * 64))  # fmt: skip


def test_diff_carries_file_text_before_and_after(host: Host) -> None:
    created = host.install("0.1.0")
    assert created["diff"]["before"] == ""
    assert created["diff"]["after"] == host.state_file.read_text()
    assert created["diff"]["before_header"] == str(host.state_file)

    marked = host.do("mark", version="0.1.0", status="good")
    before = json.loads(marked["diff"]["before"])
    after = json.loads(marked["diff"]["after"])
    assert before["releases"]["0.1.0"]["status"] == "installed"
    assert after["releases"]["0.1.0"]["status"] == "good"
    assert after == host.file_state()

    unchanged = host.do("mark", version="0.1.0", status="good")
    assert unchanged["diff"]["before"] == unchanged["diff"]["after"]


# --------------------------------------------------------------------------- atomic write


def test_writes_are_atomic_root_only_and_leave_no_temp_files(host: Host) -> None:
    old_umask = os.umask(0o077)  # mode must not depend on the caller's umask
    try:
        for version in ("0.1.0", "0.2.0"):
            host.deploy(version)
    finally:
        os.umask(old_umask)
    assert host.listing() == ["release-state.json", "release-state.json.lock", "releases"]
    assert host.state_file.stat().st_mode & 0o777 == 0o600


def test_crash_before_replace_keeps_the_old_file(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.deploy("0.1.0")
    before = host.state_file.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(rs.StateFileError) as caught:
        host.install("0.2.0")
    assert "No space left on device" in str(caught.value)
    assert "previous content is intact" in str(caught.value)
    assert host.state_file.read_bytes() == before
    assert host.listing() == ["release-state.json", "release-state.json.lock", "releases"]


def test_temp_file_of_a_killed_writer_is_cleaned_by_the_next_write(host: Host) -> None:
    host.install("0.1.0")
    leftover = host.base / ".release-state.json.k1ll3d.tmp"
    leftover.write_text('{"half": ')
    assert host.do("read")["releases"][0]["version"] == "0.1.0"  # readers ignore it
    host.install("0.2.0")
    assert not leftover.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file ownership needs root")
def test_rewrite_as_root_keeps_the_file_owner(host: Host) -> None:
    host.install("0.1.0")
    os.chown(host.state_file, 1234, 2345)
    host.install("0.2.0")
    assert (host.state_file.stat().st_uid, host.state_file.stat().st_gid) == (1234, 2345)


# --------------------------------------------------------------------------- deploy lock


def test_lock_same_run_is_ok_other_run_fails_naming_holder(host: Host) -> None:
    taken = host.do("lock", holder="alice@ctl", purpose="deploy 0.2.0", pid=777)
    assert taken["changed"] is True
    assert taken["lock"] == {
        "run_id": RUN,
        "holder": "alice@ctl",
        "purpose": "deploy 0.2.0",
        "since": "2026-01-31T12:00:01Z",
        "pid": 777,
    }
    assert host.do("lock", holder="alice@ctl")["changed"] is False

    host.clock += timedelta(minutes=5)
    with pytest.raises(rs.LockHeldError) as caught:
        host.do("lock", run_id="run-2", holder="bob@ctl", purpose="deploy 0.3.0")
    assert str(caught.value) == (
        f"deploy lock on {host.state_file} is held by alice@ctl (deploy 0.2.0) since "
        "2026-01-31T12:00:01Z (5m ago), run run-1, pid 777; wait for it or run with force "
        "(or stale_after) to take it over"
    )
    assert caught.value.lock["run_id"] == RUN
    assert host.file_state()["lock"]["run_id"] == RUN


def test_lock_force_steals_and_says_so(host: Host) -> None:
    host.do("lock", holder="alice@ctl")
    stolen = host.do("lock", run_id="run-2", holder="bob@ctl", force=True)
    assert stolen["changed"] is True
    assert stolen["stolen_from"]["holder"] == "alice@ctl"
    assert stolen["lock"]["run_id"] == "run-2"
    assert stolen["msg"].startswith("took over the forced deploy lock")
    assert stolen["warnings"] == [stolen["msg"]]
    assert stolen["state"]["history"][-1]["result"] == "stolen"


def test_stale_lock_is_taken_over_only_after_stale_after(host: Host) -> None:
    host.do("lock", holder="alice@ctl")
    host.clock += timedelta(seconds=3000)
    with pytest.raises(rs.LockHeldError):
        host.do("lock", run_id="run-2", holder="bob@ctl", stale_after=3600)
    host.clock += timedelta(seconds=700)
    taken = host.do("lock", run_id="run-2", holder="bob@ctl", stale_after=3600)
    assert taken["stolen_from"]["holder"] == "alice@ctl"
    assert "stale (older than stale_after=3600s)" in taken["msg"]
    assert host.file_state()["lock"]["holder"] == "bob@ctl"


def test_unlock_by_holder_free_lock_other_run_and_force(host: Host) -> None:
    assert host.do("unlock")["changed"] is False  # already free
    host.do("lock", holder="alice@ctl")
    with pytest.raises(rs.LockHeldError, match=r"cannot unlock: .* not by run run-2"):
        host.do("unlock", run_id="run-2")
    released = host.do("unlock")
    assert released["changed"] is True and released["lock"] is None
    host.do("lock", holder="alice@ctl")
    forced = host.do("unlock", run_id=None, force=True)
    assert forced["changed"] is True and forced["stolen_from"]["holder"] == "alice@ctl"
    assert host.file_state()["lock"] is None


def test_deploy_lock_guards_changes_by_other_runs(host: Host) -> None:
    host.install("0.1.0")
    host.do("lock", holder="alice@ctl")
    guarded: list[dict[str, Any]] = [
        {"action": "register", "version": "0.2.0", "sha256": sha("0.2.0")},
        {"action": "activate", "slot": "blue", "version": "0.1.0"},
        {"action": "mark", "version": "0.1.0", "status": "good"},
        {"action": "prune", "releases_dir": str(host.releases_dir), "keep": 1},
    ]
    for params in guarded:
        for run_id in ("run-2", None):
            with pytest.raises(rs.LockHeldError, match="held by alice@ctl"):
                host.do(run_id=run_id, **params)
    assert host.do("record_event", run_id="run-2", event="note")["changed"] is True
    assert host.do("activate", slot="blue", version="0.1.0")["changed"] is True  # holder
    forced = host.do("mark", run_id="run-2", version="0.1.0", status="good", force=True)
    assert forced["changed"] is True


# --------------------------------------------------------------------------- real processes


def _register_many(state_file: str, prefix: str, count: int) -> None:
    for index in range(count):
        version = f"{prefix}{index}"
        request = rs.Request(
            action="register", path=state_file, version=version, sha256=sha(version)
        )
        rs.execute(request)


def test_concurrent_processes_never_lose_an_update(host: Host) -> None:
    count = 25
    workers = [
        FORK.Process(target=_register_many, args=(str(host.state_file), prefix, count))
        for prefix in ("a", "b")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    releases = host.file_state()["releases"]
    assert len(releases) == 2 * count
    assert sorted(r["seq"] for r in releases.values()) == list(range(1, 2 * count + 1))


def _hold_file_lock(state_file: str, held: EventType, release: EventType) -> None:
    with rs.exclusive_file_lock(state_file):
        held.set()
        release.wait(30)


def test_update_waits_for_another_process_holding_the_file_lock(host: Host) -> None:
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_file_lock, args=(str(host.state_file), held, release))
    holder.start()
    try:
        assert held.wait(10)
        request = rs.Request(action="lock", path=str(host.state_file), run_id="r", holder="h")
        with pytest.raises(rs.FileLockTimeout, match=r"release-state\.json\.lock locked for"):
            rs.execute(request, lock_timeout=0.3)
        assert not host.state_file.exists()
    finally:
        release.set()
        holder.join(timeout=10)
    assert rs.execute(request, lock_timeout=5)["changed"] is True


def _race_for_deploy_lock(state_file: str, run_id: str, start: Any, results: Any) -> None:
    start.wait(10)
    request = rs.Request(action="lock", path=state_file, run_id=run_id, holder=run_id)
    try:
        rs.execute(request)
        results.put((run_id, "won"))
    except rs.ReleaseStateError as exc:  # anything but LockHeldError fails the assertion below
        results.put((run_id, f"{type(exc).__name__}: {exc}"))


def test_two_processes_racing_for_the_deploy_lock_get_exactly_one_winner(host: Host) -> None:
    for round_number in range(3):
        start = FORK.Barrier(2)
        results = FORK.Queue()
        runners = [
            FORK.Process(
                target=_race_for_deploy_lock,
                args=(str(host.state_file), f"r{round_number}-{side}", start, results),
            )
            for side in ("x", "y")
        ]
        for runner in runners:
            runner.start()
        outcomes = dict(results.get(timeout=20) for _unused in runners)
        for runner in runners:
            runner.join(timeout=10)
        winners = [run_id for run_id, outcome in outcomes.items() if outcome == "won"]
        assert len(winners) == 1, outcomes
        (loser,) = set(outcomes) - set(winners)
        assert outcomes[loser].startswith("LockHeldError: deploy lock on"), outcomes[loser]
        assert f"held by {winners[0]}" in outcomes[loser]
        assert host.file_state()["lock"]["run_id"] == winners[0]
        host.do("unlock", run_id=winners[0])
