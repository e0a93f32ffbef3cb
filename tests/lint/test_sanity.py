"""`ansible-test sanity` on the collection as Galaxy would see it: every test green.

ansible-test wants the collection under ansible_collections/<namespace>/<name>/, so the tracked
files are copied into such a tree (a git repository of its own, which ansible-test lists files
from). `--venv` makes ansible-test build its own virtual environments; their pip bootstrap
script comes from tests/tools/ansible_test_get_pip.py, placed where ansible-test caches it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.tools.checkout import copy_checkout

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STAND_IN = REPO / "tests" / "tools" / "ansible_test_get_pip.py"
# ansible-test's own words when its bootstrap script is missing: where it wants it.
MISSING_BOOTSTRAP = re.compile(r"saved to: (\S+get_pip_[0-9_]+\.py)")


def collection_tree(root: Path) -> Path:
    tree = root / "ansible_collections" / "beamops" / "release"
    tree.mkdir(parents=True)
    copy_checkout(tree)
    author = ["-c", "user.name=beamops", "-c", "user.email=beamops@localhost"]
    for git in (["init", "-q"], ["add", "-A"], [*author, "commit", "-qm", "sanity"]):
        subprocess.run(["git", *git], cwd=tree, check=True, capture_output=True)
    return tree


def sanity(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(BIN / "ansible-test"), "sanity", "--venv", "--python", "3.11", "--color", "no"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip


def test_ansible_test_sanity_is_green(tmp_path: Path) -> None:
    tree = collection_tree(tmp_path)
    result = sanity(tree)
    wanted = MISSING_BOOTSTRAP.search(result.stdout + result.stderr)
    if wanted:  # first run on this machine: give ansible-test its bootstrap script, again
        Path(wanted.group(1)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(STAND_IN, wanted.group(1))
        result = sanity(tree)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    skipped = re.findall(r"Skipping sanity test \"?([\w-]+)\"?", output)
    assert "shellcheck" not in skipped, "install shellcheck (make deps) so that it runs"
