"""The release_state module run for real by ansible-core (local connection, subprocesses):
argument handling, check mode, diff output, failure messages, a playbook that drives a deploy
and a rollback from registered results, the target-Python floor, and ansible-doc.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[4]
COLLECTIONS = REPO / "build" / "collections"
BIN = Path(sys.executable).parent
MODULE = "beamops.release.release_state"
# Oldest Python the module supports on managed hosts; tested when this machine has one.
PYTHON38 = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")


from ansible_collections.beamops.release.plugins.module_utils import (  # noqa: E402
    release_state as rs,
)
from ansible_collections.beamops.release.plugins.modules import (  # noqa: E402
    release_state as module_under_test,
)


def sha(version: str) -> str:
    return hashlib.sha256(version.encode()).hexdigest()


class Ansible:
    """Runs ansible / ansible-playbook against localhost with an isolated configuration."""

    def __init__(self, workdir: Path, python: Path = Path(sys.executable)) -> None:
        self.workdir = workdir
        config = workdir / "ansible.cfg"
        config.write_text(
            "[defaults]\n"
            f"collections_path = {COLLECTIONS}\n"
            f"interpreter_python = {python}\n"
            f"local_tmp = {workdir / 'ansible-local'}\n"
            "callback_result_format = json\n"
            "deprecation_warnings = False\n"
            "retry_files_enabled = False\n"
            "[connection]\n"
            "pipelining = True\n"
        )
        # Nothing from the caller's ANSIBLE_* environment (make exports some) may leak in.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        self.env.update(ANSIBLE_CONFIG=str(config), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        self.last_stderr = ""

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(a) for a in args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.last_stderr = done.stderr
        return done

    def module(self, args: dict[str, Any], *flags: str) -> tuple[str, str, dict[str, Any]]:
        """Ad-hoc module run: (status word such as CHANGED or FAILED!, stdout, the result)."""
        done = self.run(
            BIN / "ansible",
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            MODULE,
            "-a",
            json.dumps(args),
            *flags,
        )
        match = re.search(r"^localhost \| ([A-Z]+!?) => ", done.stdout, re.MULTILINE)
        assert match, f"no result in output:\n{done.stdout}\n{done.stderr}"
        result, _unused = json.JSONDecoder().raw_decode(done.stdout, match.end())
        assert isinstance(result, dict)
        # ansible exits 2 exactly when a host failed
        assert (done.returncode == 2) == (match.group(1) == "FAILED!"), done.stdout
        return match.group(1), done.stdout, result

    def playbook(self, text: str, extra_vars: dict[str, Any]) -> dict[str, Any]:
        """Run a playbook that writes its registered results to {{ results_file }}."""
        playbook = self.workdir / "playbook.yml"
        playbook.write_text(text)
        results_file = self.workdir / "results.json"
        extra_vars = {**extra_vars, "results_file": str(results_file)}
        done = self.run(
            BIN / "ansible-playbook", "-i", "localhost,", playbook, "-e", json.dumps(extra_vars)
        )
        assert done.returncode == 0, done.stdout + done.stderr
        results: dict[str, Any] = json.loads(results_file.read_text())
        return results


def prepare(base_dir: Path, *steps: tuple[str, dict[str, Any]]) -> Path:
    """Set up a state file in-process (fast); the module under test then runs on it."""
    state_file = base_dir / "release-state.json"
    for action, params in steps:
        rs.execute(rs.Request(action=action, path=str(state_file), **params))
    return state_file


def register(version: str) -> tuple[str, dict[str, Any]]:
    return ("register", {"version": version, "sha256": sha(version)})


@pytest.fixture
def ansible(tmp_path: Path) -> Ansible:
    return Ansible(tmp_path)


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    base = tmp_path / "app"
    (base / "releases").mkdir(parents=True)
    return base


def test_check_mode_predicts_the_change_and_writes_nothing(
    ansible: Ansible, base_dir: Path
) -> None:
    args = {"action": "register", "base_dir": str(base_dir), "version": "0.1.0"}
    args["sha256"] = sha("0.1.0")
    status, stdout, predicted = ansible.module(args, "--check")
    assert status == "CHANGED", stdout
    assert predicted["releases"][0]["version"] == "0.1.0"
    assert predicted["state_file"] == str(base_dir / "release-state.json")
    assert sorted(os.listdir(base_dir)) == ["releases"]  # no state file, no lock file

    status, stdout, applied = ansible.module(args)
    assert status == "CHANGED", stdout
    assert applied["state"]["schema"] == 1  # the state dict, not AnsibleModule's file facts
    # Timestamps may differ by a second between the two runs; the rest must match.
    assert [(r["version"], r["seq"], r["status"], r["sha256"]) for r in applied["releases"]] == [
        (r["version"], r["seq"], r["status"], r["sha256"]) for r in predicted["releases"]
    ]
    assert sorted(os.listdir(base_dir)) == [
        "release-state.json",
        "release-state.json.lock",
        "releases",
    ]


def test_diff_mode_shows_the_state_file_change(ansible: Ansible, base_dir: Path) -> None:
    state_file = prepare(base_dir, register("0.1.0"))
    mark = {"action": "mark", "path": str(state_file), "version": "0.1.0", "status": "good"}
    status, stdout, _unused = ansible.module(mark, "--diff")
    assert status == "CHANGED", stdout
    assert f"--- before: {state_file}" in stdout
    assert f"+++ after: {state_file}" in stdout
    assert '-      "status": "installed",' in stdout
    assert '+      "status": "good",' in stdout
    assert json.loads(state_file.read_text())["releases"]["0.1.0"]["status"] == "good"


def test_lock_held_by_another_run_fails_naming_holder(ansible: Ansible, base_dir: Path) -> None:
    lock = {"run_id": "run-A", "holder": "alice@ctl", "purpose": "deploy 0.2.0"}
    state_file = prepare(base_dir, ("lock", lock))
    since = json.loads(state_file.read_text())["lock"]["since"]
    other = {"action": "lock", "base_dir": str(base_dir), "run_id": "run-B", "holder": "bob@ctl"}

    status, stdout, refused = ansible.module(other)
    assert status == "FAILED!", stdout
    assert refused["msg"].startswith(
        f"deploy lock on {state_file} is held by alice@ctl (deploy 0.2.0) since {since} ("
    )
    assert refused["msg"].endswith("run run-A; wait for it or run with force (or stale_after) "
                                   "to take it over")  # fmt: skip
    assert refused["lock"]["holder"] == "alice@ctl"
    assert json.loads(state_file.read_text())["lock"]["run_id"] == "run-A"

    status, stdout, stolen = ansible.module({**other, "force": True})
    assert status == "CHANGED", stdout
    assert stolen["stolen_from"]["run_id"] == "run-A"
    assert "[WARNING]: took over the forced deploy lock" in stdout + ansible.last_stderr
    assert json.loads(state_file.read_text())["lock"]["run_id"] == "run-B"


FAILURES_PLAYBOOK = """
- name: Arguments the module must refuse, each naming the parameter
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Slot outside its choices
      beamops.release.release_state:
        {action: activate, base_dir: "{{ base_dir }}", version: 0.1.0, slot: purple}
      register: choices
      ignore_errors: true
    - name: Version that would escape releases/
      beamops.release.release_state:
        {action: register, base_dir: "{{ base_dir }}", version: ../evil, sha256: "{{ sha }}"}
      register: version
      ignore_errors: true
    - name: Mark without status
      beamops.release.release_state: {action: mark, base_dir: "{{ base_dir }}", version: 0.1.0}
      register: required_if
      ignore_errors: true
    - name: Neither base_dir nor path
      beamops.release.release_state: {action: read}
      register: no_path
      ignore_errors: true
    - name: Mark a version never registered
      beamops.release.release_state:
        {action: mark, base_dir: "{{ base_dir }}", version: 9.9.9, status: good}
      register: unknown
      ignore_errors: true
    - name: Hand the results to the test
      ansible.builtin.copy:
        dest: "{{ results_file }}"
        content: "{{ {'choices': choices, 'version': version, 'required_if': required_if,
                      'no_path': no_path, 'unknown': unknown} | to_json }}"
        mode: "0644"
