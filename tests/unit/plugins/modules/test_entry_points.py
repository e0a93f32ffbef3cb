"""Each module's main(), run in this process as Ansible runs it on a host (its arguments handed
over the way ansible-core's own unit-testing helper does), against real files in a temporary
tree: argument handling, check mode, the result, and how each failure is worded. The other
module tests run the same modules through ansible-core in subprocesses; these make the entry
points count in the coverage of plugins/.

Nothing here touches the machine's own services: a systemctl the controller cannot run (it is
not booted with systemd) is one of the failures checked."""

from __future__ import annotations

import contextlib
import copy
import grp
import hashlib
import io
import json
import os
import pwd
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Dict
from unittest import mock

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.beamops.release.plugins.module_utils import state_repair
from ansible_collections.beamops.release.plugins.modules import (
    proxy_setup,
    release_state,
    release_task,
    release_unpack,
    slot_config,
    slot_cutover,
    slot_rollback,
    systemd_units,
)

from tests.unit.plugins.module_utils.test_release_unpack import RELEASE, tarball


def run(main: Callable[[], None], args: Dict[str, Any], check: bool = False) -> Dict[str, Any]:
    """main() with ARGS (check mode when CHECK); its JSON result, `failed` when it failed."""
    printed = io.StringIO()
    internal = {"_ansible_check_mode": check, "_ansible_diff": True}
    exits = pytest.raises(SystemExit)
    # AnsibleModule fills defaults into the spec it is given: each run gets its own copy, so
    # that the module's ARGUMENT_SPEC stays as written (the docs test compares it).
    module = sys.modules[main.__module__]
    spec = mock.patch.object(module, "ARGUMENT_SPEC", copy.deepcopy(module.ARGUMENT_SPEC))
    with patch_module_args({**args, **internal}), contextlib.redirect_stdout(printed), exits, spec:
        main()
    return dict(json.loads(printed.getvalue()))


# --------------------------------------------------------------------------- release_state
def test_release_state_reads_locks_publishes_and_refuses(tmp_path: Path) -> None:
    state = str(tmp_path / "release-state.json")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    read = run(release_state.main, {"action": "read", "path": state})
    assert read["msg"].startswith("no release state at") and not read["changed"]
    lock = {"action": "lock", "path": state, "run_id": "r1", "holder": "ops@ci",
            "metrics_dir": str(metrics), "app": "app"}  # fmt: skip
    taken = run(release_state.main, lock)
    assert taken["lock"]["run_id"] == "r1" and "diff" in taken
    assert "beamops_deploy_lock_held" in (metrics / "beamops_app_lock.prom").read_text()
    refused = run(release_state.main, {**lock, "run_id": "r2"})
    assert refused["failed"] and refused["lock"]["holder"] == "ops@ci"
    bad = run(release_state.main, {"action": "mark", "path": state, "version": "../x",
                                   "status": "good"})  # fmt: skip
    assert bad["failed"] and "version" in bad["msg"]
    not_a_directory = metrics / "beamops_app_lock.prom" / "sub"
    unlock = {"action": "unlock", "path": state, "run_id": "r1", "app": "app",
              "metrics_dir": str(not_a_directory)}  # fmt: skip
    freed = run(release_state.main, unlock)
    # Unlocked although the metrics could not be written (a warning says so).
    assert freed["lock"] is None and not freed.get("failed")
    assert not not_a_directory.exists()


def test_release_state_repair_asks_systemd_which_slots_run(tmp_path: Path) -> None:
    base = tmp_path / "opt"
    (base / "releases" / "1.0.0").mkdir(parents=True)
    (base / "slots").mkdir()
    state_repair.write_record(str(base / "releases" / "1.0.0"), "1.0.0", "a" * 64,
                              "2026-11-01T10:00:00Z")  # fmt: skip
    os.symlink(str(base / "releases" / "1.0.0"), str(base / "slots" / "blue"))
    upstream = tmp_path / "app.upstream"
    upstream.write_text("# live slot: blue; test\n")
    routing = {"proxy": "nginx", "app": "app", "nginx_upstream_file": str(upstream),
               "haproxy_map_file": "", "slots_dir": str(base / "slots")}  # fmt: skip
    result = run(release_state.main, {"action": "repair", "base_dir": str(base),
                                      "routing": routing, "run_id": "fix"})  # fmt: skip
    assert result["active_version"] == "1.0.0" and result["repair"]["rebuilt"]
    # This machine runs no app@ units: systemd (or its absence) says none runs.
    assert result["repair"]["slots"]["blue"] == {"version": "1.0.0", "running": False}


# --------------------------------------------------------------------------- proxy_setup
def test_proxy_setup_checks_the_proxy_is_installed_outside_check_mode(tmp_path: Path) -> None:
    args = {"proxy": "nginx", "nginx_site_file": str(tmp_path / "app.conf"),
            "nginx_upstream_file": str(tmp_path / "app.upstream"),
            "haproxy_map_file": str(tmp_path / "app-live.map"), "site": "server {}\n",
            "upstream": "upstream app_live {}\n"}  # fmt: skip
    if not os.path.exists("/usr/sbin/nginx"):
        missing = run(proxy_setup.main, args)
        assert missing["failed"] and "beamops_install_packages" in missing["msg"]
    preview = run(proxy_setup.main, args, check=True)
    assert preview["changed"] and str(tmp_path / "app.conf") in preview["written"]
    assert not (tmp_path / "app.conf").exists()
    wrong = run(
        proxy_setup.main,
        {
            **args,
            "proxy": "haproxy",
            "haproxy_cfg": "junk\n",
            "haproxy_app_file": str(tmp_path / "beamops.d" / "app.cfg"),
        },
    )
    assert wrong["failed"]  # haproxy -c refuses it, or HAProxy is not installed here


