"""What Ansible users' own tools say about the collection: the README's install instructions as
written, Galaxy's importer on the built tarball, antsibull-docs on its documentation (and the
docs site), ansible-builder on the execution environment example, antsibull-changelog on a
release. Each runs the real tool (pinned in requirements.txt), offline."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from tests.tools.checkout import copy_checkout

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTALLED = REPO / "build" / "collections" / "ansible_collections" / "beamops" / "release"
VERSION = str(yaml.safe_load((REPO / "galaxy.yml").read_text())["version"])
TARBALL = f"beamops-release-{VERSION}.tar.gz"
# Development-only trees a copy of the checkout leaves out (the rest is what git tracks).


def tool(
    argv: List[str], cwd: Path, home: Optional[Path] = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """ARGV with the toolchain first on PATH; a HOME of its own when given (as a new user's)."""
    environment: Dict[str, str] = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **env,
    }
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        environment["HOME"] = str(home)
        environment.pop("ANSIBLE_COLLECTIONS_PATH", None)
        environment.pop("ANSIBLE_CONFIG", None)
    return subprocess.run(
        argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900, check=False
    )


def build_tarball(output: Path) -> Path:
    built = tool([str(BIN / "ansible-galaxy"), "collection", "build", "--force",
                  "--output-path", str(output)], REPO)  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    return output / TARBALL


