# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's code on each host: the units' readiness gate and the rollback command.

The ``slot_cutover`` module writes them from its own payload (the module_utils Ansible sent
along), so installing them costs the deploy no extra round trip and they always match the
collection that last deployed:

* ``<helper_dir>/health_probe.py``: the readiness gate every slot unit runs;
* ``<helper_dir>/python/ansible_collections/beamops/release/plugins/module_utils/*.py``: the
  same package layout as in the collection, so one import line serves module and command;
* ``/usr/local/bin/<app>-rollback``: rolls the host back without the controller.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import os
import pkgutil
from typing import List, Optional

# Imported so that Ansible bundles them into the module's payload, from which install()
# copies them: a payload holds only the module_utils a module imports.
from ansible_collections.beamops.release.plugins.module_utils import (
    atomic_file,
    cutover,
    deploy_metrics,
    haproxy_runtime,
    health_probe,
    redact,
    release_state,
    rollback,
    routing,
)

# What the rollback command imports, and what those import.
SHARED_FILES = tuple(
    f"{module.__name__.rsplit('.', 1)[-1]}.py"
    for module in (
        atomic_file,
        cutover,
        deploy_metrics,
        haproxy_runtime,
        health_probe,
        redact,
        release_state,
        rollback,
        routing,
    )
)

PACKAGE = "ansible_collections.beamops.release.plugins.module_utils"
COMMAND_DIR = "/usr/local/bin"

COMMAND_TEMPLATE = """#!/usr/bin/python3
# Managed by beamops.release: roll {app} back on this host, without the controller.
#   {app}-rollback            back to the previous good release
#   {app}-rollback 0.1.0      back to that release
#   {app}-rollback --help
# Same lock, state file, gate and watch as playbooks/rollback.yml.
import sys

sys.path.insert(0, {python_dir!r})
from ansible_collections.beamops.release.plugins.module_utils import rollback

sys.exit(rollback.main(["--config-dir", {config_dir!r}, *sys.argv[1:]], prog={prog!r}))
"""


def source_of(name: str) -> bytes:
    """A sibling file's bytes: from the module's zip payload on a host (zipimport), else from
    the directory this file was imported from (a checkout, an installed collection)."""
    try:
        data = pkgutil.get_data(PACKAGE, name)
    except (OSError, ImportError):
        data = None
    if data is not None:
        return data
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise OSError(f"cannot read {name} of the collection's module_utils ({exc})") from exc


def command_path(app: str) -> str:
    return os.path.join(COMMAND_DIR, f"{app}-rollback")


def install(helper_dir: str, app: str, config_dir: str) -> List[str]:
    """Write the gate, the package and the rollback command; return the paths that changed."""
    python_dir = os.path.join(helper_dir, "python")
    package_dir = os.path.join(python_dir, *PACKAGE.split("."))
    wanted = [(os.path.join(helper_dir, "health_probe.py"), source_of("health_probe.py"), 0o644)]
    for name in SHARED_FILES:
        wanted.append((os.path.join(package_dir, name), source_of(name), 0o644))
    parts = PACKAGE.split(".")
    for depth in range(1, len(parts) + 1):
        init = os.path.join(python_dir, *parts[:depth], "__init__.py")
        wanted.append((init, b"", 0o644))
    command = COMMAND_TEMPLATE.format(
        app=app, python_dir=python_dir, config_dir=config_dir, prog=f"{app}-rollback"
    )
    wanted.append((command_path(app), command.encode(), 0o755))
    return [path for path, data, mode in wanted if atomic_file.write_if_changed(path, data, mode)]


def installed_command(app: str) -> Optional[str]:
    path = command_path(app)
    return path if os.access(path, os.X_OK) else None
