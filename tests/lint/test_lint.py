"""Linters as tests: a violation anywhere fails the suite, so the tree stays at zero warnings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.checkout import copy_checkout

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYTHON_TREES = ["plugins", "tests", "bench", "docs", "molecule", "examples"]


def run(cmd: list[str], home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **({"HOME": str(home)} if home else {}),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "build" / "collections"),
        # The example inventories' vault files are encrypted with this documented test password.
        "ANSIBLE_VAULT_PASSWORD_FILE": str(REPO / "tests" / "fixtures" / "example-vault-pass"),
    }
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def existing(paths: list[str]) -> list[str]:
    """The trees that hold Python files (mypy refuses a tree without any)."""
    return [p for p in paths if any((REPO / p).rglob("*.py"))]


@pytest.mark.parametrize(
    "cmd",
    [
        pytest.param(["ruff", "check"], id="ruff-check"),
        pytest.param(["ruff", "format", "--check"], id="ruff-format"),
    ],
)
def test_ruff(cmd: list[str]) -> None:
    result = run([str(BIN / cmd[0]), *cmd[1:], *existing(PYTHON_TREES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run([str(BIN / "mypy"), *existing(PYTHON_TREES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile_from_a_bare_checkout(tmp_path: Path) -> None:
    # As a contributor runs it right after cloning: no `make`, so no build/collections; ansible-lint
    # installs this checkout as beamops.release itself. An empty HOME: ~/.ansible/collections
    # (where molecule installs a copy) must not stand in for the checkout.
    checkout = copy_checkout(tmp_path / "checkout")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")},
        "HOME": str(tmp_path),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # The example inventories' vault files are encrypted with this documented test password.
        "ANSIBLE_VAULT_PASSWORD_FILE": str(checkout / "tests" / "fixtures" / "example-vault-pass"),
    }
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--profile", "production", "--nocolor"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "resolved_fqcn" not in output, output  # a module ansible-lint could not load
    assert re.search(r"Passed: 0 failure\(s\), 0 warning\(s\)", output), output


def test_collection_builds_and_installs(tmp_path: Path) -> None:
    """`ansible-galaxy collection build` yields a tarball that installs and lists our plugins."""
    built = run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "build",
            "--output-path",
            str(tmp_path),
            "--force",
        ]
    )
    assert built.returncode == 0, built.stdout + built.stderr
    tarballs = list(tmp_path.glob("beamops-release-*.tar.gz"))
    assert len(tarballs) == 1, built.stdout
    target = tmp_path / "installed"
    installed = run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "install",
            "--offline",
            "--force",
            "-p",
            str(target),
            str(tarballs[0]),
        ]
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    root = target / "ansible_collections" / "beamops" / "release"
    assert (root / "MANIFEST.json").exists(), installed.stdout
    for part in (
        "plugins/modules/health_check.py",
        "plugins/modules/release_state.py",
        "plugins/modules/haproxy_slot.py",
        "roles/bluegreen/tasks/main.yml",
        "playbooks/deploy.yml",
        "playbooks/rollback.yml",
        "playbooks/status.yml",
    ):
        assert (root / part).exists(), f"{part} missing from the built collection"
    assert (root / "LICENSE").read_text().startswith(" " * 20 + "GNU GENERAL PUBLIC LICENSE")
    # What a user runs, not the development tree: no tests, no example vaults beside the
    # test password that opens them, no toolchain.
    for leftover in (
        ".venv", "build", "tests", "molecule", "bench", "inventories", "Makefile", ".ci",
        ".gitignore", "requirements.txt", "constraints.txt", "ansible.cfg",
    ):  # fmt: skip
        assert not (root / leftover).exists(), f"{leftover} must not be packaged"
    manifest = json.loads((root / "MANIFEST.json").read_text())["collection_info"]
    assert manifest["license_file"] == "LICENSE"
    assert not any("example.invalid" in str(value) for value in manifest.values())


def test_generated_docs_are_current() -> None:
    """README.md's variable table and checks list, and every role's README."""
    result = run([sys.executable, "docs/gen_variables.py", "--check"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_example_inventories_decrypt_with_the_example_vault_password(environment: str) -> None:
    """The example secrets are really vault-encrypted, and resolve to what the roles expect."""
    vault = REPO / "inventories" / environment / "group_vars" / "beamops_app" / "vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    result = run(
        [
            str(BIN / "ansible-inventory"),
            "-i",
            f"inventories/{environment}",
            "--host",
            f"app1.{environment}.example.com",
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    host_vars = json.loads(result.stdout)
    assert len(host_vars["vault_release_cookie"]) >= 20
    assert host_vars["vault_secret_key_base"].startswith(environment)
    assert host_vars["beamops_release_cookie"] == "{{ vault_release_cookie }}"
    assert host_vars["beamops_secret_env"]["SECRET_KEY_BASE"] == "{{ vault_secret_key_base }}"
