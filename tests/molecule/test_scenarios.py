"""Runs every molecule scenario (real test hosts, real systemd) as one pytest test each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))

pytestmark = pytest.mark.hosts


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
    with log.open("w") as out:
        result = subprocess.run(
            [str(BIN / "molecule"), "test", "-s", scenario],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1500,
            check=False,
        )
    tail = "\n".join(log.read_text().splitlines()[-80:])
    assert result.returncode == 0, f"molecule test -s {scenario} failed (full log: {log}):\n{tail}"
