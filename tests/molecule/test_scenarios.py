"""Runs every molecule scenario (real test hosts, real systemd) as one pytest test each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))

pytestmark = pytest.mark.hosts

# A scenario that runs far past its usual time is hung, not slow: stop it early so one hang
# cannot eat the suite's budget (measured runs: oldest-core 62 s, default 14 s; the largest,
# faults, 443 s).
TIMEOUT_S = {"default": 300, "oldest-core": 400}
TIMEOUT_DEFAULT_S = 1500


def run_killing_group(
    argv: list[str], env: dict[str, str], out: IO[str], timeout: int
) -> int | None:
    """Run argv in its own session; on timeout kill the whole group and return None.

    subprocess.run's timeout kills only molecule itself, which leaves a hung ansible-playbook
    (and its ssh children) running after the test has failed.
    """
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str) -> None:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "build" / "collections"),
        "ANSIBLE_FORCE_COLOR": "0",
        "NO_COLOR": "1",
    }
    log = REPO / "build" / f"molecule-{scenario}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    timeout = TIMEOUT_S.get(scenario, TIMEOUT_DEFAULT_S)
    with log.open("w") as out:
        argv = [str(BIN / "molecule"), "test", "-s", scenario]
        returncode = run_killing_group(argv, env, out, timeout)
    tail = "\n".join(log.read_text().splitlines()[-80:])
    hung = f"molecule test -s {scenario} hung: killed after {timeout} s (full log: {log}):\n{tail}"
    assert returncode is not None, hung
    assert returncode == 0, f"molecule test -s {scenario} failed (full log: {log}):\n{tail}"
