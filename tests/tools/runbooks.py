"""Run the runbooks in docs/runbooks/ as written: each ```sh block whose first line says where
it runs (`# on the controller`, `# on the host`) is run, unchanged, with the page's variables
(INVENTORY, APP, HOST, VERSION, ...) in its environment. A test walks a page block by block,
checking what each did, and ends with `all_run()`: no block of the page may be left untested.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Set

from tests.tools import deploykit

DIRECTORY = deploykit.REPO / "docs" / "runbooks"
CONTROLLER = "on the controller"
HOST = "on the host"
# A fence may be indented (a block inside a list item): its lines share that indentation.
_BLOCK = re.compile(r"^( *)```sh\n(.*?)^\1```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Block:
    where: str
    script: str


@dataclass(frozen=True)
class Ran:
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def read_blocks(name: str) -> List[Block]:
    """The page's shell blocks in order; every one must say where it runs."""
    blocks = []
    for _indent, indented in _BLOCK.findall((DIRECTORY / name).read_text()):
        script = textwrap.dedent(indented)
        first = script.splitlines()[0] if script.strip() else ""
        where = first[2:] if first.startswith("# ") else ""
        assert where in (CONTROLLER, HOST), f"{name}: a block without '# on ...': {script!r}"
        blocks.append(Block(where, script))
    return blocks


class Runbook:
    """One page, run block by block against the scenario's hosts."""

    def __init__(self, name: str, variables: Mapping[str, str]) -> None:
        self.name = name
        self.blocks = read_blocks(name)
        self.variables = dict(variables)
        self.ran: Set[int] = set()

    def run(self, index: int, host: Any = None, **variables: str) -> Ran:
        """Block INDEX as written: on the controller (from the collection's root), or as root
        on HOST (a testinfra host). Keyword arguments add or replace variables."""
        block = self.blocks[index]
        env = {**self.variables, **variables}
        self.ran.add(index)
        if block.where == CONTROLLER:
            assert host is None, f"{self.name} block {index} runs on the controller"
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.script],
                cwd=deploykit.REPO,
                env={**deploykit.ansible_env(), **env},
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            ran = Ran(done.returncode, done.stdout, done.stderr)
        else:
            assert host is not None, f"{self.name} block {index} runs on a host: name it"
            exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
            done_on_host = host.run(f"{exports} bash -euo pipefail -c {shlex.quote(block.script)}")
            ran = Ran(done_on_host.rc, done_on_host.stdout, done_on_host.stderr)
        print(f"\n--- {self.name} block {index} ({block.where}): rc={ran.rc}")
        return ran

    def ok(self, index: int, host: Any = None, **variables: str) -> Ran:
        """run(), which must succeed."""
        ran = self.run(index, host, **variables)
        assert ran.rc == 0, f"{self.name} block {index} failed:\n{ran.output[-3000:]}"
        return ran

    def all_run(self) -> None:
        missing = sorted(set(range(len(self.blocks))) - self.ran)
        assert not missing, f"{self.name}: blocks {missing} were never run"


def pages() -> List[str]:
    return sorted(p.name for p in DIRECTORY.glob("*.md") if p.name != "README.md")


def release_variables(version: str) -> Dict[str, str]:
    """VERSION, TARBALL and SHA256 for a sample release in build/releases."""
    tarball = deploykit.RELEASES / f"sample_app-{version}.tar.gz"
    sha256 = (deploykit.RELEASES / f"sample_app-{version}.tar.gz.sha256").read_text().split()[0]
    return {"VERSION": version, "TARBALL": str(tarball), "SHA256": sha256}


def extended_inventory(directory: Path, inventory: str, extra: Mapping[str, str]) -> str:
    """INVENTORY's directory mirrored into DIRECTORY (symlinks; group_vars/<group>/ and
    host_vars/<host>/ directories as real directories of symlinks), plus the files EXTRA maps
    (relative path -> text): an operator's inventory with one more host or one vault file."""
    source = Path(inventory).parent
    directory.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        target = directory / entry.name
        if entry.name in ("group_vars", "host_vars") and entry.is_dir():
            target.mkdir()
            for item in entry.resolve().iterdir():
                if item.is_dir():
                    (target / item.name).mkdir()
                    for leaf in item.iterdir():
                        (target / item.name / leaf.name).symlink_to(leaf.resolve())
                else:
                    (target / item.name).symlink_to(item.resolve())
        else:
            target.symlink_to(entry.resolve())
    for relative, text in extra.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(directory)