# --------------------------------------------------------------------------- release_unpack
def test_release_unpack_asks_for_the_tarball_then_installs_it(tmp_path: Path) -> None:
    src = tarball(tmp_path, RELEASE)
    args = {"app": "demo", "version": "1.0.0",
            "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            "base_dir": str(tmp_path / "opt"), "state_path": str(tmp_path / "opt" / "s.json"),
            "helper_dir": str(tmp_path / "helper")}  # fmt: skip
    asked = run(release_unpack.main, args)
    assert asked["needs_transfer"] and not asked["changed"]
    done = run(release_unpack.main, {**args, "src": str(src)})
    assert done["changed"] and done["installed"]
    assert (tmp_path / "opt" / "releases" / "1.0.0" / ".beamops-release.json").exists()
    clash = run(release_unpack.main, {**args, "src": str(src), "sha256": "b" * 64})
    assert clash["failed"] and "must never change content" in clash["msg"]


# --------------------------------------------------------------------------- slot_config
def test_slot_config_writes_shows_no_secret_and_asks_about_the_unit(tmp_path: Path) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    args = {"slot": "blue", "config_dir": str(tmp_path / "etc"), "state_dir": str(tmp_path / "var"),
            "app_user": user, "app_group": group, "env": {"GREETING": "hi"},
            "secret_env": {"SECRET_KEY_BASE": "s3cr3t-value"}, "cookie": "c" * 32,
            "unit": "app@blue.service"}  # fmt: skip
    (tmp_path / "etc").mkdir()
    written = run(slot_config.main, args)
    assert written["changed"] and written["unit_active"] is False
    assert "s3cr3t-value" not in json.dumps(written)
    secrets = tmp_path / "etc" / "blue.secrets.env"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    refused = run(slot_config.main, {**args, "env": {"BAD NAME": "x"}})
    assert refused["failed"] and refused["msg"].startswith("slot blue:")
    spinning = run(slot_config.main, {**args, "beam": {"busy_wait": "forever"}})
    assert spinning["failed"] and "beamops_beam_busy_wait: got 'forever'" in spinning["msg"]


# --------------------------------------------------------------------------- release_task
def test_release_task_reports_output_exit_and_timeout_without_secrets(tmp_path: Path) -> None:
    node = tmp_path / "node"
    # The node command's own arguments: --slot S --release V eval EXPR.
    node.write_text(
        "#!/bin/sh\necho \"$*\"\necho 'password is hunter2'\nfor a; do last=$a; done\n"
        '[ "$last" = sleep ] && sleep 5\n[ "$last" = fail ] && exit 3\nexit 0\n'
    )
    node.chmod(0o755)
    args = {"node_command": str(node), "slot": "green", "version": "1.2.0",
            "expression": "migrate", "secrets": {"DB": "hunter2"}}  # fmt: skip
    ok = run(release_task.main, args)
    assert not ok.get("failed") and "hunter2" not in json.dumps(ok)
    assert ok["output"][0] == "--slot green --release 1.2.0 eval migrate"
    failed = run(release_task.main, {**args, "expression": "fail"})
    assert failed.get("failed"), failed
    assert failed["rc"] == 3 and "hunter2" not in json.dumps(failed)
    slow = run(release_task.main, {**args, "expression": "sleep", "timeout": 1})
    assert slow["failed"] and slow["rc"] == 124
    preview = run(release_task.main, args, check=True)
    assert preview["msg"] == "would evaluate migrate" and "rc" not in preview


# --------------------------------------------------------------------------- systemd_units
def test_systemd_units_previews_then_says_which_systemctl_failed(tmp_path: Path) -> None:
    units = [{"name": "app@.service", "content": "[Service]\nExecStart=/bin/true\n"}]
    args = {"units": units, "directory": str(tmp_path), "running": []}
    preview = run(systemd_units.main, args, check=True)
    assert preview["changed"] and not (tmp_path / "app@.service").exists()
    bad = run(systemd_units.main, {**args, "units": [{"name": "../x", "content": ""}]})
    assert bad["failed"] and "bad unit names" in bad["msg"]
    unknown = run(systemd_units.main, {**args, "running": ["other.service"]})
    assert unknown["failed"] and "not in units" in unknown["msg"]
    written = run(systemd_units.main, args)
    # Written; then daemon-reload, which this machine (not booted with systemd) refuses.
    assert (tmp_path / "app@.service").exists()
    assert written.get("failed") is None or "systemctl daemon-reload failed" in written["msg"]
    again = run(systemd_units.main, args, check=True)
    assert again.get("changed") is False


# --------------------------------------------------------------------------- slot_cutover
def test_slot_cutover_refuses_bad_settings_naming_the_host(tmp_path: Path) -> None:
    args = {"app": "app", "slot": "green", "version": "1.0.0", "base_dir": str(tmp_path),
            "state_path": str(tmp_path / "s.json"), "config_dir": str(tmp_path / "etc"),
            "slot_ports": {"blue": 4001, "green": 4002}, "proxy": "nginx", "proxy_port": 80,
            "host": "web1"}  # fmt: skip
    refused = run(slot_cutover.main, args, check=True)
    assert refused["failed"] and refused["msg"].startswith("web1: ")
    assert refused["msg"].endswith("Traffic was not moved.")


# --------------------------------------------------------------------------- slot_rollback
def test_slot_rollback_without_a_deploy_says_so(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    args = {"config_dir": str(tmp_path / "etc"), "run_id": "r1", "holder": "ops@ci",
            "host": "web1"}  # fmt: skip
    refused = run(slot_rollback.main, args)
    assert refused["failed"] and refused["msg"].startswith("web1: ")
    assert refused["msg"].endswith("Nothing was changed.")
