"""The monitoring role's files, rendered by Ansible as a deploy would and checked by Prometheus'
own promtool: the rules load, every alert fires when it should and not before
(rules_test.yml), the configuration loads, the scrape targets are what file_sd expects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PROMTOOL = ROOT / "build" / "tools" / "promtool"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is missing: run `make promtool` (make unit and make test do)")
    out = tmp_path_factory.mktemp("monitoring")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "build" / "collections"))
    env.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    playbook = Path(sys.executable).with_name("ansible-playbook")
    done = subprocess.run(
        [str(playbook), "-i", str(HERE / "inventory.ini"), str(HERE / "render.yml"),
         "-e", f"out={out}"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    shutil.copy(HERE / "rules_test.yml", out / "rules_test.yml")
    yield out


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROMTOOL), *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def test_promtool_checks_the_rules(rendered: Path) -> None:
    done = promtool("check", "rules", "beamops_sample_app.rules.yml", cwd=rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    # Seven rules, and the cluster's: the fleet in inventory.ini is one cluster of three.
    assert "SUCCESS: 8 rules found" in done.stdout


def test_every_alert_fires_when_it_should_and_not_before(rendered: Path) -> None:
    done = promtool("test", "rules", "rules_test.yml", cwd=rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    tested = {
        line.split(":", 1)[1].strip()
        for line in (HERE / "rules_test.yml").read_text().splitlines()
        if line.strip().startswith("alertname:")
    }
    defined = {
        line.split(":", 1)[1].strip()
        for line in (rendered / "beamops_sample_app.rules.yml").read_text().splitlines()
        if line.strip().startswith("- alert:")
    }
    assert tested == defined, f"alerts without a promtool test: {sorted(defined - tested)}"


def test_promtool_checks_the_prometheus_configuration(rendered: Path) -> None:
    done = promtool("check", "config", "--syntax-only", "prometheus.yml", cwd=rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (rendered / "prometheus.yml").read_text()
    assert "/etc/prometheus/beamops/targets/beamops_*.json" in text
    assert '["10.0.0.13:9093"]' in text


def test_the_targets_name_each_slot_its_role_and_version(rendered: Path) -> None:
    targets = json.loads((rendered / "targets.json").read_text())
    assert [t["targets"] for t in targets] == [["10.0.0.11:9568"], ["10.0.0.11:9568"]]
    assert [t["labels"] for t in targets] == [
        {"__metrics_path__": "/beamops/sample_app/green/metrics", "app": "sample_app",
         "host": "bo1", "slot": "green", "version": "0.2.0", "role": "live"},
        {"__metrics_path__": "/beamops/sample_app/blue/metrics", "app": "sample_app",
         "host": "bo1", "slot": "blue", "version": "0.1.0", "role": "idle"},
    ]  # fmt: skip
