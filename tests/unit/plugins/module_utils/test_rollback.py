"""Rollback planning and locking, the on-host command's exit codes, and the host tools the
cutover module writes. Real state files and HTTP servers; systemctl and the proxy recorded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
from ansible_collections.beamops.release.plugins.module_utils import cutover as co
from ansible_collections.beamops.release.plugins.module_utils import host_tools
from ansible_collections.beamops.release.plugins.module_utils import release_state as rs
from ansible_collections.beamops.release.plugins.module_utils import rollback as rb
from ansible_collections.beamops.release.plugins.modules import slot_rollback

from tests.unit.conftest import ScriptedServer
from tests.unit.plugins.module_utils.test_cutover import (
    READY,
    Commands,
    RecordingProxy,
    make_settings,
    slots,
)
from tests.unit.plugins.modules.test_entry_points import run

__all__ = ["slots"]  # the fixture, re-used


def activate(settings: co.Settings, version: str, slot: str, run_id: str | None = None) -> None:
    for action, fields in (
        ("activate", {"slot": slot, "version": version}),
        ("mark", {"version": version, "status": "good"}),
    ):
        rs.execute(rs.Request(action=action, path=settings.state_path, run_id=run_id, **fields))  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, slots: Dict[str, ScriptedServer]) -> co.Settings:
    made = make_settings(tmp_path, slots)
    activate(made, "0.1.0", "blue")
    activate(made, "0.2.0", "green")
    return made


def test_the_plan_goes_to_the_previous_good_release_in_the_idle_slot(
    settings: co.Settings,
) -> None:
    plan = rb.make_plan(settings, None, Commands({("systemctl", "is-active"): (3, "")}))
    assert (plan.version, plan.slot, plan.from_slot, plan.from_version) == (
        "0.1.0", "blue", "green", "0.2.0")  # fmt: skip
    assert not plan.warm and not plan.configured
    assert "start it through its gate" in plan.describe()


def test_a_slot_still_draining_is_not_warm(settings: co.Settings) -> None:
    slots_dir = Path(settings.base_dir) / "slots"
    slots_dir.mkdir()
    os.symlink(Path(settings.base_dir) / "releases" / "0.1.0", slots_dir / "blue")
    timer = ("systemctl", "is-active", "beamops-retire-demo-blue.timer")
    draining = Commands({timer: (0, "active\nactive\n")})
    plan = rb.make_plan(settings, None, draining)
    assert not plan.warm and "start it through its gate" in plan.describe()


def test_a_warm_slot_makes_the_plan_a_switch(settings: co.Settings) -> None:
    slots_dir = Path(settings.base_dir) / "slots"
    slots_dir.mkdir()
    os.symlink(Path(settings.base_dir) / "releases" / "0.1.0", slots_dir / "blue")
    plan = rb.make_plan(settings, None, Commands())
    assert plan.warm and "switch to the warm slot" in plan.describe()


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("9.9.9", r"rollback_to=9\.9\.9 is not installed here \(installed: 0\.1\.0, 0\.2\.0\)"),
    ],
)
def test_impossible_rollbacks_are_refused(settings: co.Settings, to: str, message: str) -> None:
    with pytest.raises(co.CutoverError, match=message):
        rb.make_plan(settings, to, Commands())


def test_a_release_already_active_is_a_no_op_not_an_error(settings: co.Settings) -> None:
    """rollback_to=X across a fleet: hosts already on X have nothing to do."""
    plan = rb.make_plan(settings, "0.2.0", Commands())
    assert plan.noop and plan.describe() == "0.2.0 is already active on slot green: nothing to do"
    out = rb.roll_back(settings, plan, run_id="r0", holder="alice@here", run=Commands())
    assert (out.result, out.changed) == ("unchanged", False)
    assert rs.read_state(settings.state_path)[0]["lock"] is None


def test_nothing_to_roll_back_to_is_said(tmp_path: Path, slots: Dict[str, ScriptedServer]) -> None:
    fresh = make_settings(tmp_path, slots)
    activate(fresh, "0.1.0", "blue")
    with pytest.raises(co.CutoverError, match="nothing to roll back to"):
        rb.make_plan(fresh, None, Commands())


def test_roll_back_locks_activates_marks_the_release_left_bad_and_unlocks(
    settings: co.Settings, slots: Dict[str, ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    slots["blue"].script("/health/ready", [READY])
    Path(settings.config_dir, "blue.env").write_text("PORT=1\n")
    proxy = RecordingProxy(settings)
    monkeypatch.setattr(co, "make_proxy", lambda s, run: proxy)
    commands = Commands({("systemctl", "is-active"): (3, "")})
    plan = rb.make_plan(settings, None, commands)
    out = rb.roll_back(settings, plan, run_id="r1", holder="alice@here", run=commands)
    assert out.result == "ok", out.msg
    state = rs.read_state(settings.state_path)[0]
    assert state["active"] is not None and state["active"]["version"] == "0.1.0"
    assert state["releases"]["0.2.0"]["status"] == "bad"
    assert state["releases"]["0.2.0"]["reason"] == "rolled back by alice@here"
    assert state["lock"] is None
    assert [(p, f) for p, f, _unused in proxy.routes] == [("blue", "green")]


def test_roll_back_refuses_a_host_locked_by_another_run(
    settings: co.Settings, slots: Dict[str, ScriptedServer]
) -> None:
    rs.execute(rs.Request(action="lock", path=settings.state_path, run_id="x", holder="bob@ci"))
    Path(settings.config_dir, "blue.env").write_text("PORT=1\n")
    plan = rb.make_plan(settings, None, Commands({("systemctl", "is-active"): (3, "")}))
    with pytest.raises(rs.LockHeldError, match="bob@ci"):
        rb.roll_back(settings, plan, run_id="r2", holder="alice@here", run=Commands())
    assert rs.read_state(settings.state_path)[0]["lock"]["holder"] == "bob@ci"  # type: ignore[index]


def test_a_cold_slot_without_configuration_is_refused_before_the_lock(
    settings: co.Settings,
) -> None:
    plan = rb.make_plan(settings, None, Commands({("systemctl", "is-active"): (3, "")}))
    with pytest.raises(co.CutoverError, match="has no configuration on this host"):
        rb.roll_back(settings, plan, run_id="r3", holder="alice@here", run=Commands())
    assert rs.read_state(settings.state_path)[0]["lock"] is None


def test_the_command_plans_and_refuses_with_exit_codes(
    settings: co.Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    co.save_settings(settings)
    assert rb.main(["--config-dir", settings.config_dir, "--plan"], prog="demo-rollback") == 0
    assert "demo-rollback: roll back from 0.2.0 (slot green) to 0.1.0" in capsys.readouterr().out
    assert rb.main(["--config-dir", settings.config_dir, "7.7.7"], prog="demo-rollback") == 2
    assert "refused: rollback_to=7.7.7 is not installed" in capsys.readouterr().err
    assert rb.main(["--config-dir", "/nonexistent"], prog="demo-rollback") == 2
    assert "a deploy writes them" in capsys.readouterr().err


def test_host_tools_install_the_gate_the_package_and_a_working_command(tmp_path: Path) -> None:
    helper = tmp_path / "lib"
    commands = tmp_path / "bin"
    old = host_tools.COMMAND_DIR
    host_tools.COMMAND_DIR = str(commands)
    try:
        written = host_tools.install(str(helper), "demo", str(tmp_path / "etc"))
        assert host_tools.install(str(helper), "demo", str(tmp_path / "etc")) == []
    finally:
        host_tools.COMMAND_DIR = old
    assert str(helper / "health_probe.py") in written
    command = commands / "demo-rollback"
    assert command.stat().st_mode & 0o777 == 0o755
    # The command imports the copied package, not this checkout: run it with a bare Python.
    text = command.read_text().replace("#!/usr/bin/python3", f"#!{sys.executable}")
    command.write_text(text)
    found = subprocess.run(
        [sys.executable, "-I", str(command), "--help"], capture_output=True, text=True, check=False
    )
    assert found.returncode == 0, found.stderr
    assert "usage: demo-rollback [-h] --config-dir" not in found.stdout
    assert "Roll this host back to the previous good release" in found.stdout


def test_the_plan_follows_the_proxy_when_a_killed_run_left_the_state_behind(
    settings: co.Settings,
) -> None:
    """State: 0.2.0 on green. The proxy routes to blue, where a killed deploy put 0.1.0 live."""
    slots_dir = Path(settings.base_dir) / "slots"
    slots_dir.mkdir()
    os.symlink(Path(settings.base_dir) / "releases" / "0.1.0", slots_dir / "blue")
    Path(settings.nginx_upstream_file).write_text("# live slot: blue; fallback: green\n")
    plan = rb.make_plan(settings, None, Commands({("systemctl", "is-active"): (3, "")}))
    assert (plan.from_slot, plan.from_version, plan.slot, plan.version) == (
        "blue", "0.1.0", "green", "0.2.0")  # fmt: skip


def test_a_plain_rerun_finishes_an_interrupted_rollback_not_one_further_back(
    tmp_path: Path, slots: Dict[str, ScriptedServer]
) -> None:
    """Three good releases; a rollback to 0.2.0 was killed after it finished on the host
    (its lock stays, naming the target): the plain re-run keeps 0.2.0, it does not go on to
    0.1.0. Without such a lock, a plain rollback goes to the previous good release."""
    made = make_settings(tmp_path, slots)
    (Path(made.base_dir) / "releases" / "0.3.0").mkdir()
    rs.execute(rs.Request(action="register", path=made.state_path, version="0.3.0",
                          sha256="03" * 32))  # fmt: skip
    for version, slot in (("0.1.0", "blue"), ("0.2.0", "green"), ("0.3.0", "blue")):
        activate(made, version, slot)
    assert rb.make_plan(made, None, Commands()).version == "0.2.0"
    rs.execute(rs.Request(action="lock", path=made.state_path, run_id="dead-run",
                          holder="alice@ctl", purpose="rollback to 0.2.0"))  # fmt: skip
    activate(made, "0.2.0", "green", "dead-run")  # its orphaned module finished on the host
    plan = rb.make_plan(made, None, Commands())
    assert (plan.version, plan.noop) == ("0.2.0", True)
    assert plan.resumes == "the interrupted rollback of alice@ctl (run dead-run)"
    assert plan.describe().startswith("finishing the interrupted rollback of alice@ctl")
    # Named by the operator, the version wins over the lock's.
    assert rb.make_plan(made, "0.1.0", Commands()).resumes == ""


def test_a_deploy_lock_left_behind_is_no_rollback_target(settings: co.Settings) -> None:
    rs.execute(rs.Request(action="lock", path=settings.state_path, run_id="dead-run",
                          holder="alice@ctl", purpose="deploy 0.3.0"))  # fmt: skip
    plan = rb.make_plan(settings, None, Commands())
    assert (plan.version, plan.resumes) == ("0.1.0", "")


def test_a_kept_lock_names_the_target_and_the_controller_s_pid(
    settings: co.Settings, slots: Dict[str, ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """rollback.yml keeps the lock until its last play: one killed before then leaves it,
    naming where it was going and which ansible-playbook ran it."""
    slots["blue"].script("/health/ready", [READY])
    Path(settings.config_dir, "blue.env").write_text("PORT=1\n")
    monkeypatch.setattr(co, "make_proxy", lambda s, run: RecordingProxy(settings))
    commands = Commands({("systemctl", "is-active"): (3, "")})
    plan = rb.make_plan(settings, None, commands)
    out = rb.roll_back(settings, plan, run_id="r1", holder="alice@ctl", pid=4242,
                       keep_lock=True, run=commands)  # fmt: skip
    assert out.result == "ok", out.msg
    lock = rs.read_state(settings.state_path)[0]["lock"]
    assert lock is not None
    assert (lock["run_id"], lock["pid"], lock["purpose"]) == ("r1", 4242, "rollback to 0.1.0")


def test_a_re_run_with_nothing_left_to_do_still_ends_the_dead_run_s_lock(
    settings: co.Settings,
) -> None:
    rs.execute(rs.Request(action="lock", path=settings.state_path, run_id="dead-run",
                          holder="alice@ctl", purpose="rollback to 0.2.0", pid=1))  # fmt: skip
    plan = rb.make_plan(settings, None, Commands())
    assert plan.noop and plan.resumes
    out = rb.roll_back(settings, plan, run_id="r2", holder="alice@ctl", force_lock=True,
                       run=Commands())  # fmt: skip
    assert out.result == "unchanged"
    assert any("took over the forced deploy lock" in w for w in out.warnings), out.warnings
    assert rs.read_state(settings.state_path)[0]["lock"] is None


def test_the_module_plans_in_check_mode_and_refuses_without_a_deploy(
    settings: co.Settings, tmp_path: Path
) -> None:
    """slot_rollback's main() in this process: a plan only (nothing locked or started), and a
    host no deploy ever reached refused naming the host."""
    co.save_settings(settings)
    args = {"config_dir": settings.config_dir, "run_id": "r9", "holder": "ops@ci", "host": "web1"}
    planned = run(slot_rollback.main, {**args, "plan_only": True})
    assert planned["result"] == "planned" and planned["plan"]["version"] == "0.1.0"
    assert planned["lock"] is None and not planned["changed"]
    previewed = run(slot_rollback.main, {**args, "to": "0.2.0"}, check=True)
    assert previewed["result"] == "planned" and previewed["plan"]["noop"]
    nowhere = run(slot_rollback.main, {**args, "config_dir": str(tmp_path / "none")})
    assert nowhere["failed"] and nowhere["msg"].startswith("web1: ")
