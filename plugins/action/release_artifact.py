# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin release_artifact: the tarball, checked on the controller, before any host.

Runs only on the controller, in the Ansible process itself: no module is sent anywhere, so
the check costs milliseconds rather than a round trip. A URL is downloaded once into the
cache (a partial file renamed into place only when its sha256 matches).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, Dict, Optional

from ansible.errors import AnsibleActionFail
from ansible.module_utils.urls import open_url
from ansible.plugins.action import ActionBase
from ansible_collections.beamops.release.plugins.module_utils.release_unpack import (
    CHUNK,
    UnpackError,
    check_tarball,
    sha256_of,
)

NOTHING_CHANGED = "No host was changed."


def download(url: str, dest: str, sha256: str, timeout: int) -> None:
    """Fetch url into dest, atomically, only if its sha256 is the expected one."""
    directory = os.path.dirname(dest)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    digest = hashlib.sha256()
    handle, partial = tempfile.mkstemp(dir=directory, prefix=".download-")
    try:
        with os.fdopen(handle, "wb") as out:
            response = open_url(url, timeout=timeout, follow_redirects="safe")
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != sha256:
            raise AnsibleActionFail(
                f"beamops_release_src {url}: the download has sha256 {actual}, not "
                f"beamops_release_sha256 {sha256}. {NOTHING_CHANGED}"
            )
        os.chmod(partial, 0o600)
        os.replace(partial, dest)
    except AnsibleActionFail:
        raise
    except Exception as exc:  # any network or file error: say which URL and why
        raise AnsibleActionFail(
            f"beamops_release_src {url} could not be downloaded: {exc}. {NOTHING_CHANGED}"
        ) from exc
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("src", "sha256", "app", "version", "cache_dir", "timeout"))

    def run(
        self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None
    ) -> Dict[str, Any]:
        result: Dict[str, Any] = super().run(tmp, task_vars)
        args = self._task.args
        missing = [k for k in ("src", "sha256", "app", "version") if not args.get(k)]
        if missing:
            raise AnsibleActionFail(f"release_artifact needs {', '.join(missing)}")
        source, app = str(args["src"]), str(args["app"])
        sha256 = str(args["sha256"]).lower()
        downloaded = False
        if source.startswith(("http://", "https://")):
            cache = os.path.expanduser(str(args.get("cache_dir") or "~/.cache/beamops.release"))
            path = os.path.join(cache, f"{app}-{args['version']}.tar.gz")
            if not (os.path.isfile(path) and sha256_of(path) == sha256):
                download(source, path, sha256, int(args.get("timeout") or 120))
                downloaded = True
        else:
            path = os.path.realpath(os.path.expanduser(source))
            self._check_local(source, path, sha256)
        try:
            members = check_tarball(path, app)
        except UnpackError as exc:
            raise AnsibleActionFail(
                f"beamops_release_src {source}: {exc}. {NOTHING_CHANGED}"
            ) from exc
        result.update(
            changed=False, path=path, sha256=sha256, downloaded=downloaded, members=members
        )
        return result

    @staticmethod
    def _check_local(source: str, path: str, sha256: str) -> None:
        if not os.path.isfile(path):
            raise AnsibleActionFail(
                f"beamops_release_src {source}: no such file on the controller. {NOTHING_CHANGED}"
            )
        actual = sha256_of(path)
        if actual != sha256:
            raise AnsibleActionFail(
                f"Checksum mismatch for beamops_release_src {source}: expected sha256 "
                f"{sha256} (beamops_release_sha256), file has {actual}. {NOTHING_CHANGED}"
            )