"""


def test_bad_arguments_fail_naming_the_parameter(ansible: Ansible, base_dir: Path) -> None:
    results = ansible.playbook(FAILURES_PLAYBOOK, {"base_dir": str(base_dir), "sha": sha("x")})
    expected = {
        "choices": "value of slot must be one of: blue, green, got: purple",
        "version": "version must be a non-empty release version",
        "required_if": "action is mark but all of the following are missing: status",
        "no_path": "one of the following is required: base_dir, path",
        "unknown": "release 9.9.9 is not registered",
    }
    for task, message in expected.items():
        assert results[task]["failed"] is True, task
        assert message in results[task]["msg"], (task, results[task]["msg"])
    # Only the unknown-version task got past argument checks: it locked, read, and wrote nothing.
    assert sorted(os.listdir(base_dir)) == ["release-state.json.lock", "releases"]


PLAYBOOK = """
- name: Deploy twice, find the second release bad, roll back
  hosts: localhost
  connection: local
  gather_facts: false
  module_defaults:
    beamops.release.release_state:
      base_dir: "{{ base_dir }}"
      run_id: pb-1
  tasks:
    - {name: Lock, beamops.release.release_state: {action: lock, holder: ci@ctl}, register: lock}
    - name: Register 0.1.0
      beamops.release.release_state: {action: register, version: 0.1.0, sha256: "{{ sha1 }}"}
      register: reg1
    - name: Activate 0.1.0 in the idle slot
      beamops.release.release_state:
        {action: activate, slot: "{{ reg1.idle_slot }}", version: 0.1.0}
    - name: Mark 0.1.0 good
      beamops.release.release_state: {action: mark, version: 0.1.0, status: good}
    - name: Register 0.2.0
      beamops.release.release_state: {action: register, version: 0.2.0, sha256: "{{ sha2 }}"}
      register: reg2
    - name: Activate 0.2.0 in the idle slot
      beamops.release.release_state:
        {action: activate, slot: "{{ reg2.idle_slot }}", version: 0.2.0}
    - name: The gate fails
      beamops.release.release_state:
        {action: mark, version: 0.2.0, status: bad, reason: readiness gate on green}
      register: bad
    - name: Roll back to the candidate, in the slot that still holds it
      beamops.release.release_state:
        action: activate
        slot: "{{ bad.previous.slot }}"
        version: "{{ bad.rollback_candidate }}"
        event: rollback
        msg: "{{ bad.releases | selectattr('status', 'eq', 'bad') | map(attribute='reason')
                 | first }}"
      register: rollback
    - name: Record the failure
      beamops.release.release_state:
        {action: record_event, event: deploy, result: failed, version: 0.2.0, slot: green,
         msg: "deploy failed: readiness gate on green"}
    - name: Preview a prune
      beamops.release.release_state: {action: prune, keep: 1}
      check_mode: true
      register: prune
    - {name: Unlock, beamops.release.release_state: {action: unlock}, register: unlock}
    - name: Read
      beamops.release.release_state: {action: read}
      register: final
    - name: Hand the results to the test
      ansible.builtin.copy:
        dest: "{{ results_file }}"
        content: "{{ {'reg1': reg1, 'bad': bad, 'rollback': rollback, 'prune': prune,
                      'unlock': unlock, 'final': final} | to_json }}"
        mode: "0644"