def readme_installation() -> tuple[str, str]:
    """The README's Installation section: its shell block and its requirements.yml block."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Installation", 1)[1].split("\n## ", 1)[0]
    shell = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    requirements = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert len(shell) == 1 and len(requirements) == 1, section
    assert "ansible-galaxy collection install -r requirements.yml" in section
    return shell[0], requirements[0]


def test_the_readme_s_installation_works_as_written(tmp_path: Path) -> None:
    """Both ways the README gives, each for a new user (own HOME, no collection path set):
    the collection lands in ~/.ansible/collections, and ansible-doc and ansible-playbook find
    its modules and playbooks by name."""
    shell, requirements = readme_installation()
    clone = copy_checkout(tmp_path / "clone")
    first = tool(["bash", "-euo", "pipefail", "-c", shell], clone, tmp_path / "home1")
    assert first.returncode == 0, first.stdout + first.stderr
    # The second way: the tarball copied into a project of the user's own.
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(clone / "dist" / TARBALL, project / TARBALL)
    (project / "requirements.yml").write_text(requirements)
    second = tool([str(BIN / "ansible-galaxy"), "collection", "install", "-r", "requirements.yml"],
                  project, tmp_path / "home2")  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    for home in ("home1", "home2"):
        root = tmp_path / home / ".ansible/collections/ansible_collections/beamops/release"
        assert (
            json.loads((root / "MANIFEST.json").read_text())["collection_info"]["version"]
            == VERSION
        )
        doc = tool([str(BIN / "ansible-doc"), "beamops.release.release_state"],
                   tmp_path, tmp_path / home)  # fmt: skip
        assert doc.returncode == 0 and "repair" in doc.stdout, doc.stderr
        syntax = tool([str(BIN / "ansible-playbook"), "beamops.release.deploy", "--syntax-check",
                       "-i", "localhost,"], tmp_path, tmp_path / home)  # fmt: skip
        assert syntax.returncode == 0, syntax.stdout + syntax.stderr


def test_galaxy_s_importer_accepts_the_tarball_given_its_repository_url(tmp_path: Path) -> None:
    """galaxy-importer (Galaxy's own import checks: metadata, docs via ansible-doc, every role's
    README, ansible-lint) on the built tarball. Galaxy requires galaxy.yml's `repository`, the
    project's public URL, which is its publisher's to set (galaxy.yml omits it rather than
    invent one): the tarball is refused for that one field, and accepted with it."""
    tarball = build_tarball(tmp_path)
    importer = [str(BIN / "python"), "-m", "galaxy_importer.main"]
    if not yaml.safe_load((REPO / "galaxy.yml").read_text()).get("repository"):
        refused = tool([*importer, str(tarball)], tmp_path)
        output = refused.stdout + refused.stderr
        assert "Invalid collection metadata. 'repository' is required" in output, output
        errors = [line for line in output.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1, errors
        tarball, original = tmp_path / "with-url" / TARBALL, tarball
        with_repository(original, tarball, "https://git.example.org/beamops/release")
    accepted = tool([*importer, str(tarball)], tarball.parent)
    output = accepted.stdout + accepted.stderr
    assert accepted.returncode == 0, output
    assert "Importer processing completed successfully" in output, output
    assert "ansible-lint run complete" in output and "Getting doc strings via ansible-doc" in output
    noise = [line for line in output.splitlines() if line.startswith(("ERROR", "WARNING"))]
    assert noise == [], noise


def with_repository(source: Path, target: Path, url: str) -> None:
    """A copy of the tarball whose MANIFEST.json names a repository (FILES.json, which holds
    every other file's checksum, is untouched)."""
    target.parent.mkdir(parents=True)
    with tarfile.open(source) as original, tarfile.open(target, "w:gz") as copy:
        for member in original.getmembers():
            data = original.extractfile(member) if member.isfile() else None
            if member.name == "MANIFEST.json" and data is not None:
                manifest = json.loads(data.read())
                manifest["collection_info"]["repository"] = url
                content = json.dumps(manifest, indent=4).encode()
                member.size = len(content)
                copy.addfile(member, io.BytesIO(content))
            else:
                copy.addfile(member, data)


def test_antsibull_docs_finds_nothing_to_fix() -> None:
    """Markup, references between options and plugins, and every role's argument specs."""
    collections = str(REPO / "build" / "collections")
    argv = [str(BIN / "antsibull-docs"), "lint-collection-docs", "--plugin-docs", "."]
    lint = tool(argv, INSTALLED, ANSIBLE_COLLECTIONS_PATH=collections)
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr


def test_make_docs_builds_the_collection_s_site() -> None:
    """`make docs`: antsibull-docs' pages of every module, plugin, role and playbook, built by
    Sphinx with warnings as errors, into build/docs/build/html."""
    built = tool(["make", "--no-print-directory", "docs"], REPO)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    html = REPO / "build" / "docs" / "build" / "html"
    assert (html / "index.html").exists()
    pages = {p.name for p in html.rglob("*.html")}
    for name in (
        "release_state_module.html",
        "slot_cutover_module.html",
        "systemd_env_filter.html",
        "bluegreen_role.html",
        "run_guard_role.html",
    ):
        assert name in pages, sorted(pages)  # fmt: skip


def test_ansible_builder_creates_the_execution_environment_s_build_context(tmp_path: Path) -> None:
    """examples/awx/execution-environment.yml (schema 3): the build context with the
    collection's tarball and its install; the collection adds no Python or system package."""
    example = REPO / "examples" / "awx"
    for name in ("execution-environment.yml", "requirements.yml"):
        shutil.copy(example / name, tmp_path / name)
    requirements = yaml.safe_load((tmp_path / "requirements.yml").read_text())
    assert requirements["collections"][0]["name"] == f"collections/{TARBALL}"
    build_tarball(tmp_path)
    created = tool([str(BIN / "ansible-builder"), "create", "-f", "execution-environment.yml",
                    "-c", "context"], tmp_path)  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    context = tmp_path / "context"
    assert (context / "_build" / "collections" / TARBALL).exists()
    # Containerfile for podman, Dockerfile when ansible-builder settles on docker.
    (recipe,) = [context / n for n in ("Containerfile", "Dockerfile") if (context / n).exists()]
    containerfile = recipe.read_text()
    assert "ansible-galaxy collection install" in containerfile
    assert "ansible-core==2.19.14" in containerfile
    introspected = tool([str(BIN / "ansible-builder"), "introspect", "--sanitize",
                         str(REPO / "build" / "collections")], tmp_path)  # fmt: skip
    assert introspected.returncode == 0, introspected.stderr
    assert "python: []" in introspected.stdout and "system: []" in introspected.stdout


def test_a_release_of_the_changelog_lists_each_change_once(tmp_path: Path) -> None:
    """`antsibull-changelog release` (`make changelog`) in a copy: CHANGELOG.rst holds every
    fragment's entry exactly once, and the fragments are consumed."""
    clone = copy_checkout(tmp_path / "clone")
    fragments = sorted((clone / "changelogs" / "fragments").glob("*.yml"))
    # Entries of the `trivial` section stay out of CHANGELOG.rst by design.
    entries = [
        " ".join(str(entry).split())
        for fragment in fragments
        for name, section in yaml.safe_load(fragment.read_text()).items()
        if name != "trivial"
        for entry in section
    ]
    assert entries
    lint = tool([str(BIN / "antsibull-changelog"), "lint"], clone)
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr
    released = tool([str(BIN / "antsibull-changelog"), "release"], clone)
    assert released.returncode == 0, released.stdout + released.stderr
    text = " ".join((clone / "CHANGELOG.rst").read_text().split())
    assert f"v{VERSION}" in text
    for entry in entries:
        plain = entry.replace("``", "")
        assert text.replace("``", "").count(plain[:80]) == 1, plain[:80]
    assert list((clone / "changelogs" / "fragments").glob("*.yml")) == []
