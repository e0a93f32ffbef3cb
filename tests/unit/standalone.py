"""Import a module_utils file by path, outside the ansible_collections namespace.

That proves the file needs no Ansible at all, which matters for health_probe.py: the systemd
units run it on hosts as a plain script. One cached copy per file keeps classes identical
across the test files that share it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_standalone(path: Path) -> ModuleType:
    name = f"{path.stem}_standalone"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module
