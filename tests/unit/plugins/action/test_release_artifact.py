"""release_artifact, run by real Ansible on the controller (ad-hoc, local connection): a good
tarball passes, a missing one, a wrong checksum or a hostile member is refused naming the
variable, and a URL is downloaded once into the cache, renamed into place only when it
matches."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.beamops.release.plugins.action import release_artifact as action

from tests.unit.conftest import ScriptedServer
from tests.unit.plugins.module_utils.test_release_unpack import (
    RELEASE,
    add_file,
    tarball,
)

REPO = Path(__file__).resolve().parents[4]
BIN = REPO / ".venv" / "bin"


def run_action(args: Dict[str, Any]) -> Dict[str, Any]:
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "build" / "collections"),
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    }
    # One line per host: "localhost | SUCCESS => {...}" (or FAILED!).
    done = subprocess.run(
        [
            *(str(BIN / "ansible"), "localhost", "-o", "-c", "local", "-i", "localhost,"),
            *("-m", "beamops.release.release_artifact", "-a", json.dumps(args)),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("localhost |"))
    status, payload = line.split("=>", 1)
    result: Dict[str, Any] = json.loads(payload)
    result["failed"] = "FAILED" in status
    return result


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_good_local_tarball_passes_and_a_wrong_one_is_refused_by_name(tmp_path: Path) -> None:
    good = tarball(tmp_path, RELEASE)
    args = {"src": str(good), "sha256": sha(good).upper(), "app": "demo", "version": "1.0.0"}
    passed = run_action(args)
    assert not passed.get("failed"), passed
    assert passed["path"] == str(good) and passed["members"] == len(RELEASE)

    mismatch = run_action({**args, "sha256": "0" * 64})
    assert mismatch["failed"] and "Checksum mismatch for beamops_release_src" in mismatch["msg"]
    assert "No host was changed" in mismatch["msg"]

    missing = run_action({**args, "src": str(tmp_path / "nope.tar.gz")})
    assert missing["failed"] and "no such file on the controller" in missing["msg"]

    hostile = tarball(tmp_path, [*RELEASE, add_file("../../escaped")], name="hostile.tar.gz")
    refused = run_action({**args, "src": str(hostile), "sha256": sha(hostile)})
    assert refused["failed"] and "'../../escaped' would land outside" in refused["msg"]


def test_a_url_is_downloaded_once_and_only_a_matching_one_is_kept(
    tmp_path: Path, http_server: ScriptedServer
) -> None:
    good = tarball(tmp_path, RELEASE)
    url = http_server.script("/demo.tar.gz", [(200, good.read_bytes())])
    cache = tmp_path / "cache"
    args = {"src": url, "sha256": sha(good), "app": "demo", "version": "1.0.0"}
    first = run_action({**args, "cache_dir": str(cache)})
    assert not first.get("failed"), first
    assert first["downloaded"] and Path(first["path"]).read_bytes() == good.read_bytes()
    again = run_action({**args, "cache_dir": str(cache)})
    assert not again["downloaded"] and len(http_server.requests_to("/demo.tar.gz")) == 1

    wrong = run_action({**args, "version": "2.0.0", "sha256": "f" * 64, "cache_dir": str(cache)})
    assert wrong["failed"] and "the download has sha256" in wrong["msg"]
    assert sorted(p.name for p in cache.iterdir()) == ["demo-1.0.0.tar.gz"]

    gone = run_action({**args, "src": http_server.url("/missing"), "version": "3.0.0"})
    assert gone["failed"] and "could not be downloaded" in gone["msg"]


def test_download_keeps_only_a_matching_file_and_names_the_url(
    tmp_path: Path, http_server: ScriptedServer
) -> None:
    """The action's download step in this process: a matching body renamed into place (0600),
    a wrong one or an unreachable URL refused naming the URL, no partial file left."""
    body = b"release bytes" * 1000
    good = hashlib.sha256(body).hexdigest()
    url = http_server.script("/r.tar.gz", [(200, body)])
    dest = tmp_path / "cache" / "r.tar.gz"
    action.download(url, str(dest), good, timeout=5)
    assert dest.read_bytes() == body and (dest.stat().st_mode & 0o777) == 0o600
    with pytest.raises(
        AnsibleActionFail, match=r"the download has sha256 .* not beamops_release_sha256"
    ):
        action.download(url, str(tmp_path / "cache" / "other.tar.gz"), "0" * 64, timeout=5)
    with pytest.raises(AnsibleActionFail, match=r"http://127\.0\.0\.1:1/x could not be downloaded"):
        action.download("http://127.0.0.1:1/x", str(tmp_path / "cache" / "x"), good, timeout=5)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["r.tar.gz"]
