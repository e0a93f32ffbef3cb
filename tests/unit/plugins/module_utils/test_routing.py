"""routing and the release state's drift handling: the proxy's routing file is the truth about
what serves; read reports a state that disagrees, lock makes the state follow the proxy."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict

import pytest
from ansible_collections.beamops.release.plugins.module_utils import release_state as rs
from ansible_collections.beamops.release.plugins.module_utils import routing as ro


@pytest.fixture(name="where")
def fixture_where(tmp_path: Path) -> ro.Routing:
    (tmp_path / "slots").mkdir()
    return ro.Routing(
        proxy="nginx",
        app="demo_app",
        nginx_upstream_file=str(tmp_path / "demo.upstream"),
        haproxy_map_file=str(tmp_path / "demo-live.map"),
        slots_dir=str(tmp_path / "slots"),
    )


def route_to(where: ro.Routing, slot: str) -> None:
    Path(where.nginx_upstream_file).write_text(
        f"# Managed\n{ro.NGINX_MARK}{slot}; fallback: none\nupstream x {{}}\n"
    )
    Path(where.haproxy_map_file).write_text(f"live {where.app}_{slot}\n")


def link(where: ro.Routing, slot: str, version: str) -> None:
    os.symlink(f"/opt/demo/releases/{version}", os.path.join(where.slots_dir, slot))


def test_both_proxies_files_name_the_routed_slot(where: ro.Routing) -> None:
    assert ro.routed_slot(where) is None
    route_to(where, "green")
    assert ro.routed_slot(where) == "green"
    assert ro.routed_slot(dataclasses.replace(where, proxy="haproxy")) == "green"
    Path(where.haproxy_map_file).write_text("live other_app_blue\n")
    assert ro.routed_slot(dataclasses.replace(where, proxy="haproxy")) is None
    link(where, "blue", "0.3.0")
    assert ro.slot_version(where, "blue") == "0.3.0"
    assert ro.slot_version(where, "green") is None


def test_routing_from_names_a_missing_key() -> None:
    assert ro.routing_from(None) is None
    with pytest.raises(ValueError, match="routing needs slots_dir"):
        ro.routing_from(
            {"proxy": "nginx", "app": "a", "nginx_upstream_file": "x", "haproxy_map_file": "y"}
        )


def state_path(tmp_path: Path, active: str = "blue") -> str:
    path = str(tmp_path / "release-state.json")
    for version in ("0.1.0", "0.2.0"):
        rs.execute(rs.Request(action="register", path=path, version=version, sha256="a" * 64))
    rs.execute(rs.Request(action="activate", path=path, version="0.1.0", slot=active))
    return path


def lock(path: str, where: ro.Routing) -> Dict[str, Any]:
    return rs.execute(
        rs.Request(
            action="lock", path=path, run_id="r1", holder="t@c",
            routing=dataclasses.asdict(where),
        )
    )  # fmt: skip


def test_a_state_that_agrees_with_the_proxy_is_left_alone(
    tmp_path: Path, where: ro.Routing
) -> None:
    path = state_path(tmp_path)
    route_to(where, "blue")
    read = rs.execute(rs.Request(action="read", path=path, routing=dataclasses.asdict(where)))
    assert (read["routed_slot"], read["drift"]) == ("blue", "")
    locked = lock(path, where)
    assert locked["active_slot"] == "blue" and not locked.get("drift_repaired")
    assert locked["warnings"] == []


def test_the_lock_makes_the_state_follow_the_proxy_after_a_killed_run(
    tmp_path: Path, where: ro.Routing
) -> None:
    """The run switched to green (0.2.0) and was killed before it wrote the state."""
    path = state_path(tmp_path)
    link(where, "green", "0.2.0")
    route_to(where, "green")
    read = rs.execute(rs.Request(action="read", path=path, routing=dataclasses.asdict(where)))
    assert (
        read["drift"]
        == "the state says 0.1.0 serves on slot blue, but the proxy routes to slot green"
    )
    assert read["active_slot"] == "blue"  # read never writes
    locked = lock(path, where)
    assert locked["drift_repaired"] is True
    assert (locked["active_slot"], locked["active_version"], locked["idle_slot"]) == (
        "green",
        "0.2.0",
        "blue",
    )
    assert "the state now follows the proxy (0.2.0 on green)" in locked["warnings"][0]
    saved = json.loads(Path(path).read_text())
    assert saved["previous"]["slot"] == "blue" and saved["active"]["event"] == "repair"
    assert saved["history"][-1]["event"] == "repair"


def test_a_routed_slot_with_an_unknown_release_is_only_reported(
    tmp_path: Path, where: ro.Routing
) -> None:
    path = state_path(tmp_path)
    link(where, "green", "9.9.9")
    route_to(where, "green")
    locked = lock(path, where)
    assert locked["active_slot"] == "blue" and not locked.get("drift_repaired")
    assert "runs no release this state knows (9.9.9)" in locked["warnings"][0]


def test_check_mode_lock_repairs_nothing_on_disk(tmp_path: Path, where: ro.Routing) -> None:
    path = state_path(tmp_path)
    link(where, "green", "0.2.0")
    route_to(where, "green")
    before = Path(path).read_bytes()
    rs.execute(
        rs.Request(
            action="lock", path=path, run_id="r1", holder="t@c", routing=dataclasses.asdict(where)
        ),
        check_mode=True,
    )
    assert Path(path).read_bytes() == before


def test_a_forced_take_over_waits_for_a_cutover_still_running(tmp_path: Path) -> None:
    """A killed controller leaves its lock; its cutover module may still be switching."""
    path = state_path(tmp_path)
    rs.execute(rs.Request(action="lock", path=path, run_id="killed", holder="a@ctl"))
    forced = rs.Request(action="lock", path=path, run_id="r2", holder="b@ctl", force=True)
    with rs.cutover_in_progress(path):
        assert rs.cutover_running(path) == str(os.getpid())
        with pytest.raises(
            rs.LockHeldError, match=rf"still running on this host \(pid {os.getpid()}\)"
        ):
            rs.execute(forced)
    assert rs.cutover_running(path) is None
    taken = rs.execute(forced)
    assert taken["lock"]["run_id"] == "r2" and taken["stolen_from"]["run_id"] == "killed"


def test_a_file_without_the_live_entry_or_no_file_names_no_slot(tmp_path: Path) -> None:
    """A proxy never set up (no file), one whose file lacks the line, or one pointing at
    another app: no routed slot, never a guess."""
    upstream, live_map = tmp_path / "app.upstream", tmp_path / "app-live.map"
    assert ro.nginx_live_slot(str(upstream)) is None
    assert ro.haproxy_live_slot(str(live_map), "app") is None
    upstream.write_text("upstream app_live { server 127.0.0.1:4001; }\n")
    live_map.write_text("live other_blue\n")
    assert ro.nginx_live_slot(str(upstream)) is None
    assert ro.haproxy_live_slot(str(live_map), "app") is None
    live_map.write_text("live app_purple\n")
    assert ro.haproxy_live_slot(str(live_map), "app") is None