"""


def test_playbook_drives_deploy_and_rollback_from_registered_results(
    ansible: Ansible, base_dir: Path
) -> None:
    for version in ("0.1.0", "0.2.0"):
        (base_dir / "releases" / version).mkdir()
    extra = {"base_dir": str(base_dir), "sha1": sha("0.1.0"), "sha2": sha("0.2.0")}
    results = ansible.playbook(PLAYBOOK, extra)

    assert results["reg1"]["idle_slot"] == "blue"
    assert (results["bad"]["active_slot"], results["bad"]["active_version"]) == ("green", "0.2.0")
    assert results["bad"]["rollback_candidate"] == "0.1.0"

    rollback = results["rollback"]
    assert (rollback["active_slot"], rollback["active_version"]) == ("blue", "0.1.0")
    assert rollback["previous"]["version"] == "0.2.0"
    assert rollback["state"]["history"][-1]["msg"] == "readiness gate on green"
    assert rollback["state"]["history"][-1]["event"] == "rollback"

    prune = results["prune"]
    assert prune["changed"] is False  # 0.2.0 newest+previous, 0.1.0 active+last good
    assert prune["kept_reasons"] == {
        "0.2.0": ["recent", "previous"],
        "0.1.0": ["active", "last_good"],
    }

    assert results["unlock"]["changed"] is True
    final = results["final"]
    assert final["changed"] is False and final["lock"] is None
    assert [(r["version"], r["status"]) for r in final["releases"]] == [
        ("0.1.0", "good"),
        ("0.2.0", "bad"),
    ]
    assert final["state"]["history"][-2]["msg"] == "deploy failed: readiness gate on green"
    assert {e["run_id"] for e in final["state"]["history"]} == {"pb-1"}
    on_disk = json.loads((base_dir / "release-state.json").read_text())
    assert on_disk == final["state"]
    assert sorted(os.listdir(base_dir / "releases")) == ["0.1.0", "0.2.0"]


@pytest.mark.skipif(not PYTHON38.exists(), reason=f"{PYTHON38} not installed")
def test_module_runs_on_python_38_hosts(tmp_path: Path, base_dir: Path) -> None:
    prepare(base_dir, register("0.1.0"))
    # A wrapper proves the module really ran under 3.8 (and not a fallback interpreter).
    marker = tmp_path / "ran-with-3.8"
    wrapper = tmp_path / "python38"
    wrapper.write_text(f'#!/bin/sh\ntouch {marker}\nexec {PYTHON38} "$@"\n')
    wrapper.chmod(0o755)
    ansible = Ansible(tmp_path, python=wrapper)
    status, stdout, result = ansible.module(
        {"action": "activate", "base_dir": str(base_dir), "version": "0.1.0", "slot": "blue"}
    )
    assert status == "CHANGED", stdout
    assert (result["active_slot"], result["idle_slot"]) == ("blue", "green")
    assert marker.exists()


def test_documentation_matches_the_argument_spec(ansible: Ansible) -> None:
    done = ansible.run(BIN / "ansible-doc", "--json", MODULE)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)[MODULE]
    options = doc["doc"]["options"]
    spec = module_under_test.ARGUMENT_SPEC
    assert sorted(options) == sorted(spec)
    for name, rules in spec.items():
        documented = options[name]
        assert documented["type"] == rules["type"], name
        assert documented.get("required", False) == rules.get("required", False), name
        assert documented.get("default") == rules.get("default"), name
        assert documented.get("choices") == rules.get("choices"), name
        assert documented.get("elements") == rules.get("elements"), name
    returned = doc["return"]
    for key in (
        "state",
        "active_slot",
        "active_version",
        "idle_slot",
        "previous",
        "last_good_version",
        "rollback_candidate",
        "releases",
        "lock",
    ):
        assert returned[key]["returned"] == "always", key
    assert doc["examples"].count(f"{MODULE}:") >= 8
