"""systemd_units.outdated_instances: which running slots started before their unit file changed
(systemctl faked; the module runs against real systemd in the molecule scenarios)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest
from ansible_collections.beamops.release.plugins.modules import systemd_units


class FakeModule:
    check_mode = False


def fake_systemctl(started: Dict[str, float]) -> object:
    """systemctl that lists `started` as active and shows each one's monotonic start (µs)."""

    def run(_module: object, *args: str) -> subprocess.CompletedProcess[str]:
        if args[0] == "list-units":
            assert args[-1] == "app@*.service"
            out = "".join(f"{name} loaded active running app\n" for name in started)
        else:
            assert args[:4] == ("show", "--value", "-p", "ExecMainStartTimestampMonotonic")
            out = f"{int(started[args[-1]] * 1e6)}\n"
        return subprocess.CompletedProcess(list(args), 0, out, "")

    return run


@pytest.fixture
def unit_file(tmp_path: Path) -> Path:
    path = tmp_path / "app@.service"
    path.write_text("[Service]\n")
    return path


def outdated(monkeypatch: pytest.MonkeyPatch, path: Path, started: Dict[str, float]) -> List[str]:
    monkeypatch.setattr(systemd_units, "systemctl", fake_systemctl(started))
    return systemd_units.outdated_instances(FakeModule(), "app@.service", str(path))


def test_a_slot_started_before_the_file_changed_is_outdated(
    monkeypatch: pytest.MonkeyPatch, unit_file: Path
) -> None:
    now = time.monotonic()
    os.utime(unit_file, (time.time() - 10, time.time() - 10))  # changed 10 s ago
    found = outdated(
        monkeypatch, unit_file, {"app@blue.service": now - 60, "app@green.service": now - 5}
    )
    assert found == ["app@blue.service"]


def test_a_slot_started_in_the_same_second_after_the_change_is_not(
    monkeypatch: pytest.MonkeyPatch, unit_file: Path
) -> None:
    os.utime(unit_file, (time.time() - 0.3, time.time() - 0.3))
    assert outdated(monkeypatch, unit_file, {"app@green.service": time.monotonic() - 0.1}) == []


def test_no_unit_file_means_nothing_is_outdated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert outdated(monkeypatch, tmp_path / "missing@.service", {"app@blue.service": 0}) == []
