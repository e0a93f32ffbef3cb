"""Drive the collection's playbooks the way an operator does, and read what they did.

Shared by the molecule verifiers, the demo and the benchmarks: ansible-playbook runs as a
subprocess against a real inventory; the PLAY RECAP is parsed per host.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
RELEASES = REPO / "build" / "releases"
# The Ansible that runs the playbooks: this venv's, or another ansible-core's (the oldest-core
# scenario points BEAMOPS_ANSIBLE_BIN at the oldest release requires_ansible claims).
BIN = Path(os.environ.get("BEAMOPS_ANSIBLE_BIN") or Path(sys.executable).parent)
RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass
class PlaybookRun:
    rc: int
    output: str
    seconds: float

    @property
    def recap(self) -> Dict[str, Dict[str, int]]:
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP.finditer(self.output)
        }

    def changed_tasks(self) -> List[str]:
        """The TASK headers under which a host reported `changed`: what a no-op run did."""
        found, task = [], ""
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                task = line.rstrip(" *")
            elif line.startswith("changed:") and task:
                found.append(f"{task} {line}")
        return found

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def release_args(version: str) -> List[str]:
    """The three required variables for a sample release built into build/releases."""
    tarball = RELEASES / f"sample_app-{version}.tar.gz"
    sha256 = (RELEASES / f"sample_app-{version}.tar.gz.sha256").read_text().split()[0]
    return [
        "-e",
        f"beamops_release_version={version}",
        "-e",
        f"beamops_release_src={tarball}",
        "-e",
        f"beamops_release_sha256={sha256}",
    ]


def ansible_env(collections_path: Path = REPO / "build" / "collections") -> Dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }


def playbook_command(inventories: Sequence[str], playbook: str, *args: str) -> List[str]:
    """ansible-playbook for playbooks/<playbook>.yml, a path, or an installed FQCN."""
    if playbook.endswith(".yml") or playbook.startswith("beamops.release."):
        path = playbook
    else:
        path = str(REPO / "playbooks" / f"{playbook}.yml")
    cmd = [str(BIN / "ansible-playbook"), path]
    for inventory in inventories:
        cmd += ["-i", inventory]
    return [*cmd, *args]


def run_playbook(
    inventories: Sequence[str],
    playbook: str,
    *args: str,
    timeout: float = 600,
    collections_path: Optional[Path] = None,
) -> PlaybookRun:
    """Run playbooks/<playbook>.yml, a path, or an installed FQCN (beamops.release.deploy)."""
    started = time.monotonic()
    result = subprocess.run(
        playbook_command(inventories, playbook, *args),
        cwd=REPO,
        env=ansible_env(collections_path or REPO / "build" / "collections"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return PlaybookRun(
        result.returncode, result.stdout + result.stderr, round(time.monotonic() - started, 1)
    )


class BackgroundRun:
    """A playbook run going on while a test injects a fault (kills it, cuts a host off)."""

    def __init__(self, inventories: Sequence[str], playbook: str, *args: str) -> None:
        self.started = time.monotonic()
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by finish)
        # Its own session: a kill takes ansible-playbook and all its workers, as kill -9 of
        # the operator's terminal would.
        self.process = subprocess.Popen(
            playbook_command(inventories, playbook, *args),
            cwd=REPO,
            env=ansible_env(),
            start_new_session=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def finish(self, timeout: float = 600) -> PlaybookRun:
        rc = self.process.wait(timeout=timeout)
        self.log.seek(0)
        output = self.log.read()
        self.log.close()
        return PlaybookRun(rc, output, round(time.monotonic() - self.started, 1))


def run_module(inventories: Sequence[str], pattern: str, module: str, args: str) -> PlaybookRun:
    """An ad-hoc module run (e.g. to take a deploy lock as another operator would)."""
    cmd = [str(BIN / "ansible"), pattern, "-m", module, "-a", args]
    for inventory in inventories:
        cmd += ["-i", inventory]
    started = time.monotonic()
    result = subprocess.run(
        cmd, cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=120, check=False
    )
    return PlaybookRun(
        result.returncode, result.stdout + result.stderr, round(time.monotonic() - started, 1)
    )
